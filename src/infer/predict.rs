//! Images in, labelled probabilities out: the same for `predict`, `serve` and the library.

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::TensorData;
use indicatif::ProgressBar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::artifact::export::LoadedModel;
use crate::data::preprocess::{INPUT_LEN, load_image_file};
use crate::model::{Model, ModelConfig, read_f32};

use crate::data::FileError;

/// One class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    /// Class name.
    pub label: String,
    /// Class index.
    pub index: usize,
    /// Probability.
    pub probability: f32,
}

/// The answer for one image, as one entry of `predict --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The image file.
    pub file: String,
    /// The most probable class.
    pub label: String,
    /// Its index.
    pub index: usize,
    /// Its probability.
    pub probability: f32,
    /// The `k` most probable classes, most probable first.
    pub top_k: Vec<Ranked>,
}

/// The whole answer of `predict`, as `--json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictReport {
    /// The model file used.
    pub model: String,
    /// One entry per image classified, in the order given.
    pub predictions: Vec<Prediction>,
    /// One entry per image that could not be read.
    pub errors: Vec<FileError>,
}

/// Class probabilities for a batch of preprocessed inputs: what a model here and a model deployed
/// behind a URL ([`crate::remote::RemoteModel`]) have in common, so that expanding inputs,
/// ranking, evaluating and printing are written once for both.
pub trait Probabilities {
    /// The class names, in index order (the length of each row of probabilities).
    fn classes(&self) -> &[String];
    /// Class probabilities for preprocessed inputs (each [`INPUT_LEN`] values): one row per
    /// input, in order.
    fn probabilities(&self, inputs: &[f32]) -> Result<Vec<f32>>;
}

impl Probabilities for Classifier {
    fn classes(&self) -> &[String] {
        &self.config.classes
    }

    fn probabilities(&self, inputs: &[f32]) -> Result<Vec<f32>> {
        Classifier::probabilities(self, inputs)
    }
}

/// A loaded model on a device, ready to classify.
pub struct Classifier {
    /// The model, or why the weights do not make one. `new` cannot fail (its callers rely on
    /// that), and a [`LoadedModel`] from [`crate::artifact::export::load_model`] was checked already; one
    /// made by hand with arrays the architecture lacks fails at its first use instead.
    model: std::result::Result<Model, String>,
    config: ModelConfig,
    device: Device,
}

/// Images per forward pass: large enough to amortise the call, small enough to bound memory.
const CHUNK: usize = 1024;

impl Classifier {
    /// Puts `loaded` on `device`.
    pub fn new(loaded: &LoadedModel, device: &Device) -> Self {
        Self {
            model: Model::from_weights(&loaded.config, &loaded.weights, device)
                .map_err(|e| format!("{e:#}")),
            config: loaded.config.clone(),
            device: device.clone(),
        }
    }

    /// The model's configuration (class names, preprocessing).
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// How many classes the model tells apart: the length of each row of probabilities.
    pub fn num_classes(&self) -> usize {
        self.config.classes.len()
    }

    /// Class probabilities for preprocessed inputs (each [`INPUT_LEN`] values), as one batch.
    pub fn probabilities(&self, inputs: &[f32]) -> Result<Vec<f32>> {
        let n = inputs.len() / INPUT_LEN;
        let mut out = Vec::with_capacity(n * self.num_classes());
        let host = self.model.as_ref().is_ok_and(Model::answers_on_host);
        for chunk in inputs.chunks(CHUNK * INPUT_LEN) {
            let rows = chunk.len() / INPUT_LEN;
            if rows == 1 && !host {
                // A lone image goes through burn's matrix product as a pair with a copy of
                // itself: the CPU backend's product for one row takes a path about five times
                // slower than for two (measured: ~790k instructions against ~310k for both rows).
                // Rows are independent, so the first answer is the image's own. (A model on host
                // kernels, the cnn's, gains nothing from it.)
                let mut pair = Vec::with_capacity(2 * INPUT_LEN);
                pair.extend_from_slice(chunk);
                pair.extend_from_slice(chunk);
                let both = self.run(pair, 2)?;
                out.extend_from_slice(&both[..both.len() / 2]);
            } else {
                out.extend(self.run(chunk.to_vec(), rows)?);
            }
        }
        Ok(out)
    }

    /// [`Self::probabilities`] for inputs the caller has no more use for: a batch of up to
    /// [`CHUNK`] images goes to the device without being copied first.
    pub fn probabilities_of(&self, inputs: Vec<f32>) -> Result<Vec<f32>> {
        let rows = inputs.len() / INPUT_LEN;
        if !(2..=CHUNK).contains(&rows) || !inputs.len().is_multiple_of(INPUT_LEN) {
            return self.probabilities(&inputs);
        }
        self.run(inputs, rows)
    }

    /// One forward pass over `rows` preprocessed inputs.
    fn run(&self, inputs: Vec<f32>, rows: usize) -> Result<Vec<f32>> {
        let x = Tensor::<2>::from_data(TensorData::new(inputs, [rows, INPUT_LEN]), &self.device);
        let model = self.model.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        read_f32(model.probabilities(x))
    }

    /// The `k` most probable classes of one row of probabilities, most probable first.
    pub fn rank(&self, probabilities: &[f32], k: usize) -> Vec<Ranked> {
        rank(&self.config.classes, probabilities, k)
    }

    /// The prediction for one row of probabilities.
    pub fn prediction(&self, file: String, probabilities: &[f32], k: usize) -> Prediction {
        prediction(&self.config.classes, file, probabilities, k)
    }

    /// Classifies image files: see [`predict_files`].
    pub fn predict_files(
        &self,
        model_path: &Path,
        files: &[PathBuf],
        k: usize,
        bar: &ProgressBar,
    ) -> Result<PredictReport> {
        predict_files(self, &model_path.display().to_string(), files, k, bar)
    }
}

/// The `k` most probable classes of one row of probabilities, most probable first; a class
/// without a name is called by its index.
pub fn rank(classes: &[String], probabilities: &[f32], k: usize) -> Vec<Ranked> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| {
        probabilities[b]
            .total_cmp(&probabilities[a])
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(k)
        .map(|i| Ranked {
            label: classes.get(i).cloned().unwrap_or_else(|| i.to_string()),
            index: i,
            probability: probabilities[i],
        })
        .collect()
}

/// The prediction for one row of probabilities.
pub fn prediction(classes: &[String], file: String, probabilities: &[f32], k: usize) -> Prediction {
    let top_k = rank(classes, probabilities, k.max(1));
    let (label, index, probability) = top_k.first().map_or((String::new(), 0, 0.0), |b| {
        (b.label.clone(), b.index, b.probability)
    });
    Prediction {
        file,
        label,
        index,
        probability,
        top_k,
    }
}

/// Classifies image files with `model` (named `model_name` in the report), [`CHUNK`] at a time
/// as one batch each; unreadable files are reported, not fatal. `bar` advances by one per file.
pub fn predict_files(
    model: &dyn Probabilities,
    model_name: &str,
    files: &[PathBuf],
    k: usize,
    bar: &ProgressBar,
) -> Result<PredictReport> {
    let classes = model.classes();
    let mut predictions = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    let mut inputs = Vec::new();
    for chunk in files.chunks(CHUNK) {
        inputs.clear();
        let mut good = Vec::with_capacity(chunk.len());
        // Decoded on every core, in order; each file's result is its own.
        let loaded: Vec<_> = chunk
            .par_iter()
            .map(|file| {
                let input = load_image_file(file);
                bar.inc(1);
                input
            })
            .collect();
        for (file, input) in chunk.iter().zip(loaded) {
            match input {
                Ok(input) => {
                    inputs.extend(input);
                    good.push(file.display().to_string());
                }
                Err(e) => errors.push(FileError {
                    file: file.display().to_string(),
                    error: format!("{e:#}"),
                }),
            }
        }
        if !good.is_empty() {
            let probabilities = model.probabilities(&inputs)?;
            predictions.extend(
                good.into_iter()
                    .zip(probabilities.chunks(classes.len().max(1)))
                    .map(|(file, p)| prediction(classes, file, p, k)),
            );
        }
    }
    bar.finish_and_clear();
    Ok(PredictReport {
        model: model_name.to_string(),
        predictions,
        errors,
    })
}

use crate::data::files::ImageWalk;

/// What the user named, as image files: see [`expand_inputs`].
#[derive(Debug, Default)]
pub struct Inputs {
    /// The image files, in the order named (a folder's in name order).
    pub files: Vec<PathBuf>,
    /// Patterns that matched nothing, folders that hold no image or cannot be read.
    pub errors: Vec<FileError>,
    /// Special files (FIFOs, devices) a folder or a pattern held: left out, to be said as
    /// warnings.
    pub skipped: Vec<FileError>,
}

/// Expands what the user named into image files: a folder gives the images inside it
/// (recursively, in name order, links followed), a pattern such as `'photos/*.jpg'` the images
/// it matches, and anything else stays as named. Folders and patterns give each file once,
/// however many links lead to it, and leave special files out; a file named on its own is
/// always tried (reading refuses one that is not a regular file).
pub fn expand_inputs(named: &[PathBuf]) -> Inputs {
    let mut inputs = Inputs::default();
    let mut walk = ImageWalk::default();
    for path in named {
        let text = path.to_string_lossy();
        if path.is_dir() {
            if let Err(e) = walk.folder(path) {
                inputs.errors.push(FileError {
                    file: text.into_owned(),
                    error: format!("{e:#}"),
                });
            } else if walk.files.is_empty() {
                inputs.errors.push(FileError {
                    file: text.into_owned(),
                    error: "folder holds no image files".into(),
                });
            }
        } else if !path.exists() && text.contains(['*', '?', '[']) {
            match glob::glob(&text) {
                Ok(paths) => paths.flatten().for_each(|p| walk.matched(p)),
                Err(e) => {
                    inputs.errors.push(FileError {
                        file: text.into_owned(),
                        error: format!("bad pattern: {e}"),
                    });
                    continue;
                }
            }
            if walk.files.is_empty() {
                inputs.errors.push(FileError {
                    file: text.into_owned(),
                    error: "no image files match".into(),
                });
            }
        } else {
            inputs.files.push(path.clone());
        }
        inputs.files.append(&mut walk.files);
    }
    inputs.skipped = walk.skipped;
    inputs
}

/// The report as a table for people: one row per image, then one line per error. File and
/// class names are escaped ([`crate::terminal::escape`]): a control character in them would
/// break the row or act on the terminal.
pub fn render_table(report: &PredictReport) -> String {
    use crate::terminal::escape;
    let files: Vec<_> = report.predictions.iter().map(|p| escape(&p.file)).collect();
    let labels: Vec<_> = report
        .predictions
        .iter()
        .map(|p| escape(&p.label))
        .collect();
    let width = files
        .iter()
        .map(|f| f.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let label_width = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = String::new();
    if !report.predictions.is_empty() {
        out.push_str(&format!(
            "{:<width$}  {:<label_width$}  {:>6}  TOP-K\n",
            "FILE", "LABEL", "PROB"
        ));
        for ((p, file), label) in report.predictions.iter().zip(&files).zip(&labels) {
            let top: Vec<String> = p
                .top_k
                .iter()
                .map(|r| format!("{} {:.1}%", escape(&r.label), 100.0 * r.probability))
                .collect();
            out.push_str(&format!(
                "{file:<width$}  {label:<label_width$}  {:>5.1}%  {}\n",
                100.0 * p.probability,
                top.join(", ")
            ));
        }
    }
    out
}
