//! The flag groups several commands share (`--data`, `--model` with `--checkpoints`), the
//! enumerations of flag values, and the value parsers. Each is declared once and flattened into
//! the commands that take it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use crate::artifact::export::{self, LoadedModel, load_model, resolve_model};
use crate::data::download::{self, DownloadOptions};
use crate::data::folder::ImageFolder;
use crate::data::source::DataSource;
use crate::device::DeviceChoice;
use crate::progress::{ProgressMode, Reporter};

/// `--device`: where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceFlag {
    /// A GPU when the machine has one, else the CPU.
    Auto,
    /// The CPU (burn's flex backend).
    Cpu,
    /// A GPU through wgpu: Vulkan, Metal or DX12 (OpenGL only where none exists, with a notice); an error when there is none.
    Gpu,
}

impl From<DeviceFlag> for DeviceChoice {
    fn from(flag: DeviceFlag) -> Self {
        match flag {
            DeviceFlag::Auto => DeviceChoice::Auto,
            DeviceFlag::Cpu => DeviceChoice::Cpu,
            DeviceFlag::Gpu => DeviceChoice::Gpu,
        }
    }
}

/// `--progress`: when to draw progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressFlag {
    /// When stderr is a terminal.
    Auto,
    /// Always, even into a pipe or file.
    Always,
    /// Never: one plain line per epoch instead.
    Never,
}

impl From<ProgressFlag> for ProgressMode {
    fn from(flag: ProgressFlag) -> Self {
        match flag {
            ProgressFlag::Auto => ProgressMode::Auto,
            ProgressFlag::Always => ProgressMode::Always,
            ProgressFlag::Never => ProgressMode::Never,
        }
    }
}

/// `export --format`: the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatFlag {
    /// maas's own self-contained file, for `predict` and `serve`.
    Maas,
    /// ONNX (opset 13), for other runtimes.
    Onnx,
}

impl From<FormatFlag> for export::Format {
    fn from(flag: FormatFlag) -> Self {
        match flag {
            FormatFlag::Maas => export::Format::Maas,
            FormatFlag::Onnx => export::Format::Onnx,
        }
    }
}

/// `--checkpoints`: the folder of a training run.
#[derive(Debug, Clone, Args)]
pub struct CheckpointsArg {
    /// The training run's folder: its checkpoints (best.ckpt, last.ckpt, one per epoch),
    /// metrics.csv and run.json.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "checkpoints",
        env = "MAAS_CHECKPOINTS"
    )]
    pub checkpoints: PathBuf,
}

/// Where the images are: CIFAR-10 (and where to fetch it from when it is missing), or a folder
/// of your own.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Folder holding cifar-10-batches-bin/ (downloaded there when missing), or your own images
    /// in class folders: DIR/train/<class>/* and DIR/test/<class>/*, or DIR/<class>/* divided by
    /// --test-split.
    #[arg(long, value_name = "DIR", default_value = "data", env = "MAAS_DATA")]
    pub data: PathBuf,
    /// For an image folder without test/: the share of each class held out for testing, drawn
    /// with the seed [default: 0.1; eval: the model's]. (Before maas had a validation split,
    /// this was --val-split.)
    #[arg(long, value_name = "SHARE", value_parser = open_unit_interval)]
    pub test_split: Option<f64>,
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
        if self.test_split.is_some() {
            bail!(
                "{}: --test-split applies to an image folder, and this is CIFAR-10 (which has its own test split)",
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

/// Where `predict`, `eval`, `explain` and `serve` find their model.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// The model [default: model.maas, else the best checkpoint in --checkpoints].
    #[arg(long, value_name = "PATH", env = "MAAS_MODEL")]
    pub model: Option<PathBuf>,
    /// Used when there is no model file: its best checkpoint.
    #[command(flatten)]
    pub run: CheckpointsArg,
}

impl ModelArgs {
    /// The model file to load: `--model`, else `model.maas`, else the best checkpoint (saying so).
    pub fn resolve(&self, reporter: &Reporter) -> Result<PathBuf> {
        let (path, note) = resolve_model(self.model.as_deref(), &self.run.checkpoints)?;
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

/// How `predict` and `explain` report what they found.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// How many of the most probable classes to list (at most the model's classes).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub top_k: u16,
    /// Print one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A share strictly between 0 and 1.
pub fn open_unit_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        Ok(_) => Err(format!("{s} is not strictly between 0 and 1")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

/// A share from 0 to 1.
pub fn unit_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(_) => Err(format!("{s} is not between 0 and 1")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

/// A finite number above 0 that an f32 holds (`--lr`: the weights it scales are f32, and a rate
/// beyond f32's range makes every step infinite).
pub fn positive_float(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= f64::from(f32::MAX) => Ok(v),
        Ok(v) if v.is_finite() && v > 0.0 => Err(format!("{s} is beyond the range of f32")),
        Ok(_) => Err(format!("{s} is not a positive number")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

/// The most seconds a duration flag takes (about 31 years): any clock can add it to now.
const MAX_SECONDS: f64 = 1e9;

/// A length of time in seconds: above 0 and at most [`MAX_SECONDS`] (`1e300` would overflow a
/// `Duration`, and a deadline that far ahead overflows the clock).
pub fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= MAX_SECONDS => {
            Duration::try_from_secs_f64(v).map_err(|e| format!("{s}: {e}"))
        }
        Ok(v) if v > MAX_SECONDS => Err(format!("{s} is more than {MAX_SECONDS:e} seconds")),
        Ok(_) => Err(format!("{s} is not a positive number of seconds")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_parsers_refuse_what_is_out_of_range() {
        assert_eq!(open_unit_interval("0.25"), Ok(0.25));
        assert!(open_unit_interval("0").is_err());
        assert!(open_unit_interval("1").is_err());
        assert_eq!(unit_interval("1"), Ok(1.0));
        assert!(unit_interval("1.5").is_err());
        assert!(unit_interval("x").is_err());
        assert!(positive_float("0").is_err());
        assert!(positive_float("inf").is_err());
        assert!(positive_float("NaN").is_err());
        assert_eq!(positive_float("1e-3"), Ok(1e-3));
        assert!(positive_float("1e300").is_err());
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["1e300", "1e10", "inf", "NaN", "-1", "0", "-0", "x"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}
