//! `maas predict`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::args::{ModelArgs, OutputArgs};
use super::remote::RemoteArgs;
use super::{Context, exit_code, print_json, print_stdout};
use crate::data::files::warn_skipped;
use crate::infer::predict::{
    Classifier, Probabilities, expand_inputs, predict_files, render_table,
};
use crate::remote::RemoteModel;

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
    /// Or a deployed model.
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(super) fn run(args: PredictArgs, cx: &Context) -> Result<u8> {
    // The same from here on for a model file and a deployed model: only the probabilities
    // come from elsewhere.
    let (classifier, name): (Box<dyn Probabilities>, String) = match args.remote.config()? {
        Some(remote) => {
            let model = RemoteModel::connect(&remote)?;
            let name = model.describe();
            (Box::new(model), name)
        }
        None => {
            let (path, loaded) = args.model.load(&cx.reporter)?;
            let selected = cx.select_device()?;
            let classifier = Classifier::new(&loaded, &selected.device);
            (Box::new(classifier), path.display().to_string())
        }
    };
    let inputs = expand_inputs(&args.images);
    warn_skipped(&inputs.skipped);
    let (files, problems) = (inputs.files, inputs.errors);
    let bar = cx.reporter.bar_from(
        200,
        files.len(),
        "classifying {bar:30} {pos}/{len} images [{elapsed}<{eta}]",
    );
    let k = args.output.top_k as usize;
    let mut report = predict_files(&*classifier, &name, &files, k, &bar)?;
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
