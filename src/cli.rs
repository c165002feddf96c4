//! Every flag, default, environment twin and help text, in one place; and the dispatch from a
//! parsed command line to the library.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::data::download::{self, DownloadOptions};
use crate::data::folder::ImageFolder;
use crate::data::preprocess::load_image_file;
use crate::data::source::{DEFAULT_VAL_SPLIT, DataSource, LoadOptions};
use crate::device::{self, DeviceChoice};
use crate::eval;
use crate::explain;
use crate::export::{self, LoadedModel, load_model, resolve_model};
use crate::fsutil::write_atomic;
use crate::plots;
use crate::predict::{Classifier, FileError, expand_inputs, render_table};
use crate::progress::{ProgressMode, Reporter};
use crate::train::{self, TrainOptions};

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
    #[arg(long, global = true, value_enum, default_value_t = DeviceChoice::Auto, env = "MAAS_DEVICE")]
    pub device: DeviceChoice,
    /// Print only results and errors.
    #[arg(long, short, global = true, env = "MAAS_QUIET", value_parser = clap::builder::FalseyValueParser::new())]
    pub quiet: bool,
    /// When to draw progress bars on stderr (auto: when stderr is a terminal).
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto, env = "MAAS_PROGRESS")]
    pub progress: ProgressMode,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the model on CIFAR-10 (downloaded into --data when missing) or on a folder of your
    /// own images, checkpointing every epoch.
    Train(TrainArgs),
    /// Turn a checkpoint into one deployable model file.
    Export(ExportArgs),
    /// Classify image files.
    Predict(PredictArgs),
    /// Measure the model on the test split: accuracy, per-class figures, confusion matrix.
    Eval(EvalArgs),
    /// Show which pixels pushed the prediction up: a heat map beside each image, as a PNG.
    Explain(ExplainArgs),
    /// Serve the model over HTTP (Open Inference Protocol / KServe v2, /v1/predict, /v1/explain).
    Serve(ServeArgs),
}

/// `maas train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Train until this many epochs are complete (with --resume: in all).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub epochs: u32,
    /// Samples per training step [default: 32].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: Option<u32>,
    /// Adam's learning rate [default: 0.001].
    #[arg(long, value_name = "RATE", value_parser = positive_float)]
    pub lr: Option<f64>,
    /// Width of the hidden layer [default: 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub hidden: Option<u32>,
    /// Seed of the initial weights and of each epoch's shuffle [default: 42].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// The dataset.
    #[command(flatten)]
    pub data: DataArgs,
    /// Folder for checkpoints, metrics.csv and run.json.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "checkpoints",
        env = "MAAS_CHECKPOINTS"
    )]
    pub checkpoints: PathBuf,
    /// Continue from the last complete checkpoint in --checkpoints.
    #[arg(long)]
    pub resume: bool,
    /// Start a new run even where --checkpoints already holds one, replacing its files.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Train on the first N training images only (smoke runs, CI).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Print the run's summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Where the images are: CIFAR-10 (and where to fetch it from when it is missing), or a folder
/// of your own.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Folder holding cifar-10-batches-bin/ (downloaded there when missing), or your own images
    /// in class folders: DIR/train/<class>/* and DIR/test/<class>/*, or DIR/<class>/* divided by
    /// --val-split.
    #[arg(long, value_name = "DIR", default_value = "data", env = "MAAS_DATA")]
    pub data: PathBuf,
    /// For an image folder without test/: the share of each class held out for testing, drawn
    /// with the seed [default: 0.1; eval: the model's].
    #[arg(long, value_name = "SHARE", value_parser = open_unit_interval)]
    pub val_split: Option<f64>,
    /// Stop at the first unreadable image of an image folder instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Where to download CIFAR-10 from when it is missing (a mirror).
    #[arg(long, value_name = "URL", default_value = download::DEFAULT_URL, env = "MAAS_CIFAR10_URL")]
    pub cifar10_url: String,
    /// The MD5 the downloaded archive must have.
    #[arg(long, value_name = "HEX", default_value = download::ARCHIVE_MD5, env = "MAAS_CIFAR10_MD5", hide_short_help = true)]
    pub cifar10_md5: String,
}

impl DataArgs {
    /// The image folder `--data` names, else the `cifar-10-batches-bin` folder, downloaded
    /// first when missing.
    pub fn ensure(&self, reporter: &Reporter) -> Result<DataSource> {
        if let Some(folder) = ImageFolder::detect(&self.data)? {
            return Ok(DataSource::Folder(folder));
        }
        if self.val_split.is_some() {
            bail!(
                "{}: --val-split applies to an image folder, and this is CIFAR-10 (which has its own test split)",
                self.data.display()
            );
        }
        download::ensure_cifar10(
            &self.data,
            &DownloadOptions {
                url: self.cifar10_url.clone(),
                md5: self.cifar10_md5.to_lowercase(),
                progress: reporter.bars,
                quiet: reporter.quiet,
            },
        )
        .map(DataSource::Cifar10)
    }
}

/// `maas export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The checkpoint to export [default: best.ckpt in --checkpoints].
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,
    /// Folder of the run whose best checkpoint is exported.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "checkpoints",
        env = "MAAS_CHECKPOINTS"
    )]
    pub checkpoints: PathBuf,
    /// The file format.
    #[arg(long, value_enum, default_value_t = export::Format::Maas)]
    pub format: export::Format,
    /// Where to write [default: model.maas, or model.onnx with --format onnx].
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Print what was written as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Where `predict` and `serve` find their model.
#[derive(Debug, Clone, Args)]
pub struct ModelSource {
    /// The model [default: model.maas, else the best checkpoint in --checkpoints].
    #[arg(long, value_name = "PATH", env = "MAAS_MODEL")]
    pub model: Option<PathBuf>,
    /// Folder whose best checkpoint is used when there is no model file.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "checkpoints",
        env = "MAAS_CHECKPOINTS"
    )]
    pub checkpoints: PathBuf,
}

impl ModelSource {
    /// The model file to load: `--model`, else `model.maas`, else the best checkpoint (saying so).
    pub fn resolve(&self, reporter: &Reporter) -> Result<PathBuf> {
        let (path, note) = resolve_model(self.model.as_deref(), &self.checkpoints)?;
        if let Some(note) = note {
            reporter.info(note);
        }
        Ok(path)
    }

    /// Resolves and loads the model.
    pub fn load(&self, reporter: &Reporter) -> Result<(PathBuf, LoadedModel)> {
        let path = self.resolve(reporter)?;
        let loaded = load_model(&path)?;
        Ok((path, loaded))
    }
}

/// `maas predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Image files (PNG, JPEG, GIF, BMP, TIFF, WebP, ...; any size, grey, RGB or RGBA), folders
    /// of them (searched recursively), or quoted patterns such as 'photos/*.jpg'.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Which model to use.
    #[command(flatten)]
    pub source: ModelSource,
    /// How many of the most probable classes to list (at most the model's classes).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub top_k: u16,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `maas eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Which model to use.
    #[command(flatten)]
    pub source: ModelSource,
    /// The dataset; its test split is evaluated.
    #[command(flatten)]
    pub data: DataArgs,
    /// Exit with 1 when the accuracy is below this (0-1), to gate a release in CI.
    #[arg(long, value_name = "ACCURACY", value_parser = unit_interval)]
    pub fail_under: Option<f64>,
    /// Folder for confusion.png [default: the model file's folder].
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `maas explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Image files, folders of them, or quoted patterns, as for `predict`.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Which model to use.
    #[command(flatten)]
    pub source: ModelSource,
    /// Folder for the pictures (`<image name>.explain.png`).
    #[arg(long, value_name = "DIR", default_value = "explain")]
    pub out: PathBuf,
    /// How many of the most probable classes to list (at most the model's classes).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub top_k: u16,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `maas serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Which model to use.
    #[command(flatten)]
    pub source: ModelSource,
    /// Address to listen on; 0.0.0.0 listens on every interface.
    #[arg(long, default_value = "127.0.0.1", env = "MAAS_HOST")]
    pub host: String,
    /// Port to listen on (0: any free port, printed on stderr).
    #[arg(long, default_value_t = 8080, env = "MAAS_PORT")]
    pub port: u16,
    /// The model's name in the v2 routes (/v2/models/NAME/...).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "maas",
        env = "MAAS_MODEL_NAME"
    )]
    pub model_name: String,
    /// Most images in one forward pass when concurrent requests are batched together.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_batch: u32,
    /// Longest a request waits for others to fill a batch, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2)]
    pub max_wait_ms: u64,
    /// Most requests waiting for the model; beyond it requests get 503.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue: u32,
    /// Largest request body in bytes; beyond it requests get 413.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest a request may take, in milliseconds, reading its body included.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Require `Authorization: Bearer KEY` on every route but health and metrics.
    #[arg(long, value_name = "KEY", env = "MAAS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "PATH", env = "MAAS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", env = "MAAS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A file of accepted API keys, one per line.
    #[arg(long, value_name = "PATH", env = "MAAS_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
}

fn open_unit_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        Ok(_) => Err(format!("{s} is not strictly between 0 and 1")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

fn unit_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(_) => Err(format!("{s} is not between 0 and 1")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

fn positive_float(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err(format!("{s} is not a positive number")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

/// Runs the parsed command line; returns the exit code of a run that completed.
pub fn run(cli: Cli, stop: &AtomicBool) -> Result<u8> {
    let reporter = Reporter::new(cli.quiet, cli.progress);
    match cli.command {
        Command::Train(args) => run_train(args, cli.device, &reporter, stop),
        Command::Export(args) => run_export(args, &reporter),
        Command::Predict(args) => run_predict(args, cli.device, &reporter),
        Command::Eval(args) => run_eval(args, cli.device, &reporter),
        Command::Explain(args) => run_explain(args, cli.device, &reporter),
        Command::Serve(args) => {
            let path = args.source.resolve(&reporter)?;
            let selected = select_device(cli.device, &reporter)?;
            crate::serve::run(&args, &path, &selected, &reporter)?;
            Ok(0)
        }
    }
}

fn select_device(choice: DeviceChoice, reporter: &Reporter) -> Result<device::Selected> {
    let selected = device::select(choice)?;
    reporter.info(format!("device: {}", selected.description));
    Ok(selected)
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run_train(
    args: TrainArgs,
    choice: DeviceChoice,
    reporter: &Reporter,
    stop: &AtomicBool,
) -> Result<u8> {
    let selected = select_device(choice, reporter)?;
    let data = args.data.ensure(reporter)?;
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
        checkpoints: args.checkpoints,
        resume: args.resume,
        overwrite: args.overwrite,
    };
    // On one of rayon's threads, so that the step's parallel parts are handed between the pool's
    // threads, without waking this one and putting it back to sleep every step.
    let summary = rayon::scope(|_| train::train(&opts, &selected, reporter, stop))?;
    if args.json {
        print_json(&summary)?;
    } else {
        println!(
            "trained {} epoch{}: test accuracy {:.4} (best {:.4} at epoch {}); checkpoints in {}",
            summary.epochs,
            if summary.epochs == 1 { "" } else { "s" },
            summary.final_test_accuracy,
            summary.best_test_accuracy,
            summary.best_epoch,
            summary.checkpoints.dir.display()
        );
    }
    Ok(0)
}

fn run_export(args: ExportArgs, reporter: &Reporter) -> Result<u8> {
    let checkpoint = args
        .checkpoint
        .unwrap_or_else(|| args.checkpoints.join("best.ckpt"));
    if !checkpoint.exists() {
        bail!(
            "{}: not found; train a model first with `maas train`, or pass --checkpoint PATH",
            checkpoint.display()
        );
    }
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(args.format.default_output()));
    let model = export::export(&checkpoint, &output, args.format)?;
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    let provenance = model.provenance.as_ref();
    if args.json {
        print_json(&serde_json::json!({
            "output": output,
            "format": args.format,
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
    if args.format == export::Format::Maas {
        reporter.info(format!(
            "classify with: maas predict --model {} IMAGE...",
            output.display()
        ));
    }
    Ok(0)
}

fn run_predict(args: PredictArgs, choice: DeviceChoice, reporter: &Reporter) -> Result<u8> {
    let (path, loaded) = args.source.load(reporter)?;
    let selected = select_device(choice, reporter)?;
    let classifier = Classifier::new(&loaded, &selected.device);
    let (files, problems) = expand_inputs(&args.images);
    let bar = reporter.bar_from(
        200,
        files.len(),
        "classifying {bar:30} {pos}/{len} images [{elapsed}<{eta}]",
    );
    let mut report =
        classifier.predict_files(Path::new(&path), &files, args.top_k as usize, &bar)?;
    report.errors.splice(0..0, problems);
    if args.json {
        print_json(&report)?;
    } else {
        print!("{}", render_table(&report));
        for e in &report.errors {
            eprintln!("maas: error: {}: {}", e.file, e.error);
        }
    }
    Ok(if report.errors.is_empty() { 0 } else { 1 })
}

fn run_eval(args: EvalArgs, choice: DeviceChoice, reporter: &Reporter) -> Result<u8> {
    let (path, loaded) = args.source.load(reporter)?;
    let data = args.data.ensure(reporter)?;
    let classes = data.classes()?;
    if classes != loaded.config.classes {
        bail!(
            "{}: the model's classes {:?} are not the dataset's {:?}",
            path.display(),
            loaded.config.classes,
            classes
        );
    }
    // A single image folder is divided as it was for training: the model's seed and share.
    let trained = loaded.train.as_ref();
    let load = LoadOptions {
        seed: trained.map_or(train::DEFAULT_SEED, |t| t.seed),
        val_split: args
            .data
            .val_split
            .or(trained.and_then(|t| t.val_split))
            .unwrap_or(DEFAULT_VAL_SPLIT),
        limit: None,
        strict: args.data.strict,
    };
    let test = data.load_test(&load, reporter)?;
    let selected = select_device(choice, reporter)?;
    let classifier = Classifier::new(&loaded, &selected.device);
    let report = eval::evaluate(&classifier, &test, &path.display().to_string())?;
    // Beside the model unless told otherwise: the picture belongs to that model's evaluation.
    let plots_dir = args.plots.clone().unwrap_or_else(|| match path.parent() {
        Some(p) => p.to_path_buf(),
        None => PathBuf::new(),
    });
    let picture = plots_dir.join("confusion.png");
    let note = format!(
        "{} test images, accuracy {:.4}, model {}",
        report.samples,
        report.accuracy,
        path.display()
    );
    let png = plots::confusion_png(&report.labels, &report.confusion, &note)?;
    write_atomic(&picture, &png)?;
    if args.json {
        print_json(&eval::EvalOutput {
            report: &report,
            confusion_png: &picture,
        })?;
    } else {
        print!("{}", eval::render(&report));
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

fn run_explain(args: ExplainArgs, choice: DeviceChoice, reporter: &Reporter) -> Result<u8> {
    let (path, loaded) = args.source.load(reporter)?;
    let selected = select_device(choice, reporter)?;
    let classifier = Classifier::new(&loaded, &selected.device);
    let explainer = explain::Explainer::new(&loaded, &selected.device);
    let (files, mut errors) = expand_inputs(&args.images);
    let mut explanations = Vec::new();
    for file in &files {
        let outcome = load_image_file(file).and_then(|input| {
            explain::explain(
                &classifier,
                &explainer,
                file,
                &input,
                &args.out,
                args.top_k as usize,
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
    if args.json {
        print_json(&serde_json::json!({
            "model": path,
            "explanations": explanations,
            "errors": errors,
        }))?;
    } else {
        for e in &explanations {
            println!(
                "{}: {} {:.1}% -> {}",
                e.file,
                e.label,
                100.0 * e.probability,
                e.picture.display()
            );
        }
        for e in &errors {
            eprintln!("maas: error: {}: {}", e.file, e.error);
        }
    }
    Ok(if errors.is_empty() { 0 } else { 1 })
}
