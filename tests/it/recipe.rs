//! The training recipe of issue 24, through the real binary: a validation split that alone
//! chooses `best.ckpt`, --augment, --lr-schedule, --weight-decay and --patience, all kept in
//! run.json and honoured by --resume to the bit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::path::Path;

use common::{Workspace, write_class_folder};
use maas::artifact::checkpoint::Checkpoint;
use maas::data::synthetic;

/// Trains in `ws` with `args` after `train --json --batch-size 16`, into `--checkpoints dir`.
fn train(ws: &Workspace, dir: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec![
        "train",
        "--json",
        "--batch-size",
        "16",
        "--checkpoints",
        dir,
    ];
    all.extend_from_slice(args);
    serde_json::from_str(&ws.ok(&all)).unwrap()
}

fn load(path: &Path) -> Checkpoint {
    Checkpoint::load(path).unwrap()
}

#[test]
fn the_test_split_never_chooses_the_best_checkpoint() {
    // The same training images (written first, from the same seed); other test images, all
    // mislabelled, so that the test accuracy peaks at another epoch than the validation one.
    let a = Workspace::new(20, 40);
    let b = Workspace::new(20, 40);
    let other = tempfile::tempdir().unwrap();
    synthetic::write_cifar10_dir(other.path(), 1, 60, 99).unwrap();
    let test = b.path("data/cifar-10-batches-bin/test_batch.bin");
    let mut bytes = std::fs::read(other.path().join("test_batch.bin")).unwrap();
    // Every label wrong: the better the model, the lower its test accuracy.
    for record in bytes.chunks_mut(3073) {
        record[0] = (record[0] + 3) % 10;
    }
    std::fs::write(&test, bytes).unwrap();
    assert_ne!(
        std::fs::read(a.path("data/cifar-10-batches-bin/test_batch.bin")).unwrap(),
        std::fs::read(&test).unwrap()
    );

    let args = ["--epochs", "6", "--val-split", "0.2", "--lr", "0.02"];
    let (ra, rb) = (train(&a, "ck", &args), train(&b, "ck", &args));
    let (best_a, best_b) = (load(&a.path("ck/best.ckpt")), load(&b.path("ck/best.ckpt")));
    assert_eq!(best_a.weights, best_b.weights, "the same best weights");
    assert_eq!(best_a.meta.best_epoch, best_b.meta.best_epoch);
    assert_ne!(
        ra["final_test_accuracy"], rb["final_test_accuracy"],
        "the test splits do differ"
    );
    // The best epoch is the first of the highest validation accuracy.
    let history = best_a.meta.history.clone();
    let last = load(&a.path("ck/last.ckpt")).meta.history;
    let top = last
        .iter()
        .map(|m| m.val_accuracy.unwrap())
        .fold(f64::MIN, f64::max);
    let first_top = last
        .iter()
        .find(|m| m.val_accuracy.unwrap() == top)
        .unwrap();
    assert_eq!(ra["best_epoch"], first_top.epoch);
    assert_eq!(history.len(), first_top.epoch);
    assert_eq!(ra["best_chosen_by"], "validation accuracy");
    // Choosing by test accuracy would have taken another epoch in one workspace at least: the
    // agreement above is the validation split's doing.
    let first_best_test = |dir: &Workspace| {
        let history = load(&dir.path("ck/last.ckpt")).meta.history;
        let top = history
            .iter()
            .map(|m| m.test_accuracy)
            .fold(f64::MIN, f64::max);
        history
            .iter()
            .find(|m| m.test_accuracy == top)
            .unwrap()
            .epoch
    };
    let (test_a, test_b) = (first_best_test(&a), first_best_test(&b));
    assert!(
        test_a != test_b || test_a != first_top.epoch,
        "test accuracy peaks at epochs {test_a} and {test_b}, validation at {}",
        first_top.epoch
    );
    assert_eq!(ra["config"]["validation_split"], 0.2);
    let csv = std::fs::read_to_string(a.path("ck/metrics.csv")).unwrap();
    assert!(
        csv.starts_with(
            "epoch,train_loss,train_accuracy,test_loss,test_accuracy,val_loss,val_accuracy,"
        ),
        "{csv}"
    );
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .split(',')
            .nth(6)
            .unwrap()
            .parse::<f64>()
            .is_ok(),
        "{csv}"
    );
}

#[test]
fn without_validation_best_is_the_last_epoch() {
    let ws = Workspace::new(20, 40);
    let (code, _, err) = ws.run(&[
        "train",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "0.05",
        "--checkpoints",
        "ck",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("validating on none (best.ckpt is the last epoch)"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(ws.path("ck/best.ckpt")).unwrap(),
        std::fs::read(ws.path("ck/last.ckpt")).unwrap()
    );
    let csv = std::fs::read_to_string(ws.path("ck/metrics.csv")).unwrap();
    assert!(
        csv.lines().nth(1).unwrap().contains(",,"),
        "empty val columns: {csv}"
    );
}

#[test]
fn a_run_with_every_new_flag_resumes_to_the_bit() {
    let ws = Workspace::new(20, 40);
    let flags = [
        "--epochs",
        "4",
        "--val-split",
        "0.2",
        "--augment",
        "--lr-schedule",
        "onecycle",
        "--weight-decay",
        "0.05",
        "--patience",
        "10",
        "--lr",
        "0.01",
    ];
    let whole = train(&ws, "whole", &flags);
    assert_eq!(whole["epochs"], 4);
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path("whole/run.json")).unwrap()).unwrap();
    let t = &run["train"];
    assert_eq!(
        (
            &t["validation_split"],
            &t["augment"],
            &t["lr_schedule"],
            &t["schedule_epochs"],
            &t["weight_decay"],
            &t["patience"]
        ),
        (
            &serde_json::json!(0.2),
            &serde_json::json!(true),
            &serde_json::json!("onecycle"),
            &serde_json::json!(4),
            &serde_json::json!(0.05),
            &serde_json::json!(10)
        )
    );

    // The same run stopped after epoch 2: its folder as a kill would leave it.
    train(&ws, "cut", &flags);
    for n in [3, 4] {
        std::fs::remove_file(ws.path(&format!("cut/epoch-00{n}.ckpt"))).unwrap();
    }
    std::fs::copy(ws.path("cut/epoch-002.ckpt"), ws.path("cut/last.ckpt")).unwrap();
    // Flags repeated are fine; the recipe comes from the run.
    let mut resume = vec![
        "--resume",
        "--epochs",
        "4",
        "--augment",
        "--lr-schedule",
        "onecycle",
    ];
    resume.extend(["--weight-decay", "0.05"]);
    train(&ws, "cut", &resume);
    let (a, b) = (
        load(&ws.path("whole/last.ckpt")),
        load(&ws.path("cut/last.ckpt")),
    );
    assert_eq!(a.weights, b.weights, "the same weights");
    assert_eq!(a.adam, b.adam, "the same optimizer state");
    assert_eq!(a.meta.best_epoch, b.meta.best_epoch);

    // Each flag that disagrees is refused.
    for (flag, value, says) in [
        (
            "--lr-schedule",
            "cosine",
            "--lr-schedule onecycle, not cosine",
        ),
        ("--weight-decay", "0.1", "--weight-decay 0.05, not 0.1"),
        ("--val-split", "0.3", "--val-split 0.2, not 0.3"),
        ("--patience", "3", "--patience 10, not 3"),
        ("--epochs", "9", "schedule spans 4 epochs"),
    ] {
        let mut args = vec!["train", "--resume", "--checkpoints", "cut", flag, value];
        if flag == "--patience" {
            args.extend(["--val-split", "0.2"]);
        }
        let (code, _, err) = ws.run(&args);
        assert_ne!(code, 0, "{flag} {value}");
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
    // A run without --augment refuses it on resume.
    train(&ws, "plain", &["--epochs", "1"]);
    let (code, _, err) = ws.run(&[
        "train",
        "--resume",
        "--epochs",
        "2",
        "--checkpoints",
        "plain",
        "--augment",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("trained without --augment"), "{err}");
}

#[test]
fn a_warmup_cut_in_the_middle_resumes_to_the_bit_and_is_refused_where_it_cannot_apply() {
    let ws = Workspace::new(20, 40);
    // 2.5 epochs of warmup in 4: the cut after epoch 2 falls inside it.
    let flags = [
        "--epochs",
        "4",
        "--lr-schedule",
        "cosine",
        "--warmup-epochs",
        "2.5",
        "--lr",
        "0.01",
    ];
    train(&ws, "whole", &flags);
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path("whole/run.json")).unwrap()).unwrap();
    assert_eq!(run["train"]["warmup_epochs"], serde_json::json!(2.5));
    train(&ws, "cut", &flags);
    for n in [3, 4] {
        std::fs::remove_file(ws.path(&format!("cut/epoch-00{n}.ckpt"))).unwrap();
    }
    std::fs::copy(ws.path("cut/epoch-002.ckpt"), ws.path("cut/last.ckpt")).unwrap();
    train(&ws, "cut", &["--resume", "--epochs", "4"]);
    let (a, b) = (
        load(&ws.path("whole/last.ckpt")),
        load(&ws.path("cut/last.ckpt")),
    );
    assert_eq!(a.weights, b.weights, "the same weights");
    assert_eq!(a.adam, b.adam, "the same optimizer state");

    // Cosine without the flag warms up over a tenth of the run; the constant rate does not.
    train(&ws, "dflt", &["--epochs", "4", "--lr-schedule", "cosine"]);
    let run = std::fs::read_to_string(ws.path("dflt/run.json")).unwrap();
    let run: serde_json::Value = serde_json::from_str(&run).unwrap();
    assert_eq!(run["train"]["warmup_epochs"], serde_json::json!(0.4));

    // Another warmup on resume, a warmup beside onecycle, and one as long as the schedule.
    for (args, says) in [
        (
            &["--resume", "--epochs", "4", "--warmup-epochs", "1"][..],
            "--warmup-epochs 2.5, not 1",
        ),
        (
            &[
                "--epochs",
                "2",
                "--lr-schedule",
                "onecycle",
                "--warmup-epochs",
                "1",
            ][..],
            "onecycle warms up by itself",
        ),
        (
            &[
                "--epochs",
                "2",
                "--lr-schedule",
                "cosine",
                "--warmup-epochs",
                "2",
            ][..],
            "would take all the --epochs 2",
        ),
    ] {
        let mut all = vec!["train", "--checkpoints", "cut"];
        if !args.contains(&"--resume") {
            all.push("--overwrite");
        }
        all.extend_from_slice(args);
        let (code, _, err) = ws.run(&all);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn no_new_flag_trains_as_before_and_the_recipe_changes_the_weights() {
    let ws = Workspace::new(20, 40);
    train(&ws, "plain", &["--epochs", "1"]);
    let plain = load(&ws.path("plain/last.ckpt"));
    let run = std::fs::read_to_string(ws.path("plain/run.json")).unwrap();
    for field in [
        "validation_split",
        "augment",
        "lr_schedule",
        "weight_decay",
        "warmup_epochs",
        "patience",
    ] {
        assert!(!run.contains(field), "{field} in {run}");
    }
    for (dir, flags) in [
        ("aug", &["--augment"][..]),
        ("cos", &["--lr-schedule", "cosine"][..]),
        ("wd", &["--weight-decay", "0.5"][..]),
        ("warm", &["--warmup-epochs", "0.5"][..]),
    ] {
        let mut args = vec!["--epochs", "1"];
        args.extend_from_slice(flags);
        train(&ws, dir, &args);
        assert_ne!(
            load(&ws.path(&format!("{dir}/last.ckpt"))).weights,
            plain.weights,
            "{flags:?} changes training"
        );
    }
    // --lr-schedule constant and --weight-decay 0 are the defaults: the same bits.
    train(
        &ws,
        "explicit",
        &[
            "--epochs",
            "1",
            "--lr-schedule",
            "constant",
            "--weight-decay",
            "0",
            "--warmup-epochs",
            "0",
        ],
    );
    assert_eq!(load(&ws.path("explicit/last.ckpt")).weights, plain.weights);
}

#[test]
fn patience_stops_early_and_says_so() {
    let ws = Workspace::new(20, 40);
    // A rate so small that the validation accuracy cannot move after the first epoch.
    let (code, out, err) = ws.run(&[
        "train",
        "--epochs",
        "8",
        "--batch-size",
        "16",
        "--lr",
        "1e-9",
        "--val-split",
        "0.2",
        "--patience",
        "2",
        "--checkpoints",
        "ck",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("stopping early: the validation accuracy has not improved for 2 epochs"),
        "{err}"
    );
    assert!(out.contains("stopped early by --patience"), "{out}");
    let last = load(&ws.path("ck/last.ckpt"));
    assert_eq!((last.meta.epoch, last.meta.best_epoch), (3, 1));
    // Resumed, it stays stopped.
    let (code, _, err) = ws.run(&["train", "--resume", "--epochs", "8", "--checkpoints", "ck"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stopped early at epoch 3"), "{err}");

    // Without a validation split, --patience is a usage error.
    let (code, _, err) = ws.run(&["train", "--patience", "2", "--checkpoints", "other"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--val-split"), "{err}");
}

#[test]
fn a_folder_run_keeps_test_and_validation_shares_and_its_old_run_json_resumes() {
    let ws = Workspace::new(1, 1);
    write_class_folder(&ws.path("mine"), &["red", "green"], 20, 1);
    let (code, _, err) = ws.run(&[
        "train",
        "--data",
        "mine",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--test-split",
        "0.25",
        "--val-split",
        "0.2",
        "--checkpoints",
        "ck",
    ]);
    assert_eq!(code, 0, "{err}");
    // 20 a class: 5 test, then 3 of the other 15 validate.
    assert!(
        err.contains("2 classes, 30 training and 10 test image files"),
        "{err}"
    );
    assert!(
        err.contains("training on 24 images, testing on 10, validating on 6 (20% of each class"),
        "{err}"
    );
    // A run.json of before the validation split named the test share `val_split`.
    let path = ws.path("ck/run.json");
    let run = std::fs::read_to_string(&path).unwrap();
    assert!(run.contains("\"test_split\": 0.25"), "{run}");
    let mut old: serde_json::Value = serde_json::from_str(&run).unwrap();
    let train = old["train"].as_object_mut().unwrap();
    let share = train.remove("test_split").unwrap();
    train.insert("val_split".into(), share);
    std::fs::write(&path, serde_json::to_string_pretty(&old).unwrap()).unwrap();
    let (code, _, err) = ws.run(&[
        "train",
        "--data",
        "mine",
        "--resume",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--checkpoints",
        "ck",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        load(&ws.path("ck/last.ckpt")).meta.train.test_split,
        Some(0.25)
    );
}
