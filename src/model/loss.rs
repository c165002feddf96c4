//! The one training loss (mean cross-entropy of the logits against one-hot targets), the
//! statistics a step reports, and a batch as training takes it.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
#[cfg(test)]
use rand::{RngExt, SeedableRng, rngs::StdRng};

#[cfg(test)]
use crate::data::preprocess::INPUT_LEN;

/// What one training step computed besides the gradients; tensors, so reading them can wait.
#[derive(Debug, Clone)]
pub struct StepStats {
    /// Sum (not mean) of the batch's cross-entropy losses, `[1]`.
    pub loss_sum: Tensor<1>,
    /// How many of the batch were classified right, `[1]`.
    pub correct: Tensor<1, Int>,
}

/// Mean cross-entropy of `logits` against one-hot `targets`, `[1]`.
pub fn mean_cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let batch = logits.dims()[0] as f64;
    (log_softmax(logits, 1) * targets)
        .sum()
        .neg()
        .div_scalar(batch)
}

/// The batch's summed loss and right answers from its `logits` (outside autodiff).
pub fn stats(logits: Tensor<2>, targets: Tensor<2>, labels: Tensor<1, Int>) -> StepStats {
    let batch = logits.dims()[0];
    let loss_sum = (log_softmax(logits.clone(), 1) * targets).sum().neg();
    let correct = logits.argmax(1).reshape([batch]).equal(labels).int().sum();
    StepStats { loss_sum, correct }
}

/// A batch as training takes it: `inputs` (one row per label, of any width) `[N, width]`, the
/// labels as one-hot targets `[N, classes]`, and the labels `[N]`.
pub fn batch_tensors(
    inputs: Vec<f32>,
    labels: Vec<i64>,
    classes: usize,
    device: &Device,
) -> (Tensor<2>, Tensor<2>, Tensor<1, Int>) {
    let n = labels.len();
    let width = inputs.len() / n.max(1);
    let targets = one_hot(&labels, classes);
    (
        Tensor::from_data(TensorData::new(inputs, [n, width]), device),
        Tensor::from_data(TensorData::new(targets, [n, classes]), device),
        Tensor::from_data(TensorData::new(labels, [n]), device),
    )
}

/// The labels as one-hot rows `[len, classes]`.
pub fn one_hot(labels: &[i64], classes: usize) -> Vec<f32> {
    let mut targets = vec![0f32; labels.len() * classes];
    for (row, &label) in targets.chunks_mut(classes).zip(labels) {
        row[label as usize] = 1.0;
    }
    targets
}

/// `n` random inputs in [0, 1) with random labels of `classes`: inputs, one-hot targets, labels.
#[cfg(test)]
pub(crate) fn random_batch(
    n: usize,
    classes: usize,
    seed: u64,
    device: &Device,
) -> (Tensor<2>, Tensor<2>, Tensor<1, Int>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<f32> = (0..n * INPUT_LEN)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let labels: Vec<i64> = (0..n)
        .map(|_| rng.random_range(0..classes as i64))
        .collect();
    batch_tensors(x, labels, classes, device)
}
