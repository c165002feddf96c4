//! What `--url` and its flags say: its own file so that the client's parts read it without
//! importing the module that gathers them.

use std::path::PathBuf;
use std::time::Duration;

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

impl RemoteConfig {
    /// The `Authorization` value every request carries when there is an API key.
    pub fn authorization(&self) -> Option<String> {
        self.api_key.as_ref().map(|key| format!("Bearer {key}"))
    }
}
