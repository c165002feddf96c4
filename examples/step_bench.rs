//! Times the training step alone (no data loading, no evaluation): the figure behind issue #4's
//! training ratios, steadier than a whole run on a noisy machine.
//!
//!     cargo run --example step_bench -- [BATCH] [STEPS] [ROUNDS]
//!
//! Prints the best and the median time per step over the rounds, and samples/s of the best.
use std::time::Instant;

use burn::prelude::*;
use maas::adam::{AdamConfig, AdamState};
use maas::device::DeviceKind;
use maas::model::{Weights, batch_tensors};
use maas::sharded::{ShardedTrainer, shards_for};
use rand::{RngExt, SeedableRng, rngs::StdRng};

const CLASSES: usize = 10;
const HIDDEN: usize = 64;
const STRIDE: usize = 3072 + 16;

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

fn main() {
    let batch = arg(1, 32).max(1);
    let steps = arg(2, 300).max(1);
    let rounds = arg(3, 9).max(1);
    let device = Device::flex();
    let weights = Weights::init(HIDDEN, CLASSES, 1);
    let state = AdamState::zeros_like(&weights);
    let trainer = ShardedTrainer::new(
        &weights,
        &state,
        AdamConfig::new(1e-3),
        shards_for(DeviceKind::Cpu),
        &device,
    );
    let mut trainer = trainer.unwrap_or_else(|e| {
        eprintln!("step_bench: {e:#}");
        std::process::exit(1)
    });
    // A few distinct batches, cycled, so the caches see fresh inputs as in training.
    let mut rng = StdRng::seed_from_u64(7);
    let batches: Vec<(Vec<f32>, Vec<i64>)> = (0..16)
        .map(|_| {
            let x = (0..batch * STRIDE).map(|_| rng.random()).collect();
            let labels = (0..batch)
                .map(|_| rng.random_range(0..CLASSES as i64))
                .collect();
            (x, labels)
        })
        .collect();
    let mut times = Vec::new();
    rayon::scope(|_| {
        for round in 0..rounds + 1 {
            let started = Instant::now();
            for s in 0..steps {
                let (x, labels) = &batches[s % batches.len()];
                let (x, y, l) = batch_tensors(x.clone(), labels.clone(), CLASSES, &device);
                let stats = trainer.step(x, y, l);
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
        "batch {batch}: best {:.1} us/step, median {:.1} us/step, {:.0} samples/s (best)",
        best * 1e6,
        times[times.len() / 2] * 1e6,
        batch as f64 / best
    );
}
