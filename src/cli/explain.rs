//! `maas explain`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use rayon::prelude::*;

use super::args::{ModelArgs, OutputArgs};
use super::{Context, exit_code, print_json, print_stdout};
use crate::data::FileError;
use crate::data::files::warn_skipped;
use crate::data::preprocess::load_image_file;
use crate::explain::{self, Explainer};
use crate::predict::{Classifier, expand_inputs};

/// `maas explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Image files, folders of them, or quoted patterns, as for `predict`.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Which model to use.
    #[command(flatten)]
    model: ModelArgs,
    /// Folder for the pictures (`<image name>.explain.png`; `<image name>-2.explain.png` for a
    /// second image of that name).
    #[arg(long, value_name = "DIR", default_value = "explain")]
    out: PathBuf,
    /// What to print.
    #[command(flatten)]
    output: OutputArgs,
}

/// Images decoded at once before they are explained one by one.
const DECODE_CHUNK: usize = 64;

pub(super) fn run(args: ExplainArgs, cx: &Context) -> Result<u8> {
    let (path, loaded) = args.model.load(&cx.reporter)?;
    let selected = cx.select_device()?;
    let classifier = Classifier::new(&loaded, &selected.device);
    let explainer = Explainer::new(&loaded, &selected.device);
    let inputs = expand_inputs(&args.images);
    warn_skipped(&inputs.skipped);
    let (files, mut errors) = (inputs.files, inputs.errors);
    let pictures = explain::picture_paths(&files, &args.out);
    let mut explanations = Vec::new();
    // Decoded on every core a chunk at a time (memory stays bounded), explained in order.
    for (files, pictures) in files
        .chunks(DECODE_CHUNK)
        .zip(pictures.chunks(DECODE_CHUNK))
    {
        let inputs: Vec<_> = files.par_iter().map(|f| load_image_file(f)).collect();
        for ((file, picture), input) in files.iter().zip(pictures).zip(inputs) {
            let outcome = input.and_then(|input| {
                explain::explain(
                    &classifier,
                    &explainer,
                    file,
                    &input,
                    picture,
                    args.output.top_k as usize,
                )
            });
            match outcome {
                Ok(e) => explanations.push(e),
                Err(e) => errors.push(FileError {
                    file: file.display().to_string(),
                    error: format!("{e:#}"),
                }),
            }
        }
    }
    if args.output.json {
        print_json(&serde_json::json!({
            "model": path,
            "explanations": explanations,
            "errors": errors,
        }))?;
    } else {
        for e in &explanations {
            print_stdout(format!(
                "{}: {} {:.1}% -> {}\n",
                e.file,
                e.label,
                100.0 * e.probability,
                e.picture.display()
            ))?;
        }
        for e in &errors {
            eprintln!("maas: error: {}: {}", e.file, e.error);
        }
    }
    Ok(exit_code(errors.len()))
}
