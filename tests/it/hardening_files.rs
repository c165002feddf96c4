//! Issue 16, files: what maas writes never replaces a special file, a checkpoint or its own
//! source; `export -o -` writes to stdout; a closed stdout is a quiet end; same-named images
//! keep their own pictures.
//!
//! Every special file here is made inside a temporary folder: never point a test at a real
//! device (/dev/null...), which a regression would destroy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Look, Workspace, save_image};
use maas::artifact::export::{decode_model, load_model};
use maas::data::synthetic;

/// A workspace with a trained run in `checkpoints/`.
fn trained() -> Workspace {
    let ws = Workspace::new(20, 50);
    ws.train(&["--quiet"]);
    ws
}

/// The one line of stderr of a run expected to fail with `code`, checked for panics.
fn failure(ws: &Workspace, args: &[&str], code: i32) -> String {
    let (got, _, err) = ws.run(args);
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{args:?}: {err}"
    );
    assert_eq!(got, code, "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    err
}

fn run_status(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}");
}

#[test]
fn export_refuses_to_replace_special_files() {
    let ws = trained();
    std::fs::create_dir(ws.path("special")).unwrap();
    run_status("mkfifo", &[ws.path("special/fifo").to_str().unwrap()]);
    let _socket = std::os::unix::net::UnixListener::bind(ws.path("special/socket")).unwrap();
    std::fs::create_dir(ws.path("special/folder")).unwrap();
    // A char device of our own (/dev/null's numbers), made where a regression harms nothing;
    // tests run as root here and in CI.
    run_status(
        "mknod",
        &[ws.path("special/null").to_str().unwrap(), "c", "1", "3"],
    );
    std::os::unix::fs::symlink("fifo", ws.path("special/to-fifo")).unwrap();
    for (name, what) in [
        ("fifo", "FIFO"),
        ("socket", "socket"),
        ("folder", "folder"),
        ("null", "character device"),
        ("to-fifo", "FIFO"),
    ] {
        let path = format!("special/{name}");
        let err = failure(&ws, &["export", "-o", &path], 1);
        assert!(
            err.contains(&path) && err.contains(what) && err.contains("not a regular file"),
            "{name}: {err}"
        );
    }
    let kind = |name: &str| {
        std::fs::symlink_metadata(ws.path(&format!("special/{name}")))
            .unwrap()
            .file_type()
    };
    assert!(kind("fifo").is_fifo());
    assert!(kind("socket").is_socket());
    assert!(kind("folder").is_dir());
    assert!(kind("null").is_char_device());
    // Still major 1, minor 3 (Linux's encoding of small numbers).
    assert_eq!(
        std::fs::symlink_metadata(ws.path("special/null"))
            .unwrap()
            .rdev(),
        (1 << 8) | 3
    );
    assert!(kind("to-fifo").is_symlink());
    // Nothing was left behind in the folder.
    assert!(common::temporaries(&ws.path("special")).is_empty());

    // Explain pictures (and every other file maas writes) follow the same rule.
    save_image(
        &synthetic::sample_image(1, 1),
        &ws.path("x.png"),
        Look::Rgb,
        32,
    );
    std::fs::create_dir(ws.path("why")).unwrap();
    run_status("mkfifo", &[ws.path("why/x.explain.png").to_str().unwrap()]);
    let (code, _, err) = ws.run(&["explain", "--out", "why", "x.png"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("FIFO"), "{err}");
    assert!(
        std::fs::symlink_metadata(ws.path("why/x.explain.png"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

#[test]
fn export_writes_through_a_symlink_to_its_target() {
    let ws = trained();
    std::fs::create_dir(ws.path("models")).unwrap();
    std::fs::write(ws.path("models/v1.maas"), b"old").unwrap();
    std::os::unix::fs::symlink("models/v1.maas", ws.path("current.maas")).unwrap();
    // A link whose target does not exist yet: the target is created.
    std::os::unix::fs::symlink("models/v2.maas", ws.path("next.maas")).unwrap();
    for (link, target) in [
        ("current.maas", "models/v1.maas"),
        ("next.maas", "models/v2.maas"),
    ] {
        ws.ok(&["export", "--quiet", "-o", link]);
        let meta = std::fs::symlink_metadata(ws.path(link)).unwrap();
        assert!(meta.file_type().is_symlink(), "{link} was replaced");
        assert!(load_model(&ws.path(target)).is_ok(), "{target}");
        assert!(common::temporaries(&ws.path("models")).is_empty());
    }
}

#[test]
fn export_to_stdout_writes_only_the_model() {
    let ws = trained();
    let out = ws.maas(&["export", "-o", "-"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let model = decode_model(&out.stdout, Path::new("-")).unwrap();
    assert_eq!(model.config.classes.len(), 10);
    assert!(err.contains("to stdout"), "{err}");
    assert!(!ws.path("-").exists() && !ws.path("model.maas").exists());

    // Both want stdout: a usage error, and nothing written.
    let out = ws.maas(&["export", "--json", "-o", "-"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--json") && err.contains("-o -"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn export_refuses_to_replace_a_checkpoint_or_its_source() {
    let ws = trained();
    let last = std::fs::read(ws.path("checkpoints/last.ckpt")).unwrap();
    let best = std::fs::read(ws.path("checkpoints/best.ckpt")).unwrap();
    std::os::unix::fs::symlink("checkpoints/best.ckpt", ws.path("alias.maas")).unwrap();
    for (args, problem) in [
        (
            vec![
                "export",
                "--checkpoint",
                "checkpoints/last.ckpt",
                "-o",
                "checkpoints/last.ckpt",
            ],
            "is the checkpoint being exported",
        ),
        (vec!["export", "-o", "alias.maas"], "being exported"),
        (
            vec!["export", "-o", "checkpoints/last.ckpt"],
            "is a training checkpoint",
        ),
    ] {
        let err = failure(&ws, &args, 1);
        assert!(
            err.contains(args[args.len() - 1]) && err.contains(problem),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read(ws.path("checkpoints/last.ckpt")).unwrap(),
        last
    );
    assert_eq!(
        std::fs::read(ws.path("checkpoints/best.ckpt")).unwrap(),
        best
    );
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let ws = trained();
    let mut images = Vec::new();
    for i in 0..40 {
        let name = format!("img{i}.png");
        save_image(
            &synthetic::sample_image(i % 10, i as u64),
            &ws.path(&name),
            Look::Rgb,
            32,
        );
        images.push(name);
    }
    let mut predict = vec!["predict", "--model", "checkpoints/best.ckpt"];
    predict.extend(images.iter().map(String::as_str));
    let mut predict_json = predict.clone();
    predict_json.push("--json");
    for args in [predict, predict_json, vec!["export", "-o", "-"]] {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("maas"))
            .current_dir(ws.path(""))
            .env("MAAS_DEVICE", "cpu")
            .env("MAAS_PROGRESS", "never")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before maas writes anything, as `| head -0` would.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{:?}: {err}", &args[..1]);
        assert!(
            !err.contains("internal error") && !err.contains("error"),
            "{err}"
        );
    }
}

#[test]
fn explain_keeps_a_picture_per_image_of_one_name() {
    let ws = trained();
    for (dir, class) in [("a", 2), ("b", 7)] {
        std::fs::create_dir(ws.path(dir)).unwrap();
        save_image(
            &synthetic::sample_image(class, 1),
            &ws.path(&format!("{dir}/x.png")),
            Look::Rgb,
            32,
        );
    }
    let out = ws.ok(&[
        "explain",
        "--json",
        "--model",
        "checkpoints/best.ckpt",
        "--out",
        "E",
        "a/x.png",
        "b/x.png",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pictures: Vec<&str> = report["explanations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["picture"].as_str().unwrap())
        .collect();
    assert_eq!(pictures, ["E/x.explain.png", "E/x-2.explain.png"]);
    let a = std::fs::read(ws.path("E/x.explain.png")).unwrap();
    let b = std::fs::read(ws.path("E/x-2.explain.png")).unwrap();
    assert_ne!(a, b, "two different images, two different pictures");
}
