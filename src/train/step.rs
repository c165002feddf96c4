//! One trait for every trainer, the hand-derived kernels and burn's autodiff alike, and what
//! they share: the host-side record of a parameter and its moments, and the step counter.

use anyhow::{Context, Result};
use burn::prelude::*;

use crate::data::preprocess::INPUT_LEN;
use crate::model::{Array, Model, StepStats, Weights, batch_tensors, one_hot};
use crate::train::adam::{AdamConfig, AdamState};
use crate::train::schedule;

/// A model and its optimizer while training.
pub trait TrainStep: Send {
    /// Floats from one image's row to the next in the batches it takes: the 3072 of an image, or
    /// more where padding speeds its kernel up (the padding is never read).
    fn row_stride(&self) -> usize {
        INPUT_LEN
    }

    /// One step of Adam on `batch` (rows of [`TrainStep::row_stride`]).
    fn step(&mut self, batch: Batch) -> Result<StepStats>;

    /// The model as it stands, on the plain device.
    fn model(&self) -> Result<Model>;

    /// The weights and Adam's state, copied to the host to be saved.
    fn state(&self) -> Result<(Weights, AdamState)>;
}

/// A batch as the epoch loop builds it, on the host: each image's normalised input
/// (channel-major) at the start of a row of `stride` floats, and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `len() * stride` floats.
    pub inputs: Vec<f32>,
    /// Floats from one row to the next, at least 3072.
    pub stride: usize,
    /// The images' labels, each below `classes`.
    pub labels: Vec<i64>,
    /// The number of classes (the width of the one-hot targets).
    pub classes: usize,
}

impl Batch {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether it holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The labels as one-hot rows `[len, classes]`.
    pub fn one_hot(&self) -> Vec<f32> {
        one_hot(&self.labels, self.classes)
    }

    /// On `device`: the inputs `[len, stride]` (on the CPU without a copy), the one-hot targets
    /// `[len, classes]` and the labels `[len]`.
    pub fn tensors(self, device: &Device) -> (Tensor<2>, Tensor<2>, Tensor<1, Int>) {
        batch_tensors(self.inputs, self.labels, self.classes, device)
    }
}

/// One parameter and its Adam moments on the host: what every trainer starts from and hands back
/// to be saved, whatever layout it trains in.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamState {
    /// Its name in files (`hidden.weight`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub value: Vec<f32>,
    /// Adam's first moment.
    pub m: Vec<f32>,
    /// Adam's second moment.
    pub v: Vec<f32>,
}

impl ParamState {
    /// The parameters of `shapes` (names and shapes, in order) from `weights` and Adam's
    /// `state`; an error names an array that is missing or of the wrong shape, and which moment.
    pub fn load_all(
        shapes: &[(String, Vec<usize>)],
        weights: &Weights,
        state: &AdamState,
    ) -> Result<Vec<ParamState>> {
        shapes
            .iter()
            .map(|(name, shape)| {
                let moment = |w: &Weights, which| -> Result<Vec<f32>> {
                    let array = w.get_shaped(name, shape);
                    Ok(array
                        .with_context(|| format!("Adam's {which} moment"))?
                        .values
                        .clone())
                };
                Ok(ParamState {
                    name: name.clone(),
                    shape: shape.clone(),
                    value: weights.get_shaped(name, shape)?.values.clone(),
                    m: moment(&state.m, "first")?,
                    v: moment(&state.v, "second")?,
                })
            })
            .collect()
    }

    /// The weights and Adam's state after `step` steps, to be saved.
    pub fn save_all(params: &[ParamState], step: u64) -> (Weights, AdamState) {
        let part = |of: fn(&ParamState) -> &Vec<f32>| Weights {
            arrays: params
                .iter()
                .map(|p| Array::new(&p.name, p.shape.clone(), of(p).clone()))
                .collect(),
        };
        let adam = AdamState {
            step,
            m: part(|p| &p.m),
            v: part(|p| &p.v),
        };
        (part(|p| &p.value), adam)
    }
}

/// Adam's hyper-parameters and the steps taken: the one step counter every trainer keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamClock {
    /// The hyper-parameters.
    pub config: AdamConfig,
    /// Steps taken so far (what the checkpoint saves).
    pub step: u64,
}

impl AdamClock {
    /// Counts one more step and returns its step size: [`AdamConfig::step_size`] at the rate the
    /// schedule gives the step ([`crate::train::schedule::rate`]). Sets `config.decay` to the
    /// step's weight decay, for the update that follows. A pure function of the step count, so
    /// a resumed run takes the same steps.
    pub fn tick(&mut self) -> f64 {
        self.step += 1;
        let recipe = self.config.recipe;
        let lr = schedule::rate(
            recipe.schedule,
            self.config.lr,
            self.step - 1,
            recipe.total_steps,
            recipe.warmup_steps,
        );
        self.config.decay = lr * recipe.weight_decay;
        AdamConfig { lr, ..self.config }.step_size(self.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::checkpoint::LrSchedule;
    use crate::model::read_f32;
    use crate::train::adam::{Moments, Recipe, update};
    use burn::tensor::TensorData;

    #[test]
    fn the_clock_follows_the_schedule_and_sets_each_steps_decay() {
        let recipe = Recipe {
            schedule: LrSchedule::Cosine,
            total_steps: 4,
            weight_decay: 0.5,
            warmup_steps: 0,
        };
        let mut clock = AdamClock {
            config: AdamConfig {
                recipe,
                ..AdamConfig::new(0.1)
            },
            step: 0,
        };
        let base = AdamConfig::new(0.1);
        // Step 1 is at the schedule's start: the full rate.
        assert_eq!(clock.tick(), base.step_size(1));
        assert_eq!(clock.config.decay, 0.1 * 0.5);
        // Step 3 (index 2 of 4) is halfway: half the rate.
        clock.tick();
        let lr_t = clock.tick();
        let half = AdamConfig { lr: 0.05, ..base };
        assert!((lr_t - half.step_size(3)).abs() < 1e-15);
        assert!((clock.config.decay - 0.05 * 0.5).abs() < 1e-15);
        // Without a recipe, nothing moves: the card's Adam.
        let mut plain = AdamClock {
            config: base,
            step: 0,
        };
        assert_eq!(plain.tick(), base.step_size(1));
        assert_eq!(plain.config.decay, 0.0);
    }

    #[test]
    fn weight_decay_matches_a_hand_computation_of_one_step() {
        let device = Device::flex();
        let mut clock = AdamClock {
            config: AdamConfig {
                recipe: Recipe {
                    weight_decay: 0.1,
                    ..Recipe::default()
                },
                ..AdamConfig::new(0.01)
            },
            step: 0,
        };
        let lr_t = clock.tick();
        let tensor = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [2]), &device);
        let mut moments = Moments::upload(&[0.0; 2], &[0.0; 2], [2], &device);
        let after = read_f32(update(
            tensor(vec![2.0, -1.0]),
            tensor(vec![1.0, 0.0]),
            &mut moments,
            lr_t,
            clock.config,
        ))
        .unwrap();
        // By hand: decay 0.01 * 0.1 = 0.001 takes 0.002 off 2; Adam's first step then moves by
        // lr * m_hat / (sqrt(v_hat) + eps) = 0.01 * 1 / (1 + eps') (Keras' epsilon-hat); the
        // second value, gradient 0, is only decayed: -1 + 0.001.
        let eps_hat = 1e-7 / (1.0f64 - 0.999).sqrt();
        let expected = 2.0 - 0.002 - 0.01 / (1.0 + eps_hat);
        assert!(
            (f64::from(after[0]) - expected).abs() < 1e-6,
            "{after:?} {expected}"
        );
        assert!((f64::from(after[1]) + 0.999).abs() < 1e-7, "{after:?}");
    }
}
