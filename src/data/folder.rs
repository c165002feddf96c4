//! Your own images: a folder of class folders holding image files of any size and format.
//!
//! Two layouts are read: `DIR/train/<class>/...` beside `DIR/test/<class>/...`, or the class
//! folders directly in `DIR`, divided per class into training and test images by a share
//! (`--test-split`; before the validation split, `--val-split`) drawn with the run's seed. The classes are the folder names, sorted. Images
//! go through THE preprocessing ([`super::preprocess`]) into the same 32x32 channel-major bytes
//! as CIFAR-10 records, so that everything downstream is the same.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};

use super::MAX_CLASSES;
use super::cifar10::{DIR_NAME, IMAGE_BYTES};
use super::files::{FileError, ImageWalk};
use super::labelled::LabelledImages;
use super::preprocess::{MAX_FILE_BYTES, image_bytes_to_chw};

/// The share of each class held out for testing when the folder has no `test/`.
pub const DEFAULT_TEST_SPLIT: f64 = 0.1;

/// An image folder: its classes and the image files of each.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// The folder given as `--data`.
    pub root: PathBuf,
    /// Class names: the sorted names of the class folders.
    pub classes: Vec<String>,
    /// Entries named like images that are not regular files (FIFOs, devices): left out, to be
    /// said as a warning.
    pub skipped: Vec<FileError>,
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Layout {
    /// `train/<class>` and `test/<class>`: the image files of each class, in name order.
    Divided {
        train: Vec<Vec<PathBuf>>,
        test: Vec<Vec<PathBuf>>,
    },
    /// `<class>` alone: divided by a share at load time.
    Single { files: Vec<Vec<PathBuf>> },
}

/// Which images are for training and which for testing, each with its label.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Training images, in the seed's order (so that `--limit` takes a mix of classes).
    pub train: Vec<(PathBuf, u8)>,
    /// Test images, by class then name.
    pub test: Vec<(PathBuf, u8)>,
}

/// Visible sub-folders of `dir`, sorted by name.
fn sub_folders(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list the folder", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // Hidden folders (.git, .DS_Store's kin, maas's own temporaries) are not classes.
        if path.is_dir() && !name.starts_with('.') {
            out.push((name, path));
        }
    }
    out.sort();
    // Folder names differ, but two may print alike (names that are not UTF-8): a class must be
    // told apart by its name.
    if let Some(pair) = out.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        bail!(
            "{}: two class folders are named `{}`",
            dir.display(),
            pair[0].0
        );
    }
    Ok(out)
}

/// The image files of each class folder of `dir`, with the class names. Training needs two
/// classes at least; a test folder may hold fewer (`min_classes` 0).
/// `walk` is shared by every folder of one dataset, so that an image reached twice (through a
/// link) lands in one class and one split only: the first in name order, training before test.
fn scan_classes(
    dir: &Path,
    min_classes: usize,
    walk: &mut ImageWalk,
) -> Result<(Vec<String>, Vec<Vec<PathBuf>>)> {
    let folders = sub_folders(dir)?;
    if folders.len() < min_classes {
        bail!(
            "{}: found {} class folder{}, a classifier needs at least 2 (one folder of images per class)",
            dir.display(),
            folders.len(),
            if folders.len() == 1 { "" } else { "s" }
        );
    }
    if folders.len() > MAX_CLASSES {
        bail!(
            "{}: {} class folders, more than the {MAX_CLASSES} maas supports",
            dir.display(),
            folders.len()
        );
    }
    let mut names = Vec::with_capacity(folders.len());
    let mut files = Vec::with_capacity(folders.len());
    for (name, path) in folders {
        walk.folder(&path)
            .with_context(|| format!("{}", path.display()))?;
        names.push(name);
        files.push(std::mem::take(&mut walk.files));
    }
    Ok((names, files))
}

impl ImageFolder {
    /// The image folder at `dir`, or `None` when `dir` is not one: missing, holding
    /// `cifar-10-batches-bin/`, or holding no sub-folder at all (CIFAR-10 then goes there).
    pub fn detect(dir: &Path) -> Result<Option<Self>> {
        if !dir.is_dir() || dir.join(DIR_NAME).exists() || sub_folders(dir)?.is_empty() {
            return Ok(None);
        }
        Self::open(dir).map(Some)
    }

    /// Reads the layout of the image folder at `dir` (names only; no image is decoded).
    pub fn open(dir: &Path) -> Result<Self> {
        let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
        let mut walk = ImageWalk::default();
        // The dataset's own folders belong to it: a link inside a class to one of them (or to a
        // folder above) is passed over rather than pulling another class's images in.
        for folder in [dir, &train_dir, &test_dir] {
            walk.claim(folder);
            for (_, class) in sub_folders(folder).unwrap_or_default() {
                walk.claim(&class);
            }
        }
        let layout_root = if train_dir.is_dir() && test_dir.is_dir() {
            let (classes, train) = scan_classes(&train_dir, 2, &mut walk)?;
            let (test_classes, test_files) = scan_classes(&test_dir, 0, &mut walk)?;
            // A test class unknown to training could never be predicted right.
            if let Some(extra) = test_classes.iter().find(|c| !classes.contains(c)) {
                bail!(
                    "{}: class folder `{extra}` has no counterpart in {}",
                    test_dir.display(),
                    train_dir.display()
                );
            }
            let mut test = vec![Vec::new(); classes.len()];
            for (name, files) in test_classes.into_iter().zip(test_files) {
                if let Some(k) = classes.iter().position(|c| *c == name) {
                    test[k] = files;
                }
            }
            let folder = Self {
                root: dir.to_path_buf(),
                classes,
                skipped: Vec::new(),
                layout: Layout::Divided { train, test },
            };
            (folder, train_dir)
        } else {
            // `train/` alone is divided like a folder of classes.
            let source = if train_dir.is_dir() {
                train_dir
            } else {
                dir.to_path_buf()
            };
            let (classes, files) = scan_classes(&source, 2, &mut walk)?;
            let folder = Self {
                root: dir.to_path_buf(),
                classes,
                skipped: Vec::new(),
                layout: Layout::Single { files },
            };
            (folder, source)
        };
        let (mut folder, train_root) = layout_root;
        folder.skipped = walk.skipped;
        for (k, name) in folder.classes.iter().enumerate() {
            if folder.train_files(k) == 0 {
                bail!(
                    "{}: no image files ({})",
                    train_root.join(name).display(),
                    super::files::IMAGE_EXTENSIONS.join(", ")
                );
            }
        }
        Ok(folder)
    }

    /// Whether the test images are a share of the folder (`--test-split` applies).
    pub fn uses_test_split(&self) -> bool {
        matches!(self.layout, Layout::Single { .. })
    }

    fn train_files(&self, class: usize) -> usize {
        match &self.layout {
            Layout::Divided { train, .. } => train.get(class).map_or(0, Vec::len),
            Layout::Single { files } => files.get(class).map_or(0, Vec::len),
        }
    }

    /// Divides the images into training and test: the test folders, or per class the share
    /// `test_split` (at least one image, and never all of them when there are two or more) drawn
    /// with `seed`, so that training and a later `eval` with the same seed agree.
    pub fn plan(&self, test_split: f64, seed: u64) -> Plan {
        let mut plan = Plan::default();
        match &self.layout {
            Layout::Divided { train, test } => {
                for (k, files) in train.iter().enumerate() {
                    plan.train
                        .extend(files.iter().map(|f| (f.clone(), k as u8)));
                }
                for (k, files) in test.iter().enumerate() {
                    plan.test.extend(files.iter().map(|f| (f.clone(), k as u8)));
                }
            }
            Layout::Single { files } => {
                for (k, files) in files.iter().enumerate() {
                    let mut order = files.clone();
                    let mut rng = StdRng::seed_from_u64(
                        seed ^ (k as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
                    );
                    order.shuffle(&mut rng);
                    let n = order.len();
                    let held = if n < 2 {
                        0
                    } else {
                        ((n as f64 * test_split).round() as usize).clamp(1, n - 1)
                    };
                    let (test, train) = order.split_at(held);
                    let mut test = test.to_vec();
                    test.sort();
                    plan.test.extend(test.into_iter().map(|f| (f, k as u8)));
                    plan.train
                        .extend(train.iter().map(|f| (f.clone(), k as u8)));
                }
            }
        }
        plan.train.shuffle(&mut StdRng::seed_from_u64(seed));
        plan
    }

    /// A table of the images found per class, for people; `train` false leaves training out.
    pub fn table(&self, plan: &Plan, train: bool) -> String {
        let width = self
            .classes
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let count = |list: &[(PathBuf, u8)], k: usize| {
            list.iter().filter(|(_, l)| usize::from(*l) == k).count()
        };
        let mut out = format!("  {:<width$}", "CLASS");
        if train {
            out.push_str(&format!("  {:>7}", "TRAIN"));
        }
        out.push_str(&format!("  {:>7}\n", "TEST"));
        for (k, class) in self.classes.iter().enumerate() {
            out.push_str(&format!("  {class:<width$}"));
            if train {
                out.push_str(&format!("  {:>7}", count(&plan.train, k)));
            }
            out.push_str(&format!("  {:>7}\n", count(&plan.test, k)));
        }
        out
    }
}

/// Decodes and preprocesses `files` on every core. Unreadable files are returned, not fatal; the
/// caller decides (`--strict`). `bar` advances by one per file.
pub fn load_files(files: &[(PathBuf, u8)], bar: &ProgressBar) -> (LabelledImages, Vec<FileError>) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = files.len().div_ceil(threads).max(1);
    let decoded: Vec<Vec<Result<Vec<u8>, String>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(path, _)| {
                            let result = read_image(path);
                            bar.inc(1);
                            result
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| vec![Err("decoding failed unexpectedly".into())])
            })
            .collect()
    });
    bar.finish_and_clear();
    let mut split = LabelledImages::default();
    let mut skipped = Vec::new();
    for ((path, label), result) in files.iter().zip(decoded.into_iter().flatten()) {
        match result {
            Ok(chw) if chw.len() == IMAGE_BYTES => {
                split.images.extend_from_slice(&chw);
                split.labels.push(*label);
            }
            Ok(_) => skipped.push(FileError {
                file: path.display().to_string(),
                error: "preprocessing gave the wrong size".into(),
            }),
            Err(error) => skipped.push(FileError {
                file: path.display().to_string(),
                error,
            }),
        }
    }
    (split, skipped)
}

fn read_image(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = crate::fsutil::read_regular(path, MAX_FILE_BYTES).map_err(|e| format!("{e:#}"))?;
    image_bytes_to_chw(&bytes).map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, rel: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn classes_are_the_sorted_folder_names_and_the_split_is_per_class() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..10 {
            touch(tmp.path(), &format!("zebra/{i}.png"));
            touch(tmp.path(), &format!("ant/{i}.jpg"));
        }
        touch(tmp.path(), "ant/notes.txt");
        touch(tmp.path(), ".hidden/1.png");
        let folder = ImageFolder::detect(tmp.path()).unwrap().unwrap();
        assert_eq!(folder.classes, ["ant", "zebra"]);
        assert!(folder.uses_test_split());
        let plan = folder.plan(0.2, 7);
        assert_eq!((plan.train.len(), plan.test.len()), (16, 4));
        for k in 0..2u8 {
            assert_eq!(plan.test.iter().filter(|(_, l)| *l == k).count(), 2);
        }
        // The same seed draws the same test images; another seed others.
        let again = folder.plan(0.2, 7);
        assert_eq!(plan.test, again.test);
        assert_ne!(plan.test, folder.plan(0.2, 8).test);
        assert!(folder.table(&plan, true).contains("zebra"));
    }

    #[test]
    fn train_and_test_folders_are_used_as_they_are() {
        let tmp = tempfile::tempdir().unwrap();
        touch(tmp.path(), "train/a/1.png");
        touch(tmp.path(), "train/b/1.png");
        touch(tmp.path(), "train/b/2.png");
        touch(tmp.path(), "test/b/9.png");
        let folder = ImageFolder::detect(tmp.path()).unwrap().unwrap();
        assert!(!folder.uses_test_split());
        let plan = folder.plan(0.5, 1);
        assert_eq!(plan.train.len(), 3);
        assert_eq!(plan.test, vec![(tmp.path().join("test/b/9.png"), 1)]);
        touch(tmp.path(), "test/c/1.png");
        let err = format!("{:#}", ImageFolder::open(tmp.path()).unwrap_err());
        assert!(err.contains("`c`"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn class_folders_whose_names_print_alike_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        for name in [&b"caf\xe9"[..], &b"caf\xe8"[..]] {
            std::fs::create_dir(dir.path().join(std::ffi::OsStr::from_bytes(name))).unwrap();
        }
        let err = sub_folders(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("two class folders are named `caf\u{FFFD}`"),
            "{err}"
        );
    }

    #[test]
    fn not_a_folder_of_classes() {
        let tmp = tempfile::tempdir().unwrap();
        // Empty, or a CIFAR-10 folder: not an image folder.
        assert!(ImageFolder::detect(tmp.path()).unwrap().is_none());
        std::fs::create_dir(tmp.path().join(DIR_NAME)).unwrap();
        touch(tmp.path(), "a/1.png");
        assert!(ImageFolder::detect(tmp.path()).unwrap().is_none());
        std::fs::remove_dir(tmp.path().join(DIR_NAME)).unwrap();
        let err = format!("{:#}", ImageFolder::detect(tmp.path()).unwrap_err());
        assert!(err.contains("found 1 class folder"), "{err}");
        std::fs::create_dir(tmp.path().join("b")).unwrap();
        let err = format!("{:#}", ImageFolder::detect(tmp.path()).unwrap_err());
        assert!(err.contains("b: no image files"), "{err}");
    }
}
