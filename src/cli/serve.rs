//! `maas serve`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use clap::builder::RangedU64ValueParser;

use super::Context;
use super::args::ModelArgs;
use crate::serve::{self, ServeConfig, Source, TlsFiles};

/// `maas serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Which model to use.
    #[command(flatten)]
    model: ModelArgs,
    /// Serve every model of this repository instead of one model: DIR/NAME/VERSION/model.maas
    /// (Triton's layout, positive integer versions), each version at
    /// /v2/models/NAME/versions/VERSION and the highest at /v2/models/NAME. SIGHUP reads it
    /// again.
    #[arg(
        long,
        value_name = "DIR",
        env = "MAAS_REPOSITORY",
        conflicts_with = "model"
    )]
    repository: Option<PathBuf>,
    /// Turn on the repository routes (POST /v2/repository/index, .../models/NAME/load and
    /// .../unload) for requests that send `Authorization: Bearer KEY`; without it they answer
    /// 403. Separate from the API keys.
    #[arg(
        long,
        value_name = "KEY",
        env = "MAAS_ADMIN_KEY",
        hide_env_values = true
    )]
    admin_key: Option<String>,
    /// Address to listen on; 0.0.0.0 listens on every interface.
    #[arg(long, default_value = "127.0.0.1", env = "MAAS_HOST")]
    host: String,
    /// Port to listen on (0: any free port, printed on stderr).
    #[arg(long, default_value_t = 8080, env = "MAAS_PORT")]
    port: u16,
    /// Port of the gRPC endpoint (KServe's v2 GRPCInferenceService, on --host, with the same
    /// models, limits, keys and TLS); 0: any free port, printed on stderr as --port's is.
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 8081,
        env = "MAAS_GRPC_PORT"
    )]
    grpc_port: u16,
    /// Serve no gRPC endpoint (REST only); --grpc-port is then ignored.
    #[arg(long, env = "MAAS_NO_GRPC", value_parser = clap::builder::FalseyValueParser::new())]
    no_grpc: bool,
    /// The model's name in the v2 routes (/v2/models/NAME/...); with --repository, the model
    /// /v1/predict and /v1/explain use (else the repository's only model).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "maas",
        env = "MAAS_MODEL_NAME",
        value_parser = model_name
    )]
    model_name: String,
    /// Most images in one forward pass when concurrent requests are batched together.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_batch: u32,
    /// Longest a request waits for others to fill a batch, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2)]
    max_wait_ms: u64,
    /// Most requests waiting for the model; beyond it requests get 503.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_queue: u32,
    /// Largest request body in bytes; beyond it requests get 413.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    max_body_bytes: usize,
    /// Most pixels one request may decode, all its images together (as their headers declare them;
    /// a progressive JPEG also counts the coefficients of its whole image, 3 bytes a pixel), and
    /// most pixels decoded at once across the server; beyond it requests get 413.
    #[arg(long, value_name = "PIXELS", default_value_t = serve::DEFAULT_MAX_DECODE_PIXELS, value_parser = clap::value_parser!(u64).range(1..))]
    max_decode_pixels: u64,
    /// Longest a request may take, in milliseconds, reading its body included.
    #[arg(long, value_name = "MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Require `Authorization: Bearer KEY` on every route but health and metrics.
    #[arg(long, value_name = "KEY", env = "MAAS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "PATH", env = "MAAS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", env = "MAAS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A file of accepted API keys, one per line.
    #[arg(long, value_name = "PATH", env = "MAAS_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
}

/// A model name that can stand in `/v2/models/NAME` as it is; anything else would leave a server
/// whose every v2 request fails.
fn model_name(s: &str) -> Result<String, String> {
    serve::check_model_name(s)?;
    Ok(s.to_string())
}

impl ServeArgs {
    /// The server's configuration, serving `source`.
    fn into_config(self, source: Source) -> ServeConfig {
        ServeConfig {
            source,
            admin_key: self.admin_key,
            host: self.host,
            port: self.port,
            grpc_port: (!self.no_grpc).then_some(self.grpc_port),
            model_name: self.model_name,
            max_batch: self.max_batch as usize,
            max_wait: Duration::from_millis(self.max_wait_ms),
            max_queue: self.max_queue as usize,
            max_body_bytes: self.max_body_bytes,
            max_decode_pixels: self.max_decode_pixels,
            timeout: Duration::from_millis(self.timeout_ms),
            api_key: self.api_key,
            api_key_file: self.api_key_file,
            // clap's `requires` makes these come in pairs.
            tls: self
                .tls_cert
                .zip(self.tls_key)
                .map(|(cert, key)| TlsFiles { cert, key }),
        }
    }
}

pub(super) fn run(args: ServeArgs, cx: &Context) -> Result<u8> {
    let source = match &args.repository {
        Some(dir) if !dir.is_dir() => {
            anyhow::bail!("--repository {}: not a folder", dir.display())
        }
        Some(dir) => Source::Repository(dir.clone()),
        None => Source::File {
            name: args.model_name.clone(),
            path: serve::model_file(&args.model.resolve(&cx.reporter)?)?,
        },
    };
    let selected = cx.select_device()?;
    serve::run(&args.into_config(source), &selected, &cx.reporter)?;
    Ok(0)
}
