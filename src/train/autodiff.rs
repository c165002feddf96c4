//! The training step of any burn module: burn's autodiff derives the gradients, and Keras' Adam
//! ([`crate::train::adam`], ours) applies them.
//!
//! Ours rather than `burn-optim`'s Adam: Keras folds both bias corrections into the step size and
//! adds epsilon to the root of the second moment (epsilon-hat), where burn's Adam corrects the
//! moments and adds epsilon inside; the two differ in the first steps, and the MLP's hand-derived
//! step ([`crate::train::cpu::sharded`]) must be the same optimizer as this one to be tested against it. Ours
//! also keeps the moments in maas's checkpoints by parameter name, which `--resume` needs to be
//! exact.
//!
//! Parameters are named by their module path (`hidden.weight`), as burn's derive visits them:
//! those names are what files hold ([`Weights`]).

use anyhow::Result;
use burn::prelude::*;

use crate::model::{Model, StepStats, Trainable, Weights, mean_cross_entropy, read_f32, stats};
use crate::train::adam::{AdamConfig, AdamState, Moments};
use crate::train::cpu::fused;
use crate::train::step::{AdamClock, Batch, ParamState, TrainStep};

/// A model and its optimizer while training through autodiff.
pub struct AutodiffTrainer {
    /// The model on the autodiff device, every parameter requiring its gradient.
    model: Box<dyn Trainable>,
    /// Adam's moments of each parameter, flattened, in the module's visiting order.
    moments: Vec<Moments<1>>,
    adam: AdamClock,
    /// The plain device under autodiff, where batches go.
    device: Device,
}

impl AutodiffTrainer {
    /// Trains `model` (any weights of the right shapes: they are replaced) from `weights` and
    /// Adam's `state` on `device` (autodiff is added to it).
    pub fn new(
        model: Box<dyn Trainable>,
        weights: &Weights,
        state: &AdamState,
        config: AdamConfig,
        device: &Device,
    ) -> Result<Self> {
        let inner = device.clone().inner();
        let model = model.to_device(&inner).load(weights)?.track();
        let shapes: Vec<(String, Vec<usize>)> = model
            .parameters()
            .into_iter()
            .map(|(name, shape, _)| (name, shape))
            .collect();
        let moments = ParamState::load_all(&shapes, weights, state)?
            .iter()
            .map(|p| Moments::upload(&p.m, &p.v, [p.value.len()], &inner))
            .collect();
        Ok(Self {
            device: inner,
            model,
            moments,
            adam: AdamClock {
                config,
                step: state.step,
            },
        })
    }

    /// One step of Adam on the batch `input` `[N, 3072]` with one-hot `targets` and `labels`
    /// (all on the plain device).
    pub fn step(
        &mut self,
        input: Tensor<2>,
        targets: Tensor<2>,
        labels: Tensor<1, Int>,
    ) -> StepStats {
        let logits = self.model.logits(input.autodiff());
        let loss = mean_cross_entropy(logits.clone(), targets.clone().autodiff());
        let grads = loss.backward();
        let (lr_t, config, moments) = (self.adam.tick(), self.adam.config, &mut self.moments);
        self.model = self.model.update(&grads, &mut |at, mut value, grad| {
            if let Some(moments) = moments.get_mut(at) {
                fused::update_in_place(&mut value, grad, moments, lr_t, config);
            }
            value
        });
        stats(logits.inner(), targets, labels)
    }

    /// The model as it stands, on the plain device, for testing.
    pub fn model(&self) -> Model {
        Model::from_module(self.model.valid())
    }

    /// The weights and Adam's state, copied to the host to be saved.
    pub fn state(&self) -> Result<(Weights, AdamState)> {
        let params = self
            .model
            .parameters()
            .into_iter()
            .zip(&self.moments)
            .map(|((name, shape, value), moments)| {
                Ok(ParamState {
                    name,
                    shape,
                    value: read_f32(value)?,
                    m: read_f32(moments.m.clone())?,
                    v: read_f32(moments.v.clone())?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ParamState::save_all(&params, self.adam.step))
    }
}

impl TrainStep for AutodiffTrainer {
    fn step(&mut self, batch: Batch) -> Result<StepStats> {
        let (input, targets, labels) = batch.tensors(&self.device);
        Ok(AutodiffTrainer::step(self, input, targets, labels))
    }
    fn model(&self) -> Result<Model> {
        Ok(AutodiffTrainer::model(self))
    }
    fn state(&self) -> Result<(Weights, AdamState)> {
        AutodiffTrainer::state(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mlp, max_difference, random_batch};
    use crate::model::{load_weights, weights_of};
    use crate::train::cpu::sharded::ShardedTrainer;

    const CLASSES: usize = 10;

    fn autodiff_steps(
        weights: &Weights,
        state: &AdamState,
        steps: std::ops::Range<u64>,
    ) -> (Weights, AdamState) {
        let device = Device::flex();
        let model = Mlp::init(8, CLASSES, 0, &device);
        let mut trainer = AutodiffTrainer::new(
            Box::new(model),
            weights,
            state,
            AdamConfig::new(0.01),
            &device,
        )
        .unwrap();
        for step in steps {
            let (x, y, l) = random_batch(8, CLASSES, step, &device);
            trainer.step(x, y, l);
        }
        trainer.state().unwrap()
    }

    #[test]
    fn weights_round_trip_by_name_through_any_module() {
        let device = Device::flex();
        let w = Weights::init(5, 3, 11);
        let loaded = load_weights(Mlp::init(5, 3, 0, &device), &w).unwrap();
        assert_eq!(weights_of(&loaded).unwrap(), w);
        let err = load_weights(Mlp::init(6, 3, 0, &device), &w)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hidden.weight") && err.contains("shape"),
            "{err}"
        );
    }

    #[test]
    fn the_autodiff_step_follows_the_hand_derived_sharded_step() {
        let start = Weights::init(8, CLASSES, 5);
        let zeros = AdamState::zeros_like(&start);
        let (auto, auto_state) = autodiff_steps(&start, &zeros, 1..7);
        let device = Device::flex();
        let mut sharded =
            ShardedTrainer::new(&start, &zeros, AdamConfig::new(0.01), 1, &device).unwrap();
        for step in 1..7 {
            let (x, y, l) = random_batch(8, CLASSES, step, &device);
            sharded.step(x, y, l);
        }
        let (hand, hand_state) = sharded.state().unwrap();
        assert_eq!(auto_state.step, 6);
        // The gradients agree to rounding (summed in another order), which Adam carries on.
        let diff = max_difference(&auto, &hand);
        assert!(diff <= 1e-4, "weights differ by {diff}");
        assert!(max_difference(&auto_state.v, &hand_state.v) <= 1e-4);
        assert!(
            max_difference(&start, &auto) > 1e-3,
            "the steps moved the weights"
        );
    }

    #[test]
    fn resuming_from_the_saved_state_is_exact() {
        let start = Weights::init(8, CLASSES, 2);
        let zeros = AdamState::zeros_like(&start);
        let straight = autodiff_steps(&start, &zeros, 1..5);
        let (half, half_state) = autodiff_steps(&start, &zeros, 1..3);
        let resumed = autodiff_steps(&half, &half_state, 3..5);
        assert_eq!(resumed, straight);
    }
}
