//! Bring your own model: a network maas does not have (a residual block), written with burn in
//! this one file, registered, then trained, checkpointed, exported, predicted with and served by
//! maas's own commands.
//!
//!     cargo run --example custom_model                     # the whole round trip, on generated data
//!     cargo run --example custom_model -- train --arch resnet ...   # any maas command
//!
//! With arguments this program *is* `maas`, with `--arch resnet` added: registering an
//! architecture is one call before [`maas::cli::entry::main`]. Without arguments it runs that
//! round trip on itself in a temporary folder (train 2 epochs on the CPU, export, `predict`,
//! `serve` and `predict --url` against it, which must answer as `predict` does; then an epoch on
//! a GPU where there is one), and exits non-zero if any step fails. Files it writes keep the architecture's name, so only a program
//! that registers it loads them; plain `maas` refuses them by that name.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use maas::model::{Architecture, Network, Trainable, Weights, glorot_uniform, register};

/// Channels of every convolution.
const WIDTH: usize = 16;
/// Values per image after the pooling: 16 channels of 8x8.
const FLAT: usize = WIDTH * 8 * 8;

/// A stride-2 convolution, one residual block (conv, ReLU, conv, plus its input, ReLU), a 2x2
/// max-pool and a dense layer: a layer maas does not have, in about twenty lines of burn.
#[derive(Module, Debug)]
pub struct TinyResNet {
    /// Conv 3x3, 3 -> 16 channels, stride 2: 32x32 becomes 16x16.
    stem: Conv2d,
    /// The block's first convolution, 16 -> 16.
    block_a: Conv2d,
    /// The block's second convolution, 16 -> 16, added to the block's input.
    block_b: Conv2d,
    /// Max-pool 2x2: 16x16 becomes 8x8.
    pool: MaxPool2d,
    /// Dense 1024 -> classes: the logits.
    output: Linear,
}

impl TinyResNet {
    fn new(classes: usize, device: &Device) -> Self {
        let conv = |from, stride| {
            Conv2dConfig::new([from, WIDTH], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            stem: conv(3, 2),
            block_a: conv(WIDTH, 1),
            block_b: conv(WIDTH, 1),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            output: LinearConfig::new(FLAT, classes).init(device),
        }
    }
}

impl Network for TinyResNet {
    /// Logits `[N, classes]` for preprocessed images `[N, 3072]` (channel-major).
    fn logits(&self, input: Tensor<2>) -> Tensor<2> {
        let n = input.dims()[0];
        let x = relu(self.stem.forward(input.reshape([n, 3, 32, 32])));
        let y = self.block_b.forward(relu(self.block_a.forward(x.clone())));
        let x = self.pool.forward(relu(x + y));
        self.output.forward(x.reshape([n, FLAT]))
    }
}

/// What maas needs to know of it.
struct TinyResNetArchitecture;

impl Architecture for TinyResNetArchitecture {
    fn name(&self) -> &'static str {
        "tiny-resnet-16"
    }
    fn flag(&self) -> &'static str {
        "resnet"
    }
    fn about(&self) -> &'static str {
        "examples/custom_model.rs: a stride-2 convolution, one residual block, max-pool, dense"
    }
    fn fixed_hidden(&self) -> Option<usize> {
        Some(WIDTH)
    }
    fn parameter_shapes(&self, _hidden: usize, classes: usize) -> Vec<(String, Vec<usize>)> {
        let conv = |name: &str, from: usize| {
            [
                (format!("{name}.weight"), vec![WIDTH, from, 3, 3]),
                (format!("{name}.bias"), vec![WIDTH]),
            ]
        };
        let mut shapes: Vec<_> = [
            conv("stem", 3),
            conv("block_a", WIDTH),
            conv("block_b", WIDTH),
        ]
        .into_iter()
        .flatten()
        .collect();
        shapes.push(("output.weight".into(), vec![FLAT, classes]));
        shapes.push(("output.bias".into(), vec![classes]));
        shapes
    }
    fn init_weights(&self, hidden: usize, classes: usize, seed: u64) -> Weights {
        glorot_uniform(self.parameter_shapes(hidden, classes), seed)
    }
    fn module(&self, _hidden: usize, classes: usize, device: &Device) -> Box<dyn Trainable> {
        Box::new(TinyResNet::new(classes, device))
    }
}

fn main() -> ExitCode {
    if let Err(e) = register(&TinyResNetArchitecture) {
        eprintln!("custom_model: {e:#}");
        return ExitCode::FAILURE;
    }
    if std::env::args_os().len() > 1 {
        return maas::cli::entry::main();
    }
    let dir = std::env::temp_dir().join(format!("maas-custom-model-{}", std::process::id()));
    let result = round_trip(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => {
            println!("custom_model: train, export, predict and serve all answered");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("custom_model: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// This program, as `maas` would be run.
fn myself() -> Command {
    Command::new(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("custom_model")))
}

/// This program with `args` on the CPU, as `maas --device cpu ARGS` would be run.
fn maas(args: &[&str]) -> Command {
    let mut command = myself();
    command.args(["--device", "cpu"]).args(args);
    command
}

/// Runs `maas ARGS` and returns its stdout; an error quotes its stderr.
fn run(args: &[&str]) -> Result<String> {
    let started = Instant::now();
    let out = maas(args).output().context("cannot run myself")?;
    if !out.status.success() {
        bail!(
            "`maas {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    eprintln!(
        "custom_model: maas {} ({:.1} s)",
        args[0],
        started.elapsed().as_secs_f64()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn round_trip(dir: &Path) -> Result<()> {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (data, checkpoints, model) = (path("data"), path("checkpoints"), path("model.maas"));
    // A small CIFAR-10-shaped set drawn from a seed: no network needed.
    maas::data::synthetic::write_cifar10_dir(&dir.join("data/cifar-10-batches-bin"), 100, 200, 1)?;
    let image = dir.join("image.png");
    let pixels = maas::data::synthetic::chw_to_hwc(&maas::data::synthetic::sample_image(3, 9));
    image::save_buffer(&image, &pixels, 32, 32, image::ExtendedColorType::Rgb8)
        .context("cannot write the test image")?;
    let image = image.to_string_lossy().into_owned();

    let summary = run(&[
        "train",
        "--arch",
        "resnet",
        "--epochs",
        "2",
        "--data",
        &data,
        "--checkpoints",
        &checkpoints,
        "--json",
        "--quiet",
    ])?;
    let summary: serde_json::Value = serde_json::from_str(&summary).context("train --json")?;
    let accuracy = summary["final_test_accuracy"].as_f64().unwrap_or(-1.0);
    if !(0.0..=1.0).contains(&accuracy) {
        bail!("train printed no test accuracy: {summary}");
    }
    for file in ["best.ckpt", "last.ckpt", "epoch-002.ckpt", "run.json"] {
        if !Path::new(&checkpoints).join(file).is_file() {
            bail!("training left no {file}");
        }
    }
    run(&[
        "export",
        "--checkpoints",
        &checkpoints,
        "-o",
        &model,
        "--quiet",
    ])?;
    let local = run(&["predict", "--model", &model, "--json", &image])?;

    let mut server = Serve::start(&model)?;
    let remote = run(&["predict", "--url", &server.url, "--json", &image]);
    server.stop();
    let remote = remote?;
    let answer = |json: &str| -> Result<(String, f64)> {
        let value: serde_json::Value = serde_json::from_str(json).context("predict --json")?;
        let first = &value["predictions"][0];
        match (first["label"].as_str(), first["probability"].as_f64()) {
            (Some(label), Some(p)) => Ok((label.to_string(), p)),
            _ => bail!("predict printed no answer: {value}"),
        }
    };
    let (local, remote) = (answer(&local)?, answer(&remote)?);
    if local.0 != remote.0 || (local.1 - remote.1).abs() > 1e-4 {
        bail!("`predict` answered {local:?} but `predict --url` (serve) answered {remote:?}");
    }
    eprintln!(
        "custom_model: test accuracy {accuracy:.3}; local and served answers agree: {} ({:.3})",
        remote.0, remote.1
    );
    on_a_gpu(&data, &path("gpu-checkpoints"))
}

/// One short epoch on a GPU where the machine has one (a software one included: llvmpipe's
/// Vulkan runs it here), through the same autodiff; without any, says so.
fn on_a_gpu(data: &str, checkpoints: &str) -> Result<()> {
    let args = [
        "--device",
        "gpu",
        "train",
        "--arch",
        "resnet",
        "--epochs",
        "1",
        "--limit",
        "256",
        "--data",
        data,
        "--checkpoints",
        checkpoints,
        "--quiet",
    ];
    let out = myself().args(args).output().context("cannot run myself")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("no GPU adapter found") {
        eprintln!("custom_model: no GPU here: the GPU leg is skipped");
        return Ok(());
    }
    if !out.status.success() || !Path::new(checkpoints).join("best.ckpt").is_file() {
        bail!(
            "`maas --device gpu train` failed ({}): {}",
            out.status,
            stderr.trim()
        );
    }
    eprintln!("custom_model: trained an epoch on the GPU too");
    Ok(())
}

/// `maas serve` of a model on a free port, stopped when dropped.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(model: &str) -> Result<Self> {
        let mut child = maas(&["serve", "--model", model, "--port", "0", "--no-grpc"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start serve")?;
        let stderr = child.stderr.take().context("serve's stderr")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = BufReader::new(stderr).lines();
        let mut said = Vec::new();
        while Instant::now() < deadline {
            let Some(line) = lines.next().transpose()? else {
                break;
            };
            if let Some(rest) = line.strip_prefix("listening on ") {
                let url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                // Keep reading stderr so that the server never blocks on a full pipe.
                std::thread::spawn(move || lines.for_each(drop));
                return Ok(Self { child, url });
            }
            said.push(line);
        }
        let _ = child.kill();
        bail!("serve never said where it listens: {}", said.join(" / "))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
    }
}
