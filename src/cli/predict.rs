//! `maas predict`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::args::{ModelArgs, OutputArgs};
use super::{Context, exit_code, print_json, print_stdout};
use crate::data::files::warn_skipped;
use crate::predict::{Classifier, expand_inputs, render_table};

/// `maas predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Image files (PNG, JPEG, GIF, BMP, TIFF, WebP, ...; any size, grey, RGB or RGBA), folders
    /// of them (searched recursively), or quoted patterns such as 'photos/*.jpg'.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Which model to use.
    #[command(flatten)]
    model: ModelArgs,
    /// What to print.
    #[command(flatten)]
    output: OutputArgs,
}

pub(super) fn run(args: PredictArgs, cx: &Context) -> Result<u8> {
    let (path, loaded) = args.model.load(&cx.reporter)?;
    let selected = cx.select_device()?;
    let classifier = Classifier::new(&loaded, &selected.device);
    let inputs = expand_inputs(&args.images);
    warn_skipped(&inputs.skipped);
    let (files, problems) = (inputs.files, inputs.errors);
    let bar = cx.reporter.bar_from(
        200,
        files.len(),
        "classifying {bar:30} {pos}/{len} images [{elapsed}<{eta}]",
    );
    let mut report = classifier.predict_files(&path, &files, args.output.top_k as usize, &bar)?;
    report.errors.splice(0..0, problems);
    if args.output.json {
        print_json(&report)?;
    } else {
        print_stdout(render_table(&report))?;
        for e in &report.errors {
            eprintln!("maas: error: {}: {}", e.file, e.error);
        }
    }
    Ok(exit_code(report.errors.len()))
}
