//! Inputs an adversarial user hands maas (issue 16): link loops and second links in folders,
//! special files (FIFOs, devices) in folders, patterns or named alone, decoder errors, file names
//! that are not UTF-8. Each ends in a result, a warning or a one-line error, never a hang.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::{Workspace, predicted_files, write_class_folder};

/// Runs maas, killed after `secs` (a hang fails the test instead of stalling it); returns (exit
/// code, stdout, stderr).
fn run_within(ws: &Workspace, secs: u64, args: &[&str]) -> (i32, String, String) {
    let out = ws
        .maas(args)
        .timeout(Duration::from_secs(secs))
        .output()
        .unwrap();
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("maas {args:?} did not finish within {secs} s"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{args:?}: {err}"
    );
    (code, String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo").arg(path).status();
    assert!(made.unwrap().success());
}

/// Two classes of six images in `photos/`, and a model trained on them (the best checkpoint,
/// which predict and explain use by default).
fn photos_and_model() -> Workspace {
    let ws = Workspace::new(1, 1);
    write_class_folder(&ws.path("photos"), &["a", "b"], 6, 1);
    let (code, _, err) = run_within(&ws, 120, &["train", "--data", "photos", "--epochs", "1"]);
    assert_eq!(code, 0, "{err}");
    ws
}

#[test]
fn folders_with_link_loops_second_links_and_special_files_are_walked_once() {
    let ws = Workspace::new(1, 1);
    write_class_folder(&ws.path("photos"), &["a", "b"], 6, 1);
    // Two loops (the old walk followed them to the kernel's limit of 40 links: 2^40 paths), a
    // second link to an image, a FIFO and a device.
    symlink(".", ws.path("photos/a/self")).unwrap();
    symlink("..", ws.path("photos/a/up")).unwrap();
    symlink("a-000.png", ws.path("photos/a/twin.png")).unwrap();
    mkfifo(&ws.path("photos/b/pipe.png"));
    symlink("/dev/zero", ws.path("photos/b/zero.png")).unwrap();
    let warned = |err: &str| {
        err.contains("maas: warning: photos/b/pipe.png: not a regular file (a FIFO), skipped")
            && err.contains(
                "maas: warning: photos/b/zero.png: not a regular file (a character device), skipped",
            )
    };

    // Training sees each of the twelve images once: 5 + 5 for training, 1 + 1 for testing.
    let (code, _, err) = run_within(&ws, 120, &["train", "--data", "photos", "--epochs", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("10 training and 2 test image files"), "{err}");
    assert!(warned(&err), "{err}");

    // So does predict on the folder; the special files are said, not errors.
    let (code, out, err) = run_within(&ws, 60, &["predict", "--json", "photos"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let files = predicted_files(&report);
    assert_eq!(files.len(), 12, "{files:?}");
    assert!(
        files
            .iter()
            .all(|f| !f.contains("self") && !f.contains("up") && !f.contains("twin")),
        "{files:?}"
    );
    assert_eq!(report["errors"].as_array().unwrap().len(), 0, "{report}");
    assert!(warned(&err), "{err}");

    // A pattern treats them as a folder does.
    let (code, out, err) = run_within(&ws, 60, &["predict", "--json", "photos/b/*"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(predicted_files(&report).len(), 6, "{report}");
    assert!(warned(&err), "{err}");
}

#[test]
fn special_files_named_alone_are_one_line_errors_not_hangs() {
    let ws = photos_and_model();
    mkfifo(&ws.path("pipe.png"));
    for (args, file, problem) in [
        (
            &["predict", "/dev/zero"][..],
            "/dev/zero",
            "not a regular file (a character device)",
        ),
        (
            &["predict", "--model", "/dev/zero", "photos/a/a-000.png"][..],
            "/dev/zero",
            "not a regular file (a character device)",
        ),
        (
            &["predict", "pipe.png"][..],
            "pipe.png",
            "not a regular file (a FIFO)",
        ),
        (
            &["export", "--checkpoint", "pipe.png", "-o", "m.maas"][..],
            "pipe.png",
            "not a regular file (a FIFO)",
        ),
    ] {
        let mut all = vec!["--quiet"];
        all.extend_from_slice(args);
        let (code, _, err) = run_within(&ws, 30, &all);
        assert_eq!(code, 1, "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(
            lines[0].contains(file) && lines[0].contains(problem),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn decoder_errors_say_each_cause_once_and_explain_keeps_file_names_as_they_are() {
    let ws = photos_and_model();
    // A JPEG whose first marker lies: the decoder's message used to come twice.
    let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe0];
    jpeg.extend([0; 500]);
    std::fs::write(ws.path("liar.jpg"), jpeg).unwrap();
    let (code, _, err) = run_within(&ws, 60, &["--quiet", "predict", "liar.jpg"]);
    assert_eq!(code, 1, "{err}");
    let line = err.trim_end();
    assert!(line.starts_with("maas: error: liar.jpg: "), "{line}");
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(part), "said twice: {line}");
    }

    // A name that is not UTF-8 (Latin-1 "café"): the picture is named with the same bytes.
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
    std::fs::copy(ws.path("photos/a/a-000.png"), ws.path("").join(name)).unwrap();
    let out = ws
        .maas(&["--quiet", "explain", "--out", "pictures"])
        .arg(name)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: Vec<_> = std::fs::read_dir(ws.path("pictures"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        written,
        [std::ffi::OsStr::from_bytes(b"caf\xe9.explain.png")]
    );
    // Printed, the name shows U+FFFD for the byte that is not UTF-8.
    assert!(String::from_utf8_lossy(&out.stdout).contains("caf\u{FFFD}.png"));
}

/// Issue 28 (points 13 and 14, for local files): a file name holding terminal control codes is
/// escaped in the error line, which stays one line.
#[test]
fn control_characters_in_a_named_file_are_escaped_in_the_error_line() {
    let ws = Workspace::new(1, 1);
    let name = "\u{1b}[2Jred\nline.png";
    std::fs::write(ws.path(name), b"not an image").unwrap();
    let (code, _, err) = ws.run(&["predict", "--model", name, "x.png"]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
    let line = err
        .lines()
        .find(|l| l.starts_with("maas: error: "))
        .unwrap();
    assert!(line.contains("\\u{1b}[2Jred\\nline.png"), "{err:?}");
}
