//! Nothing lost: `maas train` killed without warning (SIGKILL) at any moment, or out of disk space,
//! leaves the last complete checkpoint valid, and `--resume` ends where an uninterrupted run ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::Workspace;
use maas::artifact::checkpoint::Checkpoint;

const TRAIN: [&str; 6] = ["train", "--epochs", "4", "--batch-size", "8", "--quiet"];

fn maas_bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("maas")
}

#[test]
fn sigkill_at_any_moment_then_resume_ends_with_the_uninterrupted_weights() {
    let reference = Workspace::new(300, 50);
    let started = Instant::now();
    reference.ok(&TRAIN);
    let full_run = started.elapsed();
    let expected = Checkpoint::load(&reference.path("checkpoints/last.ckpt")).unwrap();

    // Kill moments spread over the whole run: in the first epoch, mid-epoch, and around the
    // checkpoint writes at each epoch's end.
    let trials = 12;
    for trial in 0..trials {
        let ws = Workspace::new(300, 50);
        let delay = full_run.mul_f64(f64::from(trial) / f64::from(trials));
        let mut child = Command::new(maas_bin())
            .current_dir(ws.path(""))
            .args(["--device", "cpu"])
            .args(TRAIN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay); // the moment of the kill: the point of the test
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let last = ws.path("checkpoints/last.ckpt");
        let before = last.exists().then(|| {
            Checkpoint::load(&last).unwrap_or_else(|e| {
                panic!("trial {trial}: last.ckpt unreadable after a kill: {e:#}")
            })
        });
        let mut args = TRAIN.to_vec();
        args.push("--resume");
        let (code, _, err) = ws.run(&args);
        assert_eq!(
            code, 0,
            "trial {trial} (killed after {delay:?}): resume failed: {err}"
        );
        let after = Checkpoint::load(&last).unwrap();
        assert_eq!(
            after.weights,
            expected.weights,
            "trial {trial}: killed after {delay:?}, epoch {:?}",
            before.map(|b| b.meta.epoch)
        );
        assert_eq!(after.adam, expected.adam);
        assert_eq!(after.meta.history.len(), 4);
        let stray = common::temporaries(&ws.path("checkpoints"));
        assert!(
            stray.is_empty(),
            "trial {trial}: temporary files left after the resumed run: {stray:?}"
        );
    }
}

#[test]
fn a_full_disk_while_checkpointing_is_a_clear_error_that_keeps_the_previous_files() {
    let ws = Workspace::new(20, 50);
    ws.ok(&["train", "--epochs", "1", "--quiet"]);
    let last = ws.path("checkpoints/last.ckpt");
    let before = std::fs::read(&last).unwrap();
    // A file-size limit below one checkpoint (~0.8 MB of weights plus Adam's two moments) makes
    // the next checkpoint write fail as a full disk would; SIGXFSZ is ignored so that the write
    // returns an error instead of killing the process.
    let script = format!(
        "trap '' XFSZ; ulimit -f 1024; exec '{}' --device cpu --progress never train --epochs 2 --resume",
        maas_bin().display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(ws.path(""))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let error_line = err
        .lines()
        .find(|l| l.starts_with("maas: error"))
        .unwrap_or_default();
    assert!(
        error_line.contains("epoch-002.ckpt") && error_line.contains("cannot write"),
        "{err}"
    );
    assert_eq!(std::fs::read(&last).unwrap(), before, "last.ckpt changed");
    assert!(Checkpoint::load(&ws.path("checkpoints/best.ckpt")).is_ok());
    assert!(!ws.path("checkpoints/epoch-002.ckpt").exists());
    let stray = common::temporaries(&ws.path("checkpoints"));
    assert!(stray.is_empty(), "{stray:?}");
    // With room again, the same command finishes the run.
    ws.ok(&["train", "--epochs", "2", "--resume", "--quiet"]);
}
