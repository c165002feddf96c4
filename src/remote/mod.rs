//! Calling a deployed model: `predict`, `eval` and `explain` with `--url`. The client speaks
//! plain Open Inference Protocol (KServe v2 REST), so it works with any server that serves the
//! ONNX export (Triton, KServe's Python model server) as well as with `maas serve`.
//!
//! [`client`] is HTTP (ureq, rustls) and turns every failure into one line naming the URL;
//! [`tls`] the TLS both it and `bench` use;
//! [`protocol`] the v2 messages as a client writes and reads them; [`model`] a deployed model
//! that gives probabilities for a batch of inputs ([`crate::infer::predict::Probabilities`]), as a model
//! file does, and explanations through `/v1/explain`.

pub mod client;
pub mod model;
pub mod protocol;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

pub use self::client::Client;
pub use self::model::RemoteModel;

/// Where a deployed model is and how to reach it: what `--url` and its flags say.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The server's base URL (`http://host:port` or `https://...`).
    pub url: String,
    /// The model; `None`: the server's only model.
    pub model_name: Option<String>,
    /// The model's version; `None`: the server's choice.
    pub model_version: Option<String>,
    /// Sent as `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// PEM certificates to trust for `https://` (a self-signed server); `None`: the usual roots.
    pub cacert: Option<PathBuf>,
    /// The most one request may take, from connecting to the last byte of the answer.
    pub timeout: Duration,
    /// Class names for a server whose metadata gives none (one name a line).
    pub classes_file: Option<PathBuf>,
    /// Binary tensors (`Some(true)`), JSON tensors (`Some(false)`), or binary when the server
    /// lists the extension (`None`).
    pub binary: Option<bool>,
}
