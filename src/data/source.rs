//! What `--data` names: CIFAR-10 in its binary layout, or a folder of your own images. Either
//! way the result is the same: class names, and training and test splits of 32x32 images.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};

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
    /// Share of each class held out for testing, for a single image folder (`--test-split`).
    pub test_split: f64,
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

    /// Whether `--test-split` decides the test images.
    pub fn uses_test_split(&self) -> bool {
        matches!(self, DataSource::Folder(f) if f.uses_test_split())
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
                let mut plan = f.plan(opts.test_split, opts.seed);
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
                let plan = f.plan(opts.test_split, opts.seed);
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
    let how = if f.uses_test_split() {
        format!(
            "test images: {:.0}% of each class, drawn with seed {}",
            100.0 * opts.test_split,
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

/// The default share of `--test-split`.
pub use folder::DEFAULT_TEST_SPLIT;

/// Divides `train` into training and validation images: per class, the share `share` of its
/// images (rounded; at least one of a class of two or more, never all), drawn with `seed`.
/// Stratified, so that each class is validated in its own proportion; both parts keep the
/// order the images had.
pub fn carve_validation(
    train: &LabelledImages,
    share: f64,
    seed: u64,
) -> (LabelledImages, LabelledImages) {
    let classes = train
        .labels
        .iter()
        .map(|&l| usize::from(l) + 1)
        .max()
        .unwrap_or(0);
    let mut held = vec![false; train.len()];
    for class in 0..classes {
        let mut members: Vec<usize> = (0..train.len())
            .filter(|&i| usize::from(train.labels[i]) == class)
            .collect();
        let n = members.len();
        if n < 2 {
            continue;
        }
        let take = ((n as f64 * share).round() as usize).clamp(1, n - 1);
        // Another constant than the test share's draw: the two are independent.
        let mut rng =
            StdRng::seed_from_u64(seed ^ (class as u64 + 1).wrapping_mul(0x6C8E_9CF5_7093_2BD5));
        members.shuffle(&mut rng);
        for &i in &members[..take] {
            held[i] = true;
        }
    }
    let (mut kept, mut validation) = (LabelledImages::default(), LabelledImages::default());
    for (i, &is_held) in held.iter().enumerate() {
        let to = if is_held { &mut validation } else { &mut kept };
        to.images.extend_from_slice(train.image(i));
        to.labels.push(train.labels[i]);
    }
    (kept, validation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(labels: &[u8]) -> LabelledImages {
        let mut split = LabelledImages::default();
        for (i, &l) in labels.iter().enumerate() {
            split.images.extend(std::iter::repeat_n(
                i as u8,
                crate::data::labelled::IMAGE_BYTES,
            ));
            split.labels.push(l);
        }
        split
    }

    #[test]
    fn validation_is_a_stratified_share_drawn_with_the_seed() {
        // 100 images of class 0, 50 of class 1, 1 of class 2.
        let labels: Vec<u8> = (0..151)
            .map(|i| {
                if i < 100 {
                    0
                } else if i < 150 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let all = images(&labels);
        let (train, val) = carve_validation(&all, 0.1, 42);
        let count = |s: &LabelledImages, c: u8| s.labels.iter().filter(|&&l| l == c).count();
        assert_eq!((count(&val, 0), count(&val, 1), count(&val, 2)), (10, 5, 0));
        assert_eq!(train.len() + val.len(), 151);
        // Every image is in one part only, with its label.
        let firsts =
            |s: &LabelledImages| -> Vec<u8> { (0..s.len()).map(|i| s.image(i)[0]).collect() };
        let mut seen: Vec<u8> = firsts(&train).into_iter().chain(firsts(&val)).collect();
        seen.sort();
        assert_eq!(seen, (0..151).map(|i| i as u8).collect::<Vec<_>>());
        assert!(firsts(&train).windows(2).all(|w| w[0] < w[1]), "order kept");
        assert_eq!(
            carve_validation(&all, 0.1, 42),
            (train.clone(), val.clone())
        );
        assert_ne!(
            carve_validation(&all, 0.1, 43).1,
            val,
            "another seed, another draw"
        );
    }
}
