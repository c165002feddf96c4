//! `maas train`.

use anyhow::Result;
use clap::Args;

use super::args::{CheckpointsArg, DataArgs, positive_float};
use super::{Context, print_json, print_stdout};
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
    /// Width of the hidden layer [default: 64].
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
    /// Train on the first N training images only (smoke runs, CI).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Print the run's summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: TrainArgs, cx: &Context) -> Result<u8> {
    let selected = cx.select_device()?;
    let data = args.data.ensure(&cx.reporter)?;
    let opts = TrainOptions {
        epochs: args.epochs as usize,
        batch_size: args.batch_size.map(|b| b as usize),
        lr: args.lr,
        hidden: args.hidden.map(|h| h as usize),
        seed: args.seed,
        limit: args.limit.map(|l| l as usize),
        data,
        val_split: args.data.val_split,
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
        print_stdout(format!(
            "trained {} epoch{}: test accuracy {:.4} (best {:.4} at epoch {}); checkpoints in {}\n",
            summary.epochs,
            if summary.epochs == 1 { "" } else { "s" },
            summary.final_test_accuracy,
            summary.best_test_accuracy,
            summary.best_epoch,
            summary.checkpoints.dir.display()
        ))?;
    }
    Ok(0)
}
