//! The card's model: a 3x32x32 image, flattened channel-major, Dense(hidden) + ReLU,
//! Dense(classes).

use anyhow::Result;
use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{log_softmax, relu, softmax};

use super::arch::Architecture;
use super::loss::StepStats;
use super::module_io::Trainable;
use super::onnx_graph::{GraphBuilder, GraphProto, INPUT, OUTPUT, attribute};
use super::weights::{Array, Weights, glorot_uniform, read_f32};
use crate::data::preprocess::INPUT_LEN;

/// The MLP's name in every file (the card's model).
pub const ARCHITECTURE: &str = "mlp-3072-relu-10";

/// The card's MLP, registered as `--arch mlp`.
pub struct MlpArchitecture;

impl Architecture for MlpArchitecture {
    fn name(&self) -> &'static str {
        ARCHITECTURE
    }
    fn flag(&self) -> &'static str {
        "mlp"
    }
    fn about(&self) -> &'static str {
        "the card's MLP (Dense --hidden + ReLU, Dense classes): fastest; for pictures told apart by colour and overall look"
    }
    fn parameter_shapes(&self, hidden: usize, classes: usize) -> Vec<(String, Vec<usize>)> {
        MLP_PARAMETERS
            .iter()
            .map(|name| name.to_string())
            .zip(MlpWeights::shapes(hidden, classes))
            .collect()
    }
    fn init_weights(&self, hidden: usize, classes: usize, seed: u64) -> Weights {
        MlpWeights::init(hidden, classes, seed).into_weights()
    }
    fn module(&self, hidden: usize, classes: usize, device: &Device) -> Box<dyn Trainable> {
        Box::new(Mlp::init(hidden, classes, 0, device))
    }
    fn onnx_graph(&self, input_shape: [usize; 3], weights: &Weights) -> Result<Option<GraphProto>> {
        onnx_graph(input_shape, weights).map(Some)
    }
    fn load(
        &self,
        _hidden: usize,
        weights: &Weights,
        device: &Device,
    ) -> Result<Box<dyn Trainable>> {
        // Straight from the arrays: no initial weights drawn only to be replaced.
        Ok(Box::new(Mlp::from_weights(weights, device)?))
    }
}

impl Weights {
    /// Fresh weights of the MLP of `hidden` width and `classes` outputs, as Keras initialises
    /// Dense layers (see [`MlpWeights::init`]).
    pub fn init(hidden: usize, classes: usize, seed: u64) -> Self {
        MlpWeights::init(hidden, classes, seed).into_weights()
    }
}

/// The MLP's parameters in the order of [`MlpWeights`]: the names its files give them.
pub const MLP_PARAMETERS: [&str; 4] = [
    "hidden.weight",
    "hidden.bias",
    "output.weight",
    "output.bias",
];

/// The MLP's parameters by role, for the code written for this one architecture (its sharded
/// training step, its ONNX graph): `w1` is `[3072, hidden]`, `w2` `[hidden, classes]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpWeights {
    /// Width of the hidden layer.
    pub hidden: usize,
    /// First layer weights, `[3072, hidden]`.
    pub w1: Vec<f32>,
    /// First layer bias, `[hidden]`.
    pub b1: Vec<f32>,
    /// Second layer weights, `[hidden, classes]`.
    pub w2: Vec<f32>,
    /// Second layer bias, `[classes]`.
    pub b2: Vec<f32>,
}

impl MlpWeights {
    /// Fresh weights as Keras initialises Dense layers (Glorot uniform, zero bias), drawn on the
    /// host from `seed` so that every device starts from the same numbers.
    pub fn init(hidden: usize, classes: usize, seed: u64) -> Self {
        let shapes = MlpArchitecture.parameter_shapes(hidden, classes);
        let mut arrays = glorot_uniform(shapes, seed).arrays.into_iter();
        let mut next = || arrays.next().map(|a| a.values).unwrap_or_default();
        let (w1, b1, w2, b2) = (next(), next(), next(), next());
        Self {
            hidden,
            w1,
            b1,
            w2,
            b2,
        }
    }

    /// The number of classes: the width of the output layer.
    pub fn classes(&self) -> usize {
        self.b2.len()
    }

    /// The MLP's arrays of `weights`, checked against the shapes their widths imply.
    pub fn from_weights(weights: &Weights) -> Result<Self> {
        let [w1, b1, w2, b2] = MLP_PARAMETERS.map(|name| weights.get(name));
        let (w1, b1, w2, b2) = (w1?, b1?, w2?, b2?);
        let (hidden, classes) = (b1.values.len(), b2.values.len());
        for (array, shape) in [w1, b1, w2, b2].iter().zip(Self::shapes(hidden, classes)) {
            weights.get_shaped(&array.name, &shape)?;
        }
        Ok(Self {
            hidden,
            w1: w1.values.clone(),
            b1: b1.values.clone(),
            w2: w2.values.clone(),
            b2: b2.values.clone(),
        })
    }

    /// The named arrays, in [`MLP_PARAMETERS`] order.
    pub fn into_weights(self) -> Weights {
        let shapes = Self::shapes(self.hidden, self.classes());
        let arrays = MLP_PARAMETERS
            .iter()
            .zip(shapes)
            .zip([self.w1, self.b1, self.w2, self.b2])
            .map(|((name, shape), values)| Array::new(name, shape, values))
            .collect();
        Weights { arrays }
    }

    /// The shapes of `w1`, `b1`, `w2`, `b2`, in that order.
    pub fn shapes(hidden: usize, classes: usize) -> [Vec<usize>; 4] {
        [
            vec![INPUT_LEN, hidden],
            vec![hidden],
            vec![hidden, classes],
            vec![classes],
        ]
    }
}

/// The classifier as a burn module.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Dense(hidden), followed by ReLU.
    pub hidden: Linear,
    /// Dense(classes): the logits.
    pub output: Linear,
}

/// Gradients of the mean cross-entropy with respect to each parameter: the plain hand-derived
/// step, which the tests hold the sharded step and burn's autodiff to.
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct Gradients {
    /// d loss / d w1.
    pub w1: Tensor<2>,
    /// d loss / d b1.
    pub b1: Tensor<1>,
    /// d loss / d w2.
    pub w2: Tensor<2>,
    /// d loss / d b2.
    pub b2: Tensor<1>,
}

impl Mlp {
    /// A fresh model with the given width and classes, initialised from `seed`.
    pub fn init(hidden: usize, classes: usize, seed: u64, device: &Device) -> Self {
        Self::from_mlp_weights(&MlpWeights::init(hidden, classes, seed), device)
    }

    /// The model holding `weights`, on `device`; an error names an array it lacks.
    pub fn from_weights(weights: &Weights, device: &Device) -> Result<Self> {
        Ok(Self::from_mlp_weights(
            &MlpWeights::from_weights(weights)?,
            device,
        ))
    }

    /// The model holding the MLP's `weights`, on `device`.
    pub fn from_mlp_weights(weights: &MlpWeights, device: &Device) -> Self {
        let (h, classes) = (weights.hidden, weights.classes());
        let tensor2 = |v: &[f32], shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), device)
        };
        let tensor1 =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
        Self::from_parameters(
            tensor2(&weights.w1, [INPUT_LEN, h]),
            tensor1(&weights.b1),
            tensor2(&weights.w2, [h, classes]),
            tensor1(&weights.b2),
        )
    }

    /// The model made of these parameters, already on their device.
    pub(crate) fn from_parameters(
        w1: Tensor<2>,
        b1: Tensor<1>,
        w2: Tensor<2>,
        b2: Tensor<1>,
    ) -> Self {
        let layer = |weight, bias| Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
        };
        Self {
            hidden: layer(w1, b1),
            output: layer(w2, b2),
        }
    }

    /// The width of the hidden layer.
    pub fn hidden_width(&self) -> usize {
        self.hidden.weight.dims()[1]
    }

    /// The parameters `(w1, b1, w2, b2)` as tensors.
    pub(crate) fn parameters(&self) -> (Tensor<2>, Tensor<1>, Tensor<2>, Tensor<1>) {
        (
            self.hidden.weight.val(),
            bias(&self.hidden),
            self.output.weight.val(),
            bias(&self.output),
        )
    }

    /// Copies the parameters back to the host.
    pub fn weights(&self) -> Result<Weights> {
        let (w1, b1, w2, b2) = self.parameters();
        let weights = MlpWeights {
            hidden: self.hidden_width(),
            w1: read_f32(w1)?,
            b1: read_f32(b1)?,
            w2: read_f32(w2)?,
            b2: read_f32(b2)?,
        };
        Ok(weights.into_weights())
    }

    /// Logits `[N, classes]` for a batch of preprocessed images `[N, 3072]`.
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        self.output.forward(relu(self.hidden.forward(input)))
    }

    /// Class probabilities `[N, classes]` (softmax of the logits).
    pub fn probabilities(&self, input: Tensor<2>) -> Tensor<2> {
        softmax(self.forward(input), 1)
    }

    /// Mean cross-entropy of the logits against one-hot targets, `[1]`: the training loss that
    /// autodiff differentiates, and the reference the hand-derived gradients are tested against.
    pub fn loss(&self, input: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
        super::loss::mean_cross_entropy(self.forward(input), targets)
    }

    /// One forward and backward pass: the gradients of the mean cross-entropy, derived by hand
    /// for this fixed architecture, which costs far fewer tensor operations than a recorded graph.
    /// Training runs the same arithmetic with the first layer's product cut into shards
    /// ([`crate::train::cpu::sharded`]); this whole-model form is the reference that is tested against
    /// autodiff, and the sharded step against it.
    #[cfg(test)]
    pub(crate) fn gradients(
        &self,
        input: Tensor<2>,
        targets: Tensor<2>,
        labels: Tensor<1, Int>,
    ) -> (Gradients, StepStats) {
        let (w1, b1, w2, b2) = self.parameters();
        let product = input.clone().matmul(w1);
        let rest = beyond_first_product(product, b1, w2, b2, targets, labels);
        let d_w1 = first_layer_gradient(input, rest.d_pre);
        (
            Gradients {
                w1: d_w1,
                b1: rest.d_b1,
                w2: rest.d_w2,
                b2: rest.d_b2,
            },
            rest.stats,
        )
    }
}

impl super::module_io::Network for Mlp {
    fn logits(&self, input: Tensor<2>) -> Tensor<2> {
        self.forward(input)
    }
}

/// What a step computes beyond the first layer's product `input @ w1`.
#[derive(Debug, Clone)]
pub(crate) struct BeyondFirstProduct {
    /// d loss / d pre-activations, `[N, hidden]`: what `w1`'s gradient is made of.
    pub d_pre: Tensor<2>,
    /// d loss / d b1.
    pub d_b1: Tensor<1>,
    /// d loss / d w2.
    pub d_w2: Tensor<2>,
    /// d loss / d b2.
    pub d_b2: Tensor<1>,
    /// The batch's loss and right answers.
    pub stats: StepStats,
}

/// The rest of the forward pass from the first layer's product `input @ w1` `[N, hidden]`, the
/// mean cross-entropy against one-hot `targets`, and the backward pass down to the
/// pre-activations. All of it works on `[N, hidden]` or smaller: cheap next to the product.
pub(crate) fn beyond_first_product(
    product: Tensor<2>,
    b1: Tensor<1>,
    w2: Tensor<2>,
    b2: Tensor<1>,
    targets: Tensor<2>,
    labels: Tensor<1, Int>,
) -> BeyondFirstProduct {
    let [batch, hidden] = product.dims();
    let pre = product + b1.unsqueeze::<2>();
    let act = relu(pre.clone());
    let logits = act.clone().matmul(w2.clone()) + b2.unsqueeze::<2>();
    let classes = logits.dims()[1];
    let log_probs = log_softmax(logits.clone(), 1);
    let loss_sum = (log_probs.clone() * targets.clone()).sum().neg();
    let correct = logits.argmax(1).reshape([batch]).equal(labels).int().sum();
    // d(mean CE)/d logits = (softmax - onehot) / N.
    let d_logits = (log_probs.exp() - targets).div_scalar(batch as f64);
    let d_w2 = act.transpose().matmul(d_logits.clone());
    let d_b2 = d_logits.clone().sum_dim(0).reshape([classes]);
    let d_act = d_logits.matmul(w2.transpose());
    let d_pre = d_act.mask_fill(pre.lower_equal_elem(0.0), 0.0);
    let d_b1 = d_pre.clone().sum_dim(0).reshape([hidden]);
    BeyondFirstProduct {
        d_pre,
        d_b1,
        d_w2,
        d_b2,
        stats: StepStats { loss_sum, correct },
    }
}

/// d loss / d w1 (or the rows of it that belong to `input`'s columns): `input^T @ d_pre`.
pub(crate) fn first_layer_gradient(input: Tensor<2>, d_pre: Tensor<2>) -> Tensor<2> {
    input.transpose().matmul(d_pre)
}

fn bias(layer: &Linear) -> Tensor<1> {
    match &layer.bias {
        Some(b) => b.val(),
        // Every layer built here has a bias; a zero one keeps the arithmetic right regardless.
        None => Tensor::zeros([layer.weight.dims()[1]], &layer.weight.device()),
    }
}

/// The MLP ([`crate::model::Mlp`]): `input -> Flatten -> Gemm -> Relu -> Gemm -> Softmax ->
/// probabilities`.
pub fn onnx_graph(input_shape: [usize; 3], weights: &Weights) -> Result<GraphProto> {
    let weights = MlpWeights::from_weights(weights)?;
    let (h, classes) = (weights.hidden, weights.classes());
    let [c, height, width] = input_shape;
    let [w1, b1, w2, b2] = MLP_PARAMETERS;
    let mut graph = GraphBuilder::classifier(input_shape, classes);
    graph
        .node("Flatten", &[INPUT], "flat", vec![attribute("axis", 1)])
        .node("Gemm", &["flat", w1, b1], "hidden_linear", vec![])
        .node("Relu", &["hidden_linear"], "hidden", vec![])
        .node("Gemm", &["hidden", w2, b2], "logits", vec![])
        .node("Softmax", &["logits"], OUTPUT, vec![attribute("axis", 1)])
        .initializer(w1, &[c * height * width, h], &weights.w1)
        .initializer(b1, &[h], &weights.b1)
        .initializer(w2, &[h, classes], &weights.w2)
        .initializer(b2, &[classes], &weights.b2);
    Ok(graph.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::random_batch;

    const NUM_CLASSES: usize = 10;

    fn batch(device: &Device) -> (Tensor<2>, Tensor<2>, Tensor<1, Int>) {
        random_batch(6, NUM_CLASSES, 7, device)
    }

    fn assert_close(a: Vec<f32>, b: Vec<f32>, what: &str) {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale + 1e-7,
                "{what}[{i}]: hand-derived {x} vs autodiff {y}"
            );
        }
    }

    #[test]
    fn hand_derived_gradients_equal_autodiff() {
        let device = Device::flex();
        let model = Mlp::init(16, NUM_CLASSES, 3, &device);
        let (x, y, labels) = batch(&device);
        let (grads, stats) = model.gradients(x.clone(), y.clone(), labels);

        let ad = device.autodiff();
        let ad_model = Mlp::from_weights(&model.weights().unwrap(), &ad).unwrap();
        let (w1, b1, w2, b2) = ad_model.parameters();
        let (w1, b1, w2, b2) = (
            w1.require_grad(),
            b1.require_grad(),
            w2.require_grad(),
            b2.require_grad(),
        );
        let ad_model = Mlp::from_parameters(w1.clone(), b1.clone(), w2.clone(), b2.clone());
        let loss = ad_model.loss(x.to_device(&ad), y.to_device(&ad));
        let reference = loss.backward();
        let g = |t: Option<Tensor<2>>| read_f32(t.unwrap()).unwrap();
        let g1 = |t: Option<Tensor<1>>| read_f32(t.unwrap()).unwrap();
        assert_close(read_f32(grads.w1).unwrap(), g(w1.grad(&reference)), "w1");
        assert_close(read_f32(grads.b1).unwrap(), g1(b1.grad(&reference)), "b1");
        assert_close(read_f32(grads.w2).unwrap(), g(w2.grad(&reference)), "w2");
        assert_close(read_f32(grads.b2).unwrap(), g1(b2.grad(&reference)), "b2");
        let mean = read_f32(stats.loss_sum).unwrap()[0] / 6.0;
        assert!((mean - read_f32(loss).unwrap()[0]).abs() < 1e-5);
    }

    #[test]
    fn probabilities_sum_to_one() {
        let device = Device::flex();
        let model = Mlp::init(8, NUM_CLASSES, 1, &device);
        let (x, _, _) = batch(&device);
        let p = read_f32(model.probabilities(x)).unwrap();
        for row in p.chunks(NUM_CLASSES) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn weights_round_trip_through_the_module() {
        let w = Weights::init(5, 3, 11);
        assert_eq!(
            Mlp::from_weights(&w, &Device::flex())
                .unwrap()
                .weights()
                .unwrap(),
            w
        );
        let names: Vec<&str> = w.arrays.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, MLP_PARAMETERS);
        assert_eq!(w.arrays[0].shape, [INPUT_LEN, 5]);
    }

    #[test]
    fn non_finite_weights_are_named() {
        let mut w = Weights::init(4, 3, 1);
        assert!(w.check_finite().is_ok());
        w.arrays[2].values[5] = f32::NAN;
        let err = w.check_finite().unwrap_err().to_string();
        assert!(
            err.contains("output.weight") && err.contains("NaN") && err.contains("element 5"),
            "{err}"
        );
        w.arrays[2].values[5] = 0.0;
        w.arrays[3].values[0] = f32::NEG_INFINITY;
        let err = w.check_finite().unwrap_err().to_string();
        assert!(err.contains("output.bias"), "{err}");
    }

    #[test]
    fn init_is_deterministic_per_seed() {
        assert_eq!(Weights::init(4, 10, 1), Weights::init(4, 10, 1));
        assert_ne!(Weights::init(4, 10, 1), Weights::init(4, 10, 2));
        assert_eq!(Weights::init(4, 3, 1).classes(), 3);
    }
}
