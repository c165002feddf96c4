//! `maas bench`: a load generator for a deployed model, in the spirit of Triton's perf_analyzer.
//! For each concurrency level, that many clients each hold one keep-alive HTTP/1 connection
//! (hyper, with tokio-rustls for https) and send the same request back to back, for a duration
//! or a number of requests; the report gives throughput and latency percentiles per level.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use super::client::MAX_ANSWER_BYTES;
use super::config::RemoteConfig;
use super::model::RemoteModel;
use super::protocol;
use super::url::ServerUrl;
use crate::data::preprocess::image_bytes_to_input;

/// What each request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchProtocol {
    /// `POST /v2/models/{name}/infer` with binary tensor data.
    V2Binary,
    /// `POST /v2/models/{name}/infer` with JSON tensors.
    V2Json,
    /// `POST /v1/predict` with the image file as the body (maas servers).
    V1Image,
}

/// When a level ends.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// After this long.
    Elapsed(Duration),
    /// After this many requests, across all clients.
    Requests(u64),
}

/// What `maas bench` was asked.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The server and model (`timeout` bounds each request).
    pub remote: RemoteConfig,
    /// Concurrent clients, one level each.
    pub concurrency: Vec<usize>,
    /// When each level ends.
    pub until: Until,
    /// The encoded image sent (every image of a batch is this one).
    pub image: Vec<u8>,
    /// Images per request (v2 only).
    pub batch: usize,
    /// What each request carries.
    pub protocol: BenchProtocol,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The slowest.
    pub max: f64,
}

/// The figures of one concurrency level.
#[derive(Debug, Clone, Serialize)]
pub struct LevelResult {
    /// Concurrent clients.
    pub concurrency: usize,
    /// Requests that got an answer or failed, all told.
    pub requests: u64,
    /// Of those, the ones that did not get a 2xx answer.
    pub errors: u64,
    /// The errors by HTTP status, or by what went wrong (`connection`, `timeout`, `tls`,
    /// `answer too large`).
    pub errors_by_status: BTreeMap<String, u64>,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Images in successful requests per second.
    pub images_per_s: f64,
    /// Latency of the successful requests.
    pub latency_ms: Latency,
    /// The level's length, in seconds.
    pub seconds: f64,
}

/// What `maas bench --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The server.
    pub url: String,
    /// The route measured (the model's infer URL, or `/v1/predict`).
    pub model: String,
    /// One entry per concurrency level, in the order run.
    pub results: Vec<LevelResult>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
}

/// The request every client sends, and where.
struct Target {
    authority: String,
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    path: String,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

/// Runs every level; `stop` (Ctrl-C) ends the level in progress and skips the rest. `bar` makes
/// a progress bar over one level's length.
pub fn run(
    config: &BenchConfig,
    stop: &AtomicBool,
    bar: &dyn Fn(u64) -> ProgressBar,
) -> Result<BenchReport> {
    let (target, model) = target(config)?;
    let target = Arc::new(target);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // A server that cannot be reached is one line now, not a table of failures.
    runtime
        .block_on(async {
            tokio::time::timeout(target.timeout, connect(&target))
                .await
                .unwrap_or(Err("timeout"))
        })
        .map_err(|why| {
            let url = &config.remote.url;
            match why {
                "tls" => anyhow!(
                    "{url}: TLS failed ({})",
                    super::tls::hint(config.remote.cacert.as_deref())
                ),
                "timeout" => anyhow!("{url}: no connection within --timeout-ms"),
                _ => anyhow!("{url}: cannot connect: is the server running, on that port?"),
            }
        })?;
    let mut results = Vec::new();
    for &clients in &config.concurrency {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let length = match config.until {
            Until::Elapsed(d) => d.as_millis() as u64,
            Until::Requests(n) => n,
        };
        let bar = bar(length);
        let level = runtime.block_on(level(&target, clients, config, stop, &bar))?;
        bar.finish_and_clear();
        results.push(level);
    }
    Ok(BenchReport {
        url: config.remote.url.trim_end_matches('/').to_string(),
        model,
        results,
        interrupted: stop.load(Ordering::SeqCst),
    })
}

/// The request to send, made once: the image preprocessed as `predict` does, `batch` times.
fn target(config: &BenchConfig) -> Result<(Target, String)> {
    let remote = &config.remote;
    let ServerUrl {
        base,
        https,
        host,
        port,
        authority,
    } = ServerUrl::parse(&remote.url)?;
    let tls = if https {
        let name =
            ServerName::try_from(host.clone()).map_err(|e| anyhow!("{}: {e}", remote.url))?;
        let config = super::tls::client_config(remote.cacert.as_deref())?;
        Some((TlsConnector::from(config), name))
    } else {
        None
    };
    let (path, model, content_type, headers, body) = match config.protocol {
        BenchProtocol::V1Image => (
            "/v1/predict".to_string(),
            format!("{base}/v1/predict"),
            "application/octet-stream",
            Vec::new(),
            config.image.clone(),
        ),
        BenchProtocol::V2Binary | BenchProtocol::V2Json => {
            let model = RemoteModel::connect(remote)?;
            let one = image_bytes_to_input(&config.image).context("--image")?;
            let inputs = one.repeat(config.batch);
            let binary = config.protocol == BenchProtocol::V2Binary;
            let body = protocol::infer_request(model.input_name(), &inputs, binary)?;
            (
                model.infer_path(),
                format!("{base}{}", model.infer_path()),
                body.content_type,
                body.headers,
                body.bytes,
            )
        }
    };
    let authorization = match remote.authorization() {
        Some(value) => Some(
            HeaderValue::from_str(&value)
                .map_err(|_| anyhow!("the API key cannot stand in an HTTP header"))?,
        ),
        None => None,
    };
    let target = Target {
        authority,
        host,
        port,
        tls,
        path,
        content_type,
        headers,
        body: Bytes::from(body),
        authorization,
        timeout: remote.timeout,
    };
    Ok((target, model))
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    errors: BTreeMap<String, u64>,
}

/// One level: `clients` clients until the level ends.
async fn level(
    target: &Arc<Target>,
    clients: usize,
    config: &BenchConfig,
    stop: &AtomicBool,
    bar: &ProgressBar,
) -> Result<LevelResult> {
    let start = Instant::now();
    let deadline = match config.until {
        Until::Elapsed(d) => Some(start + d),
        Until::Requests(_) => None,
    };
    let budget = match config.until {
        Until::Requests(n) => Some(Arc::new(AtomicU64::new(n))),
        Until::Elapsed(_) => None,
    };
    // Each client checks this between requests: the deadline, Ctrl-C, or the budget spent.
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (target, done, budget, sent) = (
            Arc::clone(target),
            Arc::clone(&done),
            budget.clone(),
            Arc::clone(&sent),
        );
        tasks.push(tokio::spawn(async move {
            client(&target, &done, budget.as_deref(), &sent).await
        }));
    }
    // Watches the clock and Ctrl-C, and moves the bar.
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        match config.until {
            Until::Elapsed(_) => bar.set_position(now.duration_since(start).as_millis() as u64),
            Until::Requests(_) => bar.set_position(sent.load(Ordering::Relaxed)),
        }
        if stop.load(Ordering::SeqCst) || deadline.is_some_and(|d| now >= d) {
            done.store(true, Ordering::SeqCst);
        }
        if done.load(Ordering::SeqCst) || tasks.iter().all(|t| t.is_finished()) {
            break;
        }
    }
    let mut all = Tally::default();
    for task in tasks {
        let tally = task.await.context("a client failed")?;
        all.latencies.extend(tally.latencies);
        for (k, v) in tally.errors {
            *all.errors.entry(k).or_default() += v;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let ok = all.latencies.len() as u64;
    let errors: u64 = all.errors.values().sum();
    let batch = match config.protocol {
        BenchProtocol::V1Image => 1,
        _ => config.batch,
    };
    Ok(LevelResult {
        concurrency: clients,
        requests: ok + errors,
        errors,
        errors_by_status: all.errors,
        requests_per_s: ok as f64 / seconds,
        images_per_s: (ok * batch as u64) as f64 / seconds,
        latency_ms: percentiles(&mut all.latencies),
        seconds,
    })
}

/// One client: one connection, requests back to back, a new connection after a failure.
async fn client(
    target: &Target,
    done: &AtomicBool,
    budget: Option<&AtomicU64>,
    sent: &AtomicU64,
) -> Tally {
    let mut tally = Tally::default();
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    while !done.load(Ordering::SeqCst) {
        if let Some(budget) = budget
            && budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            break;
        }
        let begun = Instant::now();
        let outcome = tokio::time::timeout(target.timeout, async {
            if connection.is_none() {
                connection = Some(connect(target).await?);
            }
            let sender = connection.as_mut().ok_or("connection")?;
            sender.ready().await.map_err(|_| "connection")?;
            let response = sender
                .send_request(request(target).map_err(|_| "request")?)
                .await
                .map_err(|_| "connection")?;
            let status = response.status();
            drain(response).await?;
            Ok::<_, &str>(status)
        })
        .await;
        sent.fetch_add(1, Ordering::Relaxed);
        let failure = match outcome {
            Ok(Ok(status)) if status.is_success() => {
                tally.latencies.push(begun.elapsed().as_secs_f64() * 1e3);
                continue;
            }
            Ok(Ok(status)) => status.as_u16().to_string(),
            Ok(Err(what)) => what.to_string(),
            Err(_) => "timeout".to_string(),
        };
        *tally.errors.entry(failure).or_default() += 1;
        // The connection may be in any state: start again on a new one, after a pause that keeps
        // a server that refuses connections from turning this into a busy loop.
        connection = None;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tally
}

/// What an answer larger than [`MAX_ANSWER_BYTES`] is counted as.
const TOO_LARGE: &str = "answer too large";

/// Reads an answer's body to its end, keeping none of it: each frame is dropped once counted,
/// and a body beyond [`MAX_ANSWER_BYTES`] (`predict --url`'s limit) is an error, so that a server
/// streaming without end costs neither memory nor the whole --timeout-ms.
async fn drain(response: hyper::Response<Incoming>) -> Result<(), &'static str> {
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_ANSWER_BYTES) {
        return Err(TOO_LARGE);
    }
    let mut body = response.into_body();
    let mut read = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| "connection")?;
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
            if read > MAX_ANSWER_BYTES {
                return Err(TOO_LARGE);
            }
        }
    }
    Ok(())
}

/// A new keep-alive connection to the target.
async fn connect(target: &Target) -> Result<SendRequest<Full<Bytes>>, &'static str> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|_| "connection")?;
    // Requests are small and answered at once: no waiting to fill a packet.
    let _ = tcp.set_nodelay(true);
    match &target.tls {
        None => handshake(TokioIo::new(tcp)).await,
        Some((connector, name)) => {
            let stream = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|_| "tls")?;
            handshake(TokioIo::new(stream)).await
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, &'static str>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| "connection")?;
    tokio::spawn(connection);
    Ok(sender)
}

fn request(target: &Target) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(CONTENT_TYPE, target.content_type);
    for (name, value) in &target.headers {
        request = request.header(*name, value.as_str());
    }
    if let Some(key) = &target.authorization {
        request = request.header(AUTHORIZATION, key.clone());
    }
    request.body(Full::new(target.body.clone()))
}

/// The image sent when `--image` names none: a generated 32x32 PNG of the tests' dataset.
pub fn generated_image() -> Result<Vec<u8>> {
    let chw = crate::data::synthetic::sample_image(0, 1);
    let side = crate::data::preprocess::SIDE as usize;
    let plane = side * side;
    let hwc: Vec<u8> = (0..plane)
        .flat_map(|p| [chw[p], chw[plane + p], chw[2 * plane + p]])
        .collect();
    let image = image::RgbImage::from_raw(side as u32, side as u32, hwc)
        .ok_or_else(|| anyhow!("the generated image has the wrong size"))?;
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .context("cannot encode the generated image")?;
    Ok(png.into_inner())
}

/// Nearest-rank percentiles of `latencies` (sorted here); zeros when there are none.
fn percentiles(latencies: &mut [f64]) -> Latency {
    if latencies.is_empty() {
        return Latency::default();
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = (q * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1]
    };
    Latency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: latencies[latencies.len() - 1],
    }
}

/// The report as a table for people.
pub fn render(report: &BenchReport) -> String {
    let mut out = format!("{}\n", report.model);
    out.push_str(
        "CONCURRENCY  REQUESTS  ERRORS     REQ/S    IMG/S   P50 MS   P90 MS   P99 MS   MAX MS\n",
    );
    for r in &report.results {
        let l = &r.latency_ms;
        out.push_str(&format!(
            "{:>11}  {:>8}  {:>6}  {:>8.1}  {:>7.1}  {:>7.2}  {:>7.2}  {:>7.2}  {:>7.2}\n",
            r.concurrency,
            r.requests,
            r.errors,
            r.requests_per_s,
            r.images_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.max
        ));
    }
    for r in report.results.iter().filter(|r| r.errors > 0) {
        let by: Vec<String> = r
            .errors_by_status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        out.push_str(&format!(
            "errors at concurrency {}: {}\n",
            r.concurrency,
            by.join(", ")
        ));
    }
    if report.interrupted {
        out.push_str("interrupted: the last level is cut short\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let l = percentiles(&mut values);
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
        let one = percentiles(&mut [7.0]);
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert_eq!(percentiles(&mut []).max, 0.0);
    }
}
