//! Small, learnable stand-ins for CIFAR-10 in the official binary layout, for tests, CI and demos.
//!
//! Every image of class `k` is the colour [`PALETTE`]`[k]` with independent noise of up to
//! ±[`NOISE`] on every byte. The ten colours lie far apart, so even a linear model on the pixels
//! (or on the mean colour alone) separates the classes perfectly within an epoch or two, which
//! makes "training improves accuracy" testable in seconds. Labels cycle 0, 1, .., 9, 0, .. through
//! each split, so any prefix (`--limit`) is balanced.
//!
//! Nothing here touches the network; [`cifar10_targz`] packs a folder the way the official
//! archive does, for download tests against a local server.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use flate2::Compression;
use flate2::write::GzEncoder;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::cifar10::{
    DIR_NAME, IMAGE_BYTES, META_FILE, NUM_CLASSES, RECORD_BYTES, TEST_FILE, TRAIN_FILES,
};

/// The official class names, written to `batches.meta.txt`.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The base colour (red, green, blue) of each class; any two differ by at least 95 in some
/// channel, well beyond the noise. Every colour is chromatic on purpose: classes that differ only
/// in brightness (white, grey, black) lie on one line through the origin, where the ReLU units of
/// this small model can all switch off together and learning stalls at chance for them.
pub const PALETTE: [[u8; 3]; NUM_CLASSES] = [
    [220, 30, 30],
    [30, 220, 30],
    [30, 30, 220],
    [220, 220, 30],
    [220, 30, 220],
    [30, 220, 220],
    [125, 30, 220],
    [30, 125, 220],
    [125, 220, 30],
    [220, 125, 30],
];

/// The largest deviation of any byte from its class colour.
pub const NOISE: i16 = 30;

/// Writes a complete `cifar-10-batches-bin`-style folder at `dir` (created if needed; it is the
/// folder that holds the `.bin` files, not its parent): `train_per_file` records in each of the five
/// training files, `test` records in the test file, and the ten official class names.
///
/// The same `seed` writes the same bytes. `train_per_file == 0` or `test == 0` writes empty files,
/// which loading rejects (useful only to test that).
pub fn write_cifar10_dir(dir: &Path, train_per_file: usize, test: usize, seed: u64) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let mut rng = StdRng::seed_from_u64(seed);
    for (f, name) in TRAIN_FILES.iter().enumerate() {
        let first = f * train_per_file;
        write_records(&dir.join(name), first, train_per_file, &mut rng)?;
    }
    write_records(&dir.join(TEST_FILE), 0, test, &mut rng)?;
    // The official file ends with a blank line too; readers must skip it.
    let mut meta = CLASS_NAMES.join("\n");
    meta.push_str("\n\n");
    let path = dir.join(META_FILE);
    fs::write(&path, meta).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

/// One synthetic image of class `class % 10` in the channel-major layout (`IMAGE_BYTES` bytes:
/// 1024 red, 1024 green, 1024 blue), e.g. for writing test images for `predict`.
pub fn sample_image(class: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut image = Vec::with_capacity(IMAGE_BYTES);
    push_image(&mut image, class % NUM_CLASSES, &mut rng);
    image
}

/// Reorders a channel-major image (RRR..GGG..BBB..) into interleaved RGB pixels (RGBRGB..), the
/// layout image encoders take. Extra bytes past `IMAGE_BYTES` are ignored; a shorter input gives a
/// shorter output.
pub fn chw_to_hwc(image: &[u8]) -> Vec<u8> {
    let plane = IMAGE_BYTES / 3;
    let (r, rest) = image.split_at(plane.min(image.len()));
    let (g, b) = rest.split_at(plane.min(rest.len()));
    r.iter()
        .zip(g)
        .zip(b)
        .flat_map(|((&r, &g), &b)| [r, g, b])
        .collect()
}

/// Packs the files of the folder `dir` into a `.tar.gz` laid out like the official archive: a
/// `cifar-10-batches-bin/` directory entry, then each regular file of `dir` (in name order) as
/// `cifar-10-batches-bin/<name>`.
pub fn cifar10_targz(dir: &Path) -> Result<Vec<u8>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let entry = entry.with_context(|| format!("{}: cannot list", dir.display()))?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let name = entry
                .file_name()
                .into_string()
                .map_err(|name| anyhow!("{}: file name {name:?} is not UTF-8", dir.display()))?;
            names.push(name);
        }
    }
    names.sort();
    let mut members = vec![(format!("{DIR_NAME}/"), Vec::new())];
    for name in names {
        let path = dir.join(&name);
        let bytes = fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        members.push((format!("{DIR_NAME}/{name}"), bytes));
    }
    let refs: Vec<(&str, &[u8])> = members
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice()))
        .collect();
    targz(&refs)
}

/// Builds a `.tar.gz` in memory from `(path, contents)` pairs, in order. A path ending in `/` is a
/// directory entry (its contents are ignored). Paths must be relative and free of `..`.
pub fn targz(members: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for &(path, bytes) in members {
        let mut header = tar::Header::new_gnu();
        // A fixed time keeps the archive, and so its MD5, the same from run to run.
        header.set_mtime(0);
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, path, std::io::empty())
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(bytes.len() as u64);
            tar.append_data(&mut header, path, bytes)
        }
        .with_context(|| format!("cannot add {path} to the archive"))?;
    }
    let gz = tar.into_inner().context("cannot finish the archive")?;
    gz.finish().context("cannot finish the archive")
}

fn write_records(path: &Path, first_index: usize, count: usize, rng: &mut StdRng) -> Result<()> {
    let mut bytes = Vec::with_capacity(count.saturating_mul(RECORD_BYTES));
    for i in first_index..first_index + count {
        let class = i % NUM_CLASSES;
        // `class < NUM_CLASSES`, so the label fits a byte.
        bytes.push(class as u8);
        push_image(&mut bytes, class, rng);
    }
    let mut file =
        fs::File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    file.write_all(&bytes)
        .with_context(|| format!("{}: cannot write", path.display()))
}

fn push_image(out: &mut Vec<u8>, class: usize, rng: &mut StdRng) {
    let colour = PALETTE[class % NUM_CLASSES];
    for base in colour {
        for _ in 0..IMAGE_BYTES / 3 {
            let value = i16::from(base) + rng.random_range(-NOISE..=NOISE);
            out.push(value.clamp(0, 255) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::cifar10::{self, Split};

    #[test]
    fn same_seed_same_bytes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        write_cifar10_dir(a.path(), 3, 4, 1).unwrap();
        write_cifar10_dir(b.path(), 3, 4, 1).unwrap();
        write_cifar10_dir(c.path(), 3, 4, 2).unwrap();
        let read = |d: &Path| fs::read(d.join(TEST_FILE)).unwrap();
        assert_eq!(read(a.path()), read(b.path()));
        assert_ne!(read(a.path()), read(c.path()));
        assert_eq!(read(a.path()).len(), 4 * RECORD_BYTES);
        assert_eq!(
            cifar10_targz(a.path()).unwrap(),
            cifar10_targz(b.path()).unwrap()
        );
        assert_eq!(sample_image(3, 9), sample_image(3, 9));
    }

    #[test]
    fn palette_colours_are_far_apart() {
        for (i, a) in PALETTE.iter().enumerate() {
            for b in &PALETTE[i + 1..] {
                let gap = (0..3).map(|c| a[c].abs_diff(b[c])).max().unwrap_or(0);
                assert!(gap >= 90, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn the_nearest_mean_colour_gives_the_label() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar10_dir(tmp.path(), 30, 50, 3).unwrap();
        let train = cifar10::load_split(tmp.path(), Split::Train, None).unwrap();
        assert_eq!(train.len(), 150);
        for (image, label) in train.iter() {
            let mean: Vec<f64> = image
                .chunks_exact(1024)
                .map(|plane| plane.iter().map(|&v| f64::from(v)).sum::<f64>() / 1024.0)
                .collect();
            let nearest = (0..NUM_CLASSES)
                .min_by(|&x, &y| {
                    let d = |k: usize| {
                        (0..3)
                            .map(|c| (mean[c] - f64::from(PALETTE[k][c])).powi(2))
                            .sum::<f64>()
                    };
                    d(x).total_cmp(&d(y))
                })
                .unwrap();
            assert_eq!(nearest, usize::from(label));
            // The noise is really there, and bounded.
            let base = PALETTE[usize::from(label)];
            let spread = image[..1024]
                .iter()
                .map(|&v| i16::from(v) - i16::from(base[0]))
                .fold((0, 0), |(lo, hi), d| (d.min(lo), d.max(hi)));
            assert!(spread.0 >= -NOISE && spread.1 <= NOISE && spread.1 > spread.0);
        }
    }

    #[test]
    fn chw_to_hwc_interleaves() {
        let image = sample_image(9, 0);
        let hwc = chw_to_hwc(&image);
        assert_eq!(hwc.len(), IMAGE_BYTES);
        assert_eq!(&hwc[..3], &[image[0], image[1024], image[2048]]);
        assert_eq!(&hwc[3069..], &[image[1023], image[2047], image[3071]]);
        assert!(chw_to_hwc(&[1, 2]).is_empty());
    }

    #[test]
    fn targz_holds_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        write_cifar10_dir(tmp.path(), 2, 2, 0).unwrap();
        let gz = cifar10_targz(tmp.path()).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            names.push(entry.path().unwrap().to_string_lossy().into_owned());
        }
        let mut expected = vec![format!("{DIR_NAME}/")];
        let mut files: Vec<_> = cifar10::ALL_FILES
            .iter()
            .map(|n| format!("{DIR_NAME}/{n}"))
            .collect();
        files.sort();
        expected.extend(files);
        assert_eq!(names, expected);
    }
}
