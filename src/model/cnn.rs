//! The small CNN (`maas train --arch cnn`): conv 3x3 32 + ReLU, max-pool 2, conv 3x3 64 + ReLU,
//! max-pool 2, flatten, dense 128 + ReLU, dense C. The same network as the PyTorch peer
//! (`torch_cnn.py`: padding 1, so the pictures stay 32x32 and 16x16 through the convolutions).
//!
//! Where the MLP sees pixels at fixed places, the convolutions see the same small patterns
//! anywhere in the picture: what a shape drawn at a random position needs. On the CPU it trains
//! through a step derived by hand ([`crate::train::cpu::cnn`]), tested against burn's autodiff
//! ([`crate::train::autodiff`]), which trains it on a GPU. On the CPU it also answers through the
//! host kernels ([`super::cnn_host`]), burn's [`Cnn::forward`] running elsewhere.

use anyhow::Result;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::arch::Architecture;
use super::cnn_host::{CnnModel, plain_cpu};
use super::module_io::{Network, Trainable, load_weights};
use super::onnx_graph::{GraphBuilder, GraphProto, INPUT, OUTPUT, attribute};
use super::weights::{Weights, glorot_uniform};

/// Channels of the two convolutions.
const CHANNELS: [usize; 2] = [32, 64];
/// Width of the dense layer.
pub const DENSE: usize = 128;
/// Values per image after the second pooling: 64 channels of 8x8.
const FLAT: usize = CHANNELS[1] * 8 * 8;

/// The CNN as a burn module; its parameters are named by these fields (`conv1.weight`, ...).
#[derive(Module, Debug)]
pub struct Cnn {
    /// Conv 3x3, 3 -> 32 channels, padding 1.
    pub conv1: Conv2d,
    /// Conv 3x3, 32 -> 64 channels, padding 1.
    pub conv2: Conv2d,
    /// Max-pool 2x2, stride 2 (after each convolution).
    pub pool: MaxPool2d,
    /// Dense 4096 -> 128.
    pub dense: Linear,
    /// Dense 128 -> classes: the logits.
    pub output: Linear,
}

impl Cnn {
    /// A CNN of `classes` outputs on `device`, with burn's initial weights (to be replaced by
    /// [`crate::model::load_weights`]).
    pub fn new(classes: usize, device: &Device) -> Self {
        let conv = |channels| {
            Conv2dConfig::new(channels, [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            conv1: conv([3, CHANNELS[0]]),
            conv2: conv(CHANNELS),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            dense: LinearConfig::new(FLAT, DENSE).init(device),
            output: LinearConfig::new(DENSE, classes).init(device),
        }
    }

    /// Logits `[N, classes]` for preprocessed images `[N, 3072]` (channel-major).
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        let n = input.dims()[0];
        let x = input.reshape([n, 3, 32, 32]);
        let x = self.pool.forward(relu(self.conv1.forward(x)));
        let x = self.pool.forward(relu(self.conv2.forward(x)));
        let x = relu(self.dense.forward(x.reshape([n, FLAT])));
        self.output.forward(x)
    }
}

impl Network for Cnn {
    fn logits(&self, input: Tensor<2>) -> Tensor<2> {
        self.forward(input)
    }
}

/// The CNN's name in every file.
pub const ARCHITECTURE: &str = "cnn-conv32-conv64-dense128";

/// The small CNN, registered as `--arch cnn`.
pub struct CnnArchitecture;

impl Architecture for CnnArchitecture {
    fn name(&self) -> &'static str {
        ARCHITECTURE
    }
    fn flag(&self) -> &'static str {
        "cnn"
    }
    fn about(&self) -> &'static str {
        "a small CNN (conv 3x3 32, max-pool, conv 3x3 64, max-pool, dense 128): slower; for pictures where the position and shape of things matter"
    }
    fn fixed_hidden(&self) -> Option<usize> {
        Some(DENSE)
    }
    fn parameter_shapes(&self, _hidden: usize, classes: usize) -> Vec<(String, Vec<usize>)> {
        parameter_shapes(classes)
    }
    fn init_weights(&self, _hidden: usize, classes: usize, seed: u64) -> Weights {
        init_weights(classes, seed)
    }
    fn module(&self, _hidden: usize, classes: usize, device: &Device) -> Box<dyn Trainable> {
        Box::new(Cnn::new(classes, device))
    }
    fn onnx_graph(&self, input_shape: [usize; 3], weights: &Weights) -> Result<Option<GraphProto>> {
        Ok(Some(onnx_graph(input_shape, weights)))
    }
    /// On the plain CPU device, the module with its host forward ([`CnnModel`]), the weights laid
    /// out for it once here; the module alone elsewhere.
    fn load(
        &self,
        _hidden: usize,
        weights: &Weights,
        device: &Device,
    ) -> Result<Box<dyn Trainable>> {
        let module = load_weights(Cnn::new(weights.classes(), device), weights)?;
        if plain_cpu(device) {
            Ok(Box::new(CnnModel::new(Box::new(module), weights)?))
        } else {
            Ok(Box::new(module))
        }
    }
}

/// The CNN's parameters, names and shapes in the module's order.
pub fn parameter_shapes(classes: usize) -> Vec<(String, Vec<usize>)> {
    let [c1, c2] = CHANNELS;
    [
        ("conv1.weight", vec![c1, 3, 3, 3]),
        ("conv1.bias", vec![c1]),
        ("conv2.weight", vec![c2, c1, 3, 3]),
        ("conv2.bias", vec![c2]),
        ("dense.weight", vec![FLAT, DENSE]),
        ("dense.bias", vec![DENSE]),
        ("output.weight", vec![DENSE, classes]),
        ("output.bias", vec![classes]),
    ]
    .into_iter()
    .map(|(name, shape)| (name.to_string(), shape))
    .collect()
}

/// Fresh weights as Keras initialises Conv2D and Dense layers (Glorot uniform, zero bias), drawn
/// on the host from `seed` so that every device starts from the same numbers.
pub fn init_weights(classes: usize, seed: u64) -> Weights {
    glorot_uniform(parameter_shapes(classes), seed)
}

/// The CNN as an ONNX graph: `Conv -> Relu -> MaxPool -> Conv -> Relu -> MaxPool -> Flatten ->
/// Gemm -> Relu -> Gemm -> Softmax`; the parameters are the initializers of their own names.
pub fn onnx_graph(input_shape: [usize; 3], weights: &Weights) -> GraphProto {
    let mut graph = GraphBuilder::classifier(input_shape, weights.classes());
    let conv = |graph: &mut GraphBuilder, input: &str, layer: &str| {
        let (weight, bias) = (format!("{layer}.weight"), format!("{layer}.bias"));
        let attributes = vec![
            attribute("kernel_shape", [3, 3]),
            attribute("pads", [1, 1, 1, 1]),
        ];
        graph.node("Conv", &[input, &weight, &bias], layer, attributes);
    };
    let pool = |graph: &mut GraphBuilder, input: &str, output: &str| {
        let attributes = vec![
            attribute("kernel_shape", [2, 2]),
            attribute("strides", [2, 2]),
        ];
        graph.node("MaxPool", &[input], output, attributes);
    };
    conv(&mut graph, INPUT, "conv1");
    graph.node("Relu", &["conv1"], "relu1", vec![]);
    pool(&mut graph, "relu1", "pool1");
    conv(&mut graph, "pool1", "conv2");
    graph.node("Relu", &["conv2"], "relu2", vec![]);
    pool(&mut graph, "relu2", "pool2");
    graph
        .node("Flatten", &["pool2"], "flat", vec![attribute("axis", 1)])
        .node(
            "Gemm",
            &["flat", "dense.weight", "dense.bias"],
            "dense_linear",
            vec![],
        )
        .node("Relu", &["dense_linear"], "dense", vec![])
        .node(
            "Gemm",
            &["dense", "output.weight", "output.bias"],
            "logits",
            vec![],
        )
        .node("Softmax", &["logits"], OUTPUT, vec![attribute("axis", 1)]);
    for array in &weights.arrays {
        graph.initializer(&array.name, &array.shape, &array.values);
    }
    graph.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{load_weights, weights_of};

    #[test]
    fn the_module_holds_the_named_parameters_and_gives_logits_per_class() {
        let device = Device::flex();
        let w = init_weights(5, 3);
        let cnn = load_weights(Cnn::new(5, &device), &w).unwrap();
        assert_eq!(
            weights_of(&cnn).unwrap(),
            w,
            "names, shapes and order agree"
        );
        let x = Tensor::<2>::ones([2, 3072], &device);
        assert_eq!(cnn.forward(x).dims(), [2, 5]);
        assert_eq!(w.classes(), 5);
        assert_ne!(init_weights(5, 3), init_weights(5, 4));
    }
}
