//! The command line. Each command's flags are parsed once and turned into the library's own
//! configuration (as fd does): the library never sees a clap type. One module per command, each
//! with its flags and its handler; [`args`] holds the flag groups several commands share.
//!
//! Output for stdout goes through [`print_stdout`], never `print!`, which panics when the reader
//! has gone.
#![warn(clippy::print_stdout)]

mod args;
mod bench;
pub mod entry;
mod eval;
mod explain;
mod export;
mod predict;
mod remote;
mod serve;
mod train;

use std::io::Write;
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use self::args::{DeviceFlag, ProgressFlag};
use crate::device::{self, DeviceChoice};
use crate::progress::Reporter;

/// Model as a service: train, export, predict and serve a CIFAR-10 image classifier.
#[derive(Debug, Parser)]
#[command(
    name = "maas",
    version,
    about,
    propagate_version = true,
    max_term_width = 100
)]
#[command(
    after_help = "Exit codes: 0 success, 1 a failure at run time, 2 a usage error, 130 interrupted."
)]
pub struct Cli {
    /// Where the model runs.
    #[arg(long, global = true, value_enum, default_value_t = DeviceFlag::Auto, env = "MAAS_DEVICE")]
    device: DeviceFlag,
    /// Print only results and errors.
    #[arg(long, short, global = true, env = "MAAS_QUIET", value_parser = clap::builder::FalseyValueParser::new())]
    quiet: bool,
    /// When to draw progress bars on stderr (auto: when stderr is a terminal).
    #[arg(long, global = true, value_enum, default_value_t = ProgressFlag::Auto, env = "MAAS_PROGRESS")]
    progress: ProgressFlag,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Train the model on CIFAR-10 (downloaded into --data when missing) or on a folder of your
    /// own images, checkpointing every epoch.
    Train(train::TrainArgs),
    /// Turn a checkpoint into one deployable model file.
    Export(export::ExportArgs),
    /// Classify image files.
    Predict(predict::PredictArgs),
    /// Measure the model on the test split: accuracy, per-class figures, confusion matrix.
    Eval(eval::EvalArgs),
    /// Show which pixels pushed the prediction up: a heat map beside each image, as a PNG.
    Explain(explain::ExplainArgs),
    /// Serve the model over HTTP (Open Inference Protocol / KServe v2, /v1/predict, /v1/explain).
    Serve(serve::ServeArgs),
    /// Measure a deployed model: requests and images per second and latency percentiles at
    /// each concurrency, as Triton's perf_analyzer does.
    Bench(bench::BenchArgs),
}

/// What every command gets besides its own flags.
struct Context<'a> {
    device: DeviceChoice,
    reporter: Reporter,
    /// Set by Ctrl-C.
    stop: &'a AtomicBool,
}

impl Context<'_> {
    /// Picks the device `--device` asks for and says which.
    fn select_device(&self) -> Result<device::Selected> {
        let selected = device::select(self.device)?;
        self.reporter
            .info(format!("device: {}", selected.description));
        Ok(selected)
    }
}

/// Runs the parsed command line; returns the exit code of a run that completed.
pub fn run(cli: Cli, stop: &AtomicBool) -> Result<u8> {
    let cx = Context {
        device: cli.device.into(),
        reporter: Reporter::new(cli.quiet, cli.progress.into()),
        stop,
    };
    match cli.command {
        Command::Train(args) => train::run(args, &cx),
        Command::Export(args) => export::run(args, &cx),
        Command::Predict(args) => predict::run(args, &cx),
        Command::Eval(args) => eval::run(args, &cx),
        Command::Explain(args) => explain::run(args, &cx),
        Command::Serve(args) => serve::run(args, &cx),
        Command::Bench(args) => bench::run(args, &cx),
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    print_stdout(format!("{}\n", serde_json::to_string_pretty(value)?))
}

/// Stdout's reader went away (`maas predict ... | head -1`): a normal end, not a failure.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// Writes `bytes` to stdout. Rust ignores SIGPIPE, so a closed pipe is an error here (where
/// `print!` would panic); it becomes [`StdoutClosed`], on which `main` ends quietly.
fn print_stdout(bytes: impl AsRef<[u8]>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes.as_ref()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        other => Ok(other.context("cannot write to stdout")?),
    }
}

/// The exit code of a command over files: 1 when any file failed, the others still answered.
fn exit_code(failures: usize) -> u8 {
    u8::from(failures > 0)
}
