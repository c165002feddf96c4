//! Writing files so that nothing is ever half-written: a temporary name, then a rename.

use std::fs::FileType;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Writes `bytes` to `path` atomically: readers see the old file or the new one, never a part.
///
/// The bytes go to a temporary file in the same folder (a rename across file systems is not
/// atomic), are flushed to disk, and only then renamed over `path`. On any error the temporary
/// file is removed and `path` is left as it was. What `path` may be is [`write_target`]'s rule:
/// a regular file or nothing (replaced or created), or a symlink to one (written through).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let path = &write_target(path)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    // Temporary files are private (0600) by default; the finished file is an ordinary one that
    // a server running as another user may need to read, so it gets 0666 less the umask.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| {
        format!(
            "{}: cannot rename the finished file into place",
            path.display()
        )
    })?;
    Ok(())
}

/// Where a write to `path` lands, or an error when that would destroy something.
///
/// A rename replaces whatever has the name, so writing over a device node, FIFO or socket would
/// turn it into a regular file (as root, `-o /dev/null` would destroy `/dev/null`): only a
/// regular file, or nothing yet, may be replaced. A symlink is followed, as `cp` does, so that
/// `-o current.maas` updates the file the link names instead of replacing the link; its final
/// target must itself be a regular file or not exist yet.
pub fn write_target(path: &Path) -> Result<PathBuf> {
    let mut target = path.to_path_buf();
    // The kernel's own limit on links followed while resolving a path (ELOOP).
    for _ in 0..40 {
        let meta = match std::fs::symlink_metadata(&target) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(target),
            Err(e) => {
                return Err(e).with_context(|| format!("{}: cannot inspect", target.display()));
            }
        };
        let kind = meta.file_type();
        if kind.is_file() {
            return Ok(target);
        }
        if !kind.is_symlink() {
            let what = if target == path {
                String::new()
            } else {
                format!(" (through a symbolic link, {})", target.display())
            };
            bail!(
                "{}{what}: is {}, not a regular file; refusing to replace it",
                path.display(),
                describe(kind)
            );
        }
        let link = std::fs::read_link(&target)
            .with_context(|| format!("{}: cannot read the symbolic link", target.display()))?;
        // A relative link is relative to its own folder; an absolute one replaces the path.
        target = match target.parent() {
            Some(dir) => dir.join(link),
            None => link,
        };
    }
    bail!("{}: too many levels of symbolic links", path.display())
}

/// What a file that is neither a regular file nor a symlink is, for an error message.
fn describe(kind: FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a folder"
    } else {
        "a special file"
    }
}

/// The prefix of the temporary files [`write_atomic`] makes.
const TEMP_PREFIX: &str = ".maas-tmp-";

/// Removes the temporary files that interrupted [`write_atomic`] calls left in `dir`.
pub fn remove_temporaries(dir: &Path) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let path = entry.path();
            std::fs::remove_file(&path).with_context(|| {
                format!("{}: cannot remove a stale temporary file", path.display())
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.txt")]);
    }

    #[test]
    fn remove_temporaries_leaves_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".maas-tmp-abc"), b"half").unwrap();
        std::fs::write(dir.path().join("last.ckpt"), b"whole").unwrap();
        remove_temporaries(dir.path()).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("last.ckpt")]);
    }
}
