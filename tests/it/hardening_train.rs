//! `maas train` against what an adversarial user does to it (issue 16): two runs on one folder,
//! a folder missing its `last.ckpt`, a learning rate that diverges, a checkpoint from another
//! run, a class named twice, a folder with one image per class.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use common::{Workspace, write_class_folder};
use maas::artifact::checkpoint::{Checkpoint, RunFiles};

/// The `.ckpt` files in `dir`, sorted.
fn checkpoints_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".ckpt"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_second_train_on_a_locked_folder_is_refused_naming_the_holder() {
    let ws = Workspace::new(10, 20);
    let files = RunFiles::new(&ws.path("checkpoints"));
    std::fs::create_dir_all(&files.dir).unwrap();
    // A run in progress, as maas takes it: the lock file locked, its holder written in it.
    let held = std::fs::File::create(files.lock_file()).unwrap();
    std::fs::write(
        files.lock_file(),
        "pid 4242, started Tue, 05 May 2026 10:00:00 GMT\n",
    )
    .unwrap();
    held.try_lock().unwrap();

    let (code, _, err) = ws.run(&["train", "--epochs", "1"]);
    assert_eq!(code, 1, "{err}");
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with(
            "maas: error: checkpoints: in use by another maas train, pid 4242, started Tue, 05 May 2026"
        ),
        "{err}"
    );
    assert!(line.ends_with("another --checkpoints folder"), "{err}");
    assert!(checkpoints_in(&files.dir).is_empty());

    // Released (as when the holder dies): the folder is free again.
    drop(held);
    ws.ok(&["train", "--epochs", "1", "--quiet"]);
    let holder = std::fs::read_to_string(files.lock_file()).unwrap();
    assert!(holder.starts_with("pid "), "{holder}");
}

#[test]
fn a_folder_without_last_ckpt_still_holds_a_run_for_train_and_resume_alike() {
    let ws = Workspace::new(10, 20);
    ws.ok(&["train", "--epochs", "3", "--batch-size", "16", "--quiet"]);
    let dir = ws.path("checkpoints");
    std::fs::remove_file(dir.join("last.ckpt")).unwrap();
    let best = std::fs::read(dir.join("best.ckpt")).unwrap();

    let (code, _, err) = ws.run(&["train", "--epochs", "3"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("already holds a run")
            && err.contains("--resume")
            && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("best.ckpt")).unwrap(), best, "kept");

    // --resume reads the folder the same way: from the latest epoch, and says so.
    let (code, out, err) = ws.run(&["train", "--epochs", "4", "--resume", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("last.ckpt: resuming from")
            && err.contains("epoch-003.ckpt (epoch 3 complete)"),
        "{err}"
    );
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["epochs_this_run"], 1);

    // --overwrite leaves none of the old run's epochs to pass for the new run's.
    ws.ok(&["train", "--epochs", "1", "--overwrite", "--quiet"]);
    assert_eq!(
        checkpoints_in(&dir),
        ["best.ckpt", "epoch-001.ckpt", "last.ckpt"]
    );
    let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let ws = Workspace::new(10, 20);
    // From the start: nothing that could not be read back is written.
    let (code, _, err) = ws.run(&[
        "train",
        "--epochs",
        "2",
        "--lr",
        "1e20",
        "--checkpoints",
        "nan",
    ]);
    assert_eq!(code, 1, "{err}");
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with("maas: error: epoch 1: training diverged (the "),
        "{err}"
    );
    assert!(
        line.contains("try a smaller --lr than this run's 1e20")
            && line.ends_with("no epoch was complete, so no checkpoint was written"),
        "{err}"
    );
    assert!(checkpoints_in(&ws.path("nan")).is_empty());

    // After a good epoch: the run's learning rate made huge (in the checkpoint and run.json, so
    // that --resume accepts it), the next epoch diverges and the good files stay.
    ws.ok(&["train", "--epochs", "1", "--quiet"]);
    let dir = ws.path("checkpoints");
    let mut last = Checkpoint::load(&dir.join("last.ckpt")).unwrap();
    last.meta.train.lr = 1e20;
    last.save(&dir.join("last.ckpt")).unwrap();
    let mut run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    run["train"]["lr"] = 1e20.into();
    std::fs::write(dir.join("run.json"), run.to_string()).unwrap();
    let (code, _, err) = ws.run(&["train", "--epochs", "3", "--resume"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("epoch 2: training diverged") && err.contains("last.ckpt holds epoch 1"),
        "{err}"
    );
    assert_eq!(
        checkpoints_in(&dir),
        ["best.ckpt", "epoch-001.ckpt", "last.ckpt"]
    );
    assert_eq!(
        Checkpoint::load(&dir.join("last.ckpt")).unwrap().meta.epoch,
        1
    );
    ws.ok(&[
        "export",
        "--checkpoint",
        "checkpoints/best.ckpt",
        "-o",
        "model.maas",
        "--quiet",
    ]);
}

#[test]
fn resume_refuses_a_last_ckpt_copied_from_another_run() {
    let ws = Workspace::new(10, 20);
    ws.ok(&["train", "--epochs", "1", "--hidden", "8", "--quiet"]);
    ws.ok(&[
        "train",
        "--epochs",
        "1",
        "--hidden",
        "16",
        "--checkpoints",
        "other",
        "--quiet",
    ]);
    std::fs::copy(ws.path("other/last.ckpt"), ws.path("checkpoints/last.ckpt")).unwrap();
    let (code, _, err) = ws.run(&["train", "--epochs", "2", "--resume"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("checkpoints/last.ckpt: trained with --hidden 16, but checkpoints/run.json records --hidden 8"),
        "{err}"
    );
    assert!(!ws.path("checkpoints/epoch-002.ckpt").exists());
}

#[test]
fn a_class_named_twice_in_batches_meta_is_refused() {
    let ws = Workspace::new(10, 20);
    let meta = ws.path("data/cifar-10-batches-bin/batches.meta.txt");
    let names = std::fs::read_to_string(&meta).unwrap();
    let twice = names.replacen("automobile", "airplane", 1);
    assert_ne!(twice, names);
    std::fs::write(&meta, twice).unwrap();
    let (code, _, err) = ws.run(&["train", "--epochs", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("batches.meta.txt: class `airplane` is named twice (lines 1 and 2)"),
        "{err}"
    );
    assert!(!ws.path("checkpoints/last.ckpt").exists());
}

#[test]
fn a_folder_with_one_image_per_class_is_refused_rather_than_tested_on_nothing() {
    let ws = Workspace::new(1, 1);
    let classes = ["cherry", "lime", "sky"];
    write_class_folder(&ws.path("single"), &classes, 1, 1);
    let (code, _, err) = ws.run(&["train", "--data", "single", "--epochs", "1"]);
    assert_eq!(code, 1, "{err}");
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with("maas: error: single: no test images")
            && line.contains("two images or more"),
        "{err}"
    );
    assert!(!err.contains("| best"), "{err}");

    // Two of a class: one is held out, whatever the share.
    write_class_folder(&ws.path("pairs"), &classes, 2, 1);
    let (code, _, err) = ws.run(&[
        "train",
        "--data",
        "pairs",
        "--epochs",
        "1",
        "--checkpoints",
        "p",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("training on 3 images, testing on 3"), "{err}");
}

/// Issue 28, point 7: a run killed in its first epoch leaves only run.json; `--resume` starts
/// that run again with its own settings (the cnn, batch 8, lr 0.01, seed 7), not the defaults,
/// and refuses a flag that changes one.
#[test]
fn resume_after_a_killed_first_epoch_keeps_the_settings_run_json_records() {
    let ws = Workspace::new(10, 20);
    let straight = [
        "train",
        "--arch",
        "cnn",
        "--lr",
        "0.01",
        "--batch-size",
        "8",
        "--seed",
        "7",
        "--epochs",
        "1",
        "--json",
    ];
    let first: serde_json::Value = serde_json::from_str(&ws.ok(&straight)).unwrap();
    // What a Ctrl-C in epoch 1 leaves: run.json alone.
    let dir = ws.path("checkpoints");
    let recorded = std::fs::read_to_string(dir.join("run.json")).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "run.json" && path.is_file() {
            std::fs::remove_file(path).unwrap();
        }
    }

    let (code, _, err) = ws.run(&["train", "--resume", "--epochs", "1", "--batch-size", "16"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--batch-size"), "{err}");

    let (code, out, err) = ws.run(&["train", "--resume", "--epochs", "1", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("first epoch never completed") && !err.contains("removed the earlier run"),
        "{err}"
    );
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["architecture"], first["architecture"]);
    assert_eq!(again["config"], first["config"]);
    // The same run, so the same epoch: equal figures on the CPU.
    assert_eq!(
        again["history"][0]["test_loss"],
        first["history"][0]["test_loss"]
    );
    assert_eq!(
        again["history"][0]["train_loss"],
        first["history"][0]["train_loss"]
    );
    let now = std::fs::read_to_string(dir.join("run.json")).unwrap();
    let settings = |text: &str| {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        (v["model"].clone(), v["train"].clone())
    };
    assert_eq!(settings(&now), settings(&recorded));
}
