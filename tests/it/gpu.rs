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

/// A workspace with a trained model (on the CPU) and `bad.png`, which is no image: `predict` on
/// it selects the device, says which, then fails on the file, without running the model.
fn workspace_to_select_in() -> Workspace {
    let ws = Workspace::new(4, 10);
    ws.ok(&["train", "--epochs", "1", "--quiet"]);
    ws.ok(&["export", "-o", "model.maas", "--quiet"]);
    std::fs::write(ws.path("bad.png"), b"not an image").unwrap();
    ws
}

/// `--device gpu` through the CLI with `env` set: (stderr lines, exit code).
fn select_gpu_with(ws: &Workspace, env: &[(&str, &str)]) -> (Vec<String>, i32) {
    let out = ws
        .maas(&[
            "--device",
            "gpu",
            "predict",
            "--model",
            "model.maas",
            "bad.png",
        ])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    (
        err.lines().map(str::to_string).collect(),
        out.status.code().unwrap_or(-1),
    )
}

/// Vulkan is preferred where it exists (here llvmpipe's, which mesa-vulkan-drivers installs),
/// though OpenGL offers the same llvmpipe: wgpu's GL backend deadlocks under load.
#[test]
fn the_gpu_is_reached_through_vulkan_where_vulkan_exists() {
    let gpu = select(DeviceChoice::Gpu).expect("a wgpu adapter: run .ci/run to install llvmpipe");
    assert!(
        gpu.description.contains(", Vulkan, "),
        "{}",
        gpu.description
    );
    let ws = workspace_to_select_in();
    let (lines, code) = select_gpu_with(&ws, &[]);
    assert_eq!(code, 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("device: gpu (") && lines[0].contains(", Vulkan, "),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("notice")), "{lines:#?}");
}

/// Without Vulkan (its loader pointed at no driver), the machine's OpenGL is used, with a notice
/// on stderr that says so.
#[test]
fn opengl_is_used_only_without_vulkan_and_with_a_notice() {
    let ws = workspace_to_select_in();
    let (lines, code) = select_gpu_with(&ws, &[("VK_ICD_FILENAMES", "/nonexistent/icd.json")]);
    assert_eq!(code, 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("maas: notice: no Vulkan, Metal or DX12 adapter found; using OpenGL"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("device: gpu (") && lines[1].contains(", OpenGL, "),
        "{lines:#?}"
    );
}

/// A backend that fails to start (here wgpu's runtime refusing its settings) is one line naming
/// the device and the way out, exit 1: no panic, no "internal error".
#[test]
fn a_gpu_that_fails_to_start_is_one_line_naming_the_device() {
    let ws = workspace_to_select_in();
    let (lines, code) = select_gpu_with(&ws, &[("CUBECL_WGPU_MAX_TASKS", "0")]);
    assert_eq!(code, 1, "{lines:#?}");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("maas: error: --device gpu: gpu (")
            && lines[0].contains(", Vulkan, ")
            && lines[0].contains("failed to start")
            && lines[0].ends_with("use --device cpu"),
        "{lines:#?}"
    );
}
