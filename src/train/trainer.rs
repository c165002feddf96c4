//! The choice of trainer for a model: a
//! hand-derived CPU kernel where one speeds its architecture up ([`KERNELS`]: the MLP's sharded
//! step, the CNN's step on the CPU), burn's autodiff for any other model or device
//! ([`AutodiffTrainer`]), which every kernel is tested against.

use anyhow::Result;
use burn::prelude::*;

use crate::model::{ModelConfig, Weights, cnn, mlp};
use crate::train::adam::{AdamConfig, AdamState};
use crate::train::autodiff::AutodiffTrainer;
use crate::train::cpu::cnn::CnnCpuTrainer;
use crate::train::cpu::fused;
use crate::train::cpu::sharded::ShardedTrainer;
use crate::train::step::TrainStep;

/// Where a trainer starts: the model, its weights and Adam's state, on a device.
pub struct Start<'a> {
    /// The model's configuration.
    pub config: &'a ModelConfig,
    /// Its weights.
    pub weights: &'a Weights,
    /// Adam's state for them.
    pub state: &'a AdamState,
    /// Adam's hyper-parameters.
    pub adam: AdamConfig,
    /// Row blocks of the MLP's first layer (see [`crate::train::cpu::sharded::shards_for`]).
    pub shards: usize,
    /// The device it trains on.
    pub device: &'a Device,
}

/// A hand-derived step for one architecture, on the devices it runs on.
struct Kernel {
    /// The architecture's name in files.
    architecture: &'static str,
    /// Whether it runs on the device.
    runs_on: fn(&Device) -> bool,
    /// Starts it.
    start: fn(&Start) -> Result<Box<dyn TrainStep>>,
}

/// The hand-derived kernels: each only speeds its architecture up, with the arithmetic of
/// autodiff on the same module.
static KERNELS: &[Kernel] = &[
    Kernel {
        architecture: mlp::ARCHITECTURE,
        runs_on: |_| true,
        start: |s| {
            let trainer = ShardedTrainer::new(s.weights, s.state, s.adam, s.shards, s.device)?;
            Ok(Box::new(trainer))
        },
    },
    Kernel {
        architecture: cnn::ARCHITECTURE,
        runs_on: fused::is_flex,
        start: |s| {
            let classes = s.config.classes.len();
            let trainer = CnnCpuTrainer::new(classes, s.weights, s.state, s.adam, s.device)?;
            Ok(Box::new(trainer))
        },
    },
];

/// The trainer of `start`'s model: its kernel where one runs on the device, else autodiff.
pub fn trainer(start: &Start) -> Result<Box<dyn TrainStep>> {
    let arch = start.config.arch()?;
    let kernel = KERNELS
        .iter()
        .find(|k| k.architecture == arch.name() && (k.runs_on)(start.device));
    if let Some(kernel) = kernel {
        return (kernel.start)(start);
    }
    autodiff_trainer(start)
}

/// The trainer of `start`'s model through burn's autodiff, whatever kernels exist.
pub fn autodiff_trainer(start: &Start) -> Result<Box<dyn TrainStep>> {
    let config = start.config;
    let module = config
        .arch()?
        .get()
        .module(config.hidden, config.classes.len(), start.device);
    let trainer =
        AutodiffTrainer::new(module, start.weights, start.state, start.adam, start.device)?;
    Ok(Box::new(trainer))
}
