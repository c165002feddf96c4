//! The model and its optimizer while training, of either architecture: the MLP through its
//! sharded, hand-derived step ([`crate::train::cpu::sharded`], an optimisation of the same arithmetic), the CNN
//! on the CPU through its own hand-derived step ([`crate::train::cpu::cnn`]), any other model (the CNN on
//! a GPU) through burn's autodiff ([`crate::train::autodiff`]).

use anyhow::Result;
use burn::prelude::*;

use crate::data::preprocess::INPUT_LEN;
use crate::model::cnn::Cnn;
use crate::model::{Arch, Model, ModelConfig, StepStats, Weights};
use crate::train::adam::{AdamConfig, AdamState};
use crate::train::autodiff::AutodiffTrainer;
use crate::train::cpu::cnn::CnnCpuTrainer;
use crate::train::cpu::fused;
use crate::train::cpu::sharded::ShardedTrainer;

/// A training model and its optimizer.
pub enum Trainer {
    /// The MLP, sharded.
    Sharded(ShardedTrainer),
    /// The CNN on the CPU, by hand.
    CnnCpu(CnnCpuTrainer),
    /// The CNN elsewhere, through autodiff.
    Cnn(AutodiffTrainer<Cnn>),
}

impl Trainer {
    /// The model of `config` from `weights` and Adam's `state`, on `device`; the MLP's first
    /// layer cut into `shards`.
    pub fn new(
        config: &ModelConfig,
        weights: &Weights,
        state: &AdamState,
        adam: AdamConfig,
        shards: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(match config.arch()? {
            Arch::Mlp => {
                Trainer::Sharded(ShardedTrainer::new(weights, state, adam, shards, device)?)
            }
            Arch::Cnn if fused::is_flex(device) => {
                let classes = config.classes.len();
                Trainer::CnnCpu(CnnCpuTrainer::new(classes, weights, state, adam, device)?)
            }
            Arch::Cnn => {
                let cnn = Cnn::new(config.classes.len(), device);
                Trainer::Cnn(AutodiffTrainer::new(cnn, weights, state, adam, device)?)
            }
        })
    }

    /// One step of Adam on the batch `input` `[N, >= 3072]` (columns past 3072 are ignored).
    pub fn step(
        &mut self,
        input: Tensor<2>,
        targets: Tensor<2>,
        labels: Tensor<1, Int>,
    ) -> Result<StepStats> {
        Ok(match self {
            Trainer::Sharded(t) => t.step(input, targets, labels),
            Trainer::CnnCpu(t) => t.step(input.slice_dim(1, 0..INPUT_LEN), targets)?,
            Trainer::Cnn(t) => t.step(input.slice_dim(1, 0..INPUT_LEN), targets, labels),
        })
    }

    /// The model as it stands, on the plain device.
    pub fn model(&self) -> Result<Model> {
        Ok(match self {
            Trainer::Sharded(t) => Model::Mlp(t.model()),
            Trainer::CnnCpu(t) => Model::Cnn(t.model()?),
            Trainer::Cnn(t) => Model::Cnn(t.model()),
        })
    }

    /// The weights and Adam's state, copied to the host to be saved.
    pub fn state(&self) -> Result<(Weights, AdamState)> {
        match self {
            Trainer::Sharded(t) => t.state(),
            Trainer::CnnCpu(t) => Ok(t.state()),
            Trainer::Cnn(t) => t.state(),
        }
    }
}
