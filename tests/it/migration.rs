//! Files written in an older maas format still load and answer as they did: the fixtures in
//! `tests/fixtures/format-v1` were written by the maas of format 1 (see their README).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::path::{Path, PathBuf};

use common::Workspace;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/format-v1")
        .join(name)
}

/// Every class's probability per image, in class order, from a `predict --json --top-k 10` report.
fn probabilities(report: &serde_json::Value) -> Vec<Vec<f64>> {
    report["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(common::class_probabilities)
        .collect()
}

/// Copies the fixtures into a workspace and predicts the two images with `model`.
fn predict(ws: &Workspace, model: &str) -> Vec<Vec<f64>> {
    let out = ws.ok(&[
        "predict",
        "--json",
        "--top-k",
        "10",
        "--model",
        model,
        "input.png",
        "green.png",
    ]);
    probabilities(&serde_json::from_str(&out).unwrap())
}

fn workspace() -> Workspace {
    let ws = Workspace::new(4, 10);
    for name in ["model.maas", "last.ckpt", "input.png", "green.png"] {
        std::fs::copy(fixture(name), ws.path(name)).unwrap();
    }
    ws
}

fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() < 1e-6, "{g:?} vs {w:?}");
        }
    }
}

#[test]
fn a_format_1_model_and_checkpoint_predict_as_they_did() {
    let ws = workspace();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("predictions.json")).unwrap())
            .unwrap();
    let want = probabilities(&want);
    // The fixture is not uniform: a migration that lost the weights would show.
    assert!(want[1][1] > 0.3, "{want:?}");
    assert_close(&predict(&ws, "model.maas"), &want);
    assert_close(&predict(&ws, "last.ckpt"), &want);
    // Exporting the old checkpoint writes a model of today's format that answers the same.
    ws.ok(&["export", "--checkpoint", "last.ckpt", "-o", "new.maas"]);
    assert_close(&predict(&ws, "new.maas"), &want);
}

#[test]
fn a_format_1_run_resumes() {
    let ws = workspace();
    std::fs::create_dir_all(ws.path("checkpoints")).unwrap();
    for name in ["last.ckpt", "run.json"] {
        std::fs::copy(fixture(name), ws.path("checkpoints").join(name)).unwrap();
    }
    let out = ws.ok(&["train", "--resume", "--epochs", "4", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["epochs"], 4, "{summary}");
    assert_eq!(summary["hidden"], 2, "the old run's width: {summary}");
    // The checkpoint written now is of today's format and loads.
    ws.ok(&[
        "export",
        "--checkpoint",
        "checkpoints/last.ckpt",
        "-o",
        "resumed.maas",
    ]);
    predict(&ws, "resumed.maas");
}
