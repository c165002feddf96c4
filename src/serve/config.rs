//! What `maas serve` is asked to do: its own file so that the parts of the server (the shared
//! state, the listeners) can read it without importing the module that puts them together.

use std::path::PathBuf;
use std::time::Duration;

use super::repository::Source;

/// What `maas serve` serves, where, and within which limits: built once from the command line.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The model file or the model repository.
    pub source: Source,
    /// Address to listen on.
    pub host: String,
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// Port of the gRPC endpoint, on the same host (0: any free port); `None`: no gRPC.
    pub grpc_port: Option<u16>,
    /// The model `/v1/predict` and `/v1/explain` use (with a repository: when it holds one by
    /// that name).
    pub model_name: String,
    /// Most images in one forward pass.
    pub max_batch: usize,
    /// Longest a request waits for others to fill a batch.
    pub max_wait: Duration,
    /// Most requests waiting for the model; beyond it 503.
    pub max_queue: usize,
    /// Largest request body in bytes; beyond it 413.
    pub max_body_bytes: usize,
    /// Most pixels one request may decode (as its images' headers declare them), beyond it 413;
    /// also the most decoded at once across the server.
    pub max_decode_pixels: u64,
    /// Longest a request may take, reading its body included.
    pub timeout: Duration,
    /// An accepted API key.
    pub api_key: Option<String>,
    /// A file of accepted API keys, one per line.
    pub api_key_file: Option<PathBuf>,
    /// Serve HTTPS with these files.
    pub tls: Option<TlsFiles>,
    /// The key of the repository routes (load, unload, index); without one they answer 403.
    pub admin_key: Option<String>,
}

/// The PEM files of an HTTPS server.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}
