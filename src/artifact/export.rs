//! The deployable artifact: one file with the weights and everything needed to use them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::artifact::checkpoint::{Checkpoint, TrainConfig, take_weights, weight_arrays};
use crate::artifact::container::{self, Kind};
use crate::fsutil::{write_atomic, write_target};
use crate::model::{ModelConfig, Weights, check_answers_finite};

/// Where a model came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The maas that exported it.
    pub maas_version: String,
    /// The checkpoint it was exported from.
    pub source: String,
    /// Epochs trained.
    pub epochs: usize,
    /// Test accuracy of those weights.
    pub test_accuracy: f64,
    /// Test loss of those weights.
    pub test_loss: f64,
    /// The run's hyper-parameters.
    pub train: TrainConfig,
    /// Seconds since the Unix epoch when it was exported.
    pub exported_at_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModelMeta {
    model: ModelConfig,
    provenance: Provenance,
}

/// A model ready to run: its configuration, weights and, for exported files, provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedModel {
    /// Architecture, classes, preprocessing.
    pub config: ModelConfig,
    /// The weights.
    pub weights: Weights,
    /// Where it came from (`None` when read from a checkpoint).
    pub provenance: Option<Provenance>,
    /// How it was trained (seed, `--val-split`), when the file says.
    pub train: Option<TrainConfig>,
    /// The file it was read from.
    pub path: PathBuf,
}

/// The file formats `maas export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// maas's own self-contained file, for `predict` and `serve`.
    Maas,
    /// ONNX (opset 13), for other runtimes.
    Onnx,
}

impl Format {
    /// The default output file of this format.
    pub fn default_output(self) -> &'static str {
        match self {
            Format::Maas => DEFAULT_MODEL,
            Format::Onnx => "model.onnx",
        }
    }
}

/// Writes the model of `checkpoint` to `out` as one self-contained file in `format`.
///
/// Refuses to replace the checkpoint itself or any other checkpoint (a model file in its place
/// would end the run's resumes), and anything [`write_target`] refuses.
pub fn export(checkpoint: &Path, out: &Path, format: Format) -> Result<LoadedModel> {
    let target = write_target(out)?;
    // Read first: that refuses a checkpoint that is not a regular file (a FIFO), which the
    // comparison below would otherwise open and wait on.
    let (mut model, bytes) = export_bytes(checkpoint, format)?;
    if same_file::is_same_file(checkpoint, &target).unwrap_or(false) {
        bail!(
            "{}: is the checkpoint being exported; refusing to replace it, choose another output",
            out.display()
        );
    }
    if container::peek_kind(&target) == Some(Kind::Checkpoint) {
        bail!(
            "{}: is a training checkpoint; refusing to replace it with a model, choose another output",
            out.display()
        );
    }
    write_atomic(out, &bytes)?;
    model.path = out.to_path_buf();
    Ok(model)
}

/// The bytes of the file [`export`] writes, for a caller that sends them elsewhere (`-o -`:
/// stdout); the model's `path` is `-`.
pub fn export_bytes(checkpoint: &Path, format: Format) -> Result<(LoadedModel, Vec<u8>)> {
    let ckpt = Checkpoint::load(checkpoint)?;
    // A model every command would refuse to load is not worth writing.
    ckpt.weights
        .check_finite()
        .and_then(|()| check_answers_finite(&ckpt.meta.model, &ckpt.weights))
        .with_context(|| format!("{}", checkpoint.display()))?;
    let last = ckpt
        .meta
        .history
        .iter()
        .find(|m| m.epoch == ckpt.meta.epoch)
        .with_context(|| format!("{}: holds no completed epoch", checkpoint.display()))?;
    let provenance = Provenance {
        maas_version: crate::VERSION.into(),
        source: checkpoint.display().to_string(),
        epochs: ckpt.meta.epoch,
        test_accuracy: last.test_accuracy,
        test_loss: last.test_loss,
        train: ckpt.meta.train.clone(),
        exported_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let bytes = match format {
        Format::Maas => {
            let meta = ModelMeta {
                model: ckpt.meta.model.clone(),
                provenance: provenance.clone(),
            };
            container::encode(
                Kind::Model,
                serde_json::to_value(&meta)?,
                &weight_arrays("", &ckpt.weights),
            )?
        }
        Format::Onnx => {
            let provenance = serde_json::to_string(&provenance)
                .context("cannot write the model's provenance as ONNX metadata")?;
            let metadata = vec![("provenance".to_string(), provenance)];
            crate::artifact::onnx::encode(&ckpt.meta.model, &ckpt.weights, metadata)?
        }
    };
    let model = LoadedModel {
        config: ckpt.meta.model,
        weights: ckpt.weights,
        train: Some(provenance.train.clone()),
        provenance: Some(provenance),
        path: PathBuf::from("-"),
    };
    Ok((model, bytes))
}

/// Loads a model file (`maas export`) or a checkpoint, checking that this maas can run it.
pub fn load_model(path: &Path) -> Result<LoadedModel> {
    let contents = container::read(path)?;
    model_from_contents(contents, path).with_context(|| format!("{}", path.display()))
}

/// Decodes the bytes of a model file or checkpoint exactly as [`load_model`] does a file, for
/// callers (and the fuzz targets in `fuzz/`) that hold the bytes; `path` is only recorded.
pub fn decode_model(bytes: &[u8], path: &Path) -> Result<LoadedModel> {
    model_from_contents(container::decode(bytes)?, path)
}

fn model_from_contents(mut contents: container::Contents, path: &Path) -> Result<LoadedModel> {
    super::migrate::upgrade_arrays(contents.version, &mut contents.arrays);
    let loaded = model_of_kind(contents, path)?;
    // Checked here, where every command loads its model, rather than by each command.
    loaded.weights.check_finite()?;
    check_answers_finite(&loaded.config, &loaded.weights)?;
    Ok(loaded)
}

fn model_of_kind(mut contents: container::Contents, path: &Path) -> Result<LoadedModel> {
    match contents.kind {
        Kind::Checkpoint => {
            let ckpt = Checkpoint::from_contents(contents)?;
            Ok(LoadedModel {
                config: ckpt.meta.model,
                weights: ckpt.weights,
                train: Some(ckpt.meta.train),
                provenance: None,
                path: path.to_path_buf(),
            })
        }
        Kind::Model => {
            let meta: ModelMeta =
                serde_json::from_value(contents.meta.clone()).context("unreadable model header")?;
            meta.model.check_supported()?;
            let weights = take_weights(&mut contents, "", &meta.model)?;
            Ok(LoadedModel {
                config: meta.model,
                weights,
                train: Some(meta.provenance.train.clone()),
                provenance: Some(meta.provenance),
                path: path.to_path_buf(),
            })
        }
    }
}

/// The default model file of `predict` and `serve`.
pub const DEFAULT_MODEL: &str = "model.maas";

/// Finds the model to use: `--model` when given; else `model.maas`; else the best checkpoint in
/// `checkpoints`, with a note saying so. The note is `None` when the model was found where asked.
pub fn resolve_model(
    explicit: Option<&Path>,
    checkpoints: &Path,
) -> Result<(PathBuf, Option<String>)> {
    if let Some(path) = explicit {
        if !path.exists() {
            bail!("{}: not found", path.display());
        }
        return Ok((path.to_path_buf(), None));
    }
    let default = Path::new(DEFAULT_MODEL);
    if default.exists() {
        return Ok((default.to_path_buf(), None));
    }
    let best = checkpoints.join("best.ckpt");
    if best.exists() {
        let note = format!(
            "{DEFAULT_MODEL} not found: using the best checkpoint, {}",
            best.display()
        );
        return Ok((best, Some(note)));
    }
    bail!(
        "no model: neither {DEFAULT_MODEL} nor {} exists; train one with `maas train` (and `maas export`), or pass --model PATH",
        best.display()
    )
}
