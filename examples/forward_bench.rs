//! Times the cnn's inference on the CPU: burn's `Cnn::forward` against the host forward
//! (`src/model/cnn_host.rs`) on the same weights and images, and the model `predict`, `eval` and
//! `serve` hold (the host forward behind burn tensors in and out).
//!
//!     cargo run --features turbojpeg --example forward_bench -- [ROUNDS] [BATCH...]
//!
//! Batches 1, 32 and 1000 when none is given, 7 rounds (after one to warm up). Prints, per batch,
//! the best and the median time per image of each, and burn's time over the host's.
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::TensorData;
use maas::data::preprocess::INPUT_LEN;
use maas::model::cnn::{Cnn, DENSE, init_weights};
use maas::model::cnn_host::HostCnn;
use maas::model::{Arch, Model, ModelConfig, load_weights, read_f32};
use rand::{RngExt, SeedableRng, rngs::StdRng};

const CLASSES: usize = 10;

/// Best and median seconds per image of `run` over `rounds` rounds (after one to warm up), each
/// round calling it enough times to cover a few hundred images.
fn time(rounds: usize, batch: usize, mut run: impl FnMut()) -> (f64, f64) {
    let calls = (256 / batch).max(1);
    let mut times = Vec::new();
    for round in 0..=rounds {
        let started = Instant::now();
        for _ in 0..calls {
            run();
        }
        if round > 0 {
            times.push(started.elapsed().as_secs_f64() / (calls * batch) as f64);
        }
    }
    times.sort_by(f64::total_cmp);
    (times[0], times[times.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| {
        a.parse::<usize>().unwrap_or_else(|_| {
            eprintln!("forward_bench: `{a}` is not a whole number");
            std::process::exit(2)
        })
    });
    let rounds = args.next().unwrap_or(7).max(1);
    let mut batches: Vec<usize> = args.map(|b| b.max(1)).collect();
    if batches.is_empty() {
        batches = vec![1, 32, 1000];
    }
    let device = Device::flex();
    let weights = init_weights(CLASSES, 1);
    let burn = load_weights(Cnn::new(CLASSES, &device), &weights)?;
    let host = HostCnn::new(&weights)?;
    let names = (0..CLASSES).map(|c| c.to_string()).collect();
    let config = ModelConfig::of(Arch::from_flag("cnn").expect("the cnn"), DENSE, names);
    let model = Model::from_weights(&config, &weights, &device)?;
    let mut rng = StdRng::seed_from_u64(7);
    println!(
        "threads: {}; per image, best / median of {rounds} rounds",
        rayon::current_num_threads()
    );
    for batch in batches {
        let x: Vec<f32> = (0..batch * INPUT_LEN).map(|_| rng.random()).collect();
        let tensor =
            Tensor::<2>::from_data(TensorData::new(x.clone(), [batch, INPUT_LEN]), &device);
        let (burn_best, burn_median) = time(rounds, batch, || {
            std::hint::black_box(read_f32(burn.forward(tensor.clone())).ok());
        });
        let (host_best, host_median) = time(rounds, batch, || {
            std::hint::black_box(host.logits(&x));
        });
        let (model_best, model_median) = time(rounds, batch, || {
            std::hint::black_box(read_f32(model.forward(tensor.clone())).ok());
        });
        let us = 1e6;
        println!(
            "batch {batch:>4}: burn {:>8.1} / {:>8.1} us, host {:>8.1} / {:>8.1} us, \
             model {:>8.1} / {:>8.1} us; burn / host {:.2}x (best), {:.2}x (median)",
            burn_best * us,
            burn_median * us,
            host_best * us,
            host_median * us,
            model_best * us,
            model_median * us,
            burn_best / host_best,
            burn_median / host_median,
        );
    }
    Ok(())
}
