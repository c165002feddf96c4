//! `maas export`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args, CommandFactory};

use super::args::{CheckpointsArg, FormatFlag};
use super::{Cli, Context, print_json, print_stdout};
use crate::artifact::export::{self, Format};

/// `maas export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The checkpoint to export [default: best.ckpt in --checkpoints].
    #[arg(long, value_name = "PATH")]
    checkpoint: Option<PathBuf>,
    /// Whose best checkpoint is exported.
    #[command(flatten)]
    run: CheckpointsArg,
    /// The file format.
    #[arg(long, value_enum, default_value_t = FormatFlag::Maas)]
    format: FormatFlag,
    /// Where to write, `-` for stdout [default: model.maas, or model.onnx with --format onnx].
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Print what was written as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: ExportArgs, cx: &Context) -> Result<u8> {
    let format = Format::from(args.format);
    let to_stdout = args.output.as_deref() == Some(Path::new("-"));
    if to_stdout && args.json {
        // clap cannot say "not --json with this value of -o": its error, with export's usage.
        let mut cli = Cli::command();
        cli.build();
        let mut cmd = cli.find_subcommand("export").cloned().unwrap_or(cli);
        return Err(cmd
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--json and `-o -` both write to stdout: use one of them",
            )
            .into());
    }
    let checkpoint = args
        .checkpoint
        .unwrap_or_else(|| args.run.checkpoints.join("best.ckpt"));
    if !checkpoint.exists() {
        bail!(
            "{}: not found; train a model first with `maas train`, or pass --checkpoint PATH",
            checkpoint.display()
        );
    }
    if to_stdout {
        // The model is stdout's only content (for pipelines); words for people go to stderr.
        let (model, bytes) = export::export_bytes(&checkpoint, format)?;
        print_stdout(&bytes)?;
        cx.reporter.info(format!(
            "wrote {} bytes to stdout from {}: {}",
            bytes.len(),
            checkpoint.display(),
            describe(model.provenance.as_ref())
        ));
        return Ok(0);
    }
    let output = args
        .output
        .unwrap_or_else(|| PathBuf::from(format.default_output()));
    let model = export::export(&checkpoint, &output, format)?;
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    let provenance = model.provenance.as_ref();
    if args.json {
        print_json(&serde_json::json!({
            "output": output,
            "format": format,
            "bytes": size,
            "checkpoint": checkpoint,
            "model": model.config,
            "provenance": provenance,
        }))?;
    } else {
        print_stdout(format!(
            "wrote {} ({size} bytes) from {}: {}\n",
            output.display(),
            checkpoint.display(),
            describe(provenance)
        ))?;
    }
    if format == Format::Maas {
        cx.reporter.info(format!(
            "classify with: maas predict --model {} IMAGE...",
            output.display()
        ));
    }
    Ok(0)
}

/// "epoch 3, test accuracy 0.9120", for the line that says what was written.
fn describe(provenance: Option<&export::Provenance>) -> String {
    format!(
        "epoch {}, test accuracy {:.4}",
        provenance.map_or(0, |p| p.epochs),
        provenance.map_or(0.0, |p| p.test_accuracy)
    )
}
