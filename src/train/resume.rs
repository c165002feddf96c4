//! Where a run starts: a fresh model at epoch 0, or the last complete checkpoint of the run in
//! --checkpoints, refused when the options, the run's `run.json` or its data disagree with it.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::options::{DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_SEED, TrainOptions};
use crate::artifact::checkpoint::{Checkpoint, CheckpointMeta, LrSchedule, RunFiles, TrainConfig};
use crate::data::source::DEFAULT_TEST_SPLIT;
use crate::model::{Arch, DEFAULT_HIDDEN, ModelConfig};
use crate::progress::Reporter;
use crate::train::adam::AdamState;

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

/// A setting a run may lack, as [`check_same`] compares and prints it (`none` when absent).
fn shown<T: std::fmt::Display>(saved: Option<T>) -> String {
    saved.map_or_else(|| "none".into(), |v| v.to_string())
}

/// Where training starts: a fresh model, or the last complete checkpoint.
///
/// A folder holding any file of a run (see [`RunFiles::run_files`]) is refused unless --resume
/// continues it or --overwrite replaces it. --resume takes `last.ckpt`, or else the latest
/// `epoch-NNN.ckpt`, once [`check_resume`] and [`check_run_json`] agree.
pub(super) fn starting_point(
    opts: &TrainOptions,
    files: &RunFiles,
    classes: &[String],
    reporter: &Reporter,
) -> Result<Checkpoint> {
    if opts.resume {
        let last = files.last();
        // The file to resume from, and how it was chosen (said when it is not last.ckpt).
        let from = if last.exists() {
            Some((last, String::new()))
        } else {
            let how = format!("no {}: ", last.display());
            files.epochs()?.pop().map(|(_, path)| (path, how))
        };
        if let Some((path, how)) = from {
            let ckpt = Checkpoint::load(&path)?;
            check_resume(opts, &ckpt.meta, classes, &path)?;
            check_run_json(files, &ckpt.meta, &path)?;
            reporter.info(format!(
                "{how}resuming from {} (epoch {} complete)",
                path.display(),
                ckpt.meta.epoch
            ));
            return Ok(ckpt);
        }
        // A best.ckpt without any epoch to resume from would be replaced by a new run's.
        let best = files.best();
        if best.exists() {
            bail!(
                "{} holds {} but no last.ckpt or epoch-NNN.ckpt to resume from; pass --overwrite to replace the run, or choose another --checkpoints folder",
                files.dir.display(),
                best.display()
            );
        }
        // A run killed in its first epoch leaves run.json alone: the run starts again at epoch
        // 1 with the settings it records, which flags may repeat but not change.
        if let Some(run) = files.read_run_json()? {
            let path = files.run_json();
            let ckpt = at_epoch_zero(run.model, run.train)
                .with_context(|| format!("{}", path.display()))?;
            check_resume(opts, &ckpt.meta, classes, &path)?;
            reporter.info(format!(
                "{} records a run whose first epoch never completed: starting it again at epoch 1 with its settings",
                path.display()
            ));
            return Ok(ckpt);
        }
        reporter.info(format!(
            "nothing to resume in {}: starting at epoch 1",
            files.dir.display()
        ));
    } else if !opts.overwrite
        && let Some(found) = files.run_files()?.first()
    {
        bail!(
            "{} already holds a run ({}); pass --resume to continue it, --overwrite to replace it, or choose another --checkpoints folder",
            files.dir.display(),
            found.display()
        );
    }
    fresh_start(opts, classes)
}

/// Refuses a checkpoint `path` (of `meta`) that is not of the run `run.json` records, such as a
/// `last.ckpt` copied from another run: its model or hyper-parameters differ.
pub(super) fn check_run_json(files: &RunFiles, meta: &CheckpointMeta, path: &Path) -> Result<()> {
    let Some(run) = files.read_run_json()? else {
        return Ok(());
    };
    let (mine, theirs) = (&meta.train, &run.train);
    // The learning rate went through JSON twice; serde_json may read it back one unit off in
    // the last place.
    let same_lr = (mine.lr - theirs.lr).abs() <= 1e-12 * mine.lr.abs().max(theirs.lr.abs());
    let differences = [
        (
            "--arch",
            meta.model.architecture.clone(),
            run.model.architecture.clone(),
        ),
        (
            "--hidden",
            meta.model.hidden.to_string(),
            run.model.hidden.to_string(),
        ),
        (
            "classes",
            format!("{:?}", meta.model.classes),
            format!("{:?}", run.model.classes),
        ),
        (
            "--batch-size",
            mine.batch_size.to_string(),
            theirs.batch_size.to_string(),
        ),
        (
            "--lr",
            mine.lr.to_string(),
            if same_lr { mine.lr } else { theirs.lr }.to_string(),
        ),
        ("--seed", mine.seed.to_string(), theirs.seed.to_string()),
        (
            "--limit",
            format!("{:?}", mine.limit),
            format!("{:?}", theirs.limit),
        ),
        (
            "--test-split",
            format!("{:?}", mine.test_split),
            format!("{:?}", theirs.test_split),
        ),
        (
            "--val-split",
            format!("{:?}", mine.validation_split),
            format!("{:?}", theirs.validation_split),
        ),
        (
            "--augment",
            mine.augment.to_string(),
            theirs.augment.to_string(),
        ),
        (
            "--lr-schedule",
            format!(
                "{:?} over {:?} epochs",
                mine.lr_schedule, mine.schedule_epochs
            ),
            format!(
                "{:?} over {:?} epochs",
                theirs.lr_schedule, theirs.schedule_epochs
            ),
        ),
        (
            "--weight-decay",
            mine.weight_decay.to_string(),
            theirs.weight_decay.to_string(),
        ),
        (
            "--warmup-epochs",
            mine.warmup_epochs.to_string(),
            theirs.warmup_epochs.to_string(),
        ),
        (
            "--patience",
            format!("{:?}", mine.patience),
            format!("{:?}", theirs.patience),
        ),
    ];
    if let Some((what, ckpt, recorded)) = differences.into_iter().find(|(_, a, b)| a != b) {
        bail!(
            "{}: trained with {what} {ckpt}, but {} records {what} {recorded}: the checkpoint is not this run's; put the run's own back, or start afresh with --overwrite",
            path.display(),
            files.run_json().display()
        );
    }
    Ok(())
}

/// Refuses to resume the run of `meta` (read from `path`) with hyper-parameters, a --limit or
/// classes other than those it was trained with; options not given take the run's values.
pub(super) fn check_resume(
    opts: &TrainOptions,
    meta: &CheckpointMeta,
    classes: &[String],
    path: &Path,
) -> Result<()> {
    if let Some(arch) = opts.arch
        && meta.model.arch()? != arch
    {
        bail!(
            "{}: this run trains `{}`, not --arch {}; drop --arch to resume it, or start a new run in another --checkpoints folder",
            path.display(),
            meta.model.architecture,
            arch.flag()
        );
    }
    check_same("--hidden", opts.hidden, meta.model.hidden, path)?;
    check_same("--batch-size", opts.batch_size, meta.train.batch_size, path)?;
    check_same("--lr", opts.lr, meta.train.lr, path)?;
    check_same("--seed", opts.seed, meta.train.seed, path)?;
    let t = &meta.train;
    if let Some(given) = opts.test_split
        && t.test_split.is_some_and(|saved| saved != given)
    {
        bail!(
            "{}: this run was trained with --test-split {}, not {given}",
            path.display(),
            t.test_split.unwrap_or_default()
        );
    }
    // The recipe's flags: each may repeat the run's value, none may change it.
    check_same(
        "--val-split",
        opts.val_split.map(|v| v.to_string()),
        shown(t.validation_split),
        path,
    )?;
    if opts.augment && !t.augment {
        bail!(
            "{}: this run was trained without --augment; drop --augment to resume it, or start a new run in another --checkpoints folder",
            path.display()
        );
    }
    check_same(
        "--lr-schedule",
        opts.lr_schedule.map(LrSchedule::flag),
        t.lr_schedule.flag(),
        path,
    )?;
    check_same("--weight-decay", opts.weight_decay, t.weight_decay, path)?;
    check_same("--warmup-epochs", opts.warmup_epochs, t.warmup_epochs, path)?;
    check_same(
        "--patience",
        opts.patience.map(|p| p.to_string()),
        shown(t.patience),
        path,
    )?;
    // A schedule spans the epochs the run started with: more would run it past its end.
    if let Some(span) = t.schedule_epochs
        && opts.epochs > span
    {
        bail!(
            "{}: this run's {} schedule spans {span} epochs; resume with --epochs {span} at most, or start a new run in another --checkpoints folder",
            path.display(),
            t.lr_schedule.flag()
        );
    }
    if opts.limit != meta.train.limit {
        bail!(
            "{}: this run was trained with --limit {:?}, not {:?}",
            path.display(),
            meta.train.limit,
            opts.limit
        );
    }
    if meta.model.classes != classes {
        bail!(
            "{}: this run's classes {:?} differ from the dataset's {:?}",
            path.display(),
            meta.model.classes,
            classes
        );
    }
    Ok(())
}

/// A new run at epoch 0: freshly initialised weights, zero Adam state, the options' values or
/// the defaults.
pub(super) fn fresh_start(opts: &TrainOptions, classes: &[String]) -> Result<Checkpoint> {
    let hidden = opts.hidden.unwrap_or(DEFAULT_HIDDEN);
    let lr_schedule = opts.lr_schedule.unwrap_or_default();
    let train = TrainConfig {
        limit: opts.limit,
        test_split: opts
            .data
            .uses_test_split()
            .then(|| opts.test_split.unwrap_or(DEFAULT_TEST_SPLIT)),
        validation_split: opts.val_split,
        augment: opts.augment,
        lr_schedule,
        schedule_epochs: (!lr_schedule.is_constant()).then_some(opts.epochs),
        weight_decay: opts.weight_decay.unwrap_or(0.0),
        warmup_epochs: opts
            .warmup_epochs
            .unwrap_or_else(|| default_warmup_epochs(lr_schedule, opts.epochs)),
        patience: opts.patience,
        ..TrainConfig::new(
            opts.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
            opts.lr.unwrap_or(DEFAULT_LR),
            opts.seed.unwrap_or(DEFAULT_SEED),
        )
    };
    if train.patience.is_some() && train.validation_split.is_none() {
        bail!("--patience watches the validation accuracy: give --val-split too");
    }
    if train.warmup_epochs > 0.0 {
        if lr_schedule == LrSchedule::OneCycle {
            bail!(
                "--warmup-epochs: onecycle warms up by itself (its first 30% of the steps); drop --warmup-epochs, or choose --lr-schedule constant or cosine"
            );
        }
        if !lr_schedule.is_constant() && train.warmup_epochs >= opts.epochs as f64 {
            bail!(
                "--warmup-epochs {} would take all the --epochs {} the {} schedule spans: give fewer warmup epochs",
                train.warmup_epochs,
                opts.epochs,
                lr_schedule.flag()
            );
        }
    }
    let arch = opts.arch.unwrap_or_else(Arch::default_arch);
    at_epoch_zero(ModelConfig::of(arch, hidden, classes.to_vec()), train)
}

/// `--warmup-epochs` when not given: a tenth of the run for cosine, whose start otherwise decides
/// the run (measured on real CIFAR-10 in bench/README.md: without it the final accuracy swung by
/// 0.10 between seeds, with it by 0.02); none for the constant rate (the card's recipe) and for
/// onecycle, which warms up by itself.
fn default_warmup_epochs(schedule: LrSchedule, epochs: usize) -> f64 {
    match schedule {
        LrSchedule::Cosine => epochs as f64 / 10.0,
        LrSchedule::Constant | LrSchedule::OneCycle => 0.0,
    }
}

/// The run of `model` and `train` at epoch 0: the initial weights its seed draws, zero Adam state.
fn at_epoch_zero(model: ModelConfig, train: TrainConfig) -> Result<Checkpoint> {
    model.check_supported()?;
    let weights = model.init_weights(train.seed)?;
    Ok(Checkpoint {
        adam: AdamState::zeros_like(&weights),
        weights,
        meta: CheckpointMeta {
            maas_version: crate::VERSION.into(),
            model,
            train,
            epoch: 0,
            history: Vec::new(),
            best_epoch: 0,
        },
    })
}
