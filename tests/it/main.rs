//! The integration tests, one binary with a module per area (as ripgrep and cargo do): the
//! dependency tree is linked once, not once per file. `cargo test --test it` runs them all,
//! `cargo test --test it remote::` one area. Each test runs the real `maas` binary in a scratch
//! folder (`common`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod common;

mod arch;
mod bad_input;
mod cli;
mod crash;
mod deploy;
mod download;
mod folder;
mod gpu;
mod grpc;
mod hardening_client;
mod hardening_files;
mod hardening_grpc;
mod hardening_inputs;
mod hardening_serve;
mod hardening_train;
mod migration;
mod onnx;
mod recipe;
mod remote;
mod repository;
mod serve;
mod stress;
