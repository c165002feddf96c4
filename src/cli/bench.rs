//! `maas bench`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory, ValueEnum};

use super::remote::ServerArgs;
use super::{Cli, Context, print_json, print_stdout};
use crate::data::preprocess::MAX_FILE_BYTES;
use crate::remote::bench::{self, BenchConfig, BenchProtocol, Until};

/// `--protocol`: what each request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolFlag {
    /// The v2 infer route with binary tensor data (what Triton's and KServe's clients send).
    V2Binary,
    /// The v2 infer route with JSON tensors.
    V2Json,
    /// maas's /v1/predict with the image file as the body (the server decodes it).
    V1Image,
}

/// `maas bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent clients, one level each, comma-separated; each client holds one keep-alive
    /// connection and sends its next request when the last is answered.
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "1,8,64",
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    concurrency: Vec<u16>,
    /// How long each level runs, in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = super::args::seconds,
          conflicts_with = "requests")]
    duration: Duration,
    /// Run each level until this many requests are done, instead of for --duration.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// The image to send [default: a generated 32x32 PNG].
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// Images per request (copies of the image); v2 protocols only.
    #[arg(long, value_name = "B", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    batch: u16,
    /// What each request carries.
    #[arg(long, value_enum, default_value_t = ProtocolFlag::V2Binary)]
    protocol: ProtocolFlag,
    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    json: bool,
    /// The server (--url is required).
    #[command(flatten)]
    server: ServerArgs,
}

pub(super) fn run(args: BenchArgs, cx: &Context) -> Result<u8> {
    let usage = |message: &str| -> anyhow::Error {
        let mut cli = Cli::command();
        cli.build();
        let mut cmd = cli.find_subcommand("bench").cloned().unwrap_or(cli);
        cmd.error(clap::error::ErrorKind::MissingRequiredArgument, message)
            .into()
    };
    let Some(remote) = args.server.config()? else {
        return Err(usage("--url (or MAAS_URL) names the server to measure"));
    };
    if args.protocol == ProtocolFlag::V1Image && args.batch > 1 {
        return Err(usage(
            "--batch applies to the v2 protocols: /v1/predict takes one image",
        ));
    }
    let image = match &args.image {
        Some(path) => crate::fsutil::read_regular(path, MAX_FILE_BYTES)
            .with_context(|| path.display().to_string())?,
        None => bench::generated_image()?,
    };
    let config = BenchConfig {
        remote,
        concurrency: args.concurrency.iter().map(|&c| usize::from(c)).collect(),
        until: match args.requests {
            Some(n) => Until::Requests(n),
            None => Until::Elapsed(args.duration),
        },
        image,
        batch: usize::from(args.batch),
        protocol: match args.protocol {
            ProtocolFlag::V2Binary => BenchProtocol::V2Binary,
            ProtocolFlag::V2Json => BenchProtocol::V2Json,
            ProtocolFlag::V1Image => BenchProtocol::V1Image,
        },
    };
    let template = match config.until {
        Until::Elapsed(_) => "{prefix} {bar:30} {elapsed}/{len} ms",
        Until::Requests(_) => "{prefix} {bar:30} {pos}/{len} requests [{elapsed}<{eta}]",
    };
    let levels = config.concurrency.clone();
    let level = std::cell::Cell::new(0usize);
    let bar = |len: u64| {
        let bar = cx.reporter.bar(len, template);
        let i = level.get();
        level.set(i + 1);
        bar.set_prefix(format!(
            "concurrency {}",
            levels.get(i).copied().unwrap_or_default()
        ));
        bar
    };
    let report = bench::run(&config, cx.stop, &bar)?;
    if args.json {
        print_json(&report)?;
    } else {
        print_stdout(bench::render(&report))?;
    }
    Ok(if report.interrupted { 130 } else { 0 })
}
