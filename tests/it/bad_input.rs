//! A catalogue of bad input: each gives the documented exit code and one line on stderr naming
//! the file and the problem, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use common::{Look, Workspace, save_image};
use maas::artifact::container::{self, Kind};
use maas::data::synthetic;

/// Runs maas quietly and returns (exit code, the single error line).
fn fails(ws: &Workspace, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--quiet"];
    all.extend_from_slice(args);
    let (code, _, err) = ws.run(&all);
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{args:?}: {err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line on stderr, got:\n{err}"
    );
    (code, lines[0].to_string())
}

#[test]
fn bad_images_are_named_with_their_problem() {
    let ws = Workspace::new(20, 50);
    ws.train(&[]);
    let png = {
        save_image(
            &synthetic::sample_image(0, 1),
            &ws.path("ok.png"),
            Look::Rgb,
            32,
        );
        std::fs::read(ws.path("ok.png")).unwrap()
    };
    std::fs::write(ws.path("empty.png"), b"").unwrap();
    std::fs::write(ws.path("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(ws.path("garbage.jpg"), [0x13u8; 500]).unwrap();
    let mut bomb = png.clone();
    bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(ws.path("bomb.png"), bomb).unwrap();
    std::fs::create_dir(ws.path("folder.png")).unwrap();
    // A photo cut in half (it used to be classified as its first half), one whose first segment
    // length lies, one whose frame header claims 65000x65000 pixels.
    let photo = image::RgbImage::from_fn(640, 427, |x, y| image::Rgb([x as u8, y as u8, 90]));
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
        .encode_image(&photo)
        .unwrap();
    std::fs::write(ws.path("cut.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    let mut corrupt = jpeg.clone();
    corrupt[4..6].copy_from_slice(&[0, 1]);
    std::fs::write(ws.path("corrupt.jpg"), corrupt).unwrap();
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
    std::fs::write(ws.path("bomb.jpg"), jpeg).unwrap();
    // Issue 28: a progressive JPEG of 8192x8192 that takes 2,000 scans of a few bytes (19 s of
    // CPU to decode before the cap on scans).
    std::fs::write(
        ws.path("scans.jpg"),
        maas::data::jpeg::synthetic::flat_progressive(8192, 8192, 3, 2000),
    )
    .unwrap();
    for (file, problem) in [
        ("cut.jpg", "truncated"),
        ("corrupt.jpg", "corrupt"),
        ("bomb.jpg", "limit"),
        ("scans.jpg", "more than 100 scans"),
        ("empty.png", "not an image"),
        ("truncated.png", "decode"),
        ("garbage.jpg", "not an image"),
        ("bomb.png", "limit"),
        ("folder.png", "folder"),
        ("absent.png", "No such file"),
    ] {
        let (code, line) = fails(&ws, &["predict", file]);
        assert_eq!(code, 1, "{file}");
        assert!(
            line.contains(file) && line.contains(problem),
            "{file}: {line}"
        );
    }
}

#[test]
fn bad_model_files_are_named_with_their_problem() {
    let ws = Workspace::new(20, 50);
    ws.train(&[]);
    ws.ok(&["export", "--quiet"]);
    save_image(
        &synthetic::sample_image(0, 1),
        &ws.path("x.png"),
        Look::Rgb,
        32,
    );
    let good = std::fs::read(ws.path("model.maas")).unwrap();
    // A newer maas's file: another format version, and a checksum that holds (a flipped version
    // byte with a failing checksum is damage, not a newer file).
    let mut future = good[..good.len() - 4].to_vec();
    future[8] = 99;
    let crc = crc32fast::hash(&future);
    future.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(ws.path("future.maas"), future).unwrap();
    let mut other = container::decode(&good).unwrap();
    other.meta["model"]["architecture"] = "resnet-50".into();
    std::fs::write(
        ws.path("resnet.maas"),
        container::encode(Kind::Model, other.meta, &other.arrays).unwrap(),
    )
    .unwrap();
    std::fs::write(ws.path("empty.maas"), b"").unwrap();
    std::fs::create_dir(ws.path("dir.maas")).unwrap();
    for (file, problem) in [
        ("future.maas", "newer maas"),
        ("resnet.maas", "resnet-50"),
        ("empty.maas", "not a maas"),
        ("dir.maas", "folder"),
        ("nowhere.maas", "not found"),
    ] {
        let (code, line) = fails(&ws, &["predict", "--model", file, "x.png"]);
        assert_eq!(code, 1, "{file}");
        assert!(
            line.contains(file) && line.contains(problem),
            "{file}: {line}"
        );
    }
    // A checkpoint handed to export: truncated.
    std::fs::write(
        ws.path("cut.ckpt"),
        &std::fs::read(ws.path("checkpoints/best.ckpt")).unwrap()[..1000],
    )
    .unwrap();
    let (code, line) = fails(&ws, &["export", "--checkpoint", "cut.ckpt"]);
    assert_eq!(code, 1);
    assert!(
        line.contains("cut.ckpt") && line.contains("truncated"),
        "{line}"
    );
}

#[test]
fn bad_datasets_are_named_with_their_problem() {
    let ws = Workspace::new(5, 10);
    let dir = ws.path("data/cifar-10-batches-bin");
    let mut labels = std::fs::read(dir.join("test_batch.bin")).unwrap();
    labels[3073 * 2] = 42;
    std::fs::write(dir.join("test_batch.bin"), labels).unwrap();
    let (code, line) = fails(&ws, &["train", "--epochs", "1"]);
    assert_eq!(code, 1);
    assert!(
        line.contains("test_batch.bin") && line.contains("label 42"),
        "{line}"
    );

    let ws = Workspace::new(5, 10);
    std::fs::remove_file(ws.path("data/cifar-10-batches-bin/batches.meta.txt")).unwrap();
    let (code, line) = fails(&ws, &["train", "--epochs", "1"]);
    assert_eq!(code, 1);
    assert!(line.contains("batches.meta.txt"), "{line}");

    let ws = Workspace::new(5, 10);
    std::fs::write(
        ws.path("data/cifar-10-batches-bin/batches.meta.txt"),
        "cat\ndog\n",
    )
    .unwrap();
    let (code, line) = fails(&ws, &["train", "--epochs", "1"]);
    assert_eq!(code, 1);
    assert!(
        line.contains("batches.meta.txt") && line.contains("10 class names"),
        "{line}"
    );
}
