//! The training loop: shuffled (and, with --augment, cropped and flipped) mini-batches, Adam on
//! a schedule, a validation and a test evaluation and a checkpoint per epoch. The validation
//! split alone chooses `best.ckpt` and stops early; the test split is only measured.

pub mod adam;
pub mod autodiff;
pub mod cpu;
mod options;
mod resume;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use options::{DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_SEED, TrainOptions};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::artifact::checkpoint::{
    Checkpoint, CheckpointMeta, EpochMetrics, RunFiles, TrainConfig, metrics_csv,
};
use crate::data::LabelledImages;
use crate::data::preprocess::{INPUT_LEN, normalize};
use crate::data::source::{DEFAULT_TEST_SPLIT, LoadOptions, carve_validation};
use crate::device::Selected;
use crate::fsutil::write_atomic;
use crate::model::{Model, stats};
use crate::plots;
use crate::progress::Reporter;
use crate::train::adam::{AdamConfig, Recipe};
use crate::train::cpu::sharded::shards_for;
use crate::train::step::{Batch, TrainStep};
use crate::train::trainer::{Start, trainer};
use resume::starting_point;

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
    /// The best checkpoint (by validation accuracy; the last epoch without validation).
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
    /// Test accuracy of the epoch `best.ckpt` holds (measured, never used to choose it).
    pub best_test_accuracy: f64,
    /// The epoch `best.ckpt` holds: the best validation accuracy, or the last epoch.
    pub best_epoch: usize,
    /// Validation accuracy of that epoch (none without a validation split).
    pub best_val_accuracy: Option<f64>,
    /// What chose `best.ckpt`: `validation accuracy` or `last epoch`.
    pub best_chosen_by: String,
    /// Validation accuracy after the last epoch (none without a validation split).
    pub final_val_accuracy: Option<f64>,
    /// Whether --patience ended the run before --epochs.
    pub stopped_early: bool,
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
    /// The architecture's name (`mlp-3072-relu-10`, `cnn-conv32-conv64-dense128`).
    pub architecture: String,
    /// Where the files are.
    pub checkpoints: RunPaths,
    /// Every epoch's metrics.
    pub history: Vec<EpochMetrics>,
}

/// A split kept on the host as bytes and turned into model input one batch at a time.
///
/// Why not the whole split on the device as floats: that is four bytes a pixel (740 MB for
/// CIFAR-10's 60,000 images, with the padding), and writing them took longer than reading the
/// files; a batch is normalised in microseconds. On the CPU backend a batch's buffer becomes its
/// tensor without a copy; a GPU gets one transfer a step.
struct Batches<'a> {
    split: &'a LabelledImages,
    classes: usize,
}

impl<'a> Batches<'a> {
    fn new(split: &'a LabelledImages, classes: usize) -> Result<Self> {
        if let Some(l) = split.labels.iter().find(|&&l| usize::from(l) >= classes) {
            bail!("label {l} is beyond the {classes} classes");
        }
        Ok(Self { split, classes })
    }

    fn len(&self) -> usize {
        self.split.labels.len()
    }

    /// The batch of the images `index` in rows of `stride` floats, each cropped and flipped as
    /// `augment` draws it when given.
    fn rows(&self, index: &[i64], augment: Option<Augment>, stride: usize) -> Batch {
        // Indices come from `epoch_order` or a range of the split: always in bounds.
        let image = |i: i64| {
            let start = i as usize * INPUT_LEN;
            &self.split.images[start..start + INPUT_LEN]
        };
        let n = index.len();
        let mut inputs = Vec::with_capacity(n * stride);
        let mut plain = Vec::with_capacity(INPUT_LEN);
        for &i in index {
            match augment {
                Some(a) => {
                    plain.clear();
                    normalize(image(i), &mut plain);
                    a.apply(i, &plain, &mut inputs);
                }
                None => normalize(image(i), &mut inputs),
            }
            inputs.resize(inputs.len() + stride.saturating_sub(INPUT_LEN), 0.0);
        }
        let labels = index
            .iter()
            .map(|&i| i64::from(self.split.labels[i as usize]))
            .collect();
        Batch {
            inputs,
            stride: stride.max(INPUT_LEN),
            labels,
            classes: self.classes,
        }
    }
}

/// `--augment`: a random crop of 32x32 after 4 pixels of zero padding (zero in model input,
/// which is black: the same as torchvision's zero padding before its scaling), then a
/// horizontal flip half the time. Drawn from the seed, the epoch and the image alone, so that a
/// resumed run sees the same images, whatever the batches or threads.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Augment {
    seed: u64,
    epoch: usize,
}

impl Augment {
    const PAD: usize = 4;
    const SIDE: usize = 32;

    /// The crop's offsets in the padded image (0..=8 each) and whether to flip, of image `i`.
    fn draw(self, i: i64) -> (usize, usize, bool) {
        // splitmix64's finaliser of the seed, epoch and image mixed.
        let mut z = self.seed
            ^ (self.epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let span = 2 * Self::PAD as u64 + 1;
        (
            (z % span) as usize,
            ((z >> 16) % span) as usize,
            (z >> 32) & 1 == 1,
        )
    }

    /// Appends image `i`, `plain` (channel-major model input), cropped and flipped, to `out`.
    fn apply(self, i: i64, plain: &[f32], out: &mut Vec<f32>) {
        let (dy, dx, flip) = self.draw(i);
        let side = Self::SIDE;
        for plane in plain.chunks_exact(side * side) {
            for y in 0..side {
                for x in 0..side {
                    let x = if flip { side - 1 - x } else { x };
                    // The pixel of the padded image at (y + dy, x + dx), in the original's terms.
                    let (sy, sx) = (
                        (y + dy).wrapping_sub(Self::PAD),
                        (x + dx).wrapping_sub(Self::PAD),
                    );
                    out.push(if sy < side && sx < side {
                        plane[sy * side + sx]
                    } else {
                        0.0
                    });
                }
            }
        }
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
fn evaluate(model: &Model, data: &Batches, device: &Device) -> Result<(f64, f64)> {
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
        let (x, y, l) = data.rows(&index, None, INPUT_LEN).tensors(device);
        let batch = stats(model.forward(x.slice_dim(1, 0..INPUT_LEN)), y, l);
        loss = loss + batch.loss_sum;
        correct = correct + batch.correct;
    }
    Ok((scalar(loss)? / len as f64, scalar(correct)? / len as f64))
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
    // Held to the end: a second run on the folder would mix its files with this one's.
    let _lock = files.lock()?;
    let mut state = starting_point(opts, &files, &classes, reporter)?;
    let cfg = state.meta.train.clone();

    let loading = Instant::now();
    let load = LoadOptions {
        seed: cfg.seed,
        test_split: cfg.test_split.unwrap_or(DEFAULT_TEST_SPLIT),
        limit: cfg.limit,
        strict: opts.strict,
    };
    let (mut train_split, test_split) = opts.data.load(&load, reporter)?;
    let validation_split = match cfg.validation_split {
        Some(share) => {
            let (kept, validation) = carve_validation(&train_split, share, cfg.seed);
            train_split = kept;
            if validation.is_empty() {
                bail!(
                    "{}: --val-split {share} holds out no image (a class needs two images or more)",
                    opts.data.path().display()
                );
            }
            Some(validation)
        }
        None => None,
    };
    if train_split.is_empty() {
        bail!("{}: no training images", opts.data.path().display());
    }
    // An empty test split would make every epoch "best" at accuracy 0: refused instead.
    if test_split.is_empty() {
        let hint = if opts.data.uses_test_split() {
            "--test-split holds out images only from classes of two images or more; add images, or a test/ folder beside train/"
        } else {
            "add test images"
        };
        bail!(
            "{}: no test images to measure the model on ({hint})",
            opts.data.path().display()
        );
    }
    let train_data = Batches::new(&train_split, classes.len())?;
    let test_data = Batches::new(&test_split, classes.len())?;
    let validation_data = validation_split
        .as_ref()
        .map(|v| Batches::new(v, classes.len()))
        .transpose()?;
    reporter.info(format!(
        "training on {} images, testing on {}, validating on {} ({:.2} s to load), {} classes: {}",
        train_data.len(),
        test_data.len(),
        match (&validation_data, cfg.validation_split) {
            (Some(v), Some(share)) => format!(
                "{} ({}% of each class, drawn with seed {}: they choose best.ckpt)",
                v.len(),
                100.0 * share,
                cfg.seed
            ),
            _ => "none (best.ckpt is the last epoch)".to_string(),
        },
        loading.elapsed().as_secs_f64(),
        classes.len(),
        crate::terminal::escape(&classes.join(", "))
    ));

    prepare_folder(&files, &state, opts, selected, reporter)?;
    crate::train::cpu::subnormals::flush_to_zero();
    let mut trainer = trainer(&Start {
        config: &state.meta.model,
        weights: &state.weights,
        state: &state.adam,
        adam: adam_config(&cfg, train_data.len()),
        shards: shards_for(selected.kind),
        device,
    })?;
    let first_epoch = state.meta.epoch + 1;
    let epochs = EpochLoop {
        train: &train_data,
        validation: validation_data.as_ref(),
        test: &test_data,
        files: &files,
        epochs: opts.epochs,
        reporter,
        stop,
        device,
    };
    let throughput = epochs.run(&mut state, trainer.as_mut())?;
    if first_epoch > opts.epochs {
        reporter.info(format!(
            "{} already holds {} epochs: nothing to train",
            files.last().display(),
            state.meta.epoch
        ));
    }
    // Fewer than asked when --patience stopped the run.
    let epochs_this_run = (state.meta.epoch + 1).saturating_sub(first_epoch);
    summarize(
        state.meta,
        epochs_this_run,
        throughput,
        selected.description.clone(),
        &files,
    )
}

/// Adam's configuration for the run of `cfg` on `train_len` images: its rate, and the schedule
/// over all the steps its schedule's epochs take, with its weight decay.
fn adam_config(cfg: &TrainConfig, train_len: usize) -> AdamConfig {
    let steps_per_epoch = train_len.div_ceil(cfg.batch_size) as u64;
    AdamConfig {
        recipe: Recipe {
            schedule: cfg.lr_schedule,
            total_steps: cfg.schedule_epochs.unwrap_or(0) as u64 * steps_per_epoch,
            weight_decay: cfg.weight_decay,
            warmup_steps: (cfg.warmup_epochs * steps_per_epoch as f64).round() as u64,
        },
        ..AdamConfig::new(cfg.lr)
    }
}

/// Whether `meta`'s run has ended by --patience: its validation accuracy has not improved for
/// that many epochs.
fn stopped_early(meta: &CheckpointMeta) -> bool {
    let t = &meta.train;
    t.validation_split.is_some()
        && t.patience
            .is_some_and(|p| meta.epoch > 0 && meta.epoch >= meta.best_epoch + p)
}

/// Clears what an earlier killed run left half-written and, for a run that starts at epoch 0,
/// the earlier run's files (allowed by --overwrite, or run.json alone of a run killed in its
/// first epoch), then writes `run.json`.
fn prepare_folder(
    files: &RunFiles,
    state: &Checkpoint,
    opts: &TrainOptions,
    selected: &Selected,
    reporter: &Reporter,
) -> Result<()> {
    // A run killed without warning (SIGKILL, power loss) can leave a temporary file of a write that
    // never finished; the folder belongs to this run, so they go.
    crate::fsutil::remove_temporaries(&files.dir)?;
    if state.meta.epoch == 0 {
        // None of the old run's epochs may be left to pass for the new run's.
        let removed = files.remove_run()?;
        // On --resume these are the same run's, started again (starting_point said so).
        if removed > 0 && !opts.resume {
            reporter.info(format!(
                "removed the earlier run's {removed} file{} from {}",
                if removed == 1 { "" } else { "s" },
                files.dir.display()
            ));
        }
        let run = serde_json::json!({
            "maas_version": crate::VERSION,
            "model": state.meta.model,
            "train": state.meta.train,
            "dataset": opts.data.path(),
            "device": selected.description,
        });
        write_atomic(
            &files.run_json(),
            serde_json::to_string_pretty(&run)?.as_bytes(),
        )?;
    }
    Ok(())
}

/// Samples trained and seconds spent by one invocation's epochs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Throughput {
    samples: usize,
    seconds: f64,
}

/// One epoch's pass over the training data.
#[derive(Debug, Clone, Copy)]
struct EpochTraining {
    loss: f64,
    accuracy: f64,
    seconds: f64,
}

/// The epochs of a run: what they train and test on, where they checkpoint, how far they go.
struct EpochLoop<'a> {
    train: &'a Batches<'a>,
    /// Chooses `best.ckpt` and drives --patience; none: the last epoch is best.
    validation: Option<&'a Batches<'a>>,
    test: &'a Batches<'a>,
    files: &'a RunFiles,
    /// Train until this many epochs are complete.
    epochs: usize,
    reporter: &'a Reporter,
    /// Set by Ctrl-C: the loop ends with [`Interrupted`] before the next step.
    stop: &'a AtomicBool,
    device: &'a Device,
}

impl EpochLoop<'_> {
    /// Trains the epochs after `state`'s last complete one, up to `self.epochs`; after each,
    /// tests, records the epoch in `state` and writes its checkpoint.
    fn run(&self, state: &mut Checkpoint, trainer: &mut dyn TrainStep) -> Result<Throughput> {
        let (batch_size, seed) = (state.meta.train.batch_size, state.meta.train.seed);
        let mut throughput = Throughput::default();
        if stopped_early(&state.meta) {
            self.reporter.info(format!(
                "this run stopped early at epoch {} (--patience): nothing to train",
                state.meta.epoch
            ));
            return Ok(throughput);
        }
        let augment = state.meta.train.augment;
        for epoch in state.meta.epoch + 1..=self.epochs {
            let augment = augment.then_some(Augment { seed, epoch });
            let Some(trained) = self.train_epoch(trainer, epoch, batch_size, seed, augment)? else {
                let mut saved = self.kept(state);
                if state.meta.epoch > 0 {
                    saved += &format!(
                        "; continue with `maas train --resume --epochs {}`",
                        self.epochs
                    );
                }
                return Err(Interrupted { epoch, saved }.into());
            };
            let model = trainer.model()?;
            let (test_loss, test_accuracy) = evaluate(&model, self.test, self.device)?;
            let validated = self
                .validation
                .map(|v| evaluate(&model, v, self.device))
                .transpose()?;
            let metrics = EpochMetrics {
                epoch,
                train_loss: trained.loss,
                train_accuracy: trained.accuracy,
                test_loss,
                test_accuracy,
                val_loss: validated.map(|v| v.0),
                val_accuracy: validated.map(|v| v.1),
                seconds: trained.seconds,
                samples_per_second: self.train.len() as f64 / trained.seconds.max(1e-9),
            };
            // A diverged run (a learning rate far too large) stops here, before its epoch is
            // recorded or written: the checkpoints on disk stay the last good ones. A weight
            // that is not finite makes the test loss NaN; `Checkpoint::encode` checks the arrays
            // themselves before anything is written.
            if let Some(bad) = metrics.non_finite() {
                bail!(
                    "epoch {epoch}: training diverged ({bad}); try a smaller --lr than this run's {:e}, in a new run (--overwrite replaces this one); {}",
                    state.meta.train.lr,
                    self.kept(state)
                );
            }
            throughput.samples += self.train.len();
            throughput.seconds += trained.seconds;
            let improved = record_epoch(&mut state.meta, metrics.clone());
            (state.weights, state.adam) = trainer.state()?;
            write_checkpoint(self.files, state, improved)?;
            let val = validated.map_or(String::new(), |(loss, acc)| {
                format!(" | val loss {loss:.4} acc {acc:.4}")
            });
            self.reporter.info(format!(
                "epoch {epoch}/{}: train loss {:.4} acc {:.4}{val} | test loss {test_loss:.4} acc {test_accuracy:.4} | {:.0} samples/s{}",
                self.epochs,
                trained.loss,
                trained.accuracy,
                metrics.samples_per_second,
                if improved && self.validation.is_some() { " | best" } else { "" }
            ));
            if stopped_early(&state.meta) {
                let best = state
                    .meta
                    .best()
                    .and_then(|b| b.val_accuracy)
                    .unwrap_or(0.0);
                self.reporter.info(format!(
                    "stopping early: the validation accuracy has not improved for {} epochs (--patience); best {best:.4} at epoch {}",
                    epoch - state.meta.best_epoch,
                    state.meta.best_epoch
                ));
                break;
            }
        }
        Ok(throughput)
    }

    /// What the folder still holds of the run `state` has reached.
    fn kept(&self, state: &Checkpoint) -> String {
        if state.meta.epoch == 0 {
            "no epoch was complete, so no checkpoint was written".to_string()
        } else {
            format!(
                "{} holds epoch {}",
                self.files.last().display(),
                state.meta.epoch
            )
        }
    }

    /// One pass over the training data in the order of [`epoch_order`]; `None` when `stop` was
    /// set before a step. A loss that is no longer finite ends the pass early when the bar reads
    /// it; the caller finds it in the epoch's loss.
    fn train_epoch(
        &self,
        trainer: &mut dyn TrainStep,
        epoch: usize,
        batch_size: usize,
        seed: u64,
        augment: Option<Augment>,
    ) -> Result<Option<EpochTraining>> {
        let (data, device) = (self.train, self.device);
        let bar = self.reporter.bar(
            data.len().div_ceil(batch_size) as u64,
            &format!(
                "epoch {epoch}/{} {{bar:30}} {{pos}}/{{len}} {{msg}} [{{elapsed}}<{{eta}}]",
                self.epochs
            ),
        );
        let started = Instant::now();
        let order = epoch_order(data.len(), seed, epoch);
        let mut loss_sum = Tensor::<1>::zeros([1], device);
        let mut correct = Tensor::<1, Int>::zeros([1], device);
        let mut indices = order.chunks(batch_size);
        let stride = trainer.row_stride();
        let mut next = indices
            .next()
            .map(|index| data.rows(index, augment, stride));
        for step in 0.. {
            let Some(batch) = next.take() else {
                break;
            };
            if self.stop.load(Ordering::Relaxed) {
                bar.finish_and_clear();
                return Ok(None);
            }
            // The next batch is assembled while this one trains, on whichever core is free.
            let following = indices.next();
            let (stats, following) = rayon::join(
                || trainer.step(batch),
                || following.map(|index| data.rows(index, augment, stride)),
            );
            next = following;
            let stats = stats?;
            loss_sum = loss_sum + stats.loss_sum;
            correct = correct + stats.correct;
            // Reading a value waits for the device, so the bar's figures are refreshed only now
            // and then.
            if self.reporter.bars && (step + 1) % 50 == 0 {
                let seen = ((step + 1) * batch_size).min(data.len()) as f64;
                let rate = seen / started.elapsed().as_secs_f64();
                let running = scalar(loss_sum.clone())? / seen;
                // Diverged: the rest of the epoch cannot mend it (NaN stays in the sum).
                if !running.is_finite() {
                    break;
                }
                bar.set_message(format!(
                    "loss {running:.4} acc {:.3} {:.0} samples/s",
                    scalar(correct.clone())? / seen,
                    rate
                ));
            }
            bar.inc(1);
        }
        let loss = scalar(loss_sum)? / data.len() as f64;
        let accuracy = scalar(correct)? / data.len() as f64;
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        Ok(Some(EpochTraining {
            loss,
            accuracy,
            seconds,
        }))
    }
}

/// Adds `metrics` to `meta` as its newest complete epoch; whether it becomes the best epoch:
/// it beat the best validation accuracy so far (the first epoch always does), or, without a
/// validation split, it is the last. The test accuracy never chooses.
fn record_epoch(meta: &mut CheckpointMeta, metrics: EpochMetrics) -> bool {
    let improved = match metrics.val_accuracy {
        Some(val) => meta
            .best()
            .and_then(|b| b.val_accuracy)
            .is_none_or(|best| val > best),
        None => true,
    };
    meta.epoch = metrics.epoch;
    meta.history.push(metrics);
    if improved {
        meta.best_epoch = meta.epoch;
    }
    improved
}

/// Writes the checkpoint of `state`'s last epoch: the epoch's own file, `best.ckpt` when
/// `improved`, `metrics.csv`, `curves.png`, then `last.ckpt`. `last.ckpt` is what --resume
/// trusts, so it is replaced only once everything before it is safely on disk.
fn write_checkpoint(files: &RunFiles, state: &Checkpoint, improved: bool) -> Result<()> {
    // Encoded once, written as the epoch's file, maybe best, then last.
    let bytes = state.encode()?;
    write_atomic(&files.epoch(state.meta.epoch), &bytes)?;
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
    Ok(())
}

/// The summary of a run whose state is now `meta`.
fn summarize(
    meta: CheckpointMeta,
    epochs_this_run: usize,
    throughput: Throughput,
    device: String,
    files: &RunFiles,
) -> Result<TrainSummary> {
    let last = meta
        .history
        .last()
        .cloned()
        .context("no epoch has been trained")?;
    let best = meta.best().cloned().unwrap_or_else(|| last.clone());
    Ok(TrainSummary {
        epochs: meta.epoch,
        epochs_this_run,
        final_test_accuracy: last.test_accuracy,
        best_test_accuracy: best.test_accuracy,
        best_epoch: best.epoch,
        best_val_accuracy: best.val_accuracy,
        best_chosen_by: if best.val_accuracy.is_some() {
            "validation accuracy"
        } else {
            "last epoch"
        }
        .into(),
        final_val_accuracy: last.val_accuracy,
        stopped_early: stopped_early(&meta),
        final_train_loss: last.train_loss,
        final_test_loss: last.test_loss,
        samples_per_second: if throughput.seconds > 0.0 {
            throughput.samples as f64 / throughput.seconds
        } else {
            0.0
        },
        device,
        config: meta.train,
        hidden: meta.model.hidden,
        architecture: meta.model.architecture.clone(),
        checkpoints: RunPaths {
            dir: files.dir.clone(),
            best: files.best(),
            last: files.last(),
            metrics: files.metrics_csv(),
            curves: files.curves_png(),
        },
        history: meta.history,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::resume::{check_resume, check_run_json, fresh_start};
    use super::*;
    use crate::data::source::DataSource;
    use crate::data::synthetic;
    use crate::model::DEFAULT_HIDDEN;
    use crate::model::Weights;

    fn classes() -> Vec<String> {
        synthetic::CLASS_NAMES.map(String::from).to_vec()
    }

    /// Options of a run in `dir` with everything left to the defaults.
    fn options(dir: &Path) -> TrainOptions {
        TrainOptions {
            epochs: 1,
            batch_size: None,
            lr: None,
            hidden: None,
            arch: None,
            seed: None,
            limit: None,
            data: DataSource::Cifar10(dir.join("data")),
            test_split: None,
            val_split: None,
            augment: false,
            lr_schedule: None,
            weight_decay: None,
            warmup_epochs: None,
            patience: None,
            strict: false,
            checkpoints: dir.join("checkpoints"),
            resume: false,
            overwrite: false,
        }
    }

    /// A small fresh run: hidden 8, batches of 8, seed 7, on 10 classes.
    fn small_run(dir: &Path) -> Checkpoint {
        let opts = TrainOptions {
            hidden: Some(8),
            arch: None,
            batch_size: Some(8),
            lr: Some(0.01),
            seed: Some(7),
            ..options(dir)
        };
        fresh_start(&opts, &classes()).unwrap()
    }

    fn message<T: std::fmt::Debug>(result: Result<T>) -> String {
        format!("{:#}", result.unwrap_err())
    }

    /// `n` synthetic images, image `i` of class `i % 10`.
    fn images(n: usize, seed: u64) -> LabelledImages {
        let mut split = LabelledImages::default();
        for i in 0..n {
            split
                .images
                .extend(synthetic::sample_image(i % 10, seed + i as u64));
            split.labels.push((i % 10) as u8);
        }
        split
    }

    /// `a` and `b` are the same checkpoint, the metrics compared to within the last digit that
    /// JSON keeps (serde_json's parser may be one unit off in the last place).
    fn assert_same(a: &Checkpoint, b: &Checkpoint) {
        assert_eq!(a.weights, b.weights);
        assert_eq!(a.adam, b.adam);
        assert_eq!(a.meta.model, b.meta.model);
        assert_eq!(
            (a.meta.epoch, a.meta.best_epoch, a.meta.train.seed),
            (b.meta.epoch, b.meta.best_epoch, b.meta.train.seed)
        );
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(y.abs());
        assert!(close(a.meta.train.lr, b.meta.train.lr));
        assert_eq!(a.meta.history.len(), b.meta.history.len());
        for (x, y) in a.meta.history.iter().zip(&b.meta.history) {
            assert_eq!(x.epoch, y.epoch);
            assert!(close(x.train_loss, y.train_loss) && close(x.test_accuracy, y.test_accuracy));
            assert!(close(x.seconds, y.seconds), "{x:?} {y:?}");
        }
    }

    fn metrics(epoch: usize, test_accuracy: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: 2.0,
            train_accuracy: 0.5,
            test_loss: 2.1,
            test_accuracy,
            // The test accuracy doubles as the validation one: it is what these tests vary.
            val_loss: Some(2.1),
            val_accuracy: Some(test_accuracy),
            seconds: 1.0,
            samples_per_second: 100.0,
        }
    }

    #[test]
    fn augment_crops_with_black_padding_and_flips_as_drawn_from_seed_epoch_and_image() {
        let plain: Vec<f32> = (0..INPUT_LEN).map(|i| 1.0 + i as f32).collect();
        let a = Augment { seed: 42, epoch: 3 };
        let mut draws = std::collections::HashSet::new();
        for i in 0..200 {
            let (dy, dx, flip) = a.draw(i);
            assert!(dy <= 8 && dx <= 8);
            draws.insert((dy, dx, flip));
            let mut out = Vec::new();
            a.apply(i, &plain, &mut out);
            assert_eq!(out.len(), INPUT_LEN);
            // Each output pixel is the source's at the drawn offset, or black padding.
            for c in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        let sx = if flip { 31 - x } else { x } + dx;
                        let (sy, sx) = (y + dy, sx);
                        let want = if (4..36).contains(&sy) && (4..36).contains(&sx) {
                            plain[c * 1024 + (sy - 4) * 32 + (sx - 4)]
                        } else {
                            0.0
                        };
                        assert_eq!(out[c * 1024 + y * 32 + x], want);
                    }
                }
            }
        }
        assert!(draws.len() > 100, "offsets and flips vary: {}", draws.len());
        assert_eq!(a.draw(7), Augment { seed: 42, epoch: 3 }.draw(7));
        assert_ne!(
            (0..20).map(|i| a.draw(i)).collect::<Vec<_>>(),
            (0..20)
                .map(|i| Augment { seed: 42, epoch: 4 }.draw(i))
                .collect::<Vec<_>>(),
            "another epoch, other crops"
        );
    }

    #[test]
    fn epoch_order_is_a_permutation_fixed_by_seed_and_epoch() {
        let order = epoch_order(100, 42, 3);
        assert_eq!(order, epoch_order(100, 42, 3));
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<i64>>());
        assert_ne!(order, sorted, "shuffled");
        assert_ne!(order, epoch_order(100, 42, 4), "another epoch");
        assert_ne!(order, epoch_order(100, 43, 3), "another seed");
        assert!(epoch_order(0, 42, 1).is_empty());
    }

    #[test]
    fn a_fresh_run_takes_the_options_or_the_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = options(tmp.path());
        let files = RunFiles::new(&opts.checkpoints);
        let state = starting_point(&opts, &files, &classes(), &Reporter::silent()).unwrap();
        assert_eq!(state.meta.epoch, 0);
        assert!(state.meta.history.is_empty());
        assert_eq!(state.meta.model.hidden, DEFAULT_HIDDEN);
        assert_eq!(state.meta.model.classes, classes());
        let train = &state.meta.train;
        assert_eq!(
            (train.batch_size, train.lr, train.seed, train.limit),
            (DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_SEED, None)
        );
        assert_eq!(train.test_split, None, "CIFAR-10 has its own test split");
        assert_eq!(
            train,
            &TrainConfig::new(DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_SEED)
        );

        let state = small_run(tmp.path());
        assert_eq!(state.meta.model.hidden, 8);
        assert_eq!((state.meta.train.batch_size, state.meta.train.seed), (8, 7));
        assert_eq!(state.weights, Weights::init(8, 10, 7));
    }

    /// A new run's options, the same with --resume, and the files of their folder.
    fn run_folder(dir: &Path) -> (TrainOptions, TrainOptions, RunFiles) {
        let opts = options(dir);
        let resume = TrainOptions {
            resume: true,
            ..opts.clone()
        };
        let files = RunFiles::new(&opts.checkpoints);
        (opts, resume, files)
    }

    #[test]
    fn a_folder_holding_a_run_needs_resume_or_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let (opts, resume, files) = run_folder(tmp.path());
        let reporter = Reporter::silent();

        // --resume with nothing to resume starts afresh.
        let state = starting_point(&resume, &files, &classes(), &reporter).unwrap();
        assert_eq!(state.meta.epoch, 0);

        let mut saved = small_run(tmp.path());
        saved.meta.epoch = 3;
        std::fs::create_dir_all(&files.dir).unwrap();
        saved.save(&files.last()).unwrap();

        let msg = message(starting_point(&opts, &files, &classes(), &reporter));
        assert!(msg.contains("already holds a run"), "{msg}");
        assert!(msg.contains("last.ckpt"), "{msg}");
        assert!(
            msg.contains("--resume") && msg.contains("--overwrite"),
            "{msg}"
        );

        let overwrite = TrainOptions {
            overwrite: true,
            ..options(tmp.path())
        };
        let state = starting_point(&overwrite, &files, &classes(), &reporter).unwrap();
        assert_eq!(state.meta.epoch, 0);
        assert_eq!(
            state.meta.model.hidden, DEFAULT_HIDDEN,
            "nothing is taken over"
        );

        // Resuming takes the run's own settings when none are given.
        let state = starting_point(&resume, &files, &classes(), &reporter).unwrap();
        assert_same(&state, &saved);
    }

    #[test]
    fn any_file_of_a_run_holds_a_run_and_resume_falls_back_to_the_latest_epoch() {
        let tmp = tempfile::tempdir().unwrap();
        let (opts, resume, files) = run_folder(tmp.path());
        let reporter = Reporter::silent();
        std::fs::create_dir_all(&files.dir).unwrap();

        // run.json alone (a first epoch killed): a run, but nothing to resume.
        std::fs::write(files.run_json(), "{}").unwrap();
        let msg = message(starting_point(&opts, &files, &classes(), &reporter));
        assert!(
            msg.contains("already holds a run") && msg.contains("run.json"),
            "{msg}"
        );
        std::fs::remove_file(files.run_json()).unwrap();

        // Epochs 2 and 10 and best, but no last.ckpt.
        let mut saved = small_run(tmp.path());
        for epoch in [2, 10] {
            saved.meta.epoch = epoch;
            saved.save(&files.epoch(epoch)).unwrap();
        }
        saved.save(&files.best()).unwrap();
        let msg = message(starting_point(&opts, &files, &classes(), &reporter));
        assert!(
            msg.contains("already holds a run") && msg.contains("best.ckpt"),
            "{msg}"
        );
        let state = starting_point(&resume, &files, &classes(), &reporter).unwrap();
        assert_eq!(state.meta.epoch, 10, "the latest epoch");

        // best.ckpt with nothing to resume from: resuming would replace it.
        for epoch in [2, 10] {
            std::fs::remove_file(files.epoch(epoch)).unwrap();
        }
        let msg = message(starting_point(&resume, &files, &classes(), &reporter));
        assert!(
            msg.contains("best.ckpt but no last.ckpt") && msg.contains("--overwrite"),
            "{msg}"
        );
    }

    #[test]
    fn resume_refuses_a_checkpoint_that_run_json_does_not_record() {
        let tmp = tempfile::tempdir().unwrap();
        let files = RunFiles::new(tmp.path());
        let saved = small_run(tmp.path());
        let path = files.last();
        // No run.json: nothing to compare with.
        check_run_json(&files, &saved.meta, &path).unwrap();
        let record = |meta: &CheckpointMeta| {
            let run = serde_json::json!({"model": meta.model, "train": meta.train});
            std::fs::write(files.run_json(), run.to_string()).unwrap();
        };
        record(&saved.meta);
        check_run_json(&files, &saved.meta, &path).unwrap();
        let mut other = saved.meta.clone();
        other.model.hidden = 16;
        record(&other);
        let msg = message(check_run_json(&files, &saved.meta, &path));
        assert!(
            msg.contains("last.ckpt: trained with --hidden 8, but ")
                && msg.contains("run.json records --hidden 16"),
            "{msg}"
        );
        let mut other = saved.meta.clone();
        other.train.seed = 1;
        record(&other);
        let msg = message(check_run_json(&files, &saved.meta, &path));
        assert!(msg.contains("--seed 7, but"), "{msg}");
        std::fs::write(files.run_json(), "not json").unwrap();
        let msg = message(check_run_json(&files, &saved.meta, &path));
        assert!(msg.contains("run.json: not a run.json"), "{msg}");
    }

    #[test]
    fn resume_refuses_other_settings_or_classes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut saved = small_run(tmp.path());
        saved.meta.train.limit = Some(30);
        let meta = &saved.meta;
        let path = Path::new("ck/last.ckpt");
        let same = TrainOptions {
            limit: Some(30),
            ..options(tmp.path())
        };
        check_resume(&same, meta, &classes(), path).unwrap();
        let given = TrainOptions {
            hidden: Some(8),
            arch: None,
            batch_size: Some(8),
            lr: Some(0.01),
            seed: Some(7),
            test_split: Some(0.3),
            ..same.clone()
        };
        check_resume(&given, meta, &classes(), path).unwrap();

        let refused = |opts: TrainOptions, classes: &[String]| {
            message(check_resume(&opts, meta, classes, path))
        };
        let msg = refused(
            TrainOptions {
                hidden: Some(16),
                arch: None,
                ..same.clone()
            },
            &classes(),
        );
        assert_eq!(
            msg,
            "ck/last.ckpt: this run was trained with --hidden 8, not 16; drop --hidden to resume it, or start a new run in another --checkpoints folder"
        );
        let others = [
            (
                TrainOptions {
                    batch_size: Some(32),
                    ..same.clone()
                },
                "--batch-size 8, not 32",
            ),
            (
                TrainOptions {
                    lr: Some(0.001),
                    ..same.clone()
                },
                "--lr 0.01, not 0.001",
            ),
            (
                TrainOptions {
                    seed: Some(8),
                    ..same.clone()
                },
                "--seed 7, not 8",
            ),
            (
                TrainOptions {
                    limit: None,
                    ..same.clone()
                },
                "--limit Some(30), not None",
            ),
            (
                TrainOptions {
                    limit: Some(20),
                    ..same.clone()
                },
                "--limit Some(30), not Some(20)",
            ),
        ];
        for (opts, expected) in others {
            let msg = refused(opts, &classes());
            assert!(msg.contains(expected), "{msg}");
        }
        let mut other = classes();
        other[9] = "lorry".into();
        let msg = refused(same.clone(), &other);
        assert!(msg.contains("this run's classes"), "{msg}");
        assert!(msg.contains("lorry"), "{msg}");

        // A run divided by --val-split refuses another share.
        let mut folder = saved.meta.clone();
        folder.train.test_split = Some(0.2);
        check_resume(&same, &folder, &classes(), path).unwrap();
        let msg = message(check_resume(
            &TrainOptions {
                test_split: Some(0.3),
                ..same.clone()
            },
            &folder,
            &classes(),
            path,
        ));
        assert!(msg.contains("--test-split 0.2, not 0.3"), "{msg}");
    }

    #[test]
    fn an_epoch_is_best_only_when_it_beats_the_best_so_far() {
        let tmp = tempfile::tempdir().unwrap();
        let mut meta = small_run(tmp.path()).meta;
        assert!(
            record_epoch(&mut meta, metrics(1, 0.3)),
            "the first is best"
        );
        assert!(!record_epoch(&mut meta, metrics(2, 0.2)));
        assert!(
            !record_epoch(&mut meta, metrics(3, 0.3)),
            "a tie is not better"
        );
        assert_eq!((meta.epoch, meta.best_epoch), (3, 1));
        assert!(record_epoch(&mut meta, metrics(4, 0.4)));
        assert_eq!((meta.epoch, meta.best_epoch), (4, 4));
        assert_eq!(meta.history.len(), 4);
    }

    #[test]
    fn the_checkpoint_writer_writes_every_file_and_best_only_when_improved() {
        let tmp = tempfile::tempdir().unwrap();
        let files = RunFiles::new(tmp.path());
        let mut state = small_run(tmp.path());
        assert!(record_epoch(&mut state.meta, metrics(1, 0.3)));
        write_checkpoint(&files, &state, true).unwrap();
        let first = std::fs::read(files.epoch(1)).unwrap();
        assert_same(&Checkpoint::decode(&first).unwrap(), &state);
        assert_eq!(std::fs::read(files.best()).unwrap(), first);
        assert_eq!(std::fs::read(files.last()).unwrap(), first);
        assert_eq!(
            std::fs::read_to_string(files.metrics_csv()).unwrap(),
            metrics_csv(&state.meta.history)
        );
        assert!(
            std::fs::read(files.curves_png())
                .unwrap()
                .starts_with(b"\x89PNG")
        );

        assert!(!record_epoch(&mut state.meta, metrics(2, 0.1)));
        write_checkpoint(&files, &state, false).unwrap();
        let second = std::fs::read(files.epoch(2)).unwrap();
        assert_ne!(second, first);
        assert_eq!(std::fs::read(files.best()).unwrap(), first, "best stays");
        assert_eq!(std::fs::read(files.last()).unwrap(), second);
        assert_eq!(std::fs::read(files.epoch(1)).unwrap(), first);
        let csv = std::fs::read_to_string(files.metrics_csv()).unwrap();
        assert_eq!(csv.lines().count(), 3, "{csv}");
        let mut names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "best.ckpt",
                "curves.png",
                "epoch-001.ckpt",
                "epoch-002.ckpt",
                "last.ckpt",
                "metrics.csv"
            ]
        );
    }

    /// Runs the epoch loop on `state` up to `epochs` on small synthetic data, checkpointing in
    /// `dir`, with one shard so that the arithmetic is the same however it is cut.
    fn run_epochs(
        state: &mut Checkpoint,
        dir: &Path,
        epochs: usize,
        stop: bool,
    ) -> Result<Throughput> {
        let device = Device::flex();
        let (train_split, test_split) = (images(20, 1), images(10, 1000));
        let train = Batches::new(&train_split, 10)?;
        let test = Batches::new(&test_split, 10)?;
        let validation_split = images(10, 500);
        let validation = Batches::new(&validation_split, 10)?;
        let files = RunFiles::new(dir);
        std::fs::create_dir_all(dir)?;
        let stop = AtomicBool::new(stop);
        let epoch_loop = EpochLoop {
            train: &train,
            validation: state.meta.train.validation_split.map(|_| &validation),
            test: &test,
            files: &files,
            epochs,
            reporter: &Reporter::silent(),
            stop: &stop,
            device: &device,
        };
        let mut trainer = trainer(&Start {
            config: &state.meta.model,
            weights: &state.weights,
            state: &state.adam,
            adam: adam_config(&state.meta.train, train.len()),
            shards: 1,
            device: &device,
        })?;
        epoch_loop.run(state, trainer.as_mut())
    }

    #[test]
    fn the_epoch_loop_trains_records_and_checkpoints_each_epoch() {
        let tmp = tempfile::tempdir().unwrap();
        let initial = small_run(tmp.path());
        let mut state = initial.clone();
        let throughput = run_epochs(&mut state, tmp.path(), 2, false).unwrap();
        assert_eq!(throughput.samples, 40);
        assert!(throughput.seconds > 0.0);
        assert_eq!(state.meta.epoch, 2);
        assert_eq!(state.meta.history.len(), 2);
        assert_eq!(state.meta.history[1].epoch, 2);
        assert!(
            state
                .meta
                .history
                .iter()
                .all(|m| m.train_loss.is_finite() && (0.0..=1.0).contains(&m.test_accuracy))
        );
        assert_ne!(state.weights, initial.weights, "the weights were trained");
        assert_eq!(
            state.adam.step,
            2 * 3,
            "20 images in batches of 8: 3 steps an epoch"
        );
        let files = RunFiles::new(tmp.path());
        assert_same(&Checkpoint::load(&files.last()).unwrap(), &state);
        assert!(files.epoch(1).exists() && files.epoch(2).exists());

        // Nothing left to train: nothing changes.
        let before = state.clone();
        assert_eq!(
            run_epochs(&mut state, tmp.path(), 2, false).unwrap(),
            Throughput::default()
        );
        assert_eq!(state, before);

        // Resuming from epoch 1 ends where the uninterrupted run did.
        let mut resumed = Checkpoint::load(&files.epoch(1)).unwrap();
        let other = tempfile::tempdir().unwrap();
        run_epochs(&mut resumed, other.path(), 2, false).unwrap();
        assert_eq!(resumed.weights, state.weights);
        assert_eq!(
            resumed.meta.history[1].train_loss,
            state.meta.history[1].train_loss
        );
    }

    #[test]
    fn a_diverged_epoch_is_an_error_that_keeps_the_last_good_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let files = RunFiles::new(tmp.path());
        let mut state = small_run(tmp.path());
        run_epochs(&mut state, tmp.path(), 1, false).unwrap();
        let good = std::fs::read(files.last()).unwrap();
        // Weights of 1e38 overflow f32 in the first product: NaN losses.
        state.meta.train.lr = 1e38;
        let before = state.clone();
        let msg = message(run_epochs(&mut state, tmp.path(), 3, false));
        assert!(
            msg.starts_with("epoch 2: training diverged (the training loss is ")
                && (msg.contains(" is NaN)") || msg.contains(" is inf)")),
            "{msg}"
        );
        assert!(
            msg.contains("try a smaller --lr than this run's 1e38")
                && msg.ends_with("last.ckpt holds epoch 1"),
            "{msg}"
        );
        assert_eq!(state, before, "nothing recorded");
        assert_eq!(std::fs::read(files.last()).unwrap(), good);
        assert!(!files.epoch(2).exists());

        // From the first epoch: nothing written at all.
        let fresh = tempfile::tempdir().unwrap();
        let mut state = small_run(fresh.path());
        state.meta.train.lr = 1e38;
        let msg = message(run_epochs(&mut state, fresh.path(), 1, false));
        assert!(
            msg.ends_with("no epoch was complete, so no checkpoint was written"),
            "{msg}"
        );
        assert_eq!(std::fs::read_dir(fresh.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_epoch_loop_stops_with_interrupted_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let mut state = small_run(tmp.path());
        let err = run_epochs(&mut state, tmp.path(), 3, true).unwrap_err();
        let interrupted = err.downcast_ref::<Interrupted>().expect("Interrupted");
        assert_eq!(interrupted.epoch, 1);
        assert_eq!(
            err.to_string(),
            "interrupted during epoch 1; no epoch was complete, so no checkpoint was written"
        );
        assert_eq!(state.meta.epoch, 0);
        assert!(!RunFiles::new(tmp.path()).last().exists());

        run_epochs(&mut state, tmp.path(), 1, false).unwrap();
        let err = run_epochs(&mut state, tmp.path(), 3, true).unwrap_err();
        let interrupted = err.downcast_ref::<Interrupted>().expect("Interrupted");
        assert_eq!(interrupted.epoch, 2);
        assert!(
            interrupted.saved.ends_with(
                "last.ckpt holds epoch 1; continue with `maas train --resume --epochs 3`"
            ),
            "{}",
            interrupted.saved
        );
        assert_eq!(state.meta.epoch, 1);
    }
}
