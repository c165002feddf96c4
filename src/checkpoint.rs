//! Training checkpoints: the model, the optimizer state and the run's history after each epoch,
//! enough to resume exactly. Every file is written atomically (see [`crate::fsutil`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::adam::AdamState;
use crate::container::{self, Array, Contents, Kind};
use crate::model::{ModelConfig, Weights};

/// The hyper-parameters of a run, saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Samples per step.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Seed of the initial weights and of each epoch's shuffle.
    pub seed: u64,
    /// Trained on the first N training images only.
    pub limit: Option<usize>,
    /// For an image folder without `test/`: the share of each class held out for testing
    /// (drawn with `seed`), so that `eval` can hold out the same images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_split: Option<f64>,
}

/// What one epoch measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's training batches.
    pub train_loss: f64,
    /// Accuracy over the epoch's training batches.
    pub train_accuracy: f64,
    /// Mean cross-entropy on the test split after the epoch.
    pub test_loss: f64,
    /// Accuracy on the test split after the epoch.
    pub test_accuracy: f64,
    /// Wall time of the epoch's training steps.
    pub seconds: f64,
    /// Training samples per second.
    pub samples_per_second: f64,
}

/// Everything in a checkpoint but the arrays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The maas that wrote it.
    pub maas_version: String,
    /// The model's configuration.
    pub model: ModelConfig,
    /// The run's hyper-parameters.
    pub train: TrainConfig,
    /// Epochs completed.
    pub epoch: usize,
    /// Metrics of every completed epoch.
    pub history: Vec<EpochMetrics>,
    /// The epoch with the best test accuracy so far.
    pub best_epoch: usize,
}

impl CheckpointMeta {
    /// Metrics of the best epoch so far.
    pub fn best(&self) -> Option<&EpochMetrics> {
        self.history.iter().find(|m| m.epoch == self.best_epoch)
    }
}

/// A checkpoint in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Configuration, progress and history.
    pub meta: CheckpointMeta,
    /// The model's weights after `meta.epoch` epochs.
    pub weights: Weights,
    /// Adam's state after `meta.epoch` epochs.
    pub adam: AdamState,
}

const WEIGHT_NAMES: [&str; 4] = ["w1", "b1", "w2", "b2"];

/// The weights as named arrays, with `prefix` before each name.
pub(crate) fn weight_arrays(prefix: &str, w: &Weights) -> Vec<Array> {
    let values = [&w.w1, &w.b1, &w.w2, &w.b2];
    WEIGHT_NAMES
        .iter()
        .zip(Weights::shapes(w.hidden, w.classes()))
        .zip(values)
        .map(|((name, shape), v)| Array::new(&format!("{prefix}{name}"), shape, v.clone()))
        .collect()
}

/// Takes the weights named with `prefix` out of a decoded file, of a model of `hidden` width and
/// `classes` outputs.
pub(crate) fn take_weights(
    contents: &mut Contents,
    prefix: &str,
    hidden: usize,
    classes: usize,
) -> Result<Weights> {
    let [s1, s2, s3, s4] = Weights::shapes(hidden, classes);
    Ok(Weights {
        hidden,
        w1: contents.take(&format!("{prefix}w1"), &s1)?,
        b1: contents.take(&format!("{prefix}b1"), &s2)?,
        w2: contents.take(&format!("{prefix}w2"), &s3)?,
        b2: contents.take(&format!("{prefix}b2"), &s4)?,
    })
}

impl Checkpoint {
    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &self.encode()?)
    }

    /// The checkpoint as file bytes, to be written to one path or several.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut arrays = weight_arrays("", &self.weights);
        arrays.extend(weight_arrays("adam.m.", &self.adam.m));
        arrays.extend(weight_arrays("adam.v.", &self.adam.v));
        let mut meta = serde_json::to_value(&self.meta)?;
        meta["adam_step"] = self.adam.step.into();
        container::encode(Kind::Checkpoint, meta, &arrays)
    }

    /// Reads and checks the checkpoint at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let contents = container::read(path)?;
        Self::from_contents(contents).with_context(|| format!("{}", path.display()))
    }

    /// Decodes and checks the bytes of a checkpoint file, as [`Checkpoint::load`] does a file.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        Self::from_contents(container::decode(bytes)?)
    }

    /// Builds a checkpoint from a decoded file.
    pub(crate) fn from_contents(mut contents: Contents) -> Result<Self> {
        if contents.kind != Kind::Checkpoint {
            bail!("is a maas {}, not a checkpoint", contents.kind);
        }
        let step = contents
            .meta
            .get("adam_step")
            .and_then(|s| s.as_u64())
            .context("no optimizer step count")?;
        let meta: CheckpointMeta = serde_json::from_value(contents.meta.clone())
            .context("unreadable checkpoint header")?;
        meta.model.check_supported()?;
        let (hidden, classes) = (meta.model.hidden, meta.model.classes.len());
        let weights = take_weights(&mut contents, "", hidden, classes)?;
        let m = take_weights(&mut contents, "adam.m.", hidden, classes)?;
        let v = take_weights(&mut contents, "adam.v.", hidden, classes)?;
        Ok(Self {
            meta,
            weights,
            adam: AdamState { step, m, v },
        })
    }
}

/// Where a run keeps its files.
#[derive(Debug, Clone)]
pub struct RunFiles {
    /// The checkpoints folder.
    pub dir: PathBuf,
}

impl RunFiles {
    /// The files of the run in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
    /// The checkpoint of epoch `n`.
    pub fn epoch(&self, n: usize) -> PathBuf {
        self.dir.join(format!("epoch-{n:03}.ckpt"))
    }
    /// The checkpoint with the best test accuracy.
    pub fn best(&self) -> PathBuf {
        self.dir.join("best.ckpt")
    }
    /// The latest complete checkpoint, which `--resume` continues from.
    pub fn last(&self) -> PathBuf {
        self.dir.join("last.ckpt")
    }
    /// Per-epoch metrics.
    pub fn metrics_csv(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }
    /// The run's configuration, in JSON.
    pub fn run_json(&self) -> PathBuf {
        self.dir.join("run.json")
    }
    /// The loss and accuracy curves, redrawn after every epoch.
    pub fn curves_png(&self) -> PathBuf {
        self.dir.join("curves.png")
    }
}

/// The metrics history as CSV.
pub fn metrics_csv(history: &[EpochMetrics]) -> String {
    let mut out = String::from(
        "epoch,train_loss,train_accuracy,test_loss,test_accuracy,seconds,samples_per_second\n",
    );
    for m in history {
        out.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.3},{:.1}\n",
            m.epoch,
            m.train_loss,
            m.train_accuracy,
            m.test_loss,
            m.test_accuracy,
            m.seconds,
            m.samples_per_second
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let classes = (0..10).map(|i| format!("c{i}")).collect();
        let mut adam = AdamState::zeros(3, 10);
        adam.step = 17;
        adam.v.b2[4] = 0.5;
        Checkpoint {
            meta: CheckpointMeta {
                maas_version: crate::VERSION.into(),
                model: ModelConfig::new(3, classes),
                train: TrainConfig {
                    batch_size: 32,
                    lr: 0.001,
                    seed: 42,
                    limit: None,
                    val_split: None,
                },
                epoch: 1,
                history: vec![],
                best_epoch: 1,
            },
            weights: Weights::init(3, 10, 5),
            adam,
        }
    }

    #[test]
    fn save_then_load_gives_the_same_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ckpt");
        let c = sample();
        c.save(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), c);
    }

    #[test]
    fn another_architecture_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ckpt");
        let mut c = sample();
        c.meta.model.architecture = "resnet18".into();
        c.save(&path).unwrap();
        let err = format!("{:#}", Checkpoint::load(&path).unwrap_err());
        assert!(err.contains("resnet18") && err.contains("c.ckpt"), "{err}");
    }
}
