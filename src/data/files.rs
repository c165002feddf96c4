//! Which files are images: the names a folder or a pattern contributes, shared by `predict`,
//! `explain` and image-folder datasets.

use std::collections::HashSet;
use std::fs::{self, Metadata};
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

/// Says which files a folder or a pattern held that were passed over (special files); even with
/// --quiet, as what was used is not all that the user named.
pub fn warn_skipped(skipped: &[FileError]) {
    for s in skipped {
        eprintln!("maas: warning: {}: {}", s.file, s.error);
    }
}

/// Whether `path` has the extension of an image (any case).
pub fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image files gathered from folders and patterns, each file once however many links lead to it.
///
/// Links are followed (a folder of links to images is a fair way to build a dataset), but every
/// folder and file is visited once, by identity: a link back to a folder above (a loop) or a
/// second link to an image leads to something already seen and is passed over.
#[derive(Debug, Default)]
pub struct ImageWalk {
    /// The image files, in the order found.
    pub files: Vec<PathBuf>,
    /// Entries named like images that are not regular files (FIFOs, devices, sockets): reading
    /// one could block forever or never end, so they are left out, to be said as a warning.
    pub skipped: Vec<FileError>,
    seen: HashSet<FileId>,
}

impl ImageWalk {
    /// Adds the image files under `dir`, recursively, in name order. `dir` itself is listed even
    /// when claimed or seen; the folders below it once each.
    pub fn folder(&mut self, dir: &Path) -> Result<()> {
        self.claim(dir);
        self.list(dir)
    }

    /// Marks the folder `dir` as seen without listing it: a link to it from a folder walked
    /// later is passed over (an image folder claims its class folders, so that a link inside
    /// one class to another does not pull that class's images in).
    pub fn claim(&mut self, dir: &Path) {
        if let Ok(meta) = fs::metadata(dir) {
            self.seen.insert(file_id(dir, &meta));
        }
    }

    fn list(&mut self, dir: &Path) -> Result<()> {
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .context("cannot list the folder")?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            match fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    if self.seen.insert(file_id(&path, &meta)) {
                        self.list(&path)?;
                    }
                }
                Ok(meta) => self.visit_file(path, &meta),
                // A broken link, or a file gone since the listing: reading it says why.
                Err(_) if is_image_name(&path) => self.files.push(path),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Adds `path`, matched by a pattern, when it is an image file not seen yet; a folder is not
    /// searched and a broken link is passed over, as the pattern matched a name, not an image.
    pub fn matched(&mut self, path: PathBuf) {
        if let Ok(meta) = fs::metadata(&path)
            && !meta.is_dir()
        {
            self.visit_file(path, &meta);
        }
    }

    fn visit_file(&mut self, path: PathBuf, meta: &Metadata) {
        if !is_image_name(&path) {
            return;
        }
        if !meta.is_file() {
            self.skipped.push(FileError {
                file: path.display().to_string(),
                error: format!("{}, skipped", crate::fsutil::not_regular(meta.file_type())),
            });
        } else if self.seen.insert(file_id(&path, meta)) {
            self.files.push(path);
        }
    }
}

/// What tells two files apart whatever the path: device and inode.
#[cfg(unix)]
type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(_path: &Path, meta: &Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Elsewhere the path with every link resolved (hard links are not recognised).
#[cfg(not(unix))]
type FileId = PathBuf;

#[cfg(not(unix))]
fn file_id(path: &Path, _meta: &Metadata) -> FileId {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn loops_and_second_links_are_visited_once_and_special_files_skipped() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        fs::create_dir_all(a.join("sub")).unwrap();
        fs::write(a.join("1.png"), b"x").unwrap();
        fs::write(a.join("sub/2.png"), b"x").unwrap();
        symlink(".", a.join("self")).unwrap();
        symlink("..", a.join("sub/up")).unwrap();
        symlink("1.png", a.join("link.png")).unwrap();
        fs::hard_link(a.join("1.png"), a.join("hard.png")).unwrap();
        symlink("gone.png", a.join("broken.png")).unwrap();
        let fifo = a.join("pipe.png");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let mut walk = ImageWalk::default();
        walk.folder(&a).unwrap();
        // 1.png once (its links come after it in name order), the broken link left to reading.
        assert_eq!(
            walk.files,
            [a.join("1.png"), a.join("broken.png"), a.join("sub/2.png")]
        );
        assert_eq!(walk.skipped.len(), 1);
        assert_eq!(walk.skipped[0].file, fifo.display().to_string());
        assert!(walk.skipped[0].error.contains("FIFO"));
        // A pattern's matches go through the same checks, sharing what was seen.
        walk.matched(a.join("link.png"));
        walk.matched(a.join("sub"));
        walk.matched(fifo);
        assert_eq!(walk.files.len(), 3);
        assert_eq!(walk.skipped.len(), 2);
        // A claimed folder is passed over when reached through a link, and listed when asked.
        let b = tmp.path().join("b");
        fs::create_dir(&b).unwrap();
        fs::write(b.join("3.png"), b"x").unwrap();
        symlink(&b, a.join("sub/b")).unwrap();
        let mut walk = ImageWalk::default();
        walk.claim(&b);
        walk.folder(&a).unwrap();
        assert!(!walk.files.contains(&a.join("sub/b/3.png")));
        walk.folder(&b).unwrap();
        assert_eq!(walk.files.last(), Some(&b.join("3.png")));
    }
}
