//! gRPC's connections: accepted from the listener, served over HTTP/2 through the [`Gate`], and
//! closed when idle.
//!
//! tonic's own server keeps a connection for as long as the client does, with or without the
//! HTTP/2 preface, and retries a failing `accept` at once (out of file descriptors, it spun). Here,
//! as on the REST port: `accept` errors back off (axum's [`Listener`] waits a second), a
//! connection with no call in progress for the request timeout is told to go (GOAWAY, which
//! gRPC clients answer by reconnecting on their next call), and HTTP/2 pings find peers that
//! vanished during a call.

use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::gate::{Gate, Rules};

/// Longest a connection told to go may take to finish once it has no call in progress: an
/// answer to the GOAWAY, or a handshake that never came.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// How often an HTTP/2 ping checks the peer, and how long its answer may take: half the request
/// timeout, within [1 s, 30 s], so that a vanished peer is noticed before its call would time out.
pub fn keepalive_interval(timeout: Duration) -> Duration {
    (timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// What hyper serves on a connection: the gate in front of tonic's service, answering every
/// HTTP/2 request.
pub trait GrpcService:
    tower::Service<
        axum::http::Request<hyper::body::Incoming>,
        Response = axum::http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T> GrpcService for T where
    T: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Serves `service` behind the gate on every connection `listener` accepts until `stop`
/// resolves, then lets each connection finish its calls in progress and closes it.
pub async fn serve<L, S>(
    mut listener: L,
    service: S,
    rules: Arc<Rules>,
    stop: impl Future<Output = ()>,
) where
    L: Listener,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Clone + Send + 'static,
    Gate<S>: GrpcService,
{
    let (stopping, stopped) = watch::channel(false);
    // Every connection task holds a receiver of `open`; `closed()` resolves once all are gone.
    let (open, _) = watch::channel(());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            (io, _) = listener.accept() => {
                let (calls, idle) = watch::channel(0usize);
                let gate = Gate::new(service.clone(), Arc::clone(&rules), Arc::new(calls));
                let connection = serve_connection(io, gate, idle, rules.timeout, stopped.clone());
                let open = open.subscribe();
                tokio::spawn(async move {
                    let _open = open;
                    connection.await;
                });
            }
        }
    }
    // Closing the listening socket refuses new connections at once.
    drop(listener);
    let _ = stopping.send(true);
    open.closed().await;
}

async fn serve_connection<I, S>(
    io: I,
    gate: Gate<S>,
    calls: watch::Receiver<usize>,
    timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Gate<S>: GrpcService,
{
    let keepalive = keepalive_interval(timeout);
    let mut http = http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive);
    let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(gate));
    tokio::pin!(conn);
    tokio::select! {
        // A failed connection (a reset, not HTTP/2, a peer that stopped answering pings)
        // concerns only its client.
        _ = conn.as_mut() => return,
        // Idle from the start too: a client that never sends the preface is cut off as well.
        () = quiet(calls.clone(), timeout) => {}
        _ = stopped.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    // Calls in progress finish (each within its deadline); then the connection goes.
    tokio::select! {
        _ = conn.as_mut() => {}
        () = quiet(calls, GOAWAY_GRACE) => {}
    }
}

/// Resolves once the connection has had no call in progress for `period`.
async fn quiet(mut calls: watch::Receiver<usize>, period: Duration) {
    loop {
        if calls.wait_for(|&n| n == 0).await.is_err() {
            return;
        }
        match tokio::time::timeout(period, calls.changed()).await {
            // A call began (or ended) within the period: wait for quiet again.
            Ok(Ok(())) => {}
            Err(_) | Ok(Err(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_quiet_only_once_its_calls_are_over() {
        // A call in progress from the start.
        let (calls, receiver) = watch::channel(1usize);
        let waiting = tokio::spawn(quiet(receiver, Duration::from_millis(50)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "quiet during a call");
        calls.send_modify(|n| *n -= 1);
        let ended = tokio::time::timeout(Duration::from_secs(30), waiting).await;
        assert!(ended.is_ok(), "never quiet after the call ended");
    }

    #[test]
    fn pings_come_within_the_request_timeout() {
        assert_eq!(
            keepalive_interval(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(
            keepalive_interval(Duration::from_millis(100)),
            Duration::from_secs(1)
        );
        assert_eq!(
            keepalive_interval(Duration::from_secs(600)),
            Duration::from_secs(30)
        );
    }
}
