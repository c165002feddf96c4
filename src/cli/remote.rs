//! `--url` and its flags, shared by `predict`, `eval` and `explain` (and `bench`): a model
//! deployed behind a v2 server instead of a model file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, ValueEnum};

use crate::remote::RemoteConfig;

/// A deployed model for `predict`, `eval` and `explain`: the server, and how to read its answers.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Calling a deployed model")]
pub struct RemoteArgs {
    /// The server and the model.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Class names, one a line, for a server whose metadata gives none [default: the server's,
    /// else the class index].
    #[arg(long, value_name = "FILE")]
    pub classes: Option<PathBuf>,
    /// How tensors travel: binary (the binary tensor data extension), json, or auto: binary when
    /// the server's metadata (GET /v2) lists the extension.
    #[arg(long, value_enum, value_name = "HOW", default_value_t = TensorsFlag::Auto)]
    pub tensors: TensorsFlag,
}

/// Where a deployed model is and how to reach it (`predict`, `eval`, `explain`, `bench`).
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Use the model deployed behind this URL (a server speaking the Open Inference Protocol,
    /// KServe v2: maas serve, Triton, KServe) instead of a model file, with the same output.
    /// Images are preprocessed here and sent as FP32 [N,3,32,32].
    #[arg(long, value_name = "URL", env = "MAAS_URL")]
    pub url: Option<String>,
    /// The deployed model's name [default: the server's only model].
    #[arg(long, value_name = "NAME")]
    pub model_name: Option<String>,
    /// The deployed model's version [default: the server's choice].
    #[arg(long, value_name = "VERSION")]
    pub model_version: Option<String>,
    /// The API key the server wants, sent as "Authorization: Bearer KEY".
    #[arg(
        long,
        value_name = "KEY",
        env = "MAAS_API_KEY",
        hide_env_values = true,
        conflicts_with = "api_key_file"
    )]
    pub api_key: Option<String>,
    /// A file whose first line is the API key (keeps the key out of the process list).
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// PEM certificates to trust for an https:// URL, such as a server's self-signed certificate
    /// [default: the usual public roots].
    #[arg(long, value_name = "PEM", env = "MAAS_CACERT")]
    pub cacert: Option<PathBuf>,
    /// The most one request may take, from connecting to the end of the answer, in
    /// milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
}

/// `--tensors`: how infer requests carry their tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TensorsFlag {
    /// Binary when the server lists the binary tensor data extension, else JSON.
    Auto,
    /// Raw little-endian floats after a JSON header.
    Binary,
    /// Numbers in JSON.
    Json,
}

impl RemoteArgs {
    /// The deployed model to call, when `--url` names one.
    pub fn config(&self) -> Result<Option<RemoteConfig>> {
        let Some(mut config) = self.server.config()? else {
            return Ok(None);
        };
        config.classes_file = self.classes.clone();
        config.binary = match self.tensors {
            TensorsFlag::Auto => None,
            TensorsFlag::Binary => Some(true),
            TensorsFlag::Json => Some(false),
        };
        Ok(Some(config))
    }
}

impl ServerArgs {
    /// The server to call, when `--url` names one.
    pub fn config(&self) -> Result<Option<RemoteConfig>> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let api_key = match (&self.api_key, &self.api_key_file) {
            (_, Some(path)) => Some(read_key(path)?),
            (Some(key), None) => {
                Some(check_key(key).map_err(|why| anyhow!("--api-key (or MAAS_API_KEY): {why}"))?)
            }
            (None, None) => None,
        };
        Ok(Some(RemoteConfig {
            url: url.clone(),
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone(),
            api_key,
            cacert: self.cacert.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
            classes_file: None,
            binary: None,
        }))
    }
}

/// The first line of `--api-key-file`. What is wrong with the key is said here, naming the
/// file: sent as it is, the server or the HTTP library would be blamed for it.
fn read_key(path: &std::path::Path) -> Result<String> {
    let shown = path.display();
    let bytes = crate::fsutil::read_regular(path, 64 << 10)
        .with_context(|| format!("--api-key-file {shown}"))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        anyhow!("--api-key-file {shown}: not text (UTF-8): {e}; an API key is one line of printable ASCII")
    })?;
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(key) => check_key(key).map_err(|why| anyhow!("--api-key-file {shown}: {why}")),
        None => bail!("--api-key-file {shown}: holds no API key"),
    }
}

/// A key that can stand in an `Authorization` header as it is: printable ASCII.
fn check_key(key: &str) -> Result<String, String> {
    match key.char_indices().find(|(_, c)| !(' '..='~').contains(c)) {
        None => Ok(key.to_string()),
        Some((at, c)) => Err(format!(
            "the API key holds {:?} at byte {at}: an API key is printable ASCII, as HTTP headers carry",
            c
        )),
    }
}
