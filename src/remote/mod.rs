//! Calling a deployed model: `predict`, `eval` and `explain` with `--url`. The client speaks
//! plain Open Inference Protocol (KServe v2 REST), so it works with any server that serves the
//! ONNX export (Triton, KServe's Python model server) as well as with `maas serve`.
//!
//! [`client`] is HTTP (ureq, rustls) and turns every failure into one line naming the URL;
//! [`url`] reads the server's URL and [`tls`] makes the TLS, for both it and [`bench`] (the load
//! generator, on hyper);
//! [`protocol`] the v2 messages as a client writes and reads them; [`model`] a deployed model
//! that gives probabilities for a batch of inputs ([`crate::infer::predict::Probabilities`]), as a model
//! file does, and explanations through `/v1/explain`.

pub mod bench;
pub mod client;
mod config;
pub mod model;
pub mod protocol;
pub mod tls;
pub mod url;

pub use self::client::Client;
pub use self::config::RemoteConfig;
pub use self::model::RemoteModel;
