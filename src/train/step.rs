//! One trait for every trainer: the hand-derived kernels and burn's autodiff alike.

use anyhow::Result;
use burn::prelude::*;

use crate::model::{Model, StepStats, Weights};
use crate::train::adam::AdamState;

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
