//! Times the training step alone (no data loading, no evaluation): the figure behind issue #4's
//! training ratios, steadier than a whole run on a noisy machine.
//!
//!     cargo run --example step_bench -- [BATCH] [STEPS] [ROUNDS] [mlp|cnn|mlp-autodiff|cnn-autodiff]
//!
//! Prints the best and the median time per step over the rounds, and samples/s of the best.
//! `cnn` is the CNN's step as `maas train --arch cnn` takes it on the CPU (`src/train/cpu/cnn.rs`);
//! `cnn-autodiff` the same network through burn's autodiff, as it trained before.
use std::time::Instant;

use burn::prelude::*;
use maas::device::DeviceKind;
use maas::model::{Arch, ModelConfig};
use maas::train::adam::{AdamConfig, AdamState};
use maas::train::cpu::sharded::shards_for;
use maas::train::step::{Batch, TrainStep};
use maas::train::trainer::{Start, autodiff_trainer, trainer};
use rand::{RngExt, SeedableRng, rngs::StdRng};

const CLASSES: usize = 10;
const HIDDEN: usize = 64;

/// The `n`th command-line argument as a number, or `default` when it is absent.
fn arg(n: usize, default: usize) -> usize {
    match std::env::args().nth(n) {
        None => default,
        Some(a) => a.parse().unwrap_or_else(|_| {
            eprintln!("step_bench: `{a}` is not a whole number");
            std::process::exit(2)
        }),
    }
}

fn setup(name: &str, device: &Device) -> anyhow::Result<Box<dyn TrainStep>> {
    let classes: Vec<String> = (0..CLASSES).map(|c| c.to_string()).collect();
    let flag = name.strip_suffix("-autodiff").unwrap_or(name);
    let Some(arch) = Arch::from_flag(flag) else {
        anyhow::bail!("unknown step `{name}` (mlp, cnn, or either with -autodiff)");
    };
    let config = ModelConfig::of(arch, HIDDEN, classes);
    let weights = config.init_weights(1)?;
    let state = AdamState::zeros_like(&weights);
    let start = Start {
        config: &config,
        weights: &weights,
        state: &state,
        adam: AdamConfig::new(1e-3),
        shards: shards_for(DeviceKind::Cpu),
        device,
    };
    if name.ends_with("-autodiff") {
        autodiff_trainer(&start)
    } else {
        trainer(&start)
    }
}

fn main() {
    let batch = arg(1, 32).max(1);
    let steps = arg(2, 300).max(1);
    let rounds = arg(3, 9).max(1);
    let name = std::env::args().nth(4).unwrap_or_else(|| "mlp".into());
    let device = Device::flex();
    let mut trainer = setup(&name, &device).unwrap_or_else(|e| {
        eprintln!("step_bench: {e:#}");
        std::process::exit(1)
    });
    // A few distinct batches, cycled, so the caches see fresh inputs as in training.
    let mut rng = StdRng::seed_from_u64(7);
    let stride = trainer.row_stride();
    let batches: Vec<Batch> = (0..16)
        .map(|_| Batch {
            inputs: (0..batch * stride).map(|_| rng.random()).collect(),
            stride,
            labels: (0..batch)
                .map(|_| rng.random_range(0..CLASSES as i64))
                .collect(),
            classes: CLASSES,
        })
        .collect();
    let mut times = Vec::new();
    rayon::scope(|_| {
        for round in 0..rounds + 1 {
            let started = Instant::now();
            for s in 0..steps {
                let stats = trainer
                    .step(batches[s % batches.len()].clone())
                    .unwrap_or_else(|e| {
                        eprintln!("step_bench: {e:#}");
                        std::process::exit(1)
                    });
                std::hint::black_box(stats);
            }
            // The first round warms up.
            if round > 0 {
                times.push(started.elapsed().as_secs_f64() / steps as f64);
            }
        }
    });
    times.sort_by(f64::total_cmp);
    let best = times[0];
    println!(
        "{name}, batch {batch}: best {:.1} us/step, median {:.1} us/step, {:.0} samples/s (best)",
        best * 1e6,
        times[times.len() / 2] * 1e6,
        batch as f64 / best
    );
}
