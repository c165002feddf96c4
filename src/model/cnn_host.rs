//! The cnn's forward pass on the host: what every inference of a cnn on the CPU runs (the test
//! pass while training, `predict`, `eval`, `serve`), through the kernels of its training step
//! ([`crate::kernels`]).
//!
//! Why: burn's CPU backend runs [`Cnn::forward`](super::cnn::Cnn::forward) one operation and mostly one core at a time, and
//! rearranges patches for each convolution; here a block of images goes through both
//! convolutions as matrix products over their patches (channels-last), the blocks spread over
//! rayon's threads, and the weights are laid out for that once per model ([`HostCnn::new`]), not
//! per call. The sums are the same products' in another order, so the logits agree with burn's
//! to rounding (tested below).
//!
//! [`CnnModel`] is the cnn as inference holds it on the CPU: burn's module (for its weights,
//! autodiff and other devices) beside the host copy that answers [`Trainable::logits`]. Off the
//! plain CPU device (a GPU, or autodiff for `explain`), the module alone runs, as before. This
//! file knows the cnn by its arrays' names and shapes only, so that `cnn` can build on it.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use burn::backend::DispatchDevice;
use burn::prelude::*;
use burn::tensor::{DType, Gradients, TensorData};
use rayon::prelude::*;

use super::module_io::{Trainable, UpdateFn};
use super::weights::{Weights, read_f32};
use crate::data::preprocess::INPUT_LEN;
use crate::kernels::conv::{affine_relu, patches};
use crate::kernels::layout::{Toward, relayout_kernel, transpose_images};
use crate::kernels::matmul::{Strided, product};
use crate::kernels::pool::max_pool;
use crate::kernels::winograd::{Conv3x3, Kernel};

/// Side of the input pictures.
const SIZE: usize = 32;
/// Colour channels of the input.
const COLOURS: usize = 3;
/// Most images in one block: its buffers (about 0.7 MiB an image, mostly patches; one block's
/// per thread at most) stay small enough to keep between calls and near the cache, and the
/// dense layers' products are still a few rows tall.
const MAX_BLOCK: usize = 16;

/// The cnn's weights laid out for the host kernels, and buffers kept between calls.
pub struct HostCnn {
    /// The first kernel as a matrix that multiplies patches ([`relayout_kernel`]), and its bias.
    w1: Vec<f32>,
    b1: Vec<f32>,
    /// The second kernel transformed for Winograd's convolution.
    w2: Kernel,
    b2: Vec<f32>,
    /// The dense layers as the module holds them (`[in, out]`).
    wd: Vec<f32>,
    bd: Vec<f32>,
    wo: Vec<f32>,
    bo: Vec<f32>,
    /// Channels of the two convolutions, width of the dense layer, classes.
    channels: [usize; 2],
    dense: usize,
    classes: usize,
    /// Blocks' buffers, one per block running at once, taken and given back by each block.
    spare: Mutex<Vec<Block>>,
}

impl std::fmt::Debug for HostCnn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostCnn {{ classes: {} }}", self.classes)
    }
}

impl HostCnn {
    /// The cnn holding `weights` (the module's arrays, by name), laid out for the host. The
    /// widths are read from the arrays and every shape checked against them: an error names an
    /// array that is missing or of the wrong shape.
    pub fn new(weights: &Weights) -> Result<Self> {
        let width = |name: &str, axis: usize| -> Result<usize> {
            let shape = &weights.get(name)?.shape;
            shape
                .get(axis)
                .copied()
                .with_context(|| format!("array `{name}` has shape {shape:?}, too few axes"))
        };
        let (c1, c2) = (width("conv1.weight", 0)?, width("conv2.weight", 0)?);
        let (dense, classes) = (width("dense.weight", 1)?, width("output.weight", 1)?);
        let flat = c2 * (SIZE / 4) * (SIZE / 4);
        let values = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            Ok(weights.get_shaped(name, shape)?.values.clone())
        };
        let w1 = values("conv1.weight", &[c1, COLOURS, 3, 3])?;
        let b1 = values("conv1.bias", &[c1])?;
        let w2 = values("conv2.weight", &[c2, c1, 3, 3])?;
        let b2 = values("conv2.bias", &[c2])?;
        let wd = values("dense.weight", &[flat, dense])?;
        let bd = values("dense.bias", &[dense])?;
        let wo = values("output.weight", &[dense, classes])?;
        let bo = values("output.bias", &[classes])?;
        Ok(Self {
            w1: relayout_kernel(&w1, c1, COLOURS, Toward::Patches),
            b1,
            w2: Kernel::new(&w2, c2),
            b2,
            wd,
            bd,
            wo,
            bo,
            channels: [c1, c2],
            dense,
            classes,
            spare: Mutex::new(Vec::new()),
        })
    }

    /// How many classes the logits have.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Logits `[n, classes]` for `n` preprocessed images `x` (rows of 3072, channel-major).
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() / INPUT_LEN;
        let mut out = vec![0.0; n * self.classes];
        if out.is_empty() {
            return out;
        }
        // Blocks enough for every thread, none above MAX_BLOCK images.
        let block = n.div_ceil(rayon::current_num_threads()).clamp(1, MAX_BLOCK);
        x[..n * INPUT_LEN]
            .par_chunks(block * INPUT_LEN)
            .zip(out.par_chunks_mut(block * self.classes))
            .for_each(|(x, out)| {
                let taken = self.spare.lock().map(|mut s| s.pop()).unwrap_or(None);
                let mut buffers = taken.unwrap_or_default();
                self.block(x, &mut buffers, out);
                if let Ok(mut spare) = self.spare.lock() {
                    spare.push(buffers);
                }
            });
        out
    }

    /// The forward pass of one block of images `x` into `out` `[n, classes]`.
    fn block(&self, x: &[f32], b: &mut Block, out: &mut [f32]) {
        let n = x.len() / INPUT_LEN;
        let [c1, c2] = self.channels;
        b.input.resize(x.len(), 0.0);
        transpose_images(x, COLOURS, SIZE * SIZE, &mut b.input);
        patches(&b.input, n, SIZE, COLOURS, &mut b.cols1);
        affine_relu(&b.cols1, &self.w1, &self.b1, false, &mut b.a1);
        max_pool(&b.a1, SIZE, c1, &mut b.pooled1, &mut b.from);
        b.conv2
            .forward_relu_with(&b.pooled1, SIZE / 2, &self.w2, &self.b2, &mut b.a2);
        max_pool(&b.a2, SIZE / 2, c2, &mut b.pooled2, &mut b.from);
        // The module flattens channel-major.
        b.flat.resize(n * (SIZE / 4) * (SIZE / 4) * c2, 0.0);
        transpose_images(&b.pooled2, (SIZE / 4) * (SIZE / 4), c2, &mut b.flat);
        affine_relu(&b.flat, &self.wd, &self.bd, false, &mut b.hidden);
        product(
            Strided::dense(&b.hidden, self.dense),
            Strided::dense(&self.wo, self.classes),
            out,
            false,
        );
        for row in out.chunks_exact_mut(self.classes) {
            for (z, bias) in row.iter_mut().zip(&self.bo) {
                *z += bias;
            }
        }
    }
}

/// One block's buffers: inputs channels-last, patches, activations, poolings.
#[derive(Default)]
struct Block {
    input: Vec<f32>,
    cols1: Vec<f32>,
    a1: Vec<f32>,
    /// Where each maximum came from: the pooling writes it, the forward pass has no use for it.
    from: Vec<u8>,
    pooled1: Vec<f32>,
    /// The second convolution (Winograd's), with its buffers.
    conv2: Conv3x3,
    a2: Vec<f32>,
    pooled2: Vec<f32>,
    flat: Vec<f32>,
    hidden: Vec<f32>,
}

/// Whether `device` is the plain CPU device (burn's flex backend, without autodiff): where the
/// host forward answers.
pub fn plain_cpu(device: &Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Flex(_))
}

/// A cnn as inference holds it on the plain CPU device: burn's module (its weights, autodiff,
/// other devices) beside the host copy of its weights, which answers [`Trainable::logits`].
#[derive(Debug)]
pub struct CnnModel {
    module: Box<dyn Trainable>,
    host: Arc<HostCnn>,
}

impl CnnModel {
    /// `module`, a cnn on the plain CPU device holding `weights`, answering through the host.
    pub fn new(module: Box<dyn Trainable>, weights: &Weights) -> Result<Self> {
        Ok(Self {
            module,
            host: Arc::new(HostCnn::new(weights)?),
        })
    }
}

impl Trainable for CnnModel {
    fn logits(&self, input: Tensor<2>) -> Tensor<2> {
        let device = input.device();
        let [n, width] = input.dims();
        if width != INPUT_LEN || input.dtype() != DType::F32 || !plain_cpu(&device) {
            return self.module.logits(input);
        }
        match read_f32(input.clone()) {
            Ok(x) => {
                let logits = self.host.logits(&x);
                Tensor::from_data(TensorData::new(logits, [n, self.host.classes]), &device)
            }
            Err(_) => self.module.logits(input),
        }
    }
    fn answers_on_host(&self) -> bool {
        // Made only on the plain CPU device; moved elsewhere, it becomes burn's module.
        true
    }
    fn boxed_clone(&self) -> Box<dyn Trainable> {
        Box::new(Self {
            module: self.module.boxed_clone(),
            host: self.host.clone(),
        })
    }
    fn load(&self, weights: &Weights) -> Result<Box<dyn Trainable>> {
        Ok(Box::new(Self::new(self.module.load(weights)?, weights)?))
    }
    fn weights(&self) -> Result<Weights> {
        self.module.weights()
    }
    fn parameters(&self) -> Vec<(String, Vec<usize>, Tensor<1>)> {
        self.module.parameters()
    }
    fn track(&self) -> Box<dyn Trainable> {
        self.module.track()
    }
    fn update(&self, grads: &Gradients, update: &mut UpdateFn<'_>) -> Box<dyn Trainable> {
        self.module.update(grads, update)
    }
    fn to_device(&self, device: &Device) -> Box<dyn Trainable> {
        let module = self.module.to_device(device);
        if plain_cpu(device) {
            Box::new(Self {
                module,
                host: self.host.clone(),
            })
        } else {
            module
        }
    }
    fn valid(&self) -> Box<dyn Trainable> {
        self.boxed_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cnn::{Cnn, DENSE, init_weights};
    use crate::model::{Arch, Model, ModelConfig, load_weights};
    use burn::tensor::activation::softmax;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn images(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n * INPUT_LEN)
            .map(|_| rng.random_range(0.0..1.0))
            .collect()
    }

    /// The largest difference between `a` and `b`, relative to `b`'s largest magnitude.
    fn relative_difference(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        diff / scale
    }

    #[test]
    fn the_host_forward_gives_burns_logits() {
        let device = Device::flex();
        let classes = 7;
        let weights = init_weights(classes, 11);
        let burn = load_weights(Cnn::new(classes, &device), &weights).unwrap();
        let host = HostCnn::new(&weights).unwrap();
        // One image, a pair, a block that is not a multiple of anything, and several blocks
        // with a ragged last one; twice, so that kept buffers are reused.
        for n in [1, 2, 7, 33, 7, 1] {
            let x = images(n, n as u64);
            let expected = read_f32(burn.forward(Tensor::from_data(
                TensorData::new(x.clone(), [n, INPUT_LEN]),
                &device,
            )))
            .unwrap();
            let got = host.logits(&x);
            assert_eq!(got.len(), n * classes);
            let diff = relative_difference(&got, &expected);
            assert!(diff <= 1e-4, "n = {n}: logits differ by {diff} (relative)");
        }
    }

    /// The cnn of `classes` as `predict`, `eval` and `serve` load it, on `device`.
    fn loaded(weights: &Weights, device: &Device) -> Model {
        let arch = Arch::from_flag("cnn").unwrap();
        let names = (0..weights.classes()).map(|c| c.to_string()).collect();
        let config = ModelConfig::of(arch, DENSE, names);
        Model::from_weights(&config, weights, device).unwrap()
    }

    #[test]
    fn a_cnn_on_the_cpu_answers_through_the_host_and_agrees_with_burn() {
        let device = Device::flex();
        let weights = init_weights(5, 4);
        let model = loaded(&weights, &device);
        // The copy each request or epoch works on too.
        for model in [model.clone(), model] {
            assert!(model.answers_on_host(), "{model:?}");
            let burn = load_weights(Cnn::new(5, &device), &weights).unwrap();
            let x = Tensor::<2>::from_data(TensorData::new(images(3, 9), [3, INPUT_LEN]), &device);
            let expected = read_f32(softmax(burn.forward(x.clone()), 1)).unwrap();
            let got = read_f32(model.probabilities(x)).unwrap();
            assert!(relative_difference(&got, &expected) <= 1e-4);
        }
    }

    #[test]
    fn under_autodiff_the_cnn_is_burns_module() {
        // `explain` differentiates through burn's forward.
        let device = Device::flex().autodiff();
        let model = loaded(&init_weights(3, 2), &device);
        assert!(!model.answers_on_host(), "{model:?}");
        let x = Tensor::<2>::ones([2, INPUT_LEN], &device).require_grad();
        let grads = model.forward(x.clone()).sum().backward();
        assert!(x.grad(&grads).is_some(), "the input has a gradient");
    }

    #[test]
    fn a_missing_or_misshapen_array_is_named() {
        let mut weights = init_weights(4, 1);
        weights.arrays[2].shape = vec![64, 32, 9];
        let err = HostCnn::new(&weights).unwrap_err().to_string();
        assert!(
            err.contains("conv2.weight") && err.contains("shape"),
            "{err}"
        );
        weights.arrays[2].shape = vec![64, 32, 3, 3];
        weights.arrays.remove(5);
        let err = HostCnn::new(&weights).unwrap_err().to_string();
        assert!(err.contains("dense.bias"), "{err}");
    }
}
