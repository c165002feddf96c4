//! The training step, with the first layer cut into shards that step on their own cores.
//!
//! Why: nearly all of a step's work is the first layer (`w1` is 3072 x 64 of the model's 197k
//! parameters): its product `input @ w1`, its gradient `input^T @ d_pre`, and Adam's update of
//! it. burn's CPU backend runs each operation on one core (its matmul goes parallel only above
//! ~7M multiply-adds, and elementwise operations never do), so at batch 32 one core idles.
//! Shard `k` owns a contiguous run of input features: those rows of `w1` and their Adam moments.
//! Each step, every shard multiplies its columns of the batch by its rows of `w1` on a thread of
//! its own; the parts are added, and the small rest of the network runs forward and backward
//! ([`beyond_first_product`]); then every shard computes its rows of `w1`'s gradient and updates
//! them, in parallel with Adam on the small parameters. On the CPU the gradient and Adam of a
//! shard are one fused operation that works through its rows a block at a time
//! ([`fused::first_layer_adam`]), and Adam on the small parameters is one pass
//! ([`fused::update_in_place`]). The arithmetic is that of [`Mlp::gradients`] and
//! [`adam::update`]; only the product's sum is taken in another order when there are several
//! shards (tested to agree; with one shard the weights are equal to the bit). Rows are the cut
//! because the product then splits into sums over long rows, and the gradient into tall blocks:
//! the shapes the matmul runs fastest on.
//!
//! On a GPU there is one shard (the device is parallel already) and burn's own operations.

use std::ops::Range;

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::data::preprocess::INPUT_LEN;
use crate::device::DeviceKind;
use crate::model::Architecture;
use crate::model::mlp::MlpArchitecture;
use crate::model::{
    MLP_PARAMETERS, Mlp, Model, StepStats, Weights, beyond_first_product, first_layer_gradient,
    read_f32,
};
use crate::train::adam::{AdamConfig, AdamState, Moments};
use crate::train::cpu::fused;
use crate::train::step::{AdamClock, Batch, ParamState, TrainStep};

/// A parameter and its Adam moments.
struct Trained<const D: usize> {
    value: Tensor<D>,
    moments: Moments<D>,
}

impl<const D: usize> Trained<D> {
    /// The parameter `value` with its moments `m` and `v`, from the host, all of `shape`.
    fn upload(value: &[f32], m: &[f32], v: &[f32], shape: [usize; D], device: &Device) -> Self {
        Self {
            value: Tensor::from_data(TensorData::new(value.to_vec(), shape), device),
            moments: Moments::upload(m, v, shape, device),
        }
    }

    fn update(&mut self, grad: Tensor<D>, lr_t: f64, config: AdamConfig) {
        fused::update_in_place(&mut self.value, grad, &mut self.moments, lr_t, config);
    }

    fn host(&self) -> Result<[Vec<f32>; 3]> {
        Ok([
            read_f32(self.value.clone())?,
            read_f32(self.moments.m.clone())?,
            read_f32(self.moments.v.clone())?,
        ])
    }
}

/// Rows `rows` of `w1`, trained by one thread.
struct Shard {
    rows: Range<usize>,
    w1: Trained<2>,
}

impl Shard {
    /// Computes this shard's rows of `w1`'s gradient from the batch `input` and the hidden
    /// layer's `d_pre`, and updates them: on the CPU fused, block by block
    /// ([`fused::first_layer_adam`]); elsewhere as [`first_layer_gradient`] and [`adam::update`].
    fn learn(&mut self, input: &Tensor<2>, d_pre: &Tensor<2>, lr_t: f64, config: AdamConfig) {
        let w1 = &mut self.w1;
        if fused::on_flex(&w1.value) {
            // Cloned before the weights are moved out. The same calls with the clones inside the
            // closure measured 25% slower in whole runs (43k against 57k samples/s at batch 32,
            // interleaved), though not in `examples/step_bench`; the cause was not found.
            let first_row = self.rows.start;
            let (input, d_pre) = (input.clone(), d_pre.clone());
            fused::replace_with(&mut w1.value, &mut w1.moments, move |value, m, v| {
                fused::first_layer_adam(input, d_pre, value, m, v, first_row, lr_t, config)
            });
        } else {
            let columns = input.clone().slice_dim(1, self.rows.clone());
            w1.update(first_layer_gradient(columns, d_pre.clone()), lr_t, config);
        }
    }
}

/// `b1`, `w2` and `b2` in one flat tensor, in that order: 714 numbers at the default width, which
/// Adam updates with one set of operations instead of three (on tensors this small an operation
/// costs what its call costs, whatever its size).
struct Head {
    flat: Trained<1>,
    hidden: usize,
    classes: usize,
}

impl Head {
    /// `b1`, `w2` and `b2`, in that order.
    fn new(parts: &[ParamState], device: &Device) -> Self {
        let join = |of: fn(&ParamState) -> &Vec<f32>| -> Vec<f32> {
            parts.iter().flat_map(|p| of(p).iter().copied()).collect()
        };
        let values = join(|p| &p.value);
        let shape = [values.len()];
        Self {
            flat: Trained::upload(&values, &join(|p| &p.m), &join(|p| &p.v), shape, device),
            hidden: parts[0].value.len(),
            classes: parts[2].value.len(),
        }
    }

    fn ranges(&self) -> [Range<usize>; 3] {
        let (h, c) = (self.hidden, self.classes);
        [0..h, h..h + h * c, h + h * c..h + h * c + c]
    }

    /// `b1`, `w2`, `b2` of `flat` (the values or a moment).
    fn split(&self, flat: &Tensor<1>) -> (Tensor<1>, Tensor<2>, Tensor<1>) {
        let [b1, w2, b2] = self.ranges();
        (
            flat.clone().slice(b1),
            flat.clone().slice(w2).reshape([self.hidden, self.classes]),
            flat.clone().slice(b2),
        )
    }

    fn update(
        &mut self,
        d_b1: Tensor<1>,
        d_w2: Tensor<2>,
        d_b2: Tensor<1>,
        lr_t: f64,
        c: AdamConfig,
    ) {
        let d_w2 = d_w2.reshape([self.hidden * self.classes]);
        self.flat
            .update(Tensor::cat(vec![d_b1, d_w2, d_b2], 0), lr_t, c);
    }

    /// `b1`, `w2` and `b2` with their moments, on the host.
    fn host(&self) -> Result<[ParamState; 3]> {
        let [value, m, v] = self.flat.host()?;
        let (h, c) = (self.hidden, self.classes);
        let part = |name: &str, shape: Vec<usize>, at: Range<usize>| ParamState {
            name: name.to_string(),
            shape,
            value: value[at.clone()].to_vec(),
            m: m[at.clone()].to_vec(),
            v: v[at].to_vec(),
        };
        let [b1, w2, b2] = self.ranges();
        let [_, b1_name, w2_name, b2_name] = MLP_PARAMETERS;
        Ok([
            part(b1_name, vec![h], b1),
            part(w2_name, vec![h, c], w2),
            part(b2_name, vec![c], b2),
        ])
    }
}

/// The model and its optimizer while training.
pub struct ShardedTrainer {
    adam: AdamClock,
    shards: Vec<Shard>,
    head: Head,
}

impl ShardedTrainer {
    /// The model `weights` with Adam's `state`, on `device`, with `w1` cut into `shards` row
    /// blocks (at least one). An error names an array of the MLP that is missing.
    pub fn new(
        weights: &Weights,
        state: &AdamState,
        config: AdamConfig,
        shards: usize,
        device: &Device,
    ) -> Result<Self> {
        let hidden = weights.get(MLP_PARAMETERS[1])?.values.len();
        let shapes = MlpArchitecture.parameter_shapes(hidden, weights.classes());
        let params = ParamState::load_all(&shapes, weights, state)?;
        let (w1, head) = (&params[0], &params[1..]);
        let count = shards.clamp(1, INPUT_LEN);
        let shards = (0..count)
            .map(|k| {
                let rows = k * INPUT_LEN / count..(k + 1) * INPUT_LEN / count;
                let flat = rows.start * hidden..rows.end * hidden;
                let shape = [rows.len(), hidden];
                let (w, m, v) = (&w1.value[flat.clone()], &w1.m[flat.clone()], &w1.v[flat]);
                let w1 = Trained::upload(w, m, v, shape, device);
                Shard { rows, w1 }
            })
            .collect();
        Ok(Self {
            adam: AdamClock {
                config,
                step: state.step,
            },
            shards,
            head: Head::new(head, device),
        })
    }

    /// How many shards `w1` is cut into.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// One step of Adam on the batch `input` `[N, >= 3072]` (columns past 3072 are ignored) with
    /// one-hot `targets` and `labels`.
    pub fn step(
        &mut self,
        input: Tensor<2>,
        targets: Tensor<2>,
        labels: Tensor<1, Int>,
    ) -> StepStats {
        let lr_t = self.adam.tick();
        let config = self.adam.config;
        let columns = |rows: &Range<usize>| input.clone().slice_dim(1, rows.clone());
        let products: Vec<Tensor<2>> = self
            .shards
            .par_iter()
            .map(|s| columns(&s.rows).matmul(s.w1.value.clone()))
            .collect();
        // There is always a shard; zeros only keep this total without a panic path.
        let hidden = self.head.hidden;
        let product = products
            .into_iter()
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::zeros([input.dims()[0], hidden], &input.device()));
        let (b1, w2, b2) = self.head.split(&self.head.flat.value);
        let rest = beyond_first_product(product, b1, w2, b2, targets, labels);
        let d_pre = rest.d_pre;
        let head = &mut self.head;
        rayon::join(
            || {
                self.shards
                    .par_iter_mut()
                    .for_each(|s| s.learn(&input, &d_pre, lr_t, config))
            },
            || head.update(rest.d_b1, rest.d_w2, rest.d_b2, lr_t, config),
        );
        rest.stats
    }

    /// One of `w1`, its first or its second moment, whole again.
    fn whole_w1(&self, part: fn(&Trained<2>) -> &Tensor<2>) -> Tensor<2> {
        Tensor::cat(self.shards.iter().map(|s| part(&s.w1).clone()).collect(), 0)
    }

    /// The model as it stands, on the device.
    pub fn model(&self) -> Mlp {
        let (b1, w2, b2) = self.head.split(&self.head.flat.value);
        Mlp::from_parameters(self.whole_w1(|t| &t.value), b1, w2, b2)
    }

    /// The weights and Adam's state, copied to the host to be saved.
    pub fn state(&self) -> Result<(Weights, AdamState)> {
        let w1 = ParamState {
            name: MLP_PARAMETERS[0].to_string(),
            shape: vec![INPUT_LEN, self.head.hidden],
            value: read_f32(self.whole_w1(|t| &t.value))?,
            m: read_f32(self.whole_w1(|t| &t.moments.m))?,
            v: read_f32(self.whole_w1(|t| &t.moments.v))?,
        };
        let [b1, w2, b2] = self.head.host()?;
        Ok(ParamState::save_all(&[w1, b1, w2, b2], self.adam.step))
    }
}

/// How many shards to cut `w1` into on a device of `kind`: one per core on the CPU, one on a
/// GPU.
/// The distance, in floats, from one image's row to the next in the batches this step takes:
/// the image and 16 zeros. Why: with rows exactly 3072 floats (12 KiB, a multiple of 4 KiB)
/// apart, the strided reads of the first layer's gradient (`input^T @ d_pre`) fall into the same
/// few cache sets, and that product takes twice as long. Nothing reads the padding.
pub const ROW_STRIDE: usize = INPUT_LEN + 16;

impl TrainStep for ShardedTrainer {
    fn row_stride(&self) -> usize {
        ROW_STRIDE
    }
    fn step(&mut self, batch: Batch) -> Result<StepStats> {
        let (input, targets, labels) = batch.tensors(&self.head.flat.value.device());
        Ok(ShardedTrainer::step(self, input, targets, labels))
    }
    fn model(&self) -> Result<Model> {
        Ok(Model::from_module(Box::new(ShardedTrainer::model(self))))
    }
    fn state(&self) -> Result<(Weights, AdamState)> {
        ShardedTrainer::state(self)
    }
}

pub fn shards_for(kind: DeviceKind) -> usize {
    match kind {
        DeviceKind::Cpu => rayon::current_num_threads(),
        DeviceKind::Gpu => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::preprocess::INPUT_LEN;
    use crate::model::max_difference;
    use crate::train::adam;

    const CLASSES: usize = 10;

    fn batch(n: usize, seed: u64, device: &Device) -> (Tensor<2>, Tensor<2>, Tensor<1, Int>) {
        crate::model::random_batch(n, CLASSES, seed, device)
    }

    /// The plain loop: whole-model gradients ([`Mlp::gradients`], itself tested against
    /// autodiff) and Adam on each whole parameter.
    fn plain_steps(weights: &Weights, steps: usize, config: AdamConfig) -> Weights {
        let device = Device::flex();
        let mut model = Mlp::from_weights(weights, &device).unwrap();
        let hidden = model.hidden_width();
        let zeros = |shape: &[usize]| vec![0.0; shape.iter().product()];
        let moments =
            |shape: [usize; 2]| Moments::upload(&zeros(&shape), &zeros(&shape), shape, &device);
        let mut w1m = moments([INPUT_LEN, hidden]);
        let mut w2m = moments([hidden, CLASSES]);
        let mut b1m = Moments::upload(&zeros(&[hidden]), &zeros(&[hidden]), [hidden], &device);
        let mut b2m = Moments::upload(&zeros(&[CLASSES]), &zeros(&[CLASSES]), [CLASSES], &device);
        for step in 1..=steps {
            let (x, y, l) = batch(8, step as u64, &device);
            let (g, _) = model.gradients(x, y, l);
            let lr_t = config.step_size(step as u64);
            let (w1, b1, w2, b2) = model.parameters();
            model = Mlp::from_parameters(
                adam::update(w1, g.w1, &mut w1m, lr_t, config),
                adam::update(b1, g.b1, &mut b1m, lr_t, config),
                adam::update(w2, g.w2, &mut w2m, lr_t, config),
                adam::update(b2, g.b2, &mut b2m, lr_t, config),
            );
        }
        model.weights().unwrap()
    }

    fn sharded_steps(
        weights: &Weights,
        steps: usize,
        config: AdamConfig,
        shards: usize,
    ) -> (Weights, AdamState, usize) {
        let device = Device::flex();
        let mut trainer = ShardedTrainer::new(
            weights,
            &AdamState::zeros_like(weights),
            config,
            shards,
            &device,
        )
        .unwrap();
        for step in 1..=steps {
            let (x, y, l) = batch(8, step as u64, &device);
            trainer.step(x, y, l);
        }
        let (w, s) = trainer.state().unwrap();
        (w, s, trainer.shard_count())
    }

    #[test]
    fn sharded_training_follows_the_plain_loop() {
        let config = AdamConfig::new(0.01);
        let start = Weights::init(12, CLASSES, 5);
        let plain = plain_steps(&start, 6, config);
        for shards in [1, 2, 3, 7] {
            let (sharded, state, count) = sharded_steps(&start, 6, config, shards);
            assert_eq!(count, shards);
            assert_eq!(state.step, 6);
            // One shard is the plain loop's arithmetic exactly; more shards add the logits' parts
            // in another order, and Adam, which divides by the root of tiny second moments,
            // carries that rounding into the weights (after 6 steps of 0.01 each).
            let diff = max_difference(&plain, &sharded);
            let tolerance = if shards == 1 { 0.0 } else { 1e-4 };
            assert!(
                diff <= tolerance,
                "{shards} shards: weights differ by {diff}"
            );
            // The run moved: the comparison is not between two untouched copies.
            assert!(max_difference(&start, &sharded) > 1e-3);
        }
    }

    #[test]
    fn there_is_at_least_one_shard() {
        let start = Weights::init(12, CLASSES, 5);
        let config = AdamConfig::new(0.01);
        let device = Device::flex();
        let count = |n| {
            ShardedTrainer::new(&start, &AdamState::zeros_like(&start), config, n, &device)
                .unwrap()
                .shard_count()
        };
        assert_eq!(count(0), 1);
        assert_eq!(count(5), 5);
    }

    #[test]
    fn state_round_trips_through_the_shards() {
        let start = Weights::init(8, CLASSES, 3);
        let (_, state, _) = sharded_steps(&start, 2, AdamConfig::new(0.01), 2);
        let device = Device::flex();
        let trainer =
            ShardedTrainer::new(&start, &state, AdamConfig::new(0.01), 4, &device).unwrap();
        let (weights, again) = trainer.state().unwrap();
        assert_eq!(weights, start);
        assert_eq!(again, state);
        assert_eq!(trainer.model().weights().unwrap(), start);
    }
}
