//! What `maas train` is asked to do, and the defaults of what it is not told.

use std::path::PathBuf;

use crate::artifact::checkpoint::LrSchedule;
use crate::data::source::DataSource;
use crate::model::Arch;

/// How to train; `None` means "the default, or the checkpoint's value on --resume".
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Train until this many epochs are complete.
    pub epochs: usize,
    /// Samples per step.
    pub batch_size: Option<usize>,
    /// Adam's learning rate.
    pub lr: Option<f64>,
    /// Width of the hidden layer.
    pub hidden: Option<usize>,
    /// The architecture (`--arch`; the MLP when not given).
    pub arch: Option<Arch>,
    /// Seed of the initial weights and the shuffles.
    pub seed: Option<u64>,
    /// Train on the first N training images only.
    pub limit: Option<usize>,
    /// The dataset: CIFAR-10 or an image folder.
    pub data: DataSource,
    /// For a single image folder: the share of each class held out for testing.
    pub test_split: Option<f64>,
    /// The share of the training images held out for validation (none: no validation).
    pub val_split: Option<f64>,
    /// Random crops and flips of training images (given: on).
    pub augment: bool,
    /// The learning rate's schedule.
    pub lr_schedule: Option<LrSchedule>,
    /// Decoupled weight decay.
    pub weight_decay: Option<f64>,
    /// Epochs of linear warmup before the schedule.
    pub warmup_epochs: Option<f64>,
    /// Stop after this many epochs without a better validation accuracy.
    pub patience: Option<usize>,
    /// Stop at the first unreadable image instead of skipping it.
    pub strict: bool,
    /// Where checkpoints go.
    pub checkpoints: PathBuf,
    /// Continue from `last.ckpt` (or else the latest `epoch-NNN.ckpt`).
    pub resume: bool,
    /// Start afresh even where a run's checkpoints already are.
    pub overwrite: bool,
}

/// Defaults of the hyper-parameters (those of the seed Keras program).
pub const DEFAULT_BATCH_SIZE: usize = 32;
/// Default learning rate.
pub const DEFAULT_LR: f64 = 0.001;
/// Default seed.
pub const DEFAULT_SEED: u64 = 42;
