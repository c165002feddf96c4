//! `maas export`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use super::args::{CheckpointsArg, FormatFlag};
use super::{Context, print_json};
use crate::export::{self, Format};

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
    /// Where to write [default: model.maas, or model.onnx with --format onnx].
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Print what was written as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: ExportArgs, cx: &Context) -> Result<u8> {
    let format = Format::from(args.format);
    let checkpoint = args
        .checkpoint
        .unwrap_or_else(|| args.run.checkpoints.join("best.ckpt"));
    if !checkpoint.exists() {
        bail!(
            "{}: not found; train a model first with `maas train`, or pass --checkpoint PATH",
            checkpoint.display()
        );
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
        println!(
            "wrote {} ({size} bytes) from {}: epoch {}, test accuracy {:.4}",
            output.display(),
            checkpoint.display(),
            provenance.map_or(0, |p| p.epochs),
            provenance.map_or(0.0, |p| p.test_accuracy)
        );
    }
    if format == Format::Maas {
        cx.reporter.info(format!(
            "classify with: maas predict --model {} IMAGE...",
            output.display()
        ));
    }
    Ok(0)
}
