//! The GPU path (burn's wgpu backend), run for real: on a software Vulkan device (llvmpipe) where
//! the machine has no GPU. `.ci/run` installs it. Kept to a handful of steps: llvmpipe is slow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use crate::common;

use common::{Look, Workspace, save_image};
use maas::artifact::export::load_model;
use maas::data::synthetic;
use maas::device::{DeviceChoice, DeviceKind, select};
use maas::infer::predict::Classifier;

#[test]
fn train_and_predict_on_the_gpu() {
    let ws = Workspace::new(8, 20);
    let (code, out, err) = ws.run(&[
        "--device",
        "gpu",
        "train",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--limit",
        "40",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("device: gpu"), "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(summary["device"].as_str().unwrap().starts_with("gpu"));
    assert!(summary["final_train_loss"].as_f64().unwrap().is_finite());
    save_image(
        &synthetic::sample_image(4, 1),
        &ws.path("x.png"),
        Look::Rgb,
        32,
    );
    let (code, out, err) = ws.run(&["--device", "gpu", "predict", "--json", "x.png"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["predictions"].as_array().unwrap().len(), 1);
}

#[test]
fn cpu_and_gpu_give_the_same_probabilities_for_the_same_weights() {
    let ws = Workspace::new(10, 20);
    ws.train(&[]);
    let model = load_model(&ws.path("checkpoints/best.ckpt")).unwrap();
    let gpu_device = select(DeviceChoice::Gpu)
        .expect("a wgpu adapter (llvmpipe at least): run .ci/run to install it");
    assert_eq!(gpu_device.kind, DeviceKind::Gpu);
    assert_cpu_and_gpu_agree(&model, 10);
}

/// The cnn trains through autodiff on the GPU, and its probabilities there are the CPU's.
#[test]
fn a_cnn_trains_on_the_gpu_and_agrees_with_the_cpu() {
    let ws = Workspace::new(4, 10);
    let (code, out, err) = ws.run(&[
        "--device",
        "gpu",
        "train",
        "--arch",
        "cnn",
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(summary["final_train_loss"].as_f64().unwrap().is_finite());
    let model = load_model(&ws.path("checkpoints/best.ckpt")).unwrap();
    assert_cpu_and_gpu_agree(&model, 4);
}

/// Sample images of the first `images` classes give the same probabilities on the CPU and the
/// GPU, to 1e-5.
fn assert_cpu_and_gpu_agree(model: &maas::artifact::export::LoadedModel, images: usize) {
    let mut inputs = Vec::new();
    for class in 0..images {
        let mut chw = Vec::new();
        maas::data::preprocess::normalize(&synthetic::sample_image(class, 5), &mut chw);
        inputs.extend(chw);
    }
    let cpu = Classifier::new(model, &select(DeviceChoice::Cpu).unwrap().device)
        .probabilities(&inputs)
        .unwrap();
    let gpu = Classifier::new(model, &select(DeviceChoice::Gpu).unwrap().device)
        .probabilities(&inputs)
        .unwrap();
    assert_eq!(cpu.len(), images * 10);
    for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        assert!((c - g).abs() < 1e-5, "probability {i}: cpu {c} vs gpu {g}");
    }
}
