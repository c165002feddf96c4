//! The commands as users and scripts run them: train, export, predict, and their errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use common::{Look, Workspace, save_image};
use maas::artifact::checkpoint::Checkpoint;
use maas::artifact::export::load_model;
use maas::data::cifar10::{self, Split};
use maas::data::synthetic;

#[test]
fn train_learns_the_dataset_and_leaves_every_file() {
    let ws = Workspace::new(100, 200);
    let summary = ws.train(&[]);
    assert_eq!(summary["epochs"], 3);
    let acc = summary["final_test_accuracy"].as_f64().unwrap();
    assert!(
        acc > 0.9,
        "test accuracy {acc} on a dataset a linear model separates"
    );
    assert!(summary["samples_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(summary["history"].as_array().unwrap().len(), 3);
    for f in [
        "epoch-001.ckpt",
        "epoch-002.ckpt",
        "epoch-003.ckpt",
        "best.ckpt",
        "last.ckpt",
        "run.json",
        "metrics.csv",
        "curves.png",
    ] {
        assert!(ws.path("checkpoints").join(f).is_file(), "{f} is missing");
    }
    let csv = std::fs::read_to_string(ws.path("checkpoints/metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    let curves = image::open(ws.path("checkpoints/curves.png")).unwrap();
    assert!(curves.width() >= 800 && curves.height() >= 400);
    assert_eq!(
        summary["checkpoints"]["curves"].as_str().unwrap(),
        "checkpoints/curves.png"
    );
    assert!(csv.starts_with("epoch,train_loss,train_accuracy,test_loss,test_accuracy"));
    let best = Checkpoint::load(&ws.path("checkpoints/best.ckpt")).unwrap();
    assert_eq!(
        best.meta.best_epoch,
        summary["best_epoch"].as_u64().unwrap() as usize
    );
    assert_eq!(best.meta.model.classes[3], "cat");
    let leftovers = common::temporaries(&ws.path("checkpoints"));
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
}

#[test]
fn json_prints_only_json_on_stdout() {
    let ws = Workspace::new(20, 50);
    let out = ws.ok(&["train", "--epochs", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is one JSON document");
    assert!(
        v["checkpoints"]["best"]
            .as_str()
            .unwrap()
            .ends_with("best.ckpt")
    );
}

#[test]
fn same_seed_gives_identical_weights_and_metrics() {
    let a = Workspace::new(40, 50);
    let b = Workspace::new(40, 50);
    a.train(&["--seed", "7"]);
    b.train(&["--seed", "7"]);
    let ca = Checkpoint::load(&a.path("checkpoints/last.ckpt")).unwrap();
    let cb = Checkpoint::load(&b.path("checkpoints/last.ckpt")).unwrap();
    assert_eq!(ca.weights, cb.weights);
    assert_eq!(ca.adam, cb.adam);
    for (x, y) in ca.meta.history.iter().zip(&cb.meta.history) {
        assert_eq!(
            (x.train_loss, x.test_accuracy),
            (y.train_loss, y.test_accuracy)
        );
    }
    let c = Workspace::new(40, 50);
    c.train(&["--seed", "8"]);
    assert_ne!(
        Checkpoint::load(&c.path("checkpoints/last.ckpt"))
            .unwrap()
            .weights,
        ca.weights
    );
}

#[test]
fn resume_ends_with_the_same_weights_as_an_uninterrupted_run() {
    let straight = Workspace::new(40, 50);
    straight.ok(&["train", "--epochs", "5", "--batch-size", "16", "--quiet"]);
    let resumed = Workspace::new(40, 50);
    resumed.ok(&["train", "--epochs", "3", "--batch-size", "16", "--quiet"]);
    let (code, out, err) = resumed.run(&["train", "--epochs", "5", "--resume", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming"), "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["epochs_this_run"], 2);
    let a = Checkpoint::load(&straight.path("checkpoints/last.ckpt")).unwrap();
    let b = Checkpoint::load(&resumed.path("checkpoints/last.ckpt")).unwrap();
    assert_eq!(a.weights, b.weights);
    assert_eq!(a.adam, b.adam);
    assert_eq!(b.meta.history.len(), 5);
}

#[test]
fn resume_refuses_other_hyper_parameters_and_train_refuses_to_overwrite() {
    let ws = Workspace::new(10, 20);
    ws.ok(&["train", "--epochs", "1", "--hidden", "8", "--quiet"]);
    let (code, _, err) = ws.run(&["train", "--epochs", "2", "--resume", "--hidden", "16"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--hidden 8") && err.contains("last.ckpt"),
        "{err}"
    );
    let (code, _, err) = ws.run(&["train", "--epochs", "2"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    ws.ok(&["train", "--epochs", "1", "--overwrite", "--quiet"]);
}

#[test]
fn export_then_predict_images_of_every_kind() {
    let ws = Workspace::new(100, 200);
    let summary = ws.train(&[]);
    let out = ws.ok(&["export", "--json"]);
    let exported: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(exported["provenance"]["epochs"], summary["best_epoch"]);
    let model = load_model(&ws.path("model.maas")).unwrap();
    assert_eq!(model.config.classes.len(), 10);
    assert!(model.provenance.unwrap().test_accuracy > 0.9);

    // Test images saved as files of other formats, sizes and colour types.
    let test =
        cifar10::load_split(&ws.path("data/cifar-10-batches-bin"), Split::Test, None).unwrap();
    let looks = [
        ("png", Look::Rgb, 32),
        ("jpg", Look::Rgb, 64),
        ("png", Look::Rgba, 20),
        ("bmp", Look::Rgb, 50),
    ];
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for i in 0..40 {
        let (ext, look, size) = looks[i % looks.len()];
        let name = format!("img{i}.{ext}");
        save_image(test.image(i), &ws.path(&name), look, size);
        files.push(name);
        labels.push(synthetic::CLASS_NAMES[test.label(i) as usize]);
    }
    let mut args = vec!["predict", "--json", "--top-k", "2"];
    args.extend(files.iter().map(String::as_str));
    let report: serde_json::Value = serde_json::from_str(&ws.ok(&args)).unwrap();
    assert_eq!(report["model"], "model.maas");
    let predictions = report["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 40);
    assert!(report["errors"].as_array().unwrap().is_empty());
    let mut right = 0;
    for (p, (file, label)) in predictions.iter().zip(files.iter().zip(&labels)) {
        assert_eq!(p["file"], file.as_str());
        assert_eq!(p["top_k"].as_array().unwrap().len(), 2);
        assert_eq!(p["top_k"][0]["label"], p["label"]);
        assert_eq!(p["index"], p["top_k"][0]["index"]);
        let prob = p["probability"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&prob));
        right += usize::from(p["label"] == *label);
    }
    assert!(
        right >= 36,
        "only {right} of 40 image files classified right"
    );

    // The table for people.
    let table = ws.ok(&["predict", "img0.png", "img1.jpg"]);
    assert!(table.starts_with("FILE"), "{table}");
    assert_eq!(table.lines().count(), 3);
    assert!(table.contains(labels[0]));
}

#[test]
fn colour_alone_is_learnt_and_predicted_from_png() {
    // Classes 0 (red), 1 (green) and 2 (blue) differ by channel only: a layout or channel-order
    // mismatch between training and prediction would swap them.
    let ws = Workspace::new(100, 200);
    ws.train(&[]);
    let mut args = vec!["predict".to_string(), "--json".into()];
    for class in 0..3 {
        let name = format!("c{class}.png");
        save_image(
            &synthetic::sample_image(class, 99),
            &ws.path(&name),
            Look::Rgb,
            32,
        );
        args.push(name);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report: serde_json::Value = serde_json::from_str(&ws.ok(&args)).unwrap();
    for class in 0..3 {
        assert_eq!(report["predictions"][class]["index"], class);
    }
}

#[test]
fn predict_falls_back_to_the_best_checkpoint_and_says_so() {
    let ws = Workspace::new(20, 50);
    ws.train(&[]);
    save_image(
        &synthetic::sample_image(2, 1),
        &ws.path("x.png"),
        Look::Rgb,
        32,
    );
    let (code, out, err) = ws.run(&["predict", "x.png", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("best.ckpt"), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["model"].as_str().unwrap().ends_with("best.ckpt"));
}

#[test]
fn a_bad_image_is_reported_while_the_good_ones_are_classified() {
    let ws = Workspace::new(20, 50);
    ws.train(&[]);
    save_image(
        &synthetic::sample_image(1, 1),
        &ws.path("good.png"),
        Look::Rgb,
        32,
    );
    std::fs::write(ws.path("text.png"), "this is not an image").unwrap();
    let (code, out, err) = ws.run(&["predict", "--json", "good.png", "text.png", "missing.png"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["predictions"].as_array().unwrap().len(), 1);
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["file"], "text.png");
    assert_eq!(errors[1]["file"], "missing.png");
    assert!(!err.contains("panicked"), "{err}");
    let (code, out, err) = ws.run(&["--quiet", "predict", "good.png", "text.png"]);
    assert_eq!(code, 1);
    assert_eq!(out.lines().count(), 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("text.png"), "{err}");
}

#[test]
fn damaged_models_are_one_clear_error() {
    let ws = Workspace::new(20, 50);
    ws.train(&[]);
    ws.ok(&["export"]);
    save_image(
        &synthetic::sample_image(1, 1),
        &ws.path("x.png"),
        Look::Rgb,
        32,
    );
    let bytes = std::fs::read(ws.path("model.maas")).unwrap();
    std::fs::write(ws.path("cut.maas"), &bytes[..bytes.len() / 2]).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    std::fs::write(ws.path("flipped.maas"), &flipped).unwrap();
    std::fs::write(ws.path("foreign.maas"), b"PK\x03\x04 a zip file").unwrap();
    for (file, problem) in [
        ("cut.maas", "truncated"),
        ("flipped.maas", "checksum"),
        ("foreign.maas", "not a maas"),
    ] {
        let (code, out, err) = ws.run(&["predict", "--model", file, "x.png"]);
        assert_eq!(code, 1, "{file}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(file) && err.contains(problem), "{file}: {err}");
    }
}

#[test]
fn dataset_problems_name_the_file() {
    let ws = Workspace::new(10, 20);
    let bin = ws.path("data/cifar-10-batches-bin/data_batch_2.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&bin, bytes).unwrap();
    let (code, _, err) = ws.run(&["train", "--epochs", "1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("data_batch_2.bin") && err.contains("3073"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("maas: error")).count(),
        1,
        "{err}"
    );
}

#[test]
fn usage_errors_exit_with_2() {
    let ws = Workspace::new(1, 1);
    for args in [
        &["train", "--epochs", "0"][..],
        &["train", "--batch-size", "0"],
        &["train", "--lr", "-1"],
        &["predict", "--top-k", "0", "x.png"],
        &["predict", "--top-k", "257", "x.png"],
        &["train", "--val-split", "1"],
        &["predict"],
        &["--device", "tpu", "predict", "x.png"],
        &["frobnicate"],
    ] {
        let (code, _, err) = ws.run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

#[test]
fn no_model_yet_says_what_to_do() {
    let ws = Workspace::new(1, 1);
    save_image(
        &synthetic::sample_image(1, 1),
        &ws.path("x.png"),
        Look::Rgb,
        32,
    );
    let (code, _, err) = ws.run(&["predict", "x.png"]);
    assert_eq!(code, 1);
    assert!(err.contains("maas train"), "{err}");
    let (code, _, err) = ws.run(&["export"]);
    assert_eq!(code, 1);
    assert!(err.contains("best.ckpt"), "{err}");
}

#[test]
fn ctrl_c_stops_after_the_step_in_flight_and_keeps_the_last_checkpoint() {
    let ws = Workspace::new(400, 100);
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("maas"))
        .current_dir(ws.path(""))
        .args([
            "--device",
            "cpu",
            "--progress",
            "never",
            "train",
            "--epochs",
            "100000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let last = ws.path("checkpoints/last.ckpt");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !last.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint was written"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("--resume"),
        "{err}"
    );
    let saved = Checkpoint::load(&last).unwrap();
    let next = (saved.meta.epoch + 1).to_string();
    ws.ok(&["train", "--resume", "--quiet", "--epochs", &next]);
    assert_eq!(
        Checkpoint::load(&last).unwrap().meta.epoch,
        saved.meta.epoch + 1
    );
}

#[test]
fn eval_reports_consistent_figures_and_gates_on_fail_under() {
    let ws = Workspace::new(20, 50);
    ws.train(&[]);
    let report: serde_json::Value = serde_json::from_str(&ws.ok(&["eval", "--json"])).unwrap();
    assert_eq!(report["samples"], 50);
    let confusion: Vec<Vec<u64>> = serde_json::from_value(report["confusion"].clone()).unwrap();
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 50);
    let diagonal: u64 = (0..10).map(|i| confusion[i][i]).sum();
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!((accuracy - diagonal as f64 / 50.0).abs() < 1e-12);
    assert!(report["top3_accuracy"].as_f64().unwrap() >= accuracy);
    for (k, class) in report["classes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(class["support"], confusion[k].iter().sum::<u64>());
        assert_eq!(class["label"], synthetic::CLASS_NAMES[k]);
    }
    // The picture goes beside the model (here the best checkpoint), or into --plots.
    assert_eq!(report["confusion_png"], "checkpoints/confusion.png");
    let picture = image::open(ws.path("checkpoints/confusion.png")).unwrap();
    assert!(picture.width() >= 600 && picture.height() >= 600);
    let (code, table, err) = ws.run(&["eval", "--plots", "pictures"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("confusion matrix") && table.contains("PRECISION"),
        "{table}"
    );
    assert!(
        err.contains("confusion matrix picture: pictures/confusion.png"),
        "{err}"
    );
    assert!(ws.path("pictures/confusion.png").is_file());
    assert!(common::temporaries(&ws.path("pictures")).is_empty());
    let (code, _, _) = ws.run(&["eval", "--fail-under", "0"]);
    assert_eq!(code, 0);
    let (code, _, err) = ws.run(&["eval", "--fail-under", "1"]);
    assert_eq!(code, i32::from(accuracy < 1.0), "{err}");
    let (code, _, _) = ws.run(&["eval", "--fail-under", "1.5"]);
    assert_eq!(code, 2);
}

#[test]
fn predict_takes_folders_and_quoted_patterns() {
    let ws = Workspace::new(20, 50);
    ws.train(&[]);
    std::fs::create_dir_all(ws.path("photos/more")).unwrap();
    save_image(
        &synthetic::sample_image(0, 1),
        &ws.path("photos/a.png"),
        Look::Rgb,
        32,
    );
    save_image(
        &synthetic::sample_image(1, 1),
        &ws.path("photos/b.jpg"),
        Look::Rgb,
        40,
    );
    save_image(
        &synthetic::sample_image(2, 1),
        &ws.path("photos/more/c.png"),
        Look::Grey,
        32,
    );
    std::fs::write(
        ws.path("photos/notes.txt"),
        "not an image, and not named like one",
    )
    .unwrap();

    let files = common::predicted_files;
    let folder: serde_json::Value =
        serde_json::from_str(&ws.ok(&["predict", "--json", "photos"])).unwrap();
    assert_eq!(
        files(&folder),
        ["photos/a.png", "photos/b.jpg", "photos/more/c.png"]
    );
    assert!(folder["errors"].as_array().unwrap().is_empty());

    let pattern: serde_json::Value =
        serde_json::from_str(&ws.ok(&["predict", "--json", "photos/*.png"])).unwrap();
    assert_eq!(files(&pattern), ["photos/a.png"]);

    let (code, out, _) = ws.run(&["predict", "--json", "photos/*.gif", "photos/a.png"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(files(&report), ["photos/a.png"]);
    assert_eq!(report["errors"][0]["file"], "photos/*.gif");
    assert!(
        report["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no image files match")
    );
}

#[test]
fn explain_writes_a_picture_per_image_and_reports_the_top_classes() {
    let ws = Workspace::new(20, 50);
    ws.train(&[]);
    save_image(
        &synthetic::sample_image(3, 1),
        &ws.path("a.png"),
        Look::Rgb,
        32,
    );
    save_image(
        &synthetic::sample_image(5, 1),
        &ws.path("b.jpg"),
        Look::Rgb,
        64,
    );
    std::fs::write(ws.path("bad.png"), "text").unwrap();
    let (code, out, err) = ws.run(&[
        "explain", "--json", "--out", "why", "a.png", "b.jpg", "bad.png",
    ]);
    assert_eq!(code, 1, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let explanations = report["explanations"].as_array().unwrap();
    assert_eq!(explanations.len(), 2);
    assert_eq!(report["errors"][0]["file"], "bad.png");
    let predicted: serde_json::Value =
        serde_json::from_str(&ws.ok(&["predict", "--json", "a.png", "b.jpg"])).unwrap();
    for (e, p) in explanations
        .iter()
        .zip(predicted["predictions"].as_array().unwrap())
    {
        assert_eq!(e["label"], p["label"]);
        assert_eq!(e["top_k"].as_array().unwrap().len(), 3);
        let picture = image::open(ws.path(e["picture"].as_str().unwrap())).unwrap();
        assert_eq!((picture.width(), picture.height()), (520, 256));
    }
    assert!(ws.path("why/a.explain.png").is_file() && ws.path("why/b.explain.png").is_file());
}
