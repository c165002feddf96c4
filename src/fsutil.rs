//! Writing files so that nothing is ever half-written: a temporary name, then a rename.

use std::fs::FileType;
use std::io::{Read, Write};
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

/// What a file that is not a regular file is, for messages: "a FIFO", "a folder", ...
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
            return "a FIFO";
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

/// Reads the regular file at `path` (links followed): anything else is refused, and so is a file
/// of more than `max_bytes`.
///
/// A FIFO blocks a read until a writer comes, possibly forever, and a device such as `/dev/zero`
/// never ends; opening some devices has effects of its own. So the type is checked before the
/// file is opened, the file is opened without blocking (in case it was swapped meanwhile) and
/// checked again, and at most `max_bytes + 1` bytes are read: a file that grows, or whose size
/// the system does not report (`/proc`), still stops at the limit. Errors do not name the file:
/// callers do.
pub fn read_regular(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    check_regular(&std::fs::metadata(path).context("cannot read")?, max_bytes)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // On a regular file O_NONBLOCK changes nothing; on a FIFO, open returns at once.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path).context("cannot read")?;
    let meta = file.metadata().context("cannot read")?;
    check_regular(&meta, max_bytes)?;
    let mut bytes = Vec::new();
    // `Take` hides the size from `read_to_end`, which would otherwise grow the buffer by doubling.
    let size = usize::try_from(meta.len().min(max_bytes)).unwrap_or(usize::MAX);
    bytes
        .try_reserve_exact(size)
        .with_context(|| format!("cannot hold {size} bytes in memory"))?;
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .context("cannot read")?;
    if bytes.len() as u64 > max_bytes {
        bail!("too large: more than the {max_bytes}-byte limit");
    }
    Ok(bytes)
}

/// Refuses what [`read_regular`] must not read, from its metadata.
fn check_regular(meta: &std::fs::Metadata, max_bytes: u64) -> Result<()> {
    if meta.is_dir() {
        bail!("is a folder, expected a file");
    }
    if !meta.is_file() {
        bail!("{}", not_regular(meta.file_type()));
    }
    if meta.len() > max_bytes {
        bail!(
            "too large: {} bytes, more than the {max_bytes}-byte limit",
            meta.len()
        );
    }
    Ok(())
}

/// Why a file that is not a regular file is refused, for messages: "not a regular file (a FIFO)".
pub fn not_regular(file_type: FileType) -> String {
    format!("not a regular file ({})", describe(file_type))
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

    #[test]
    fn read_regular_reads_files_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_regular(&path, 5).unwrap(), b"12345");
        let err = format!("{:#}", read_regular(&path, 4).unwrap_err());
        assert!(err.contains("too large"), "{err}");
        let err = format!("{:#}", read_regular(dir.path(), 4).unwrap_err());
        assert!(err.contains("folder"), "{err}");
        // Only read: a device that never ends is refused before a byte is read.
        #[cfg(unix)]
        {
            let err = format!("{:#}", read_regular(Path::new("/dev/zero"), 4).unwrap_err());
            assert!(
                err.contains("not a regular file (a character device)"),
                "{err}"
            );
            // A FIFO with no writer: refused, not waited on.
            let fifo = dir.path().join("pipe.png");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            assert!(made.unwrap().success());
            let err = format!("{:#}", read_regular(&fifo, 4).unwrap_err());
            assert!(err.contains("not a regular file (a FIFO)"), "{err}");
        }
    }
}
