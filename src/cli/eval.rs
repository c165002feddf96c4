//! `maas eval`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use super::args::{DataArgs, ModelArgs, unit_interval};
use super::remote::RemoteArgs;
use super::{Context, print_json, print_stdout};
use crate::data::source::{DEFAULT_TEST_SPLIT, DataSource, LoadOptions};
use crate::fsutil::write_atomic;
use crate::infer::eval;
use crate::infer::predict::{Classifier, Probabilities};
use crate::plots;
use crate::remote::RemoteModel;
use crate::train::DEFAULT_SEED;

/// `maas eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Which model to use.
    #[command(flatten)]
    model: ModelArgs,
    /// The dataset; its test split is evaluated.
    #[command(flatten)]
    data: DataArgs,
    /// Exit with 1 when the accuracy is below this (0-1), to gate a release in CI.
    #[arg(long, value_name = "ACCURACY", value_parser = unit_interval)]
    fail_under: Option<f64>,
    /// Folder for confusion.png [default: the model file's folder].
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Or a deployed model.
    #[command(flatten)]
    remote: RemoteArgs,
}

/// The model to evaluate, how to name it, how its test split is drawn and where its picture goes.
struct Evaluated {
    classifier: Box<dyn Probabilities>,
    name: String,
    load: LoadOptions,
    plots_dir: PathBuf,
}

pub(super) fn run(args: EvalArgs, cx: &Context) -> Result<u8> {
    let reporter = &cx.reporter;
    let (evaluated, data) = match args.remote.config()? {
        Some(remote) => remote_model(&args, &remote, reporter)?,
        None => local_model(&args, cx)?,
    };
    let Evaluated {
        classifier,
        name,
        load,
        plots_dir,
    } = evaluated;
    let test = data.load_test(&load, reporter)?;
    let report = eval::evaluate(&*classifier, &test, &name)?;
    let picture = plots_dir.join("confusion.png");
    let note = format!(
        "{} test images, accuracy {:.4}, model {name}",
        report.samples, report.accuracy,
    );
    let png = plots::confusion_png(&report.labels, &report.confusion, &note)?;
    write_atomic(&picture, &png)?;
    if args.json {
        print_json(&eval::EvalOutput {
            report: &report,
            confusion_png: &picture,
        })?;
    } else {
        print_stdout(eval::render(&report))?;
        reporter.info(format!("confusion matrix picture: {}", picture.display()));
    }
    match args.fail_under {
        Some(bar) if report.accuracy < bar => {
            eprintln!(
                "maas: accuracy {:.4} is below --fail-under {bar}",
                report.accuracy
            );
            Ok(1)
        }
        _ => Ok(0),
    }
}

/// A model file (or the best checkpoint), with its classes checked against the dataset's and the
/// split drawn as in its training.
fn local_model(args: &EvalArgs, cx: &Context) -> Result<(Evaluated, DataSource)> {
    let (path, loaded) = args.model.load(&cx.reporter)?;
    let data = args.data.ensure(&cx.reporter)?;
    let classes = data.classes()?;
    if classes != loaded.config.classes {
        bail!(
            "{}: the model's classes {} are not the dataset's {}",
            path.display(),
            listed(&loaded.config.classes),
            listed(&classes)
        );
    }
    // A single image folder is divided as it was for training: the model's seed and share.
    let trained = loaded.train.as_ref();
    let load = LoadOptions {
        seed: trained.map_or(DEFAULT_SEED, |t| t.seed),
        test_split: args
            .data
            .test_split
            .or(trained.and_then(|t| t.test_split))
            .unwrap_or(DEFAULT_TEST_SPLIT),
        limit: None,
        strict: args.data.strict,
    };
    let selected = cx.select_device()?;
    let classifier = Classifier::new(&loaded, &selected.device);
    // Beside the model unless told otherwise: the picture belongs to that model's evaluation.
    let plots_dir = args
        .plots
        .clone()
        .unwrap_or_else(|| path.parent().map(PathBuf::from).unwrap_or_default());
    let evaluated = Evaluated {
        classifier: Box::new(classifier),
        name: path.display().to_string(),
        load,
        plots_dir,
    };
    Ok((evaluated, data))
}

/// A deployed model. Its classes are checked against the dataset's when the server names them,
/// and are the dataset's when it does not (their number must agree); the split of a single image
/// folder is drawn with the default seed, as the server does not say how the model was trained.
fn remote_model(
    args: &EvalArgs,
    remote: &crate::remote::RemoteConfig,
    reporter: &crate::progress::Reporter,
) -> Result<(Evaluated, DataSource)> {
    let mut model = RemoteModel::connect(remote)?;
    let name = model.describe();
    let data = args.data.ensure(reporter)?;
    let classes = data.classes()?;
    if !model.has_class_names() && model.classes().len() == classes.len() {
        model.name_classes(classes.clone());
    }
    if model.classes() != classes.as_slice() {
        bail!(
            "{name}: the model's classes {} are not the dataset's {}",
            listed(model.classes()),
            listed(&classes)
        );
    }
    let load = LoadOptions {
        seed: DEFAULT_SEED,
        test_split: args.data.test_split.unwrap_or(DEFAULT_TEST_SPLIT),
        limit: None,
        strict: args.data.strict,
    };
    let evaluated = Evaluated {
        classifier: Box::new(model),
        name,
        load,
        plots_dir: args.plots.clone().unwrap_or_default(),
    };
    Ok((evaluated, data))
}

/// Class names for an error line: quoted, escaped, and shortened (a server may name thousands).
fn listed(classes: &[String]) -> String {
    crate::terminal::one_line(&format!("{classes:?}"), 500)
}
