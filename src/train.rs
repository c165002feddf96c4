//! The training loop: shuffled mini-batches, Adam, a test evaluation and a checkpoint per epoch.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::adam::{AdamConfig, AdamState};
use crate::checkpoint::{
    Checkpoint, CheckpointMeta, EpochMetrics, RunFiles, TrainConfig, metrics_csv,
};
use crate::data::cifar10::Cifar10Split;
use crate::data::preprocess::{INPUT_LEN, normalize};
use crate::data::source::{DEFAULT_VAL_SPLIT, DataSource, LoadOptions};
use crate::device::Selected;
use crate::fsutil::write_atomic;
use crate::model::{DEFAULT_HIDDEN, Mlp, ModelConfig, Weights, batch_tensors};
use crate::plots;
use crate::progress::Reporter;
use crate::sharded::{ShardedTrainer, shards_for};

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
    /// Seed of the initial weights and the shuffles.
    pub seed: Option<u64>,
    /// Train on the first N training images only.
    pub limit: Option<usize>,
    /// The dataset: CIFAR-10 or an image folder.
    pub data: DataSource,
    /// For a single image folder: the share of each class held out for testing.
    pub val_split: Option<f64>,
    /// Stop at the first unreadable image instead of skipping it.
    pub strict: bool,
    /// Where checkpoints go.
    pub checkpoints: PathBuf,
    /// Continue from `last.ckpt`.
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

/// Training was stopped by Ctrl-C; the last complete checkpoint stands.
#[derive(Debug, thiserror::Error)]
#[error("interrupted during epoch {epoch}; {saved}")]
pub struct Interrupted {
    /// The epoch that was running.
    pub epoch: usize,
    /// What was saved, and how to go on.
    pub saved: String,
}

/// Paths of the files a run leaves.
#[derive(Debug, Clone, Serialize)]
pub struct RunPaths {
    /// The checkpoints folder.
    pub dir: PathBuf,
    /// The best checkpoint (by test accuracy).
    pub best: PathBuf,
    /// The last complete checkpoint.
    pub last: PathBuf,
    /// The per-epoch metrics.
    pub metrics: PathBuf,
    /// The loss and accuracy curves.
    pub curves: PathBuf,
}

/// What a run did, as `train --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// Epochs complete.
    pub epochs: usize,
    /// Epochs trained by this invocation (fewer than `epochs` after --resume).
    pub epochs_this_run: usize,
    /// Test accuracy after the last epoch.
    pub final_test_accuracy: f64,
    /// Best test accuracy of any epoch.
    pub best_test_accuracy: f64,
    /// The epoch that reached it.
    pub best_epoch: usize,
    /// Mean training loss of the last epoch.
    pub final_train_loss: f64,
    /// Test loss after the last epoch.
    pub final_test_loss: f64,
    /// Training samples per second over this invocation's epochs.
    pub samples_per_second: f64,
    /// The device that trained.
    pub device: String,
    /// Hyper-parameters.
    pub config: TrainConfig,
    /// Hidden width.
    pub hidden: usize,
    /// Where the files are.
    pub checkpoints: RunPaths,
    /// Every epoch's metrics.
    pub history: Vec<EpochMetrics>,
}

/// The distance, in floats, from one image's row to the next in the training tensors: the image
/// and 16 zeros. Why: with rows exactly 3072 floats (12 KiB, a multiple of 4 KiB) apart, the
/// strided reads of the first layer's gradient (`input^T @ d_pre`) fall into the same few cache
/// sets, and that product takes twice as long. Nothing reads the padding: every use takes the
/// first 3072 columns.
const ROW_STRIDE: usize = INPUT_LEN + 16;

/// A split kept on the host as bytes and turned into model input one batch at a time.
///
/// Why not the whole split on the device as floats: that is four bytes a pixel (740 MB for
/// CIFAR-10's 60,000 images, with the padding), and writing them took longer than reading the
/// files; a batch is normalised in microseconds. On the CPU backend a batch's buffer becomes its
/// tensor without a copy; a GPU gets one transfer a step.
struct Batches<'a> {
    split: &'a Cifar10Split,
    classes: usize,
}

impl<'a> Batches<'a> {
    fn new(split: &'a Cifar10Split, classes: usize) -> Result<Self> {
        if let Some(l) = split.labels.iter().find(|&&l| usize::from(l) >= classes) {
            bail!("label {l} is beyond the {classes} classes");
        }
        Ok(Self { split, classes })
    }

    fn len(&self) -> usize {
        self.split.labels.len()
    }

    /// Inputs `[B, ROW_STRIDE]`, one-hot targets `[B, classes]` and labels `[B]` of the images
    /// `index`.
    fn rows(&self, index: &[i64], device: &Device) -> (Tensor<2>, Tensor<2>, Tensor<1, Int>) {
        // Indices come from `epoch_order` or a range of the split: always in bounds.
        let image = |i: i64| {
            let start = i as usize * INPUT_LEN;
            &self.split.images[start..start + INPUT_LEN]
        };
        let n = index.len();
        let mut inputs = Vec::with_capacity(n * ROW_STRIDE);
        for &i in index {
            normalize(image(i), &mut inputs);
            inputs.extend([0.0; ROW_STRIDE - INPUT_LEN]);
        }
        let labels = index
            .iter()
            .map(|&i| i64::from(self.split.labels[i as usize]))
            .collect();
        batch_tensors(inputs, labels, self.classes, device)
    }
}

/// Reads a one-element tensor as f64.
fn scalar<K: burn::tensor::kind::Basic>(tensor: Tensor<1, K>) -> Result<f64> {
    let data = tensor
        .try_into_data()
        .map_err(|e| anyhow::anyhow!("reading from the device failed: {e:?}"))?;
    let v = data
        .try_into_vec_as::<f64>()
        .map_err(|e| anyhow::anyhow!("unexpected tensor data: {e:?}"))?;
    v.first().copied().context("empty tensor")
}

/// Mean loss and accuracy of `model` on `data`.
fn evaluate(model: &Mlp, data: &Batches, device: &Device) -> Result<(f64, f64)> {
    const CHUNK: usize = 1000;
    let len = data.len();
    if len == 0 {
        return Ok((0.0, 0.0));
    }
    let mut loss = Tensor::<1>::zeros([1], device);
    let mut correct = Tensor::<1, Int>::zeros([1], device);
    for start in (0..len).step_by(CHUNK) {
        let end = (start + CHUNK).min(len);
        let index: Vec<i64> = (start as i64..end as i64).collect();
        let (x, y, l) = data.rows(&index, device);
        let logits = model.forward(x.slice_dim(1, 0..INPUT_LEN));
        loss = loss + (log_softmax(logits.clone(), 1) * y).sum().neg();
        correct = correct + logits.argmax(1).reshape([end - start]).equal(l).int().sum();
    }
    Ok((scalar(loss)? / len as f64, scalar(correct)? / len as f64))
}

fn check_same<T: PartialEq + std::fmt::Display>(
    flag: &str,
    given: Option<T>,
    saved: T,
    path: &Path,
) -> Result<()> {
    match given {
        Some(g) if g != saved => bail!(
            "{}: this run was trained with {flag} {saved}, not {g}; drop {flag} to resume it, or start a new run in another --checkpoints folder",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// Where training starts: a fresh model, or the last complete checkpoint.
fn starting_point(
    opts: &TrainOptions,
    files: &RunFiles,
    classes: &[String],
    reporter: &Reporter,
) -> Result<Checkpoint> {
    let last = files.last();
    if opts.resume && last.exists() {
        let ckpt = Checkpoint::load(&last)?;
        check_same("--hidden", opts.hidden, ckpt.meta.model.hidden, &last)?;
        check_same(
            "--batch-size",
            opts.batch_size,
            ckpt.meta.train.batch_size,
            &last,
        )?;
        check_same("--lr", opts.lr, ckpt.meta.train.lr, &last)?;
        check_same("--seed", opts.seed, ckpt.meta.train.seed, &last)?;
        if let Some(given) = opts.val_split
            && ckpt
                .meta
                .train
                .val_split
                .is_some_and(|saved| saved != given)
        {
            bail!(
                "{}: this run was trained with --val-split {}, not {given}",
                last.display(),
                ckpt.meta.train.val_split.unwrap_or_default()
            );
        }
        if opts.limit != ckpt.meta.train.limit {
            bail!(
                "{}: this run was trained with --limit {:?}, not {:?}",
                last.display(),
                ckpt.meta.train.limit,
                opts.limit
            );
        }
        if ckpt.meta.model.classes != classes {
            bail!(
                "{}: this run's classes {:?} differ from the dataset's {:?}",
                last.display(),
                ckpt.meta.model.classes,
                classes
            );
        }
        reporter.info(format!(
            "resuming from {} (epoch {} complete)",
            last.display(),
            ckpt.meta.epoch
        ));
        return Ok(ckpt);
    }
    if opts.resume {
        reporter.info(format!(
            "nothing to resume in {}: starting at epoch 1",
            files.dir.display()
        ));
    } else if last.exists() && !opts.overwrite {
        bail!(
            "{} already holds a run ({}); pass --resume to continue it, --overwrite to replace it, or choose another --checkpoints folder",
            files.dir.display(),
            last.display()
        );
    }
    let hidden = opts.hidden.unwrap_or(DEFAULT_HIDDEN);
    let train = TrainConfig {
        batch_size: opts.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
        lr: opts.lr.unwrap_or(DEFAULT_LR),
        seed: opts.seed.unwrap_or(DEFAULT_SEED),
        limit: opts.limit,
        val_split: opts
            .data
            .uses_val_split()
            .then(|| opts.val_split.unwrap_or(DEFAULT_VAL_SPLIT)),
    };
    Ok(Checkpoint {
        weights: Weights::init(hidden, classes.len(), train.seed),
        adam: AdamState::zeros(hidden, classes.len()),
        meta: CheckpointMeta {
            maas_version: crate::VERSION.into(),
            model: ModelConfig::new(hidden, classes.to_vec()),
            train,
            epoch: 0,
            history: Vec::new(),
            best_epoch: 0,
        },
    })
}

/// The shuffle of epoch `epoch`: a function of the seed and the epoch alone, so that a resumed
/// run draws the same batches as an uninterrupted one.
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<i64> {
    let mut order: Vec<i64> = (0..len as i64).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// Trains as `opts` says, checkpointing after every epoch; `stop` ends it early (Ctrl-C).
pub fn train(
    opts: &TrainOptions,
    selected: &Selected,
    reporter: &Reporter,
    stop: &AtomicBool,
) -> Result<TrainSummary> {
    let device = &selected.device;
    let files = RunFiles::new(&opts.checkpoints);
    let classes = opts.data.classes()?;
    let mut state = starting_point(opts, &files, &classes, reporter)?;
    let cfg = state.meta.train.clone();

    let loading = Instant::now();
    let load = LoadOptions {
        seed: cfg.seed,
        val_split: cfg.val_split.unwrap_or(DEFAULT_VAL_SPLIT),
        limit: cfg.limit,
        strict: opts.strict,
    };
    let (train_split, test_split) = opts.data.load(&load, reporter)?;
    if train_split.is_empty() {
        bail!("{}: no training images", opts.data.path().display());
    }
    let train_data = Batches::new(&train_split, classes.len())?;
    let test_data = Batches::new(&test_split, classes.len())?;
    reporter.info(format!(
        "training on {} images, testing on {} ({:.2} s to load), {} classes: {}",
        train_data.len(),
        test_data.len(),
        loading.elapsed().as_secs_f64(),
        classes.len(),
        classes.join(", ")
    ));

    std::fs::create_dir_all(&files.dir)
        .with_context(|| format!("{}: cannot create folder", files.dir.display()))?;
    // A run killed without warning (SIGKILL, power loss) can leave a temporary file of a write that
    // never finished; the folder belongs to this run, so they go.
    crate::fsutil::remove_temporaries(&files.dir)?;
    if state.meta.epoch == 0 {
        let run = serde_json::json!({
            "maas_version": crate::VERSION,
            "model": state.meta.model,
            "train": cfg,
            "dataset": opts.data.path(),
            "device": selected.description,
        });
        write_atomic(
            &files.run_json(),
            serde_json::to_string_pretty(&run)?.as_bytes(),
        )?;
    }

    let mut trainer = ShardedTrainer::new(
        &state.weights,
        &state.adam,
        AdamConfig::new(cfg.lr),
        shards_for(selected.kind),
        device,
    );
    let first_epoch = state.meta.epoch + 1;
    let steps_per_epoch = train_data.len().div_ceil(cfg.batch_size);
    let mut run_samples = 0usize;
    let mut run_seconds = 0f64;

    for epoch in first_epoch..=opts.epochs {
        let bar = reporter.bar(
            steps_per_epoch as u64,
            &format!(
                "epoch {epoch}/{} {{bar:30}} {{pos}}/{{len}} {{msg}} [{{elapsed}}<{{eta}}]",
                opts.epochs
            ),
        );
        let started = Instant::now();
        let order = epoch_order(train_data.len(), cfg.seed, epoch);
        let mut loss_sum = Tensor::<1>::zeros([1], device);
        let mut correct = Tensor::<1, Int>::zeros([1], device);
        let mut indices = order.chunks(cfg.batch_size);
        let mut next = indices.next().map(|index| train_data.rows(index, device));
        for step in 0.. {
            let Some((x, y, labels)) = next.take() else {
                break;
            };
            if stop.load(Ordering::Relaxed) {
                bar.finish_and_clear();
                let saved = if state.meta.epoch == 0 {
                    "no epoch was complete, so no checkpoint was written".to_string()
                } else {
                    format!(
                        "{} holds epoch {}; continue with `maas train --resume --epochs {}`",
                        files.last().display(),
                        state.meta.epoch,
                        opts.epochs
                    )
                };
                return Err(Interrupted { epoch, saved }.into());
            }
            // The next batch is assembled while this one trains, on whichever core is free.
            let following = indices.next();
            let (stats, following) = rayon::join(
                || trainer.step(x, y, labels),
                || following.map(|index| train_data.rows(index, device)),
            );
            next = following;
            loss_sum = loss_sum + stats.loss_sum;
            correct = correct + stats.correct;
            // Reading a value waits for the device, so the bar's figures are refreshed only now
            // and then.
            if reporter.bars && (step + 1) % 50 == 0 {
                let seen = ((step + 1) * cfg.batch_size).min(train_data.len()) as f64;
                let rate = seen / started.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "loss {:.4} acc {:.3} {:.0} samples/s",
                    scalar(loss_sum.clone())? / seen,
                    scalar(correct.clone())? / seen,
                    rate
                ));
            }
            bar.inc(1);
        }
        let train_loss = scalar(loss_sum)? / train_data.len() as f64;
        let train_accuracy = scalar(correct)? / train_data.len() as f64;
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        let (test_loss, test_accuracy) = evaluate(&trainer.model(), &test_data, device)?;
        let metrics = EpochMetrics {
            epoch,
            train_loss,
            train_accuracy,
            test_loss,
            test_accuracy,
            seconds,
            samples_per_second: train_data.len() as f64 / seconds,
        };
        run_samples += train_data.len();
        run_seconds += seconds;
        let improved = state
            .meta
            .best()
            .is_none_or(|b| test_accuracy > b.test_accuracy);
        state.meta.history.push(metrics.clone());
        state.meta.epoch = epoch;
        if improved {
            state.meta.best_epoch = epoch;
        }
        (state.weights, state.adam) = trainer.state()?;
        // The epoch's own file, then best, then last: `last.ckpt` is what --resume trusts, so
        // it is replaced only once everything before it is safely on disk.
        // Encoded once, written as the epoch's file, maybe best, then last.
        let bytes = state.encode()?;
        write_atomic(&files.epoch(epoch), &bytes)?;
        if improved {
            write_atomic(&files.best(), &bytes)?;
        }
        write_atomic(
            &files.metrics_csv(),
            metrics_csv(&state.meta.history).as_bytes(),
        )?;
        write_atomic(
            &files.curves_png(),
            &plots::curves_png(&state.meta.history)?,
        )?;
        write_atomic(&files.last(), &bytes)?;
        reporter.info(format!(
            "epoch {epoch}/{}: train loss {train_loss:.4} acc {train_accuracy:.4} | test loss {test_loss:.4} acc {test_accuracy:.4} | {:.0} samples/s{}",
            opts.epochs,
            metrics.samples_per_second,
            if improved { " | best" } else { "" }
        ));
    }
    if first_epoch > opts.epochs {
        reporter.info(format!(
            "{} already holds {} epochs: nothing to train",
            files.last().display(),
            state.meta.epoch
        ));
    }

    let last = state
        .meta
        .history
        .last()
        .cloned()
        .context("no epoch has been trained")?;
    let best = state.meta.best().cloned().unwrap_or_else(|| last.clone());
    Ok(TrainSummary {
        epochs: state.meta.epoch,
        epochs_this_run: opts.epochs.saturating_sub(first_epoch - 1),
        final_test_accuracy: last.test_accuracy,
        best_test_accuracy: best.test_accuracy,
        best_epoch: best.epoch,
        final_train_loss: last.train_loss,
        final_test_loss: last.test_loss,
        samples_per_second: if run_seconds > 0.0 {
            run_samples as f64 / run_seconds
        } else {
            0.0
        },
        device: selected.description.clone(),
        config: cfg,
        hidden: state.meta.model.hidden,
        checkpoints: RunPaths {
            dir: files.dir.clone(),
            best: files.best(),
            last: files.last(),
            metrics: files.metrics_csv(),
            curves: files.curves_png(),
        },
        history: state.meta.history,
    })
}
