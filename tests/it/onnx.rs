//! `maas export --format onnx` is a standard ONNX model: onnxruntime, an independent runtime, loads
//! it and gives the same probabilities as `maas predict` (to 1e-5), at any batch size, for every
//! architecture.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use std::process::Command;

use common::{Look, Workspace, save_image};
use maas::data::preprocess::load_image_file;
use maas::data::synthetic;

/// Runs the model with onnxruntime on the inputs in `inputs.f32` ([N,3,32,32] little-endian),
/// whole and one image at a time; prints names, shapes, metadata and both outputs as JSON.
const RUN_ONNXRUNTIME: &str = r#"
import json, sys
import numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.fromfile(sys.argv[2], dtype="<f4").reshape(-1, 3, 32, 32)
name = session.get_inputs()[0].name
whole = session.run(None, {name: x})[0]
single = np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
print(json.dumps({
    "input": [name, [str(d) for d in session.get_inputs()[0].shape]],
    "output": [session.get_outputs()[0].name, [str(d) for d in session.get_outputs()[0].shape]],
    "metadata": session.get_modelmeta().custom_metadata_map,
    "whole": whole.tolist(),
    "single": single.tolist(),
}))
"#;

fn python() -> String {
    std::env::var("MAAS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// proto/onnx.proto, the schema build.rs compiles the written messages from, and its licence are
/// the `onnx` package's (PyPI) own files, unchanged.
#[test]
fn the_vendored_onnx_proto_is_the_onnx_package_s() {
    let root = env!("CARGO_MANIFEST_DIR");
    let run = Command::new(python())
        .arg(format!("{root}/proto/generate.py"))
        .args(["--check", "onnx.proto", "LICENSE-onnx"])
        .output()
        .expect("python3 runs (.ci/run installs onnx)");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn onnxruntime_agrees_with_maas_predict() {
    onnxruntime_agrees_with_maas_predict_on(&[]);
}

/// The CNN's graph: Conv, Relu, MaxPool, Flatten, Gemm, Softmax.
#[test]
fn onnxruntime_agrees_with_maas_predict_on_a_cnn() {
    onnxruntime_agrees_with_maas_predict_on(&["--arch", "cnn", "--limit", "48"]);
}

/// Trains a model with `train_args`, exports it as ONNX, and holds onnxruntime's answers to
/// `maas predict`'s.
fn onnxruntime_agrees_with_maas_predict_on(train_args: &[&str]) {
    let ws = Workspace::new(20, 50);
    ws.train(train_args);
    let out = ws.ok(&["export", "--format", "onnx", "--json"]);
    let exported: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(exported["format"], "onnx");
    assert!(
        ws.path("model.onnx").is_file(),
        "model.onnx is the default output of --format onnx"
    );

    let mut files = Vec::new();
    let mut inputs = Vec::new();
    for i in 0..5 {
        let name = format!("img{i}.png");
        save_image(
            &synthetic::sample_image(i * 2, 7),
            &ws.path(&name),
            Look::Rgb,
            24 + 4 * i as u32,
        );
        inputs.extend(load_image_file(&ws.path(&name)).unwrap());
        files.push(name);
    }
    let bytes: Vec<u8> = inputs.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(ws.path("inputs.f32"), bytes).unwrap();

    let run = Command::new(python())
        .args(["-c", RUN_ONNXRUNTIME, "model.onnx", "inputs.f32"])
        .current_dir(ws.path(""))
        .output()
        .expect("python3 runs (.ci/run installs onnxruntime and numpy)");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "onnxruntime failed: {stderr}");
    let ort: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        ort["input"],
        serde_json::json!(["input", ["N", "3", "32", "32"]])
    );
    assert_eq!(
        ort["output"],
        serde_json::json!(["probabilities", ["N", "10"]])
    );
    let classes: Vec<String> =
        serde_json::from_str(ort["metadata"]["classes"].as_str().unwrap()).unwrap();
    assert_eq!(classes, synthetic::CLASS_NAMES);
    assert!(
        ort["metadata"]["provenance"]
            .as_str()
            .unwrap()
            .contains("best.ckpt")
    );

    let ours = common::predict_probabilities(&ws, "checkpoints/best.ckpt", &files);
    for (i, row) in ours.iter().enumerate() {
        for (k, &p) in row.iter().enumerate() {
            for batch in ["whole", "single"] {
                let theirs = ort[batch][i][k].as_f64().unwrap();
                assert!(
                    (f64::from(p) - theirs).abs() < 1e-5,
                    "image {i} class {k} ({batch}): maas {p} vs onnxruntime {theirs}"
                );
            }
        }
    }
}
