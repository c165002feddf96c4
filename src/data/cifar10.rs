//! The official CIFAR-10 binary layout.
//!
//! A folder `cifar-10-batches-bin/` holds `data_batch_1.bin` .. `data_batch_5.bin` (the training
//! split), `test_batch.bin` (the test split) and `batches.meta.txt` (the class names, one a line).
//! Each `.bin` file is a run of 3073-byte records: one label byte (0-9), then the 32x32 image as
//! 1024 red, 1024 green and 1024 blue bytes, each plane row-major.
//!
//! Loading keeps the images as those raw channel-major bytes, so that turning them into tensors is
//! the business of one function elsewhere (`data::preprocess`), shared with inference.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use super::labelled::LabelledImages;

pub use super::labelled::IMAGE_BYTES;
/// Bytes in one record: the label byte, then the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Width and height of an image, in pixels.
pub const IMAGE_SIDE: usize = 32;
/// Colour channels of an image (red, green, blue, in that order).
pub const CHANNELS: usize = 3;
/// The number of classes; labels are `0..NUM_CLASSES`.
pub const NUM_CLASSES: usize = 10;
/// The folder, inside `--data`, that holds the binary set.
pub const DIR_NAME: &str = "cifar-10-batches-bin";
/// The files of the training split, in the order their records are read.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The file of the test split.
pub const TEST_FILE: &str = "test_batch.bin";
/// The file with the class names, one a line.
pub const META_FILE: &str = "batches.meta.txt";
/// Every file a complete folder holds: the training files, the test file, the class names.
pub const ALL_FILES: [&str; 7] = [
    TRAIN_FILES[0],
    TRAIN_FILES[1],
    TRAIN_FILES[2],
    TRAIN_FILES[3],
    TRAIN_FILES[4],
    TEST_FILE,
    META_FILE,
];

const TEST_FILES: [&str; 1] = [TEST_FILE];
/// Largest `batches.meta.txt` read: ten class names take about 80 bytes.
const META_MAX_BYTES: u64 = 1 << 20;

/// One of the two halves of the data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// 50,000 images in the official set, in five files.
    Train,
    /// 10,000 images in the official set, in one file.
    Test,
}

impl Split {
    /// The files holding this split's records, in reading order.
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Split::Train => &TRAIN_FILES,
            Split::Test => &TEST_FILES,
        }
    }

    /// `"train"` or `"test"`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads the class names from `<dir>/batches.meta.txt`: one a line, blank lines ignored, surrounding
/// white space trimmed, exactly [`NUM_CLASSES`] distinct ones.
pub fn read_class_names(dir: &Path) -> Result<Vec<String>> {
    check_dir(dir)?;
    let path = dir.join(META_FILE);
    // A missing file gets advice; then a bounded read, so that a link to a device (or a huge
    // file) in its place is refused rather than read until memory runs out.
    fs::metadata(&path).map_err(|e| io_error(&path, e))?;
    let bytes = crate::fsutil::read_regular(&path, META_MAX_BYTES)
        .with_context(|| path.display().to_string())?;
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("{}: not UTF-8 text", path.display()))?;
    // With their line numbers, for the message about a name given twice.
    let lines: Vec<(usize, &str)> = text
        .lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .collect();
    if lines.len() != NUM_CLASSES {
        bail!(
            "{}: expected {NUM_CLASSES} class names, found {}",
            path.display(),
            lines.len()
        );
    }
    // Two classes of one name could not be told apart in any answer.
    for (i, &(line, name)) in lines.iter().enumerate() {
        if let Some(&(first, _)) = lines[..i].iter().find(|(_, n)| *n == name) {
            bail!(
                "{}: class `{name}` is named twice (lines {} and {})",
                path.display(),
                first + 1,
                line + 1
            );
        }
    }
    Ok(lines.into_iter().map(|(_, name)| name.to_owned()).collect())
}

/// The number of records in `split`, from the file sizes alone (no file is read).
pub fn split_len(dir: &Path, split: Split) -> Result<usize> {
    check_dir(dir)?;
    let mut total = 0usize;
    for name in split.files() {
        let path = dir.join(name);
        total = total.saturating_add(record_count(&path)?);
    }
    Ok(total)
}

/// Loads `split` from `dir`; with `limit`, only its first `limit` records (files past those are
/// not even opened).
///
/// Every label is checked; an error names the file and the problem.
pub fn load_split(dir: &Path, split: Split, limit: Option<usize>) -> Result<LabelledImages> {
    check_dir(dir)?;
    let wanted = limit.unwrap_or(usize::MAX);

    // Sizing the buffers once from the file sizes spares copying 150 MB as a Vec grows.
    let mut plan = Vec::with_capacity(split.files().len());
    let mut total = 0usize;
    for name in split.files() {
        if total >= wanted {
            break;
        }
        let path = dir.join(name);
        let take = record_count(&path)?.min(wanted - total);
        total += take;
        plan.push((path, take));
    }
    let image_bytes = total
        .checked_mul(IMAGE_BYTES)
        .ok_or_else(|| anyhow!("{}: too many records to hold in memory", dir.display()))?;
    let mut data = LabelledImages::default();
    data.images
        .try_reserve_exact(image_bytes)
        .and_then(|()| data.labels.try_reserve_exact(total))
        .with_context(|| format!("{}: cannot hold {total} images in memory", dir.display()))?;

    // One reused read buffer, then a copy per image. (Reading straight into `images` and
    // squeezing the labels out in place measured slower: the kernel faulting in fresh pages
    // during `read` costs more than the extra copy from a warm buffer.)
    let mut buf = Vec::new();
    for (path, take) in plan {
        // `take` came from the file size just checked, so this cannot overflow.
        let want_bytes = take * RECORD_BYTES;
        buf.clear();
        // `Take` hides the file size from `read_to_end`, which would otherwise grow by doubling.
        buf.try_reserve_exact(want_bytes)
            .with_context(|| format!("{}: cannot read into memory", path.display()))?;
        File::open(&path)
            .and_then(|f| f.take(want_bytes as u64).read_to_end(&mut buf))
            .map_err(|e| io_error(&path, e))?;
        if buf.len() != want_bytes {
            bail!(
                "{}: file shrank while being read ({} of {want_bytes} bytes)",
                path.display(),
                buf.len()
            );
        }
        for (i, record) in buf.chunks_exact(RECORD_BYTES).enumerate() {
            let (&label, image) = record
                .split_first()
                .ok_or_else(|| anyhow!("{}: empty record {i}", path.display()))?;
            if usize::from(label) >= NUM_CLASSES {
                bail!(
                    "{}: record {i} (at byte {}) has label {label}, expected 0-{}",
                    path.display(),
                    i * RECORD_BYTES,
                    NUM_CLASSES - 1
                );
            }
            data.labels.push(label);
            data.images.extend_from_slice(image);
        }
    }
    Ok(data)
}

/// Checks that `dir` is a complete folder in the official layout: all seven files exist, each
/// `.bin` file is a positive multiple of the record size, and the class names are there.
///
/// Labels are not read (that would mean reading 180 MB); loading checks them.
pub fn validate_dir(dir: &Path) -> Result<()> {
    check_dir(dir)?;
    for name in TRAIN_FILES.iter().chain(&TEST_FILES) {
        record_count(&dir.join(name))?;
    }
    read_class_names(dir)?;
    Ok(())
}

/// The number of records in one `.bin` file, checking that its size is a positive multiple of
/// the record size.
pub fn record_count(path: &Path) -> Result<usize> {
    let meta = fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    let size = meta.len();
    if size == 0 {
        bail!(
            "{}: empty file, expected {RECORD_BYTES}-byte records",
            path.display()
        );
    }
    if size % RECORD_BYTES as u64 != 0 {
        bail!(
            "{}: size {size} is not a multiple of the {RECORD_BYTES}-byte record",
            path.display()
        );
    }
    usize::try_from(size / RECORD_BYTES as u64)
        .map_err(|_| anyhow!("{}: too large ({size} bytes)", path.display()))
}

fn check_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => bail!(
            "{}: not a folder (point --data at a folder holding {DIR_NAME}/)",
            dir.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "{}: not found (maas downloads CIFAR-10 into <data>/{DIR_NAME}/ when that folder \
             is missing; or point --data at a folder holding {DIR_NAME}/)",
            dir.display()
        ),
        Err(e) => Err(anyhow::Error::new(e).context(dir.display().to_string())),
    }
}

/// `path`: what went wrong, keeping the I/O error as the cause (a missing file gets advice instead).
fn io_error(path: &Path, e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::NotFound {
        // The folder exists (checked first), so the download step will not refill it by itself.
        let folder = path.parent().unwrap_or(path);
        anyhow!(
            "{}: not found (the folder is incomplete: remove {} and run again to download \
             CIFAR-10, or point --data at a folder holding a complete {DIR_NAME}/)",
            path.display(),
            folder.display()
        )
    } else {
        anyhow::Error::new(e).context(path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic;

    fn tiny_dir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        synthetic::write_cifar10_dir(tmp.path(), 20, 20, 7).unwrap();
        tmp
    }

    fn message(result: Result<impl fmt::Debug>) -> String {
        format!("{:#}", result.unwrap_err())
    }

    /// A record whose pixel `j` is `(seed + j) % 251`, so every position is recognisable.
    fn patterned_record(label: u8, seed: usize) -> Vec<u8> {
        let mut record = vec![label];
        record.extend((0..IMAGE_BYTES).map(|j| ((seed + j) % 251) as u8));
        record
    }

    #[test]
    fn loads_both_splits_with_cycling_labels() {
        let tmp = tiny_dir();
        let train = load_split(tmp.path(), Split::Train, None).unwrap();
        assert_eq!(train.len(), 100);
        assert_eq!(train.images.len(), 100 * IMAGE_BYTES);
        for i in 0..train.len() {
            assert_eq!(usize::from(train.label(i)), i % NUM_CLASSES);
        }
        let test = load_split(tmp.path(), Split::Test, None).unwrap();
        assert_eq!(test.len(), 20);
        assert_eq!(
            test.labels,
            (0..20).map(|i| (i % 10) as u8).collect::<Vec<_>>()
        );

        // Image bytes are the record bytes after the label, file by file.
        let file3 = fs::read(tmp.path().join("data_batch_3.bin")).unwrap();
        let record5 = &file3[5 * RECORD_BYTES..6 * RECORD_BYTES];
        assert_eq!(train.image(2 * 20 + 5), &record5[1..]);
        assert_eq!(train.label(2 * 20 + 5), record5[0]);
        assert_eq!(train.iter().count(), 100);
        assert_eq!(split_len(tmp.path(), Split::Train).unwrap(), 100);
        assert_eq!(split_len(tmp.path(), Split::Test).unwrap(), 20);
    }

    #[test]
    fn pixel_bytes_land_in_place() {
        let tmp = tiny_dir();
        let records: Vec<u8> = (0..3)
            .flat_map(|r| patterned_record(r as u8 + 4, r * 1000))
            .collect();
        fs::write(tmp.path().join(TEST_FILE), records).unwrap();
        let test = load_split(tmp.path(), Split::Test, None).unwrap();
        assert_eq!(test.labels, vec![4, 5, 6]);
        for r in 0..3 {
            let image = test.image(r);
            assert_eq!(image.len(), IMAGE_BYTES);
            for j in [0, 1, 1023, 1024, 2047, 2048, 3071] {
                assert_eq!(
                    image[j],
                    ((r * 1000 + j) % 251) as u8,
                    "record {r} byte {j}"
                );
            }
        }
        assert_eq!(test.get(2).map(|(_, l)| l), Some(6));
        assert_eq!(test.get(3), None);
        assert_eq!(test.get(usize::MAX), None);
    }

    #[test]
    fn limit_takes_the_first_records_and_stops_reading() {
        let tmp = tiny_dir();
        let all = load_split(tmp.path(), Split::Train, None).unwrap();
        let some = load_split(tmp.path(), Split::Train, Some(25)).unwrap();
        assert_eq!(some.len(), 25);
        assert_eq!(some.labels[..], all.labels[..25]);
        assert_eq!(some.images[..], all.images[..25 * IMAGE_BYTES]);

        assert!(
            load_split(tmp.path(), Split::Train, Some(0))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            load_split(tmp.path(), Split::Train, Some(1000))
                .unwrap()
                .len(),
            100
        );
        assert_eq!(
            load_split(tmp.path(), Split::Test, Some(3)).unwrap().len(),
            3
        );

        // Files past the limit are not opened: a broken second file does not matter.
        fs::write(tmp.path().join("data_batch_2.bin"), b"junk").unwrap();
        assert_eq!(
            load_split(tmp.path(), Split::Train, Some(20))
                .unwrap()
                .len(),
            20
        );
        assert!(load_split(tmp.path(), Split::Train, Some(21)).is_err());
    }

    #[test]
    fn wrong_size_names_the_file() {
        let tmp = tiny_dir();
        let path = tmp.path().join("data_batch_3.bin");
        fs::write(&path, vec![0u8; 30000]).unwrap();
        let msg = message(load_split(tmp.path(), Split::Train, None));
        assert!(msg.contains("data_batch_3.bin"), "{msg}");
        assert!(
            msg.contains("size 30000 is not a multiple of the 3073-byte record"),
            "{msg}"
        );
        let msg = message(validate_dir(tmp.path()));
        assert!(msg.contains("data_batch_3.bin: size 30000"), "{msg}");

        fs::write(&path, b"").unwrap();
        let msg = message(load_split(tmp.path(), Split::Train, None));
        assert!(msg.contains("data_batch_3.bin: empty file"), "{msg}");
    }

    #[test]
    fn label_out_of_range_names_file_and_record() {
        let tmp = tiny_dir();
        let path = tmp.path().join("data_batch_2.bin");
        let mut bytes = fs::read(&path).unwrap();
        bytes[17 * RECORD_BYTES] = 12;
        fs::write(&path, bytes).unwrap();
        let msg = message(load_split(tmp.path(), Split::Train, None));
        assert!(msg.contains("data_batch_2.bin"), "{msg}");
        assert!(msg.contains("record 17"), "{msg}");
        assert!(msg.contains("has label 12, expected 0-9"), "{msg}");
        // Only the first file is needed for 20 records.
        assert!(load_split(tmp.path(), Split::Train, Some(20)).is_ok());
    }

    #[test]
    fn class_names_are_read_and_checked() {
        let tmp = tiny_dir();
        let names = read_class_names(tmp.path()).unwrap();
        assert_eq!(names, synthetic::CLASS_NAMES.map(String::from).to_vec());

        let meta = tmp.path().join(META_FILE);
        let crlf: String = (0..10).map(|i| format!("  class{i} \r\n\r\n")).collect();
        fs::write(&meta, crlf).unwrap();
        assert_eq!(read_class_names(tmp.path()).unwrap()[9], "class9");

        fs::write(&meta, "a\nb\n\nc\n").unwrap();
        let msg = message(read_class_names(tmp.path()));
        assert!(
            msg.contains("batches.meta.txt: expected 10 class names, found 3"),
            "{msg}"
        );
        assert!(validate_dir(tmp.path()).is_err());

        let twice: String = (0..10).map(|i| format!("c{}\n", i % 9)).collect();
        fs::write(&meta, twice).unwrap();
        let msg = message(read_class_names(tmp.path()));
        assert!(
            msg.contains("batches.meta.txt: class `c0` is named twice (lines 1 and 10)"),
            "{msg}"
        );
        assert!(validate_dir(tmp.path()).is_err());

        fs::write(&meta, [0xffu8, 0xfe, b'\n']).unwrap();
        let msg = message(read_class_names(tmp.path()));
        assert!(msg.contains("batches.meta.txt: not UTF-8"), "{msg}");

        fs::remove_file(&meta).unwrap();
        let msg = message(read_class_names(tmp.path()));
        assert!(msg.contains("batches.meta.txt: not found"), "{msg}");
        let msg = message(validate_dir(tmp.path()));
        assert!(msg.contains("batches.meta.txt: not found"), "{msg}");
    }

    #[test]
    fn missing_files_and_folders_are_named() {
        let tmp = tiny_dir();
        fs::remove_file(tmp.path().join("data_batch_4.bin")).unwrap();
        let msg = message(load_split(tmp.path(), Split::Train, None));
        assert!(msg.contains("data_batch_4.bin: not found"), "{msg}");
        assert!(msg.contains("--data"), "{msg}");
        let msg = message(validate_dir(tmp.path()));
        assert!(msg.contains("data_batch_4.bin: not found"), "{msg}");
        // The test split does not need the training files.
        assert_eq!(load_split(tmp.path(), Split::Test, None).unwrap().len(), 20);

        let gone = tmp.path().join("nowhere");
        let msg = message(load_split(&gone, Split::Test, None));
        assert!(msg.contains("nowhere: not found"), "{msg}");
        let msg = message(validate_dir(&tmp.path().join(TEST_FILE)));
        assert!(msg.contains("not a folder"), "{msg}");

        fs::create_dir(tmp.path().join("data_batch_4.bin")).unwrap();
        let msg = message(load_split(tmp.path(), Split::Train, None));
        assert!(
            msg.contains("data_batch_4.bin: not a regular file"),
            "{msg}"
        );
    }

    #[test]
    fn validate_accepts_a_complete_folder() {
        let tmp = tiny_dir();
        validate_dir(tmp.path()).unwrap();
    }

    #[test]
    fn split_helpers() {
        assert_eq!(Split::Train.files().len(), 5);
        assert_eq!(Split::Test.files(), &[TEST_FILE]);
        assert_eq!(Split::Test.to_string(), "test");
        assert_eq!(ALL_FILES.len(), 7);
    }
}
