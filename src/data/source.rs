//! What `--data` names: CIFAR-10 in its binary layout, or a folder of your own images. Either
//! way the result is the same: class names, and training and test splits of 32x32 images.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::cifar10::{self, Split};
use super::folder::{self, ImageFolder};
use super::labelled::LabelledImages;
use crate::progress::Reporter;

/// A dataset, before any image is loaded.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// The `cifar-10-batches-bin` folder.
    Cifar10(PathBuf),
    /// An image folder.
    Folder(ImageFolder),
}

/// How to load a dataset.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Seed of the division of a single image folder (the run's seed).
    pub seed: u64,
    /// Share of each class held out for testing, for a single image folder.
    pub val_split: f64,
    /// Only the first N training images.
    pub limit: Option<usize>,
    /// Stop at the first unreadable image instead of skipping it.
    pub strict: bool,
}

impl DataSource {
    /// The folder the data comes from, for `run.json` and messages.
    pub fn path(&self) -> &Path {
        match self {
            DataSource::Cifar10(dir) => dir,
            DataSource::Folder(f) => &f.root,
        }
    }

    /// The class names, in label order (cheap: no image is read).
    pub fn classes(&self) -> Result<Vec<String>> {
        match self {
            DataSource::Cifar10(dir) => cifar10::read_class_names(dir),
            DataSource::Folder(f) => Ok(f.classes.clone()),
        }
    }

    /// Whether `--val-split` decides the test images.
    pub fn uses_val_split(&self) -> bool {
        matches!(self, DataSource::Folder(f) if f.uses_val_split())
    }

    /// The training and test splits. For an image folder, says how many images each class has
    /// and which were skipped.
    pub fn load(
        &self,
        opts: &LoadOptions,
        reporter: &Reporter,
    ) -> Result<(LabelledImages, LabelledImages)> {
        match self {
            DataSource::Cifar10(dir) => Ok((
                cifar10::load_split(dir, Split::Train, opts.limit)?,
                cifar10::load_split(dir, Split::Test, None)?,
            )),
            DataSource::Folder(f) => {
                let mut plan = f.plan(opts.val_split, opts.seed);
                if let Some(limit) = opts.limit {
                    plan.train.truncate(limit);
                }
                describe(f, &plan, opts, true, reporter);
                let train = load_checked(&plan.train, opts, reporter)?;
                let test = load_checked(&plan.test, opts, reporter)?;
                Ok((train, test))
            }
        }
    }

    /// The test split alone.
    pub fn load_test(&self, opts: &LoadOptions, reporter: &Reporter) -> Result<LabelledImages> {
        match self {
            DataSource::Cifar10(dir) => cifar10::load_split(dir, Split::Test, None),
            DataSource::Folder(f) => {
                let plan = f.plan(opts.val_split, opts.seed);
                describe(f, &plan, opts, false, reporter);
                load_checked(&plan.test, opts, reporter)
            }
        }
    }
}

/// Says how many images of each class were found (training left out for `eval`).
fn describe(
    f: &ImageFolder,
    plan: &folder::Plan,
    opts: &LoadOptions,
    train: bool,
    reporter: &Reporter,
) {
    let how = if f.uses_val_split() {
        format!(
            "test images: {:.0}% of each class, drawn with seed {}",
            100.0 * opts.val_split,
            opts.seed
        )
    } else {
        "test images from test/".to_string()
    };
    let counts = if train {
        format!("{} training and {} test", plan.train.len(), plan.test.len())
    } else {
        format!("{} test", plan.test.len())
    };
    reporter.info(format!(
        "image folder {}: {} classes, {counts} image files ({how})\n{}",
        f.root.display(),
        f.classes.len(),
        f.table(plan, train).trim_end()
    ));
    super::files::warn_skipped(&f.skipped);
}

/// Loads `files`; an unreadable one is skipped and reported (an error with `--strict`).
fn load_checked(
    files: &[(PathBuf, u8)],
    opts: &LoadOptions,
    reporter: &Reporter,
) -> Result<LabelledImages> {
    let bar = reporter.bar_from(
        500,
        files.len(),
        "reading images {bar:30} {pos}/{len} [{elapsed}<{eta}]",
    );
    let (split, skipped) = folder::load_files(files, &bar);
    if let Some(first) = skipped.first()
        && opts.strict
    {
        bail!(
            "{}: {} (--strict stops at the first unreadable image; {} of {} are unreadable)",
            first.file,
            first.error,
            skipped.len(),
            files.len()
        );
    }
    if !skipped.is_empty() {
        // Said even with --quiet: the data is not what the user thinks it is.
        eprintln!(
            "maas: warning: skipped {} unreadable image{} of {} (--strict makes this an error):",
            skipped.len(),
            if skipped.len() == 1 { "" } else { "s" },
            files.len()
        );
        for s in &skipped {
            eprintln!("  {}: {}", s.file, s.error);
        }
    }
    Ok(split)
}

/// The default share of `--val-split`.
pub use folder::DEFAULT_VAL_SPLIT;
