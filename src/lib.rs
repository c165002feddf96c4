//! maas: train, export, predict and serve one CIFAR-10 image classifier.
//!
//! The binary, the tests and `examples/` all use this library. Data flows one way: bytes on disk
//! ([`data`]) become tensors on a device ([`device`]), go through the one model ([`model`]) and
//! come back to people as labelled probabilities ([`predict`]).
//!
//! Public is what the binary, the tests, `examples/` and `fuzz/` use; the rest is the crate's own.

// `unsafe` is a visible decision: allowed only in the modules that need it (SIMD in `fused`, the
// CPU's float mode in `subnormals`, libjpeg-turbo's C API in `data::jpeg`, the allocator's trim
// in `serve::memory`).
#![deny(unsafe_code)]

pub mod adam;
pub mod autodiff_step;
pub mod checkpoint;
pub mod cli;
pub mod cnn;
pub mod cnn_cpu;
pub mod container;
pub mod data;
pub mod device;
mod eval;
mod explain;
pub mod export;
mod fsutil;
#[allow(unsafe_code)]
mod fused;
mod migrate;
pub mod model;
mod onnx;
mod plots;
pub mod predict;
pub mod progress;
pub mod protocol;
pub mod remote;
pub mod serve;
pub mod sharded;
#[allow(unsafe_code)]
mod subnormals;
pub mod terminal;
pub mod train;
pub mod trainer;

/// The version written into every file maas makes, for provenance.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
