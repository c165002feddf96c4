//! The CNN's training step on the CPU, derived by hand, as [`crate::train::cpu::sharded`] is for the MLP.
//!
//! Why: through burn's autodiff the CNN trained at a fifth of PyTorch's speed on the CPU
//! (`bench/README.md`): most of a step went to burn-flex rearranging patches for its
//! convolutions, forward and backward, one operation and one core at a time. Here the first
//! convolution is one matrix product over a whole chunk of the batch (`im2col`, images kept
//! channels-last so that a patch is a few contiguous runs), and the second, eleven times its
//! arithmetic, Winograd's F(2x2, 3x3) ([`Conv3x3`]: 16 products of a quarter of the size);
//! max-pooling remembers where each maximum came from, and the backward passes reuse the
//! forward's patches and transformed tiles. The batch is cut into
//! one chunk per core for the convolutions; the dense layers, whose products are large enough to
//! share, run on the whole batch; then Adam ([`fused::adam_apply`], the arithmetic of
//! [`crate::train::adam::update`]).
//!
//! The network and the arithmetic are [`cnn::Cnn`]'s and [`crate::train::autodiff`]'s: the weights keep
//! the module's names and layouts, so checkpoints, `--resume` and every other command are
//! unchanged, and the step is tested against the autodiff one. Only sums are taken in another
//! order. On a GPU the CNN still trains through autodiff.

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::data::preprocess::INPUT_LEN;
use crate::kernels::conv::{TAPS, affine_relu, patches};
use crate::kernels::layout::{Toward, column_sums, relayout_kernel, transpose_images};
use crate::kernels::matmul::{Strided, product};
use crate::kernels::pool::{max_pool, unpool};
use crate::kernels::winograd::Conv3x3;
use crate::model::cnn::{self, CnnArchitecture};
use crate::model::{Architecture, Model, StepStats, Weights};
use crate::train::adam::{AdamConfig, AdamState};
use crate::train::cpu::fused;
use crate::train::step::{AdamClock, Batch, ParamState, TrainStep};

/// Side of the input pictures.
const SIZE: usize = 32;
/// Colour channels of the input.
const COLOURS: usize = 3;
/// Channels of the two convolutions (as [`cnn`]'s).
const C1: usize = 32;
const C2: usize = 64;
/// Values per image after the second pooling.
const FLAT: usize = C2 * 8 * 8;

/// Indices of the parameters in [`cnn::parameter_shapes`]'s order.
const CONV1_W: usize = 0;
const CONV1_B: usize = 1;
const CONV2_W: usize = 2;
const CONV2_B: usize = 3;
const DENSE_W: usize = 4;
const DENSE_B: usize = 5;
const OUTPUT_W: usize = 6;
const OUTPUT_B: usize = 7;

/// The CNN and its optimizer while training on the CPU.
pub struct CnnCpuTrainer {
    params: Vec<ParamState>,
    /// One per chunk of the batch, kept from step to step: buffers of several MiB that would
    /// otherwise be mapped, faulted in and zeroed again at every step.
    workspaces: Vec<Workspace>,
    /// The dense layers' values and gradients, kept from step to step as well.
    dense: Dense,
    classes: usize,
    adam: AdamClock,
    /// Where the model and the step's statistics are handed out.
    device: Device,
}

/// Most images in one chunk of the convolutions.
const CHUNK: usize = 16;

impl CnnCpuTrainer {
    /// The CNN of `classes` outputs from `weights` and Adam's `state`, on the host, handing its
    /// model and statistics out on `device`. An error names an array that is missing or of the
    /// wrong shape.
    pub fn new(
        classes: usize,
        weights: &Weights,
        state: &AdamState,
        config: AdamConfig,
        device: &Device,
    ) -> Result<Self> {
        let params = ParamState::load_all(&cnn::parameter_shapes(classes), weights, state)?;
        Ok(Self {
            params,
            workspaces: Vec::new(),
            dense: Dense::default(),
            classes,
            adam: AdamClock {
                config,
                step: state.step,
            },
            device: device.clone(),
        })
    }

    /// One step of Adam on `n` images `x` (rows of 3072) with one-hot `targets`, on the host.
    fn step_host(&mut self, x: &[f32], targets: &[f32], n: usize) -> StepStats {
        let conv = self.gradients(x, targets, n);
        let lr_t = self.adam.tick();
        let config = self.adam.config;
        let d = &self.dense;
        let grads: [&[f32]; 8] = [
            &conv.w1,
            &conv.b1,
            &conv.w2,
            &conv.b2,
            &d.d_dense_w,
            &d.d_dense_b,
            &d.d_output_w,
            &d.d_output_b,
        ];
        for (p, g) in self.params.iter_mut().zip(grads) {
            // Blocks of a parameter are updated on all cores; Adam is elementwise.
            const BLOCK: usize = 1 << 14;
            p.value
                .par_chunks_mut(BLOCK)
                .zip(g.par_chunks(BLOCK))
                .zip(p.m.par_chunks_mut(BLOCK))
                .zip(p.v.par_chunks_mut(BLOCK))
                .for_each(|(((p, g), m), v)| fused::adam_apply(p, g, m, v, lr_t, config));
        }
        let device = &self.device;
        StepStats {
            loss_sum: Tensor::from_data(TensorData::new(vec![d.loss_sum], [1]), device),
            correct: Tensor::from_data(TensorData::new(vec![d.correct as i64], [1]), device),
        }
    }

    /// The gradient of the batch's mean cross-entropy for every parameter, the summed loss and
    /// the count classified right, for `n` images `x` (channel-major rows of 3072) and one-hot
    /// `targets`: the convolutions' gradients returned (in the module's layouts), the rest in
    /// [`Self::dense`].
    fn gradients(&mut self, x: &[f32], targets: &[f32], n: usize) -> ConvGradients {
        let params = &self.params;
        let p = |i: usize| params[i].value.as_slice();
        let w1 = relayout_kernel(p(CONV1_W), C1, COLOURS, Toward::Patches);

        // The convolutions, a chunk of images per core, and none above CHUNK images: a chunk's
        // activations pass from layer to layer through the core's cache (`step_bench 128`: 2-3%
        // faster than two chunks of 64).
        let count = rayon::current_num_threads()
            .max(n.div_ceil(CHUNK))
            .clamp(1, n.max(1));
        let chunks: Vec<std::ops::Range<usize>> = (0..count)
            .map(|k| k * n / count..(k + 1) * n / count)
            .collect();
        self.workspaces.resize_with(count, Workspace::default);
        let workspaces = &mut self.workspaces;
        workspaces.par_iter_mut().zip(&chunks).for_each(|(w, r)| {
            let x = &x[r.start * INPUT_LEN..r.end * INPUT_LEN];
            w.forward(x, &w1, p(CONV1_B), p(CONV2_W), p(CONV2_B));
        });
        let dense = &mut self.dense;
        dense.flat.resize(n * FLAT, 0.0);
        for (w, r) in workspaces.iter().zip(&chunks) {
            w.flat(&mut dense.flat[r.start * FLAT..r.end * FLAT]);
        }

        // The dense layers on the whole batch.
        dense.run(
            targets,
            self.classes,
            [p(DENSE_W), p(DENSE_B), p(OUTPUT_W), p(OUTPUT_B)],
        );

        // Back through the convolutions, chunk by chunk; their gradients summed in chunk order.
        workspaces.par_iter_mut().zip(&chunks).for_each(|(w, r)| {
            w.backward(&dense.d_flat[r.start * FLAT..r.end * FLAT]);
        });
        let mut conv = ConvGradients::zeros();
        for w in workspaces.iter() {
            conv.add(&w.grads);
        }
        ConvGradients {
            w1: relayout_kernel(&conv.w1, C1, COLOURS, Toward::Kernel),
            ..conv
        }
    }

    /// The weights and Adam's state, to be saved.
    pub fn state(&self) -> (Weights, AdamState) {
        ParamState::save_all(&self.params, self.adam.step)
    }
}

impl TrainStep for CnnCpuTrainer {
    fn step(&mut self, batch: Batch) -> Result<StepStats> {
        // Straight from the host's rows (of 3072: this step's stride): no tensor in between.
        Ok(self.step_host(&batch.inputs, &batch.one_hot(), batch.len()))
    }
    fn model(&self) -> Result<Model> {
        // As every command loads a cnn: with its host forward on the CPU, through which the test
        // pass of every epoch runs.
        let weights = self.state().0;
        let model = CnnArchitecture.load(cnn::DENSE, &weights, &self.device)?;
        Ok(Model::from_module(model))
    }
    fn state(&self) -> Result<(Weights, AdamState)> {
        Ok(CnnCpuTrainer::state(self))
    }
}

/// One chunk's convolutions: what the forward pass computed, kept for the backward pass, and the
/// backward pass's buffers and gradients.
#[derive(Default)]
struct Workspace {
    /// The input channels-last `[n, 32, 32, 3]`.
    input: Vec<f32>,
    /// Patches of the input `[n * 1024, 27]`.
    cols1: Vec<f32>,
    /// First convolution after ReLU, `[n, 32, 32, 32]` channels-last.
    a1: Vec<f32>,
    from1: Vec<u8>,
    pooled1: Vec<f32>,
    /// The second convolution (by Winograd's F(2x2, 3x3)), with what its backward pass needs.
    conv2: Conv3x3,
    /// Second convolution after ReLU, `[n, 16, 16, 64]`.
    a2: Vec<f32>,
    from2: Vec<u8>,
    /// Second pooling `[n, 8, 8, 64]`.
    pooled2: Vec<f32>,
    /// Gradients of the values above, in the backward pass.
    d_pooled2: Vec<f32>,
    d2: Vec<f32>,
    d_pooled1: Vec<f32>,
    d1: Vec<f32>,
    grads: ConvGradients,
}

impl Workspace {
    /// Both convolutions and poolings of the images `x` (rows of 3072, channel-major); `w1` is
    /// the first kernel as [`relayout_kernel`] lays it out for patches, `w2` the second as the
    /// module holds it.
    fn forward(&mut self, x: &[f32], w1: &[f32], b1: &[f32], w2: &[f32], b2: &[f32]) {
        let n = x.len() / INPUT_LEN;
        self.input.resize(x.len(), 0.0);
        transpose_images(x, COLOURS, SIZE * SIZE, &mut self.input);
        patches(&self.input, n, SIZE, COLOURS, &mut self.cols1);
        affine_relu(&self.cols1, w1, b1, false, &mut self.a1);
        max_pool(&self.a1, SIZE, C1, &mut self.pooled1, &mut self.from1);
        self.conv2
            .forward_relu(&self.pooled1, SIZE / 2, w2, b2, &mut self.a2);
        max_pool(&self.a2, SIZE / 2, C2, &mut self.pooled2, &mut self.from2);
    }

    /// The pooled features in the module's flatten order (channel-major), into `flat`
    /// `[n, 4096]`.
    fn flat(&self, flat: &mut [f32]) {
        transpose_images(&self.pooled2, 64, C2, flat);
    }

    /// The convolutions' gradients ([`Self::grads`]) from the gradient of [`Self::flat`]
    /// `d_flat`.
    fn backward(&mut self, d_flat: &[f32]) {
        self.d_pooled2.resize(d_flat.len(), 0.0);
        transpose_images(d_flat, C2, 64, &mut self.d_pooled2);
        let (from2, a2) = (&self.from2, &self.a2);
        unpool(&self.d_pooled2, from2, a2, SIZE / 2, C2, &mut self.d2);
        let grads = &mut self.grads;
        let (d2, d_pooled1) = (&self.d2, &mut self.d_pooled1);
        self.conv2.backward(d2, &mut grads.w2, Some(d_pooled1));
        unpool(
            &self.d_pooled1,
            &self.from1,
            &self.a1,
            SIZE,
            C1,
            &mut self.d1,
        );
        grads.w1.resize(TAPS * COLOURS * C1, 0.0);
        product(
            Strided::dense(&self.cols1, TAPS * COLOURS).t(),
            Strided::dense(&self.d1, C1),
            &mut grads.w1,
            false,
        );
        grads.b1 = column_sums(&self.d1, C1);
        grads.b2 = column_sums(&self.d2, C2);
    }
}

/// The convolutions' gradients: the first kernel's laid out for patches ([`relayout_kernel`]),
/// the second's as the module holds it.
#[derive(Default)]
struct ConvGradients {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

impl ConvGradients {
    fn zeros() -> Self {
        Self {
            w1: vec![0.0; TAPS * COLOURS * C1],
            b1: vec![0.0; C1],
            w2: vec![0.0; TAPS * C1 * C2],
            b2: vec![0.0; C2],
        }
    }

    fn add(&mut self, other: &Self) {
        for (a, b) in [
            (&mut self.w1, &other.w1),
            (&mut self.b1, &other.b1),
            (&mut self.w2, &other.w2),
            (&mut self.b2, &other.b2),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }
}

/// The dense layers forward and back on the whole batch, with the loss: their inputs, values
/// and gradients, in buffers kept from step to step.
#[derive(Default)]
struct Dense {
    /// The flattened features, `[N, 4096]` (written by the convolutions' chunks).
    flat: Vec<f32>,
    hidden: Vec<f32>,
    logits: Vec<f32>,
    d_logits: Vec<f32>,
    d_hidden: Vec<f32>,
    d_dense_w: Vec<f32>,
    d_dense_b: Vec<f32>,
    d_output_w: Vec<f32>,
    d_output_b: Vec<f32>,
    /// The gradient of the flattened features, `[N, 4096]`.
    d_flat: Vec<f32>,
    loss_sum: f32,
    correct: usize,
}

impl Dense {
    /// From [`Self::flat`] and one-hot `targets` `[N, classes]`, with the dense layers' weight,
    /// bias, output weight and output bias: every value above.
    fn run(&mut self, targets: &[f32], classes: usize, [wd, bd, wo, bo]: [&[f32]; 4]) {
        let n = self.flat.len() / FLAT;
        let width = bd.len();
        let flat = &self.flat;
        affine_relu(flat, wd, bd, true, &mut self.hidden);
        let hidden = &self.hidden;
        self.logits.resize(n * classes, 0.0);
        product(
            Strided::dense(hidden, width),
            Strided::dense(wo, classes),
            &mut self.logits,
            false,
        );
        // Softmax cross-entropy, mean over the batch: d logits = (softmax - target) / N.
        let (mut loss_sum, mut correct) = (0.0f32, 0);
        self.d_logits.resize(self.logits.len(), 0.0);
        for ((z, t), d) in self
            .logits
            .chunks_exact_mut(classes)
            .zip(targets.chunks_exact(classes))
            .zip(self.d_logits.chunks_exact_mut(classes))
        {
            for (z, b) in z.iter_mut().zip(bo) {
                *z += b;
            }
            let first_max =
                |v: &[f32]| (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best });
            if first_max(z) == first_max(t) {
                correct += 1;
            }
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_sum = z.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
            let total: f32 = t.iter().sum();
            for ((z, t), d) in z.iter().zip(t).zip(d.iter_mut()) {
                let log_p = z - max - log_sum;
                loss_sum -= t * log_p;
                *d = (log_p.exp() * total - t) / n as f32;
            }
        }
        let d_logits = &self.d_logits;
        self.d_output_w.resize(width * classes, 0.0);
        product(
            Strided::dense(hidden, width).t(),
            Strided::dense(d_logits, classes),
            &mut self.d_output_w,
            false,
        );
        self.d_hidden.resize(n * width, 0.0);
        product(
            Strided::dense(d_logits, classes),
            Strided::dense(wo, classes).t(),
            &mut self.d_hidden,
            false,
        );
        for (d, h) in self.d_hidden.iter_mut().zip(hidden) {
            if *h <= 0.0 {
                *d = 0.0;
            }
        }
        let d_hidden = &self.d_hidden;
        self.d_dense_w.resize(FLAT * width, 0.0);
        product(
            Strided::dense(flat, FLAT).t(),
            Strided::dense(d_hidden, width),
            &mut self.d_dense_w,
            true,
        );
        self.d_flat.resize(n * FLAT, 0.0);
        product(
            Strided::dense(d_hidden, width),
            Strided::dense(wd, width).t(),
            &mut self.d_flat,
            true,
        );
        self.d_dense_b = column_sums(d_hidden, width);
        self.d_output_b = column_sums(d_logits, classes);
        (self.loss_sum, self.correct) = (loss_sum, correct);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{max_difference, random_batch, read_f32};
    use crate::train::autodiff::AutodiffTrainer;

    const CLASSES: usize = 10;

    fn hand_steps(
        weights: &Weights,
        state: &AdamState,
        steps: std::ops::Range<u64>,
    ) -> (Weights, AdamState, Vec<f32>) {
        let device = Device::flex();
        let mut trainer =
            CnnCpuTrainer::new(CLASSES, weights, state, AdamConfig::new(0.01), &device).unwrap();
        let mut losses = Vec::new();
        for step in steps {
            let (x, y, _) = random_batch(6, CLASSES, step, &device);
            let (x, y) = (read_f32(x).unwrap(), read_f32(y).unwrap());
            let stats = trainer.step_host(&x, &y, 6);
            losses.push(read_f32(stats.loss_sum).unwrap()[0]);
        }
        let (w, s) = trainer.state();
        (w, s, losses)
    }

    /// [`hand_steps`] through burn's autodiff, from fresh moments.
    fn auto_steps(
        weights: &Weights,
        steps: std::ops::Range<u64>,
    ) -> (Weights, AdamState, Vec<f32>) {
        let device = Device::flex();
        let zeros = AdamState::zeros_like(weights);
        let model = cnn::Cnn::new(CLASSES, &device);
        let mut trainer = AutodiffTrainer::new(
            Box::new(model),
            weights,
            &zeros,
            AdamConfig::new(0.01),
            &device,
        )
        .unwrap();
        let mut losses = Vec::new();
        for step in steps {
            let (x, y, l) = random_batch(6, CLASSES, step, &device);
            losses.push(read_f32(trainer.step(x, y, l).loss_sum).unwrap()[0]);
        }
        let (w, s) = trainer.state().unwrap();
        (w, s, losses)
    }

    #[test]
    fn the_hand_derived_step_follows_burns_autodiff() {
        let start = cnn::init_weights(CLASSES, 7);
        let zeros = AdamState::zeros_like(&start);
        let (auto_w, auto_state, auto_losses) = auto_steps(&start, 1..5);
        let (hand_w, hand_state, hand_losses) = hand_steps(&start, &zeros, 1..5);
        assert_eq!(hand_state.step, 4);
        for (a, h) in auto_losses.iter().zip(&hand_losses) {
            assert!((a - h).abs() <= 1e-3 * a.abs(), "losses {a} and {h}");
        }
        // Sums taken in another order give rounding that Adam carries into the weights (it
        // divides by the root of small second moments), so the bound is a few steps' worth.
        let diff = max_difference(&auto_w, &hand_w);
        assert!(diff <= 1e-3, "weights differ by {diff}");
        assert!(max_difference(&auto_state.m, &hand_state.m) <= 1e-4);
        assert!(
            max_difference(&start, &hand_w) > 1e-2,
            "the steps moved the weights"
        );
    }

    #[test]
    fn the_first_gradient_is_burns_to_rounding() {
        // One step's gradients, before Adam magnifies their rounding: through the first moment,
        // which after one step is a tenth of the gradient.
        let start = cnn::init_weights(CLASSES, 3);
        let zeros = AdamState::zeros_like(&start);
        let (_, auto_state, _) = auto_steps(&start, 9..10);
        let (_, hand_state, _) = hand_steps(&start, &zeros, 9..10);
        for (a, h) in auto_state.m.arrays.iter().zip(&hand_state.m.arrays) {
            let scale = a.values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = a
                .values
                .iter()
                .zip(&h.values)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(scale > 0.0, "`{}` has a gradient", a.name);
            assert!(diff <= 1e-4 * scale, "`{}`: {diff} of {scale}", a.name);
        }
    }

    #[test]
    fn resuming_from_the_saved_state_is_exact() {
        let start = cnn::init_weights(CLASSES, 2);
        let zeros = AdamState::zeros_like(&start);
        let (w, s, _) = hand_steps(&start, &zeros, 1..5);
        let (half_w, half_s, _) = hand_steps(&start, &zeros, 1..3);
        let (again_w, again_s, _) = hand_steps(&half_w, &half_s, 3..5);
        assert_eq!((again_w, again_s), (w, s));
    }

    #[test]
    fn the_test_pass_answers_through_the_host_forward() {
        let device = Device::flex();
        let w = cnn::init_weights(CLASSES, 5);
        let zeros = AdamState::zeros_like(&w);
        let mut trainer =
            CnnCpuTrainer::new(CLASSES, &w, &zeros, AdamConfig::new(0.01), &device).unwrap();
        let (x, y, _) = random_batch(4, CLASSES, 1, &device);
        trainer.step_host(&read_f32(x.clone()).unwrap(), &read_f32(y).unwrap(), 4);
        let model = TrainStep::model(&trainer).unwrap();
        assert!(format!("{model:?}").contains("HostCnn"), "{model:?}");
        // The weights after the step, through burn's forward.
        let burn = read_f32(CnnCpuTrainer::model(&trainer).unwrap().forward(x.clone())).unwrap();
        let host = read_f32(model.forward(x)).unwrap();
        let scale = burn.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (b, h) in burn.iter().zip(&host) {
            assert!((b - h).abs() <= 1e-4 * scale, "logits {b} and {h}");
        }
    }

    #[test]
    fn a_wrong_shape_is_named() {
        let mut w = cnn::init_weights(CLASSES, 1);
        let zeros = AdamState::zeros_like(&w);
        w.arrays[OUTPUT_B].shape = vec![CLASSES + 1];
        let device = Device::flex();
        let err = CnnCpuTrainer::new(CLASSES, &w, &zeros, AdamConfig::new(0.01), &device)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("output.bias") && err.contains("shape"),
            "{err}"
        );
    }
}
