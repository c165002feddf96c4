//! `maas train`.

use anyhow::Result;
use clap::builder::TypedValueParser;
use clap::{Args, CommandFactory};

use super::args::{CheckpointsArg, DataArgs, open_unit_interval, positive_float};
use super::{Cli, Context, print_json, print_stdout};
use crate::artifact::checkpoint::LrSchedule;
use crate::model::Arch;
use crate::train::{self, TrainOptions};

/// `maas train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Train until this many epochs are complete (with --resume: in all).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    epochs: u32,
    /// Samples per training step [default: 32].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch_size: Option<u32>,
    /// Adam's learning rate [default: 0.001].
    #[arg(long, value_name = "RATE", value_parser = positive_float)]
    lr: Option<f64>,
    /// The model's architecture. On --resume, the run's own [default: mlp].
    #[arg(long, value_name = "ARCH", value_parser = arch_parser())]
    arch: Option<Arch>,
    /// Width of the MLP's hidden layer [default: 64] (the cnn's is fixed).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    hidden: Option<u32>,
    /// Seed of the initial weights and of each epoch's shuffle [default: 42].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// The dataset.
    #[command(flatten)]
    data: DataArgs,
    /// Where checkpoints, metrics.csv and run.json go.
    #[command(flatten)]
    run: CheckpointsArg,
    /// Continue from the last complete checkpoint in --checkpoints.
    #[arg(long)]
    resume: bool,
    /// Start a new run even where --checkpoints already holds one, replacing its files.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Hold out this share of the training images (after --limit) for validation, per class
    /// (stratified), drawn with the seed: the validation accuracy then chooses best.ckpt (and drives --patience). Without
    /// it, best.ckpt is the last epoch; the test split is never used to choose.
    #[arg(long, value_name = "SHARE", value_parser = open_unit_interval)]
    val_split: Option<f64>,
    /// Random crops (after 4 pixels of black padding) and horizontal flips of the training
    /// images, drawn from the seed and the epoch.
    #[arg(long)]
    augment: bool,
    /// The learning rate over the run's steps (all the --epochs it starts with): constant; cosine
    /// (after a warmup over the first tenth of the steps, from --lr to 0); onecycle
    /// (PyTorch's OneCycleLR: up from --lr/25 to --lr in 30% of the steps, then down to
    /// --lr/2.5e5) [default: constant].
    #[arg(long, value_name = "SCHEDULE", value_enum)]
    lr_schedule: Option<ScheduleFlag>,
    /// Decoupled weight decay, as AdamW: each step, value -= lr(t) * W * value [default: 0].
    #[arg(long, value_name = "W", value_parser = non_negative_float)]
    weight_decay: Option<f64>,
    /// Raise the rate linearly from near 0 to --lr over the first E epochs (fractions allowed),
    /// then follow --lr-schedule over the rest; not with onecycle, which warms up by itself
    /// [default: a tenth of --epochs with cosine, else 0].
    #[arg(long, value_name = "E", value_parser = non_negative_float)]
    warmup_epochs: Option<f64>,
    /// Stop when the validation accuracy has not improved for N epochs (needs --val-split).
    #[arg(long, value_name = "N", requires = "val_split", value_parser = clap::value_parser!(u32).range(1..))]
    patience: Option<u32>,
    /// Train on the first N training images only (smoke runs, CI).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Print the run's summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `--lr-schedule`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ScheduleFlag {
    /// --lr at every step.
    Constant,
    /// A warmup over a tenth of the steps, then cosine annealing from --lr to 0.
    Cosine,
    /// PyTorch's OneCycleLR defaults, peaking at --lr.
    Onecycle,
}

impl From<ScheduleFlag> for LrSchedule {
    fn from(flag: ScheduleFlag) -> Self {
        match flag {
            ScheduleFlag::Constant => LrSchedule::Constant,
            ScheduleFlag::Cosine => LrSchedule::Cosine,
            ScheduleFlag::Onecycle => LrSchedule::OneCycle,
        }
    }
}

/// `--weight-decay`: a finite number, 0 or more.
fn non_negative_float(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a number of 0 or more")),
    }
}

/// `--arch`: the flags of the registered architectures, each with its line of help.
fn arch_parser() -> impl clap::builder::TypedValueParser<Value = Arch> {
    let values =
        Arch::all().map(|a| clap::builder::PossibleValue::new(a.flag()).help(a.get().about()));
    clap::builder::PossibleValuesParser::new(values)
        .try_map(|flag| Arch::from_flag(&flag).ok_or("not a registered architecture"))
}

pub(super) fn run(args: TrainArgs, cx: &Context) -> Result<u8> {
    if let Some(arch) = args.arch.filter(|a| a.get().fixed_hidden().is_some())
        && args.hidden.is_some()
    {
        // clap cannot say "not --hidden with this value of --arch": its error, with train's usage.
        let mut cli = Cli::command();
        cli.build();
        let mut cmd = cli.find_subcommand("train").cloned().unwrap_or(cli);
        return Err(cmd
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "--hidden sets the MLP's width; the {}'s layers are fixed: drop --hidden",
                    arch.flag()
                ),
            )
            .into());
    }
    let selected = cx.select_device()?;
    let data = args.data.ensure(&cx.reporter)?;
    let opts = TrainOptions {
        epochs: args.epochs as usize,
        batch_size: args.batch_size.map(|b| b as usize),
        lr: args.lr,
        hidden: args.hidden.map(|h| h as usize),
        arch: args.arch,
        seed: args.seed,
        limit: args.limit.map(|l| l as usize),
        data,
        test_split: args.data.test_split,
        val_split: args.val_split,
        augment: args.augment,
        lr_schedule: args.lr_schedule.map(LrSchedule::from),
        weight_decay: args.weight_decay,
        warmup_epochs: args.warmup_epochs,
        patience: args.patience.map(|p| p as usize),
        strict: args.data.strict,
        checkpoints: args.run.checkpoints,
        resume: args.resume,
        overwrite: args.overwrite,
    };
    // On one of rayon's threads, so that the step's parallel parts are handed between the pool's
    // threads, without waking this one and putting it back to sleep every step.
    let summary = rayon::scope(|_| train::train(&opts, &selected, &cx.reporter, cx.stop))?;
    if args.json {
        print_json(&summary)?;
    } else {
        let chosen = match summary.best_val_accuracy {
            Some(val) => format!(
                "best.ckpt: epoch {} by validation accuracy {val:.4}, its test accuracy {:.4}",
                summary.best_epoch, summary.best_test_accuracy
            ),
            None => "best.ckpt: the last epoch (no --val-split)".to_string(),
        };
        print_stdout(format!(
            "trained {} epoch{}{}: test accuracy {:.4}{}; {chosen}; checkpoints in {}\n",
            summary.epochs,
            if summary.epochs == 1 { "" } else { "s" },
            if summary.stopped_early {
                " (stopped early by --patience)"
            } else {
                ""
            },
            summary.final_test_accuracy,
            summary
                .final_val_accuracy
                .map_or(String::new(), |v| format!(", validation accuracy {v:.4}")),
            summary.checkpoints.dir.display()
        ))?;
    }
    Ok(0)
}
