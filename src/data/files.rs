//! Which files are images: the names a folder or a pattern contributes, shared by `predict`,
//! `explain` and image-folder datasets.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// File name extensions of the images a folder or a pattern contributes; a file named on its own
/// is always tried, whatever its name.
pub const IMAGE_EXTENSIONS: [&str; 15] = [
    "png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp", "pnm", "pbm", "pgm", "ppm", "tga",
    "ico", "qoi",
];

/// An image that could not be read or classified, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileError {
    /// The file.
    pub file: String,
    /// What was wrong with it.
    pub error: String,
}

/// Whether `path` has the extension of an image (any case).
pub fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Appends the image files under `dir` to `out`, recursively, in name order.
pub fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .context("cannot list the folder")?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if is_image_name(&path) {
            out.push(path);
        }
    }
    Ok(())
}
