//! `maas explain`.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use clap::Args;
use rayon::prelude::*;

use super::args::{ModelArgs, OutputArgs};
use super::remote::RemoteArgs;
use super::{Context, exit_code, print_json, print_stdout};
use crate::data::FileError;
use crate::data::files::warn_skipped;
use crate::data::preprocess::{MAX_FILE_BYTES, load_image_file};
use crate::fsutil::write_atomic;
use crate::infer::explain::{self, Explainer, Explanation};
use crate::infer::predict::{Classifier, expand_inputs};
use crate::remote::RemoteModel;
use crate::terminal::escape;

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
    /// Or a deployed model (a maas server: explanations come from its /v1/explain).
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Who explains: the model here, or a maas server.
enum Explaining {
    Local(Box<Classifier>, Box<Explainer>),
    Remote(Box<RemoteModel>),
}

/// Images decoded at once before they are explained one by one.
const DECODE_CHUNK: usize = 64;

pub(super) fn run(args: ExplainArgs, cx: &Context) -> Result<u8> {
    let (explaining, name) = match args.remote.config()? {
        Some(remote) => {
            let model = RemoteModel::connect(&remote)?;
            let name = model.describe();
            (Explaining::Remote(Box::new(model)), name)
        }
        None => {
            let (path, loaded) = args.model.load(&cx.reporter)?;
            let selected = cx.select_device()?;
            let classifier = Classifier::new(&loaded, &selected.device);
            let explainer = Explainer::new(&loaded, &selected.device);
            let name = path.display().to_string();
            (
                Explaining::Local(Box::new(classifier), Box::new(explainer)),
                name,
            )
        }
    };
    let k = args.output.top_k as usize;
    let inputs = expand_inputs(&args.images);
    warn_skipped(&inputs.skipped);
    let (files, mut errors) = (inputs.files, inputs.errors);
    let pictures = explain::picture_paths(&files, &args.out);
    let mut explanations = Vec::new();
    // Local images are decoded on every core a chunk at a time (memory stays bounded), then
    // explained in order; a server decodes what it is sent.
    for (files, pictures) in files
        .chunks(DECODE_CHUNK)
        .zip(pictures.chunks(DECODE_CHUNK))
    {
        let outcomes: Vec<Result<_>> = match &explaining {
            Explaining::Local(classifier, explainer) => {
                let inputs: Vec<_> = files.par_iter().map(|f| load_image_file(f)).collect();
                files
                    .iter()
                    .zip(pictures)
                    .zip(inputs)
                    .map(|((file, picture), input)| {
                        input.and_then(|input| {
                            explain::explain(classifier, explainer, file, &input, picture, k)
                        })
                    })
                    .collect()
            }
            // A server's failure ends the command; an unreadable image is that file's error.
            Explaining::Remote(model) => {
                let mut outcomes = Vec::with_capacity(files.len());
                for (file, picture) in files.iter().zip(pictures) {
                    outcomes.push(match read_image(file) {
                        Ok(bytes) => {
                            let answer = model.explain(&bytes, k)?;
                            remote_explanation(model, file, answer, picture)
                        }
                        Err(e) => Err(e),
                    });
                }
                outcomes
            }
        };
        for (file, outcome) in files.iter().zip(outcomes) {
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
            "model": name,
            "explanations": explanations,
            "errors": errors,
        }))?;
    } else {
        for e in &explanations {
            // Class names escaped, as in predict's table.
            print_stdout(format!(
                "{}: {} {:.1}% -> {}\n",
                escape(&e.file),
                escape(&e.label),
                100.0 * e.probability,
                escape(&e.picture.display().to_string())
            ))?;
        }
        for e in &errors {
            eprintln!("maas: error: {}: {}", e.file, e.error);
        }
    }
    Ok(exit_code(errors.len()))
}

/// The bytes of an image file, once its preprocessing has shown that it is one (the error of a
/// file that is not, as locally).
fn read_image(file: &Path) -> Result<Vec<u8>> {
    load_image_file(file)?;
    crate::fsutil::read_regular(file, MAX_FILE_BYTES)
}

/// The server's explanation of one image, its picture written.
fn remote_explanation(
    model: &RemoteModel,
    file: &Path,
    (top_k, png): (Vec<crate::infer::predict::Ranked>, Vec<u8>),
    picture: &Path,
) -> Result<Explanation> {
    let best = top_k
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("{}: the explanation ranks no class", model.describe()))?;
    write_atomic(picture, &png)?;
    Ok(Explanation {
        file: file.display().to_string(),
        label: best.label,
        index: best.index,
        probability: best.probability,
        top_k,
        picture: picture.to_path_buf(),
    })
}
