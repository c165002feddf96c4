//! Training checkpoints: the model, the optimizer state and the run's history after each epoch,
//! enough to resume exactly. Every file is written atomically (see [`crate::fsutil`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::artifact::container::{self, Contents, Kind};
use crate::model::Array;
use crate::model::{ModelConfig, Weights};

/// The first and second moments of each parameter, on the host, named as the parameters are
/// ([`Weights`]): what a checkpoint keeps of Adam, to resume exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamState {
    /// Steps taken so far.
    pub step: u64,
    /// First moments.
    pub m: Weights,
    /// Second moments.
    pub v: Weights,
}

impl AdamState {
    /// The state before the first step of training `weights`.
    pub fn zeros_like(weights: &Weights) -> Self {
        Self {
            step: 0,
            m: weights.zeros_like(),
            v: weights.zeros_like(),
        }
    }
}

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
    /// (drawn with `seed`), so that `eval` can hold out the same images. Runs before the
    /// validation split called it `val_split` (`--val-split` then meant this share).
    #[serde(default, alias = "val_split", skip_serializing_if = "Option::is_none")]
    pub test_split: Option<f64>,
    /// The share of the training images held out for validation (`--val-split`), drawn with
    /// `seed` per class: it chooses `best.ckpt` and drives `patience`. `None`: no validation,
    /// and `best.ckpt` is the last epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_split: Option<f64>,
    /// Random crops (after 4 pixels of zero padding) and horizontal flips of training images.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub augment: bool,
    /// How the learning rate moves over the run's steps.
    #[serde(default, skip_serializing_if = "LrSchedule::is_constant")]
    pub lr_schedule: LrSchedule,
    /// The epochs a schedule other than `constant` spans (the run's --epochs when it started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_epochs: Option<usize>,
    /// Decoupled weight decay (AdamW): each step, `value -= lr(t) * weight_decay * value`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weight_decay: f64,
    /// The epochs (fractions allowed) over which the rate first rises linearly to the schedule's
    /// start; the schedule then spans the steps that remain.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warmup_epochs: f64,
    /// Stop when the validation accuracy has not improved for this many epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// `--lr-schedule`: the learning rate of each step, a function of the step alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `--lr` at every step (Keras' default, and the card's).
    #[default]
    Constant,
    /// Cosine annealing from `--lr` to 0 over the run's steps after its warmup
    /// (`warmup_epochs`).
    Cosine,
    /// PyTorch's OneCycleLR with its defaults: up from `--lr`/25 to `--lr` over 30% of the
    /// steps, then down to `--lr`/25/1e4, both halves cosine.
    OneCycle,
}

impl LrSchedule {
    /// Whether the rate never moves.
    pub fn is_constant(&self) -> bool {
        *self == LrSchedule::Constant
    }

    /// The flag's value.
    pub fn flag(self) -> &'static str {
        match self {
            LrSchedule::Constant => "constant",
            LrSchedule::Cosine => "cosine",
            LrSchedule::OneCycle => "onecycle",
        }
    }
}

impl TrainConfig {
    /// The card's recipe: no validation, augmentation, schedule, decay or patience.
    pub fn new(batch_size: usize, lr: f64, seed: u64) -> Self {
        Self {
            batch_size,
            lr,
            seed,
            limit: None,
            test_split: None,
            validation_split: None,
            augment: false,
            lr_schedule: LrSchedule::Constant,
            schedule_epochs: None,
            weight_decay: 0.0,
            warmup_epochs: 0.0,
            patience: None,
        }
    }
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
    /// Mean cross-entropy on the validation split after the epoch (none without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Accuracy on the validation split after the epoch: what chooses `best.ckpt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
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
    /// The epoch `best.ckpt` holds: the best validation accuracy so far, or the last epoch when
    /// the run has no validation split (runs before it: the best test accuracy).
    pub best_epoch: usize,
}

impl EpochMetrics {
    /// The first figure that is not a finite number (NaN or infinite), described: a diverged
    /// run's. serde_json writes NaN as `null`, which no checkpoint reader accepts.
    pub fn non_finite(&self) -> Option<String> {
        [
            ("training loss", self.train_loss),
            ("training accuracy", self.train_accuracy),
            ("test loss", self.test_loss),
            ("test accuracy", self.test_accuracy),
            ("validation loss", self.val_loss.unwrap_or(0.0)),
            ("validation accuracy", self.val_accuracy.unwrap_or(0.0)),
            ("seconds", self.seconds),
            ("samples per second", self.samples_per_second),
        ]
        .into_iter()
        .find(|(_, v)| !v.is_finite())
        .map(|(what, v)| format!("the {what} is {v}"))
    }
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

/// The weights as named arrays, with `prefix` before each name.
pub(crate) fn weight_arrays(prefix: &str, w: &Weights) -> Vec<Array> {
    w.arrays
        .iter()
        .map(|a| {
            Array::new(
                &format!("{prefix}{}", a.name),
                a.shape.clone(),
                a.values.clone(),
            )
        })
        .collect()
}

/// Takes the weights named with `prefix` out of a decoded file: the parameters of the model of
/// `config`, each checked against its shape.
pub(crate) fn take_weights(
    contents: &mut Contents,
    prefix: &str,
    config: &ModelConfig,
) -> Result<Weights> {
    let arrays = config
        .parameter_shapes()?
        .into_iter()
        .map(|(name, shape)| {
            let values = contents.take(&format!("{prefix}{name}"), &shape)?;
            Ok(Array::new(&name, shape, values))
        })
        .collect::<Result<_>>()?;
    Ok(Weights { arrays })
}

/// The first array of `weights` and `adam`'s moments holding a value that is not a finite
/// number, described.
fn non_finite_arrays(weights: &Weights, adam: &AdamState) -> Option<String> {
    [("", weights), ("adam.m.", &adam.m), ("adam.v.", &adam.v)]
        .into_iter()
        .find_map(|(prefix, w)| {
            let (name, _, value) = w.first_non_finite()?;
            Some(format!("{prefix}{name} holds {value}"))
        })
}

impl Checkpoint {
    /// The first value that is not a finite number (a diverged run's), described.
    pub fn non_finite(&self) -> Option<String> {
        let lr = self.meta.train.lr;
        let t = &self.meta.train;
        let shares = t.test_split.unwrap_or(0.0) + t.validation_split.unwrap_or(0.0);
        if !(lr.is_finite() && shares.is_finite() && t.weight_decay.is_finite()) {
            return Some(format!(
                "the learning rate is {lr}, --weight-decay {}, --test-split {:?}, --val-split {:?}",
                t.weight_decay, t.test_split, t.validation_split
            ));
        }
        self.meta
            .history
            .iter()
            .find_map(|m| Some(format!("epoch {}: {}", m.epoch, m.non_finite()?)))
            .or_else(|| non_finite_arrays(&self.weights, &self.adam))
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &self.encode()?)
    }

    /// The checkpoint as file bytes, to be written to one path or several.
    pub fn encode(&self) -> Result<Vec<u8>> {
        // A NaN would be written as `null` in the header (which cannot be read back) or as
        // weights that answer NaN: such a file is never made.
        if let Some(bad) = self.non_finite() {
            bail!("refusing to write a checkpoint whose values are not all finite numbers ({bad})");
        }
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
        super::migrate::upgrade_arrays(contents.version, &mut contents.arrays);
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
        let weights = take_weights(&mut contents, "", &meta.model)?;
        let m = take_weights(&mut contents, "adam.m.", &meta.model)?;
        let v = take_weights(&mut contents, "adam.v.", &meta.model)?;
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
    /// The checkpoint of the best validation accuracy (the last epoch without validation).
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
    /// The file `maas train` locks while it uses the folder (see [`RunFiles::lock`]).
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join(".maas-train.lock")
    }

    /// The epoch checkpoints (`epoch-NNN.ckpt`) in the folder, by epoch; none when it is missing.
    pub fn epochs(&self) -> Result<Vec<(usize, PathBuf)>> {
        let mut out: Vec<(usize, PathBuf)> = self
            .names()?
            .into_iter()
            .filter_map(|name| {
                let n = name.strip_prefix("epoch-")?.strip_suffix(".ckpt")?;
                let epoch = n
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| n.parse().ok())??;
                Some((epoch, self.dir.join(name)))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The files of a run in the folder: `last.ckpt` first when there, then the others that
    /// maas writes. A folder holding any of them holds a run, whichever is missing.
    pub fn run_files(&self) -> Result<Vec<PathBuf>> {
        let mut out: Vec<PathBuf> = [
            self.last(),
            self.best(),
            self.run_json(),
            self.metrics_csv(),
            self.curves_png(),
        ]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
        out.extend(self.epochs()?.into_iter().map(|(_, p)| p));
        Ok(out)
    }

    /// Removes every file of a run from the folder (`--overwrite`), so that none of the old run
    /// is left to be mistaken for the new one's.
    pub fn remove_run(&self) -> Result<usize> {
        let files = self.run_files()?;
        for path in &files {
            std::fs::remove_file(path).with_context(|| {
                format!("{}: cannot remove the earlier run's file", path.display())
            })?;
        }
        Ok(files.len())
    }

    /// The file names in the folder; none when it is missing.
    fn names(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("{}: cannot list", self.dir.display()));
            }
        };
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    /// Takes the folder for this process alone, creating it: a second `maas train` on it is
    /// refused, naming the holder (its pid and start time, written in the lock file). The lock
    /// is the operating system's (`flock`): it ends with the process, however it ends.
    pub fn lock(&self) -> Result<RunLock> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("{}: cannot create folder", self.dir.display()))?;
        let path = self.lock_file();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = match holder.trim() {
                    "" => "another process".to_string(),
                    h => format!("another maas train, {h}"),
                };
                bail!(
                    "{}: in use by {holder} (it holds {}); wait for it to end, or choose another --checkpoints folder",
                    self.dir.display(),
                    path.display()
                );
            }
            // Some network file systems cannot lock: train anyway, as before, but say so.
            Err(std::fs::TryLockError::Error(e)) => {
                eprintln!(
                    "maas: warning: {}: cannot lock ({e}); nothing stops a second maas train from using the folder at the same time",
                    path.display()
                );
                return Ok(RunLock { _file: None });
            }
        }
        // Written in place, not atomically: the lock belongs to this file, and a file renamed
        // over it would be a new one, free for a second run to lock.
        let holder = format!(
            "pid {}, started {}\n",
            std::process::id(),
            httpdate::fmt_http_date(std::time::SystemTime::now())
        );
        file.set_len(0)
            .and_then(|()| file.write_all(holder.as_bytes()))
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(RunLock { _file: Some(file) })
    }

    /// The model and hyper-parameters `run.json` records, or `None` when there is no `run.json`.
    pub fn read_run_json(&self) -> Result<Option<RunRecord>> {
        let path = self.run_json();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{}: not a run.json maas wrote", path.display()))
    }
}

/// Holds a checkpoints folder for one `maas train` until dropped (or the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: Option<std::fs::File>,
}

/// What `run.json` records of a run: the model and hyper-parameters it started with.
#[derive(Debug, Clone, Deserialize)]
pub struct RunRecord {
    /// The model's configuration.
    pub model: ModelConfig,
    /// The run's hyper-parameters.
    pub train: TrainConfig,
}

/// The metrics history as CSV (the validation columns after the test ones, so that readers of
/// the older columns still find them); the validation columns are empty for epochs without validation.
pub fn metrics_csv(history: &[EpochMetrics]) -> String {
    let mut out = String::from(
        "epoch,train_loss,train_accuracy,test_loss,test_accuracy,val_loss,val_accuracy,seconds,samples_per_second\n",
    );
    let optional = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
    for m in history {
        out.push_str(&format!(
            "{},{:.6},{:.6},{:.6},{:.6},{},{},{:.3},{:.1}\n",
            m.epoch,
            m.train_loss,
            m.train_accuracy,
            m.test_loss,
            m.test_accuracy,
            optional(m.val_loss),
            optional(m.val_accuracy),
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
        let weights = Weights::init(3, 10, 5);
        let mut adam = AdamState::zeros_like(&weights);
        adam.step = 17;
        adam.v.arrays[3].values[4] = 0.5;
        Checkpoint {
            meta: CheckpointMeta {
                maas_version: crate::VERSION.into(),
                model: ModelConfig::new(3, classes),
                train: TrainConfig::new(32, 0.001, 42),
                epoch: 1,
                history: vec![],
                best_epoch: 1,
            },
            weights,
            adam,
        }
    }

    #[test]
    fn an_old_train_config_reads_with_the_card_recipe_and_its_test_share() {
        // As maas wrote it before the validation split: `val_split` was the test share.
        let old = r#"{"batch_size":16,"lr":0.01,"seed":3,"limit":null,"val_split":0.2}"#;
        let config: TrainConfig = serde_json::from_str(old).unwrap();
        let expected = TrainConfig {
            test_split: Some(0.2),
            ..TrainConfig::new(16, 0.01, 3)
        };
        assert_eq!(config, expected);
        // Written back, it says what the share is, and nothing of the recipe's defaults.
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            json,
            r#"{"batch_size":16,"lr":0.01,"seed":3,"limit":null,"test_split":0.2}"#
        );
        let history = r#"{"epoch":1,"train_loss":1,"train_accuracy":0.5,"test_loss":1,"test_accuracy":0.5,"seconds":1,"samples_per_second":1}"#;
        let m: EpochMetrics = serde_json::from_str(history).unwrap();
        assert_eq!((m.val_loss, m.val_accuracy), (None, None));
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
    fn a_checkpoint_with_a_value_that_is_not_finite_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ckpt");
        let mut c = sample();
        c.meta.history.push(EpochMetrics {
            epoch: 1,
            train_loss: f64::NAN,
            train_accuracy: 0.1,
            test_loss: 2.0,
            test_accuracy: 0.1,
            val_loss: None,
            val_accuracy: None,
            seconds: 1.0,
            samples_per_second: 10.0,
        });
        let err = format!("{:#}", c.save(&path).unwrap_err());
        assert!(err.contains("epoch 1: the training loss is NaN"), "{err}");
        c.meta.history[0].train_loss = 2.0;
        c.adam.v.arrays[2].values[3] = f32::INFINITY;
        let err = format!("{:#}", c.save(&path).unwrap_err());
        assert!(err.contains("adam.v.output.weight holds inf"), "{err}");
        assert!(!path.exists());
        c.adam.v.arrays[2].values[3] = 0.0;
        c.save(&path).unwrap();
    }

    #[test]
    fn run_files_epochs_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let files = RunFiles::new(&dir.path().join("ck"));
        assert!(files.run_files().unwrap().is_empty(), "no folder yet");
        std::fs::create_dir_all(&files.dir).unwrap();
        for name in [
            "epoch-010.ckpt",
            "epoch-002.ckpt",
            "epoch-1000.ckpt",
            "epoch-x.ckpt",
            "notes",
        ] {
            std::fs::write(files.dir.join(name), b"x").unwrap();
        }
        let epochs: Vec<usize> = files.epochs().unwrap().iter().map(|(n, _)| *n).collect();
        assert_eq!(epochs, [2, 10, 1000]);
        std::fs::write(files.run_json(), b"{}").unwrap();
        assert_eq!(files.run_files().unwrap()[0], files.run_json());
        assert_eq!(files.remove_run().unwrap(), 4);
        let mut left: Vec<_> = std::fs::read_dir(&files.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["epoch-x.ckpt", "notes"]);
    }

    #[test]
    fn a_locked_folder_is_refused_naming_the_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let files = RunFiles::new(&dir.path().join("ck"));
        let lock = files.lock().unwrap();
        let holder = std::fs::read_to_string(files.lock_file()).unwrap();
        assert!(
            holder.starts_with(&format!("pid {}, started ", std::process::id())),
            "{holder}"
        );
        let err = format!("{:#}", files.lock().unwrap_err());
        assert!(
            err.contains("in use by another maas train, pid ") && err.contains(".maas-train.lock"),
            "{err}"
        );
        drop(lock);
        files.lock().unwrap();
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
