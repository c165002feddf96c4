//! What every request handler shares, and the steps every body-carrying request goes through:
//! admission, reading the body before the deadline, and decoding off the async threads.

use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};

use super::body::{discard, too_large};
use super::config::ServeConfig;
use super::decode::{DecoderSlots, Decoding, PixelLimits, StopOnDrop};
use super::error::ApiError;
use super::metrics::Metrics;
use super::registry::Registry;

/// The shared state, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// A request's place among those in progress, given back when it is dropped.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.metrics.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The contents of [`AppState`].
pub struct Shared {
    /// The models served.
    pub registry: Arc<Registry>,
    /// The key of the repository routes (`--admin-key`); without one they answer 403.
    pub admin_key: Option<super::auth::Keys>,
    /// What `/metrics` reports.
    pub metrics: Arc<Metrics>,
    /// Longest a request may take, reading its body included.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_body: usize,
    /// Requests being read, decoded or waiting for the model: bounds the bodies held in memory.
    admission: Arc<Semaphore>,
    /// Decodes running at once: decoding is CPU work, more than the cores only queues it.
    decoders: DecoderSlots,
    /// Pixels decoded per request and at once.
    pub pixels: PixelLimits,
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// The state of a server with the limits of `config`: `max_queue` requests may hold a body at
    /// once, each may decode `max_decode_pixels`, and that many may be decoded at once.
    pub fn new(
        config: &ServeConfig,
        registry: Arc<Registry>,
        admin_key: Option<super::auth::Keys>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self(Arc::new(Shared {
            registry,
            admin_key,
            metrics,
            timeout: config.timeout,
            max_body: config.max_body_bytes,
            admission: Arc::new(Semaphore::new(config.max_queue.max(1))),
            decoders: DecoderSlots::new(cores),
            pixels: PixelLimits::new(config.max_decode_pixels),
        }))
    }

    /// Why the server is not ready for inference, or `None` when it is: a model not loaded, or
    /// every decoding slot held by a decode whose request is gone (one that cannot be stopped,
    /// a JPEG's), behind which any request with images would wait to its deadline.
    pub fn not_ready(&self) -> Option<String> {
        if !self.registry.is_ready() {
            return Some("the model is not loaded".into());
        }
        self.decoders.all_abandoned().then(|| {
            format!(
                "every decoding slot ({}) is held by a decode whose request timed out or was \
                 abandoned: a request that needs one would wait until its deadline",
                self.decoders.count()
            )
        })
    }

    /// When a request that starts now must be answered.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// A place among the requests in progress, or 503 at once when there is none: waiting for
    /// one would let an overload pile up connections and bodies.
    pub fn admit(&self) -> Result<Admission, ApiError> {
        let permit = Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::unavailable(
                    "the server is busy: too many requests in progress; retry later",
                )
            })?;
        self.metrics.in_progress.fetch_add(1, Ordering::Relaxed);
        Ok(Admission {
            _permit: permit,
            metrics: Arc::clone(&self.metrics),
        })
    }

    /// The whole body, within the size limit and the deadline: a slow client gets 408 and holds
    /// only its own connection meanwhile.
    pub async fn read_body(&self, request: Request, deadline: Instant) -> Result<Bytes, ApiError> {
        let limit = self.max_body;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let mut body = request.into_body();
        let read = async {
            if declared.is_some_and(|n| n > limit as u64) {
                discard(&mut body).await;
                return Err(too_large(limit));
            }
            let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(limit));
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                let frame = frame.map_err(|e| {
                    ApiError::bad_request(format!("cannot read the request body: {e}"))
                })?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if buf.len() + data.len() > limit {
                    discard(&mut body).await;
                    return Err(too_large(limit));
                }
                buf.extend_from_slice(&data);
            }
            Ok(Bytes::from(buf))
        };
        timeout_at(deadline, read).await.unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms",
                    self.timeout.as_millis()
                ),
            ))
        })
    }

    /// Runs CPU-heavy decoding (JSON, images) on the blocking pool rather than on the async
    /// threads that serve every connection; `work` decodes images through the [`Decoding`] it is
    /// given, within the request's pixel limit, and stops at the next image once this returns
    /// (on the deadline) or is dropped (the client went away).
    pub async fn decode<T, F>(&self, deadline: Instant, work: F) -> Result<T, ApiError>
    where
        F: FnOnce(&mut Decoding) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let late = || ApiError::unavailable("timed out decoding the request; retry later");
        let slot = timeout_at(deadline, self.decoders.acquire())
            .await
            .map_err(|_| late())?
            .ok_or_else(|| ApiError::unavailable("the server is shutting down"))?;
        // Dropped first (the deadline, a client gone): the decode counts as abandoned.
        let _waiter = slot.waiter();
        let gone = Arc::new(AtomicBool::new(false));
        let _stop = StopOnDrop(Arc::clone(&gone));
        let mut decoding = self.pixels.request(deadline, gone);
        let task = tokio::task::spawn_blocking(move || {
            // Held until the work really ends, not just until its answer is given up on.
            let _slot = slot;
            work(&mut decoding)
        });
        match timeout_at(deadline, task).await {
            Err(_) => Err(late()),
            Ok(Err(_)) => Err(ApiError::internal(
                "decoding the request failed unexpectedly",
            )),
            Ok(Ok(result)) => result,
        }
    }
}
