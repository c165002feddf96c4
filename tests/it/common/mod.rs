//! Helpers shared by the integration tests: a scratch folder with a generated dataset, and the
//! real `maas` binary run inside it.

pub mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use image::{DynamicImage, ImageFormat, RgbImage};
use maas::data::synthetic;

/// Polls `condition` every 20 ms until it holds, for at most `limit`; whether it held. For what a
/// test would otherwise sleep a fixed time for: the wait is as long as the machine needs.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scratch folder holding `data/cifar-10-batches-bin` of a learnable synthetic dataset.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// `train_per_file` records in each of the five training files, `test` test records.
    pub fn new(train_per_file: usize, test: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        synthetic::write_cifar10_dir(
            &dir.path().join("data/cifar-10-batches-bin"),
            train_per_file,
            test,
            1,
        )
        .unwrap();
        Self { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `maas` with the given arguments, run in the workspace on the CPU with no bars.
    pub fn maas(&self, args: &[&str]) -> Command {
        let mut cmd = Command::cargo_bin("maas").unwrap();
        cmd.current_dir(self.dir.path())
            .env_remove("MAAS_MODEL")
            .env_remove("MAAS_DATA")
            .env_remove("MAAS_CHECKPOINTS")
            .env("MAAS_DEVICE", "cpu")
            .env("MAAS_PROGRESS", "never")
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .args(args);
        // gRPC's port is fixed (8081): servers run side by side here, so it is off unless a test
        // asks for it (`--grpc-port`).
        if !args.contains(&"--grpc-port") {
            cmd.env("MAAS_NO_GRPC", "1");
        }
        cmd
    }

    /// Runs `maas` and returns (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.maas(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `maas` expecting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "maas {args:?} failed:\n{err}");
        out
    }

    /// Trains a small model quickly (the default checkpoints folder) and returns `train --json`.
    pub fn train(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["train", "--epochs", "3", "--batch-size", "16", "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.ok(&args)).unwrap()
    }
}

/// A workspace holding two models with different weights, `a.maas` and `b.maas`, and a
/// repository `repo/` with `cifar` versions 1 (a) and 2 (b) and `other` version 1 (a).
pub fn workspace_with_repository() -> Workspace {
    let ws = Workspace::new(20, 50);
    ws.ok(&["train", "--epochs", "2", "--quiet"]);
    ws.ok(&["export", "-o", "a.maas", "--quiet"]);
    ws.ok(&[
        "train",
        "--epochs",
        "1",
        "--seed",
        "9",
        "--checkpoints",
        "ck2",
        "--quiet",
    ]);
    ws.ok(&["export", "--checkpoints", "ck2", "-o", "b.maas", "--quiet"]);
    for (model, version, file) in [("cifar", 1, "a"), ("cifar", 2, "b"), ("other", 1, "a")] {
        let dir = ws.path(&format!("repo/{model}/{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(ws.path(&format!("{file}.maas")), dir.join("model.maas")).unwrap();
    }
    ws
}

/// A self-signed certificate for localhost and 127.0.0.1, `cert.pem` and `key.pem` in `dir`,
/// made by openssl (which .ci/run installs).
pub fn make_certificate(dir: &Path) {
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .current_dir(dir)
        .output()
        .expect("openssl makes the test certificate");
    assert!(made.status.success());
}

/// `maas predict --json --top-k 10 --model MODEL` on the images: every class's probability, per
/// image, in class order.
pub fn predict_probabilities(ws: &Workspace, model: &str, names: &[String]) -> Vec<Vec<f32>> {
    let mut args = vec!["predict", "--json", "--top-k", "10", "--model", model];
    args.extend(names.iter().map(String::as_str));
    let report: serde_json::Value = serde_json::from_str(&ws.ok(&args)).unwrap();
    report["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut row = vec![f32::NAN; 10];
            for r in p["top_k"].as_array().unwrap() {
                row[r["index"].as_u64().unwrap() as usize] =
                    r["probability"].as_f64().unwrap() as f32;
            }
            row
        })
        .collect()
}

/// The temporary files (`.maas-tmp-*`) an interrupted write left in `dir`.
pub fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".maas-tmp"))
        .collect()
}

/// How to save a test image.
#[derive(Clone, Copy, Debug)]
pub enum Look {
    Rgb,
    Grey,
    Rgba,
}

/// Writes a channel-major 32x32 image as `path` (format from the extension), resized to `size`.
pub fn save_image(chw: &[u8], path: &Path, look: Look, size: u32) {
    let rgb = RgbImage::from_raw(32, 32, synthetic::chw_to_hwc(chw)).unwrap();
    let mut img = DynamicImage::ImageRgb8(rgb);
    if size != 32 {
        img = img.resize_exact(size, size, image::imageops::FilterType::Nearest);
    }
    let img = match look {
        Look::Rgb => img,
        Look::Grey => DynamicImage::ImageLuma8(img.to_luma8()),
        Look::Rgba => DynamicImage::ImageRgba8(img.to_rgba8()),
    };
    let format = ImageFormat::from_path(path).unwrap();
    img.save_with_format(path, format).unwrap();
}

/// Writes `per_class` images of each class under `dir/<class>/`, class `k` drawn in the
/// synthetic palette's colour `k` with noise (learnable from colour alone): PNG and JPEG in
/// turn, at four sizes, some with an alpha channel.
pub fn write_class_folder(dir: &Path, classes: &[&str], per_class: usize, seed: u64) {
    for (k, class) in classes.iter().enumerate() {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..per_class {
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            let look = if i % 4 == 2 { Look::Rgba } else { Look::Rgb };
            let size = [32, 20, 48, 64][(i / 2) % 4];
            let image = synthetic::sample_image(k, seed * 100_000 + (k * 1000 + i) as u64);
            let path = dir.join(class).join(format!("{class}-{i:03}.{ext}"));
            save_image(&image, &path, look, size);
        }
    }
}

/// The `file` of each prediction in a `predict --json` report, in order.
pub fn predicted_files(report: &serde_json::Value) -> Vec<String> {
    report["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["file"].as_str().unwrap().to_string())
        .collect()
}

/// One prediction's probabilities in class order, from the `top_k` of a `predict --json
/// --top-k 10` report (classes left out of `top_k` are NaN).
pub fn class_probabilities(prediction: &serde_json::Value) -> Vec<f64> {
    let mut row = vec![f64::NAN; 10];
    for r in prediction["top_k"].as_array().unwrap() {
        row[r["index"].as_u64().unwrap() as usize] = r["probability"].as_f64().unwrap();
    }
    row
}
