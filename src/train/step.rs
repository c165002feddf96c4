//! One trait for every trainer, the hand-derived kernels and burn's autodiff alike, and what
//! they share: the host-side record of a parameter and its moments, and the step counter.

use anyhow::{Context, Result};
use burn::prelude::*;

use crate::model::{Array, Model, StepStats, Weights};
use crate::train::adam::{AdamConfig, AdamState};

/// A model and its optimizer while training.
pub trait TrainStep: Send {
    /// One step of Adam on the batch `input` `[N, >= 3072]` (columns past 3072 are ignored)
    /// with one-hot `targets` `[N, classes]` and `labels` `[N]`.
    fn step(
        &mut self,
        input: Tensor<2>,
        targets: Tensor<2>,
        labels: Tensor<1, Int>,
    ) -> Result<StepStats>;

    /// The model as it stands, on the plain device.
    fn model(&self) -> Result<Model>;

    /// The weights and Adam's state, copied to the host to be saved.
    fn state(&self) -> Result<(Weights, AdamState)>;
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
    /// Counts one more step and returns its step size ([`AdamConfig::step_size`]).
    pub fn tick(&mut self) -> f64 {
        self.step += 1;
        self.config.step_size(self.step)
    }
}
