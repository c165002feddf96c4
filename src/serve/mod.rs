//! `maas serve`: the model over HTTP.
//!
//! [`routes`] speaks the Open Inference Protocol (KServe v2) with its binary tensor extension
//! ([`protocol`], REST's wire format), `/v1/predict` and `/metrics` ([`metrics`]); [`grpc`] the
//! same protocol over gRPC; both hand their requests to one infer path ([`v2`]), over the
//! transport-neutral messages and checks of [`crate::protocol`]; [`batcher`] gathers concurrent
//! requests into one forward pass on a thread of its own; [`auth`] checks API keys. This module
//! puts them together: load the model, bind, serve until SIGTERM or Ctrl-C, then finish the
//! requests in flight.

mod auth;
mod batcher;
mod body;
mod config;
mod decode;
mod error;
mod grpc;
#[allow(unsafe_code)]
mod memory;
mod metrics;
mod protocol;
mod queue;
mod registry;
mod repository;
mod routes;
mod state;
mod stats;
mod tls;
mod v2;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_rustls::rustls::ServerConfig;

use self::auth::Keys;
use self::batcher::BatchConfig;
pub use self::config::{ServeConfig, TlsFiles};
pub use self::decode::DEFAULT_MAX_DECODE_PIXELS;
use self::decode::Decoding;
use self::metrics::Metrics;
use self::registry::Registry;
pub use self::repository::{Source, check_model_name, model_file};
use self::state::AppState;
use self::tls::TlsListener;
use crate::device::Selected;
use crate::progress::Reporter;

/// Decodes an infer request body as the `infer` route does before the model runs, through the
/// same functions: `header_length` is the raw value of the `Inference-Header-Content-Length`
/// header when the request has one. Gives the model input values and how many images they hold,
/// or the message of the 400 answer. Public so that the fuzz targets in `fuzz/` reach the real
/// decoding without a server.
pub fn decode_infer_request(
    body: &[u8],
    header_length: Option<&[u8]>,
) -> Result<(Vec<f32>, usize), String> {
    let mut headers = axum::http::HeaderMap::new();
    if let Some(value) = header_length {
        // A value that is not a valid header never reaches a route: the HTTP parser refuses it.
        let value = axum::http::HeaderValue::from_bytes(value)
            .map_err(|_| "not a valid HTTP header value".to_string())?;
        headers.insert(crate::protocol::names::HEADER_LENGTH, value);
    }
    let decode = || {
        let length = protocol::header_length(&headers)?;
        let request = protocol::parse(body, length)?;
        v2::input_values(request.input, &mut Decoding::unbounded())
    };
    decode().map_err(|e| e.message)
}

/// Extra time, beyond the request timeout, that shutdown waits for connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Loads the model, serves it until SIGTERM or Ctrl-C, and returns once the requests in flight
/// are answered.
pub fn run(config: &ServeConfig, selected: &Selected, reporter: &Reporter) -> Result<()> {
    // Keys first: a bad key file should fail before the model is loaded, not after.
    let keys = Keys::from_args(config.api_key.as_deref(), config.api_key_file.as_deref())?;
    let admin_key = Keys::admin(config.admin_key.as_deref())?;
    let tls = match &config.tls {
        Some(files) => Some(tls::load_config(&files.cert, &files.key)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let metrics = Arc::new(Metrics::new());
    let batching = BatchConfig {
        max_batch: config.max_batch,
        max_wait: config.max_wait,
        max_queue: config.max_queue,
    };
    let registry = Arc::new(Registry::new(
        config.source.clone(),
        config.model_name.clone(),
        selected.device.clone(),
        batching,
        Arc::clone(&metrics),
    ));
    registry.load_all()?;
    let serving = match &config.source {
        Source::File { name, path } => format!("model {name} from {}", path.display()),
        Source::Repository(dir) => {
            let snapshot = registry.snapshot();
            let versions: usize = snapshot.models.values().map(|m| m.versions.len()).sum();
            let names: Vec<&str> = snapshot.models.keys().map(String::as_str).collect();
            if names.is_empty() {
                reporter.info(format!(
                    "model repository {} holds no model yet (NAME/VERSION/model.maas); \
                     add one and load it (SIGHUP or POST /v2/repository/models/NAME/load)",
                    dir.display()
                ));
            }
            format!(
                "{} models ({}), {versions} versions, from repository {}",
                names.len(),
                names.join(", "),
                dir.display()
            )
        }
    };
    let timeout = config.timeout;
    memory::give_back_freed_memory(Arc::clone(&metrics));
    let state = AppState::new(config, Arc::clone(&registry), admin_key, metrics);
    let has_keys = keys.is_some();
    let grpc_service = grpc::Grpc::new(state.clone(), keys.clone());
    let grpc_limits = grpc::GrpcLimits {
        max_body: config.max_body_bytes,
        max_queue: config.max_queue.max(1),
        timeout,
    };
    let app = routes::router(state, keys);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("maas-http")
        .build()
        .context("cannot start the async runtime")?;
    let announce = |addr: SocketAddr, grpc: Option<SocketAddr>| {
        if !addr.ip().is_loopback() && !has_keys {
            eprintln!(
                "maas: warning: listening on {addr}, beyond this machine, with no API key: \
                 anyone who can reach it may use the model; pass --api-key or --api-key-file"
            );
        }
        // Before the `listening on` line, which scripts wait for: once it is out, both are.
        // Printed even with --quiet: with --grpc-port 0 it is the only way to learn the port.
        if let Some(grpc) = grpc {
            eprintln!("gRPC listening on {grpc} (inference.GRPCInferenceService)");
        }
        // Printed even with --quiet: with --port 0 it is the only way to learn the port.
        eprintln!(
            "listening on {scheme}://{addr} ({serving}, device {})",
            selected.description
        );
    };
    let result = runtime.block_on(async {
        // Before listening: SIGHUP's default action would end the process.
        reload_on_hangup(Arc::clone(&registry), *reporter)?;
        let grpc = match config.grpc_port {
            Some(port) => Some((grpc::bind(&config.host, port).await?, grpc_service)),
            None => None,
        };
        serve(
            app,
            grpc,
            grpc_limits,
            &config.host,
            config.port,
            tls,
            announce,
            reporter,
        )
        .await
    });
    // Dropping the runtime drops the router and with it every request's handle on a model, then
    // the registry lets go of its own, which lets the model threads see their queues close and end.
    runtime.shutdown_timeout(Duration::from_secs(1));
    registry.shutdown();
    result
}

/// On SIGHUP, reads the whole model source again, off the async threads, one reload at a time.
fn reload_on_hangup(registry: Arc<Registry>, reporter: Reporter) -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups =
            signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                reporter.info("SIGHUP: reloading the models");
                let registry = Arc::clone(&registry);
                let failures = tokio::task::spawn_blocking(move || registry.reload_all()).await;
                match failures {
                    Ok(failures) if failures.is_empty() => reporter.info("reloaded the models"),
                    Ok(failures) => {
                        for failure in failures {
                            eprintln!(
                                "maas: reload failed, the previous file keeps serving: {failure}"
                            );
                        }
                    }
                    Err(_) => eprintln!("maas: the reload failed unexpectedly"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (registry, reporter);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    app: Router,
    grpc: Option<((tokio::net::TcpListener, SocketAddr), grpc::Grpc)>,
    grpc_limits: grpc::GrpcLimits,
    host: &str,
    port: u16,
    tls: Option<Arc<ServerConfig>>,
    announce: impl FnOnce(SocketAddr, Option<SocketAddr>),
    reporter: &Reporter,
) -> Result<()> {
    let timeout = grpc_limits.timeout;
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let shutdown = shutdown_signal();
    announce(
        listener
            .local_addr()
            .context("cannot read the bound address")?,
        grpc.as_ref().map(|((_, addr), _)| *addr),
    );
    // One signal stops both endpoints.
    let (signalled, signal) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let _ = signalled.send(Some(shutdown.await));
    });
    let grpc = grpc.map(|((listener, _), service)| {
        let mut signal = signal.clone();
        let stop = async move {
            let _ = signal.wait_for(Option::is_some).await;
        };
        tokio::spawn(grpc::serve(
            listener,
            service,
            tls.clone(),
            grpc_limits,
            stop,
        ))
    });
    let rest = match tls {
        Some(config) => {
            let listener = TlsListener::new(listener, config).context("cannot start TLS")?;
            serve_on(listener, app, timeout, signal, reporter).await
        }
        None => serve_on(listener, app, timeout, signal, reporter).await,
    };
    if let Some(grpc) = grpc {
        // Its calls in flight had the same deadline as the REST requests just drained.
        match tokio::time::timeout(SHUTDOWN_GRACE, grpc).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => anyhow::bail!("the gRPC server failed unexpectedly"),
            Err(_) => reporter.info("gRPC calls still open after the grace period: closing them"),
        }
    }
    rest
}

/// Serves `app` on `listener` until `signal` names a shutdown signal, then drains for at most the
/// request `timeout` and [`SHUTDOWN_GRACE`].
///
/// The connections are hyper's HTTP/1 connections, as `axum::serve` makes them, with two settings
/// it does not expose: a client must send a request's head within `timeout` too (else a client
/// trickling header lines, or idling between requests, would hold its connection forever: the
/// request deadline only starts once the head is in), and a client that has sent its whole
/// request and shut down its write side still gets the answer (hyper otherwise drops the
/// request when it reads the end of the stream).
///
/// A request hyper cannot parse (HTTP/0.9, two different Content-Lengths, a head too large) never
/// reaches `app`: hyper answers 400, 414 or 431 itself, with an empty body, and closes. Its
/// builder has no hook to word that answer (the response is made inside `proto::h1`), so those
/// are the one answers that are not `{"error": ...}`; README says so.
async fn serve_on<L>(
    mut listener: L,
    app: Router,
    timeout: Duration,
    mut signal: tokio::sync::watch::Receiver<Option<&'static str>>,
    reporter: &Reporter,
) -> Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Every connection task holds a receiver of `open`; `closed()` resolves once all are dropped.
    let (open, _) = tokio::sync::watch::channel(());
    let signal = loop {
        tokio::select! {
            // A dropped sender (no signal can come any more) counts as no signal.
            Ok(name) = signal.wait_for(Option::is_some) => break (*name).unwrap_or("stopped"),
            (io, _addr) = listener.accept() => {
                let service = TowerToHyperService::new(app.clone());
                let mut stopped = stopped.clone();
                let open = open.subscribe();
                tokio::spawn(async move {
                    let _open = open;
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(TokioTimer::new())
                        .header_read_timeout(timeout)
                        .half_close(true);
                    let conn = http.serve_connection(TokioIo::new(io), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        // A failed connection (a reset, garbage, a timed-out head) concerns only
                        // its client, which has been answered or has gone.
                        _ = conn.as_mut() => return,
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                    // Finishes the request in progress, if any, then closes.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                });
            }
        }
    };
    reporter.info(format!(
        "{signal}: finishing the requests in flight, then stopping"
    ));
    // Closing the listening socket refuses new connections at once.
    drop(listener);
    let _ = stop.send(true);
    let grace = timeout + SHUTDOWN_GRACE;
    if tokio::time::timeout(grace, open.closed()).await.is_err() {
        // A client that keeps a connection open without finishing a request must not hold the
        // process forever; every request had its own deadline, so nothing real is cut short.
        reporter.info("connections still open after the grace period: closing them");
    }
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM (what `docker stop` and Kubernetes send) and names it. The
/// handlers are installed at the call, not when first awaited: a signal sent as soon as the
/// server has announced its address must stop it gracefully, not by the default action.
fn shutdown_signal() -> impl Future<Output = &'static str> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        // A signal whose handler cannot be installed is one that cannot arrive: wait on the other.
        async fn arrival(signal: Option<Signal>) {
            match signal {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        let interrupt = arrival(signal(SignalKind::interrupt()).ok());
        let terminate = arrival(signal(SignalKind::terminate()).ok());
        async move {
            tokio::select! {
                () = interrupt => "interrupted",
                () = terminate => "SIGTERM",
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "interrupted",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use tokio::net::TcpListener;

    /// Sends `bytes`, shuts down the write side when asked, and reads until the server closes
    /// (plain blocking sockets, on the blocking pool: tokio's socket I/O helpers are not built).
    /// `None` when the server neither answered nor closed within a minute.
    async fn exchange(addr: SocketAddr, bytes: &'static [u8], half_close: bool) -> Option<String> {
        let client = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            stream.write_all(bytes).unwrap();
            if half_close {
                stream.shutdown(std::net::Shutdown::Write).unwrap();
            }
            let mut answer = Vec::new();
            match stream.read_to_end(&mut answer) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
                // A reset after the server gave up is an answer too.
                _ => Some(String::from_utf8_lossy(&answer).into_owned()),
            }
        });
        client.await.unwrap()
    }

    // Found by tests/it/stress.rs: axum::serve dropped a whole request whose client then shut down
    // its write side, and let a client trickling header lines hold its connection for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_closed_requests_are_answered_and_slow_heads_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::post(|body: String| async { body }));
        let reporter = Reporter::silent();
        // The request timeout bounds the head too.
        let (_never, signal) = tokio::sync::watch::channel(None);
        let server = serve_on(listener, app, Duration::from_millis(300), signal, &reporter);
        let clients = async {
            let request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
            let answer = exchange(addr, request, true).await.unwrap_or_default();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
            assert!(answer.ends_with("hello"), "{answer:?}");
            // Half a head, then silence without closing: the server must close the connection.
            let slow = exchange(addr, b"POST / HTTP/1.1\r\nHost: x\r\n", false).await;
            assert!(
                slow.is_some(),
                "a half-sent head held its connection for a minute"
            );
        };
        tokio::select! {
            ended = server => panic!("the server stopped: {ended:?}"),
            () = clients => {}
        }
    }
}
