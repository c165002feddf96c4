//! Bodies refused before they are read: drained first, so that the client reads the answer.
//! Its own file because both the key check ([`super::auth`]) and the shared state use it.

use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::StatusCode;

use super::error::ApiError;

/// The answer to a body over the limit.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

/// Most bytes of a refused body read and thrown away.
const DISCARD_LIMIT: usize = 64 << 20;
/// Longest time spent doing so.
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// Answers `error` to a request refused before its body was read, reading the body first: see
/// [`discard`].
pub async fn refuse(request: Request, error: ApiError) -> ApiError {
    discard(&mut request.into_body()).await;
    error
}

/// Reads and drops what is left of a refused body, up to a bound. Closing a connection that
/// still has unread data makes the kernel reset it, and a client still sending then sees a broken
/// pipe instead of the 413; draining first lets it finish and read the answer.
pub async fn discard(body: &mut Body) {
    let drain = async {
        let mut seen = 0;
        while seen < DISCARD_LIMIT {
            match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}
