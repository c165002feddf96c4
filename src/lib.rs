//! maas: train, export, predict and serve one CIFAR-10 image classifier.
//!
//! The binary, the tests and `examples/` all use this library. Data flows one way: bytes on disk
//! ([`data`]) become tensors on a device ([`device`]), go through the one model ([`model`]) and
//! come back to people as labelled probabilities ([`infer::predict`]).
//!
//! Public is what the binary, the tests, `examples/` and `fuzz/` use; the rest is the crate's own.

// `unsafe` is a visible decision: allowed only where it is needed (`gemm` in `kernels::matmul`,
// SIMD in `train::cpu::fused`, the CPU's float mode in `train::cpu::subnormals`, libjpeg-turbo's
// C API in `data::jpeg`, the allocator's trim in `serve::memory`, one environment variable in
// `cli::entry`).
#![deny(unsafe_code)]

pub mod artifact;
pub mod cli;
pub mod data;
pub mod device;
mod fsutil;
pub mod infer;
pub(crate) mod kernels;
pub mod model;
mod plots;
pub mod progress;
pub mod protocol;
pub mod remote;
pub mod serve;
pub mod terminal;
pub mod train;

/// The version written into every file maas makes, for provenance.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
