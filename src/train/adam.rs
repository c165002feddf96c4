//! Adam, as Keras applies it (the seed program's optimizer).
//!
//! Its state lives on the device beside the weights and is copied to the host only to be saved,
//! so that a checkpoint holds everything needed to resume exactly.

use burn::prelude::*;
use burn::tensor::TensorData;

pub use crate::artifact::checkpoint::AdamState;
use crate::artifact::checkpoint::LrSchedule;

/// Adam's hyper-parameters (Keras defaults but for the learning rate, which is the user's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment, as Keras does (epsilon-hat).
    pub epsilon: f64,
    /// The learning rate's schedule over the run, and its decoupled weight decay.
    pub recipe: Recipe,
    /// This step's decoupled weight decay, `lr(t) * weight_decay` (AdamW): every value is first
    /// reduced by this share of itself. Set by [`crate::train::step::AdamClock::tick`] for the
    /// step it counts; 0 without weight decay, and then no value is touched.
    pub decay: f64,
}

/// What moves Adam's step over a run: the schedule of the rate and the weight decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    /// The schedule.
    pub schedule: LrSchedule,
    /// The run's steps, over which the schedule runs (0 for `constant`).
    pub total_steps: u64,
    /// Decoupled weight decay (`--weight-decay`).
    pub weight_decay: f64,
    /// The first steps, over which the rate rises linearly to the schedule's start
    /// (`--warmup-epochs`).
    pub warmup_steps: u64,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            schedule: LrSchedule::Constant,
            total_steps: 0,
            weight_decay: 0.0,
            warmup_steps: 0,
        }
    }
}

impl AdamConfig {
    /// Keras' defaults with the learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            recipe: Recipe::default(),
            decay: 0.0,
        }
    }
}

impl AdamConfig {
    /// The step size of step `t` (1-based): Keras folds both bias corrections into it.
    pub fn step_size(&self, t: u64) -> f64 {
        let t = t as f64;
        self.lr * (1.0 - self.beta2.powf(t)).sqrt() / (1.0 - self.beta1.powf(t))
    }
}

/// One parameter's moments, on the device.
#[derive(Debug, Clone)]
pub(crate) struct Moments<const D: usize> {
    /// First moment.
    pub m: Tensor<D>,
    /// Second moment.
    pub v: Tensor<D>,
}

impl<const D: usize> Moments<D> {
    /// The moments from host values of the given shape.
    pub fn upload(m: &[f32], v: &[f32], shape: [usize; D], device: &Device) -> Self {
        let t = |v: &[f32]| Tensor::<D>::from_data(TensorData::new(v.to_vec(), shape), device);
        Self { m: t(m), v: t(v) }
    }
}

/// One Adam update of `param` from `grad` with step size `lr_t` ([`AdamConfig::step_size`]), after
/// the step's decoupled weight decay (`c.decay`), in burn's tensor operations: the reference
/// arithmetic, and the update on devices other than the CPU.
pub(crate) fn update<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: &mut Moments<D>,
    lr_t: f64,
    c: AdamConfig,
) -> Tensor<D> {
    let m = moments.m.clone().mul_scalar(c.beta1) + grad.clone().mul_scalar(1.0 - c.beta1);
    let v = moments.v.clone().mul_scalar(c.beta2) + grad.square().mul_scalar(1.0 - c.beta2);
    let param = if c.decay != 0.0 {
        param.clone() - param.mul_scalar(c.decay)
    } else {
        param
    };
    let next = param
        - m.clone()
            .mul_scalar(lr_t)
            .div(v.clone().sqrt().add_scalar(c.epsilon));
    moments.m = m;
    moments.v = v;
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::read_f32;

    #[test]
    fn first_step_moves_each_weight_by_about_the_learning_rate_against_its_gradient() {
        let device = Device::flex();
        let config = AdamConfig::new(0.01);
        let param = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 1.0, 1.0], [3]), &device);
        let grad = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, -1.0, 0.0], [3]), &device);
        let mut moments = Moments::upload(&[0.0; 3], &[0.0; 3], [3], &device);
        let after = read_f32(update(
            param,
            grad,
            &mut moments,
            config.step_size(1),
            config,
        ))
        .unwrap();
        assert!((after[0] - 0.99).abs() < 1e-5);
        assert!((after[1] - 1.01).abs() < 1e-5);
        assert_eq!(after[2], 1.0);
        assert!((read_f32(moments.m).unwrap()[0] - 0.1).abs() < 1e-6);
        assert!((read_f32(moments.v).unwrap()[1] - 0.001).abs() < 1e-6);
    }
}
