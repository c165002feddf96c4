//! The models: a 3x32x32 image, flattened channel-major, in; logits (training, with
//! cross-entropy) or class probabilities (inference) out. Each architecture is one file
//! ([`mlp`], the card's model; [`cnn`]) implementing [`Architecture`], listed in [`registry`].
//!
//! The number of classes is a parameter of every model: the length of its class names (10 for
//! CIFAR-10, the number of class folders for an image folder), and the width of its output.
//!
//! Training works on the logits with cross-entropy; inference returns softmax probabilities.
//! Nothing here knows about files or the command line: the weights cross that boundary as a
//! plain [`Weights`] value.

pub mod arch;
pub mod cnn;
pub mod cnn_host;
mod config;
mod loss;
pub mod mlp;
mod module_io;
pub mod onnx_graph;
mod registry;
mod weights;

pub use arch::Architecture;
pub use config::{DEFAULT_HIDDEN, ModelConfig};
pub use loss::{StepStats, batch_tensors, mean_cross_entropy, one_hot, stats};
pub use mlp::{ARCHITECTURE, MLP_PARAMETERS, Mlp, MlpWeights};
pub use module_io::{Network, Trainable, load_weights, weights_of};
pub use registry::{Arch, register};
pub use weights::{Array, Weights, glorot_uniform, read_f32};

#[cfg(test)]
pub(crate) use loss::random_batch;
pub(crate) use mlp::{beyond_first_product, first_layer_gradient};
#[cfg(test)]
pub(crate) use weights::max_difference;

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::softmax;

use crate::data::preprocess::INPUT_LEN;

/// A model of any architecture, ready to run (prediction, evaluation, explanation).
#[derive(Debug)]
pub struct Model(Box<dyn Trainable>);

impl Clone for Model {
    fn clone(&self) -> Self {
        Model(self.0.boxed_clone())
    }
}

impl Model {
    /// The model of `config` holding `weights`, on `device`; an error names an array that is
    /// missing or of the wrong shape.
    pub fn from_weights(config: &ModelConfig, weights: &Weights, device: &Device) -> Result<Self> {
        Ok(Model(config.arch()?.get().load(
            config.hidden,
            weights,
            device,
        )?))
    }

    /// A model already built (by a trainer).
    pub fn from_module(module: Box<dyn Trainable>) -> Self {
        Model(module)
    }

    /// Logits `[N, classes]` for a batch of preprocessed images `[N, 3072]`.
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        self.0.logits(input)
    }

    /// Class probabilities `[N, classes]` (softmax of the logits).
    pub fn probabilities(&self, input: Tensor<2>) -> Tensor<2> {
        softmax(self.forward(input), 1)
    }
}

/// Checks that the model of `config` holding `weights` answers in finite numbers: it is run on
/// the CPU once, on a black, a grey and a white image. Finite weights can still overflow
/// (3e38 everywhere: every sum is infinite, every probability NaN), which no look at the
/// weights alone tells for every architecture; a model that fails this would answer NaN.
pub fn check_answers_finite(config: &ModelConfig, weights: &Weights) -> Result<()> {
    let device = Device::flex();
    let model = Model::from_weights(config, weights, &device)?;
    let levels = [0.0f32, 0.5, 1.0];
    let probe: Vec<f32> = levels
        .iter()
        .flat_map(|&level| std::iter::repeat_n(level, INPUT_LEN))
        .collect();
    let input = Tensor::<2>::from_data(TensorData::new(probe, [levels.len(), INPUT_LEN]), &device);
    let logits = read_f32(model.forward(input))?;
    if let Some(bad) = logits.iter().find(|v| !v.is_finite()) {
        bail!(
            "the weights are finite but too large: the model's output for a plain image is \
             {bad:?}, so every answer would be NaN (did its training diverge? train again with \
             a lower --lr)"
        );
    }
    Ok(())
}
