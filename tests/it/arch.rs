//! `maas train --arch cnn`: on pictures where position and shape matter (bars drawn at random
//! places in random colours) the CNN learns where the MLP stays near chance; a cnn run resumes
//! exactly, refuses another architecture, and every command runs its model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::path::Path;

use common::Workspace;
use image::{Rgb, RgbImage};
use maas::artifact::checkpoint::Checkpoint;
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// A 32x32 picture of a bar 3x12 pixels, horizontal or vertical, at a random place, in a random
/// bright colour on a random dark grey: its class is the bar's direction alone (both have as many
/// bright pixels), which no pixel tells where the bar may be anywhere.
fn bar(vertical: bool, rng: &mut StdRng) -> RgbImage {
    let grey = rng.random_range(0..80u8);
    let background = Rgb([grey; 3]);
    let foreground = Rgb([0; 3].map(|_: u8| rng.random_range(180..=255u8)));
    let (w, h) = if vertical { (3, 12) } else { (12, 3) };
    let (x0, y0) = (rng.random_range(0..=32 - w), rng.random_range(0..=32 - h));
    RgbImage::from_fn(32, 32, |x, y| {
        if (x0..x0 + w).contains(&x) && (y0..y0 + h).contains(&y) {
            foreground
        } else {
            background
        }
    })
}

/// `DIR/train/<class>/` and `DIR/test/<class>/` of bars.
fn write_bars(dir: &Path, train: usize, test: usize) {
    let mut rng = StdRng::seed_from_u64(9);
    for (split, n) in [("train", train), ("test", test)] {
        for (class, vertical) in [("horizontal", false), ("vertical", true)] {
            let folder = dir.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..n {
                bar(vertical, &mut rng)
                    .save(folder.join(format!("{i:03}.png")))
                    .unwrap();
            }
        }
    }
}

fn bars_workspace(train: usize, test: usize) -> Workspace {
    let ws = Workspace::new(1, 1);
    write_bars(&ws.path("bars"), train, test);
    ws
}

fn train(ws: &Workspace, folder: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["train", "--data", "bars", "--checkpoints", folder, "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ws.ok(&all)).unwrap()
}

#[test]
fn the_cnn_learns_bars_at_random_places_where_the_mlp_stays_near_chance() {
    let ws = bars_workspace(300, 50);
    let common = ["--epochs", "3"];
    let mlp = train(&ws, "mlp", &common);
    let cnn = train(&ws, "cnn", &[&common[..], &["--arch", "cnn"]].concat());
    let accuracy = |s: &serde_json::Value| s["best_test_accuracy"].as_f64().unwrap();
    let (mlp, cnn_acc) = (accuracy(&mlp), accuracy(&cnn));
    eprintln!("best test accuracy on bars: cnn {cnn_acc}, mlp {mlp}");
    assert_eq!(cnn["architecture"], "cnn-conv32-conv64-dense128");
    assert!(
        cnn_acc >= 0.9 && cnn_acc >= mlp + 0.2,
        "cnn {cnn_acc} vs mlp {mlp}"
    );
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path("cnn/run.json")).unwrap()).unwrap();
    assert_eq!(run["model"]["architecture"], "cnn-conv32-conv64-dense128");
}

#[test]
fn a_cnn_run_resumes_exactly_and_refuses_another_architecture() {
    let ws = bars_workspace(12, 4);
    let args = ["--arch", "cnn", "--batch-size", "8"];
    train(&ws, "straight", &[&args[..], &["--epochs", "3"]].concat());
    train(&ws, "resumed", &[&args[..], &["--epochs", "2"]].concat());
    train(&ws, "resumed", &["--resume", "--epochs", "3"]);
    let straight = Checkpoint::load(&ws.path("straight/last.ckpt")).unwrap();
    let resumed = Checkpoint::load(&ws.path("resumed/last.ckpt")).unwrap();
    assert_eq!(straight.weights, resumed.weights);
    assert_eq!(straight.adam, resumed.adam);
    assert_eq!(straight.adam.step, 9, "24 images in batches of 8, 3 epochs");
    assert_eq!(straight.weights.arrays[0].name, "conv1.weight");

    let (code, _, err) = ws.run(&[
        "train",
        "--data",
        "bars",
        "--checkpoints",
        "resumed",
        "--resume",
        "--epochs",
        "4",
        "--arch",
        "mlp",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not --arch mlp"), "{err}");
    let (code, _, err) = ws.run(&["train", "--data", "bars", "--arch", "cnn", "--hidden", "8"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--hidden"), "{err}");
}

#[test]
fn predict_eval_and_explain_run_a_cnn_model() {
    let ws = bars_workspace(12, 4);
    train(&ws, "checkpoints", &["--arch", "cnn", "--epochs", "1"]);
    ws.ok(&["export", "-o", "cnn.maas"]);
    let image = "bars/test/vertical/000.png";
    let from_model = common::predict_probabilities(&ws, "cnn.maas", &[image.to_string()]);
    let from_ckpt =
        common::predict_probabilities(&ws, "checkpoints/best.ckpt", &[image.to_string()]);
    // Two classes: the other eight places of the ten-wide rows stay NaN.
    assert_eq!(from_model[0][..2], from_ckpt[0][..2]);
    let sum: f32 = from_model[0][..2].iter().sum();
    assert!((sum - 1.0).abs() < 1e-4, "{from_model:?}");
    let eval: serde_json::Value =
        serde_json::from_str(&ws.ok(&["eval", "--model", "cnn.maas", "--data", "bars", "--json"]))
            .unwrap();
    assert!(eval.to_string().contains("accuracy"), "{eval}");
    ws.ok(&["explain", "--model", "cnn.maas", "--out", "heat", image]);
    assert!(std::fs::read_dir(ws.path("heat")).unwrap().count() > 0);
}

/// `POST path` to the server with `body`; the status and the answer as JSON.
fn post(server: &common::server::Server, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .new_agent();
    let mut answer = agent.post(&server.url(path)).send(body).unwrap();
    let status = answer.status().as_u16();
    let text = answer.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

#[test]
fn serve_answers_with_a_cnn_model_as_predict_does() {
    let ws = bars_workspace(12, 4);
    train(&ws, "checkpoints", &["--arch", "cnn", "--epochs", "1"]);
    ws.ok(&["export", "-o", "model.maas"]);
    let image = "bars/test/horizontal/001.png";
    let expected = common::predict_probabilities(&ws, "model.maas", &[image.to_string()]);
    let server = common::server::Server::start(&ws, &[]);
    let bytes = std::fs::read(ws.path(image)).unwrap();

    let input = maas::data::preprocess::load_image_file(&ws.path(image)).unwrap();
    let request = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32],
        "datatype": "FP32", "data": input}]});
    let (status, answer) = post(
        &server,
        "/v2/models/maas/infer",
        &serde_json::to_vec(&request).unwrap(),
    );
    assert_eq!(status, 200, "{answer}");
    let probabilities = common::server::output_data(&answer);
    for (got, want) in probabilities.iter().zip(&expected[0][..2]) {
        assert!(
            (got - want).abs() < 1e-5,
            "{probabilities:?} vs {expected:?}"
        );
    }
    // top_k given: its default (3) is refused for a model of two classes (left as is).
    let (status, answer) = post(&server, "/v1/predict?top_k=2", &bytes);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.to_string().contains("horizontal") || answer.to_string().contains("vertical"));
    let (status, answer) = post(&server, "/v1/explain?top_k=2", &bytes);
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["picture_png"]
            .as_str()
            .is_some_and(|p| !p.is_empty()),
        "{answer}"
    );
}

#[test]
fn the_cnn_trains_alike_on_every_instruction_set_and_a_bad_cap_is_refused() {
    // MAAS_MAX_ISA caps the host kernels: AVX-512's tiles and lanes, AVX2's, or the portable
    // code and gemm. Each takes the same sums in another order, so one epoch's losses agree
    // closely (on a CPU without AVX-512 the wider caps run the narrower code, and the
    // comparison still holds).
    let ws = bars_workspace(150, 25);
    let args = ["--arch", "cnn", "--epochs", "1", "--seed", "3"];
    let losses: Vec<(String, f64, f64)> = ["avx512", "avx2", "portable"]
        .iter()
        .map(|cap| {
            let mut cmd = ws.maas(
                &[
                    &["train", "--data", "bars", "--checkpoints", cap, "--json"][..],
                    &args[..],
                ]
                .concat(),
            );
            let out = cmd.env("MAAS_MAX_ISA", cap).output().unwrap();
            assert!(
                out.status.success(),
                "{cap}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let epoch = &run["history"][0];
            let loss = |key: &str| epoch[key].as_f64().unwrap();
            (cap.to_string(), loss("train_loss"), loss("test_loss"))
        })
        .collect();
    eprintln!("one epoch's train / test loss by instruction set: {losses:?}");
    let (_, train0, test0) = &losses[0];
    for (cap, train, test) in &losses[1..] {
        assert!(
            (train - train0).abs() <= 1e-3 * train0 && (test - test0).abs() <= 1e-3 * test0,
            "{cap}: {train} / {test} against avx512's {train0} / {test0}"
        );
    }
    let mut cmd = ws.maas(&["train", "--data", "bars", "--arch", "cnn", "--epochs", "1"]);
    let out = cmd.env("MAAS_MAX_ISA", "sse9").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("MAAS_MAX_ISA=\"sse9\" is not one of avx512, avx2, portable"),
        "{err}"
    );
    assert!(!ws.path("checkpoints").exists());
}
