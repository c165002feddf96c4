//! What every gRPC call passes before tonic reads its message, as REST's middleware does before a
//! route reads its body: the API or admin key from the metadata (tonic decodes the whole message
//! before a handler or interceptor could see which method it is, so the check is here, on the
//! HTTP/2 request, where the method is the path), a place among the calls being read (health
//! needs neither, so probes answer while uploads stall), the deadline, and the count in
//! `/metrics` of every outcome, the refusals of tonic's own framing included.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{self, StatusCode, header};
use tokio::sync::{Semaphore, watch};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::Service;

use super::super::auth::{self, Keys};
use super::super::error::ApiError;
use super::super::metrics::Metrics;
use super::to_status;

/// Who may make a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone, at any load (Kubernetes' gRPC probes send no key).
    Health,
    /// Holders of an API key, when the server has keys.
    Inference,
    /// Holders of the admin key (the repository calls).
    Admin,
}

/// The service's methods by path, the label each is counted under in `/metrics`.
const METHODS: [(&str, Access); 10] = [
    ("/inference.GRPCInferenceService/ServerLive", Access::Health),
    (
        "/inference.GRPCInferenceService/ServerReady",
        Access::Health,
    ),
    (
        "/inference.GRPCInferenceService/ModelReady",
        Access::Inference,
    ),
    (
        "/inference.GRPCInferenceService/ServerMetadata",
        Access::Inference,
    ),
    (
        "/inference.GRPCInferenceService/ModelMetadata",
        Access::Inference,
    ),
    (
        "/inference.GRPCInferenceService/ModelInfer",
        Access::Inference,
    ),
    (
        "/inference.GRPCInferenceService/ModelStatistics",
        Access::Inference,
    ),
    (
        "/inference.GRPCInferenceService/RepositoryIndex",
        Access::Admin,
    ),
    (
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        Access::Admin,
    ),
    (
        "/inference.GRPCInferenceService/RepositoryModelUnload",
        Access::Admin,
    ),
];

/// The label of paths that are no method: one, so that made-up paths add no label.
const UNMATCHED: &str = "unmatched (gRPC)";

/// What the gate enforces, shared by every connection.
pub struct Rules {
    /// The accepted API keys; `None`: no key needed.
    pub keys: Option<Keys>,
    /// The key of the repository calls; `None`: they are refused (403).
    pub admin_key: Option<Keys>,
    /// Calls being read or run at once: bounds the messages held in memory.
    pub reading: Arc<Semaphore>,
    /// Longest a call may take, reading its message included.
    pub timeout: Duration,
    /// Where calls are counted.
    pub metrics: Arc<Metrics>,
}

/// The gate in front of one connection's service; `calls` counts the calls in progress on the
/// connection, which closes once it has had none for a while.
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    rules: Arc<Rules>,
    calls: Arc<watch::Sender<usize>>,
}

impl<S> Gate<S> {
    pub fn new(inner: S, rules: Arc<Rules>, calls: Arc<watch::Sender<usize>>) -> Self {
        Self {
            inner,
            rules,
            calls,
        }
    }
}

impl<S, B> Service<http::Request<B>> for Gate<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Waiting for a place happens per call, in `call`, so that health calls skip it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let (label, access) = METHODS
            .iter()
            .find(|(path, _)| *path == request.uri().path())
            .map_or((UNMATCHED, Access::Inference), |&(path, access)| {
                (path, access)
            });
        let in_call = InCall::new(&self.calls);
        // The client's deadline when it is sooner (tonic's server did the same).
        let timeout = grpc_timeout(request.headers())
            .map_or(self.rules.timeout, |t| t.min(self.rules.timeout));
        let rules = Arc::clone(&self.rules);
        let inner = self.inner.clone();
        Box::pin(async move {
            let _in_call = in_call;
            let passing = rules.pass(access, request, inner);
            let response = match tokio::time::timeout(timeout, passing).await {
                Ok(response) => response,
                Err(_) => Status::deadline_exceeded(format!(
                    "the call did not finish within {} ms (its deadline, at most --timeout-ms)",
                    timeout.as_millis()
                ))
                .into_http(),
            };
            let status = metric_status(&response);
            rules
                .metrics
                .observe_request(label, status.as_u16(), started.elapsed());
            Ok(response)
        })
    }
}

impl Rules {
    /// The call's answer: a refusal, or the service's once a place is free.
    async fn pass<S, B>(
        &self,
        access: Access,
        request: http::Request<B>,
        mut inner: S,
    ) -> http::Response<Body>
    where
        S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let checked = match access {
            Access::Health => Ok(()),
            Access::Inference => match &self.keys {
                Some(keys) if !keys.accepts_value(authorization) => Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong API key: send the metadata `authorization: Bearer KEY`",
                )),
                _ => Ok(()),
            },
            Access::Admin => auth::check_admin_value(self.admin_key.as_ref(), authorization),
        };
        if let Err(refused) = checked {
            // The message is never read: the stream is answered and reset, its data dropped.
            return to_status(refused).into_http();
        }
        let _place = match access {
            Access::Health => None,
            // Waits, with the message unread (HTTP/2 flow control holds the client back).
            _ => match self.reading.acquire().await {
                Ok(place) => Some(place),
                Err(_) => return Status::unavailable("the server is shutting down").into_http(),
            },
        };
        match inner.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// The deadline a client sent in `grpc-timeout`: at most 8 digits and a unit (gRPC over HTTP/2).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The HTTP status a call's outcome stands for in `/metrics` (REST's for the same case): from its
/// `grpc-status`, which an error carries in the response head.
fn metric_status<B>(response: &http::Response<B>) -> StatusCode {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32);
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::DeadlineExceeded => StatusCode::REQUEST_TIMEOUT,
        // tonic's refusal of a message over the size limit is OUT_OF_RANGE.
        Code::ResourceExhausted | Code::OutOfRange => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        // A compressed message, an unknown method.
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A call in progress on its connection, from its head to its answer.
struct InCall(Arc<watch::Sender<usize>>);

impl InCall {
    fn new(calls: &Arc<watch::Sender<usize>>) -> Self {
        calls.send_modify(|n| *n += 1);
        Self(Arc::clone(calls))
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_deadlines_are_read_as_grpc_writes_them() {
        let timeout = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(
            timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "1.5S", "-1S", "10x", "10"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn outcomes_count_as_rest_s_statuses() {
        let status = |code: Code| metric_status(&Status::new(code, "x").into_http::<Body>());
        assert_eq!(
            metric_status(&http::Response::new(Body::empty())),
            StatusCode::OK
        );
        assert_eq!(status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(status(Code::OutOfRange), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(status(Code::Unimplemented), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(status(Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        // Every code the handlers answer with counts as the status it came from.
        for rest in [
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
            StatusCode::REQUEST_TIMEOUT,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::INTERNAL_SERVER_ERROR,
        ] {
            let answer = to_status(ApiError::new(rest, "x")).into_http::<Body>();
            assert_eq!(metric_status(&answer), rest);
        }
    }
}
