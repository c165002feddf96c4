//! A request's images decoded within bounds: the pixels one request may decode, the pixels
//! decoded at once across the server, and no more work once nobody waits for the answer.
//!
//! The body limit says little about the cost of an image: a PNG of half a megabyte can declare
//! 8192x8192 pixels of 16-bit RGBA, 550 MB and a second of CPU to decode. So each image's header
//! is read first, and the pixels its decode will produce are counted before any is decoded (for a
//! large JPEG, those of its reduced DCT scale: a 4000x3000 photo counts 500x375; a progressive
//! one adds the memory of its full-size coefficients, as pixels of 3 bytes).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use axum::http::StatusCode;
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout_at};

use super::error::ApiError;
use crate::data::preprocess::{MAX_PIXELS, SIDE, open_image_until};

/// The default of `--max-decode-pixels`: one image of the largest size maas decodes at all.
pub const DEFAULT_MAX_DECODE_PIXELS: u64 = MAX_PIXELS;

/// Images of at most this many pixels (four times the model's input) are decoded without a share
/// of the server's pixels at once: they decode in microseconds, waiting would cost more, and their
/// memory is bounded by the requests admitted (`--max-queue`).
pub const SMALL_IMAGE_PIXELS: u64 = 4 * (SIDE as u64) * (SIDE as u64);

/// The server's bounds on decoding, shared by every request.
pub struct PixelLimits {
    /// Most pixels one request may decode, all its images together.
    per_request: u64,
    /// Pixels that may be decoded at once across the server, as permits: an image holds its
    /// pixels' worth while it is decoded.
    at_once: Arc<Semaphore>,
}

impl PixelLimits {
    /// `max_pixels` per request, and as many at once across the server: one request at its limit
    /// decodes alone, many small ones together.
    pub fn new(max_pixels: u64) -> Self {
        let permits = usize::try_from(max_pixels)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            per_request: max_pixels.min(permits as u64),
            at_once: Arc::new(Semaphore::new(permits)),
        }
    }

    /// Most pixels one request may decode.
    pub fn per_request(&self) -> u64 {
        self.per_request
    }

    /// The decoding of one request, to run on the blocking pool (it blocks there while it waits
    /// for room), answered by `deadline`; it stops at the next image once `gone` is set.
    pub fn request(&self, deadline: Instant, gone: Arc<AtomicBool>) -> Decoding {
        Decoding {
            left: self.per_request,
            limit: self.per_request,
            bounds: Some(Bounds {
                at_once: Arc::clone(&self.at_once),
                runtime: Handle::current(),
                deadline,
                gone,
            }),
        }
    }
}

/// One request's decoding: what is left of its pixels, and the server's bounds.
pub struct Decoding {
    left: u64,
    limit: u64,
    /// `None`: no bounds but [`MAX_PIXELS`] per image (decoding without a server).
    bounds: Option<Bounds>,
}

struct Bounds {
    at_once: Arc<Semaphore>,
    runtime: Handle,
    deadline: Instant,
    gone: Arc<AtomicBool>,
}

impl Decoding {
    /// Decoding as `predict` does it, with no bound but the size of each image.
    pub fn unbounded() -> Self {
        Self {
            left: u64::MAX,
            limit: u64::MAX,
            bounds: None,
        }
    }

    /// Decodes one encoded image and appends its model input values to `out`: 400 for what is
    /// not an image maas reads, 413 when its header declares more pixels than the request has
    /// left, 503 when nobody waits for the answer any more.
    pub fn image(&mut self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), ApiError> {
        self.check_wanted()?;
        let bad = |e: anyhow::Error| ApiError::bad_request(format!("{e:#}"));
        let stop = self.bounds.as_ref().map(|b| Arc::clone(&b.gone));
        let image = open_image_until(bytes, stop).map_err(bad)?;
        let pixels = image.decoded_pixels();
        if pixels > self.left {
            let (w, h) = image.dimensions();
            let held = match image.held_pixels() {
                0 => String::new(),
                _ => format!(
                    " (a progressive JPEG: its decode holds the memory of {pixels} pixels, \
                     its coefficients at full size)"
                ),
            };
            let left = if self.left == self.limit {
                String::new()
            } else {
                format!("the {} pixels left of ", self.left)
            };
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the image is {w}x{h} pixels{held}, more than {left}this server's limit \
                     of {} decoded pixels per request (--max-decode-pixels)",
                    self.limit
                ),
            ));
        }
        self.left -= pixels;
        let _room = self.room(pixels)?;
        // A decode stopped because the request is gone ends as such, not as a bad image.
        image
            .to_input(out)
            .map_err(|e| self.check_wanted().err().unwrap_or_else(|| bad(e)))
    }

    /// Refuses to go on once the request is gone: its answer (a timeout) has been sent, or its
    /// client has closed the connection.
    fn check_wanted(&self) -> Result<(), ApiError> {
        match &self.bounds {
            Some(b) if b.gone.load(Ordering::Relaxed) => Err(gone()),
            _ => Ok(()),
        }
    }

    /// Waits, within the deadline, until `pixels` more may be decoded across the server.
    fn room(&self, pixels: u64) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let Some(b) = self.bounds.as_ref().filter(|_| pixels > SMALL_IMAGE_PIXELS) else {
            return Ok(None);
        };
        // At most the request's limit, which is at most the permits: never more than exist. And
        // at most MAX_PIXELS (open_image refuses more), far below u32::MAX.
        let wanted = u32::try_from(pixels).unwrap_or(u32::MAX);
        let permit = Arc::clone(&b.at_once).acquire_many_owned(wanted);
        // This runs on the blocking pool, where waiting on the runtime is allowed.
        match b.runtime.block_on(timeout_at(b.deadline, permit)) {
            Ok(Ok(permit)) => {
                // The wait may have outlived the request.
                self.check_wanted()?;
                Ok(Some(permit))
            }
            _ => Err(gone()),
        }
    }
}

/// The server's decoding slots: decodes run at once on the blocking pool (decoding is CPU work,
/// more than the cores only queues it), and how many of them nobody waits for any more.
///
/// A decode cannot always be stopped (a JPEG's runs to its end), so one whose request was
/// answered on its deadline, or whose client left, may keep its slot a while; when every slot is
/// held so, any request with images would wait to its own deadline: the server is not ready.
pub struct DecoderSlots {
    slots: Arc<Semaphore>,
    count: usize,
    /// Decodes running whose request is gone.
    abandoned: Arc<AtomicUsize>,
}

impl DecoderSlots {
    /// `count` slots (at least one).
    pub fn new(count: usize) -> Self {
        let count = count.max(1);
        Self {
            slots: Arc::new(Semaphore::new(count)),
            count,
            abandoned: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Slots in all.
    pub fn count(&self) -> usize {
        self.count
    }

    /// A slot, once one is free; `None` when the server is shutting down.
    pub async fn acquire(&self) -> Option<Slot> {
        let permit = Arc::clone(&self.slots).acquire_owned().await.ok()?;
        Some(Slot {
            _permit: permit,
            watch: Arc::new(Watch {
                state: AtomicU8::new(RUNNING),
                abandoned: Arc::clone(&self.abandoned),
            }),
        })
    }

    /// Whether every slot is held by a decode whose request is gone.
    pub fn all_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire) >= self.count
    }
}

/// One decoding slot: moved into the decode, given back when the decode ends.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    watch: Arc<Watch>,
}

impl Slot {
    /// The request's side: held while it waits for the decode; when dropped first (the deadline
    /// answered, the client gone), the decode counts as abandoned until it ends.
    pub fn waiter(&self) -> Waiter {
        Waiter(Arc::clone(&self.watch))
    }
}

/// See [`Slot::waiter`].
pub struct Waiter(Arc<Watch>);

/// A decode's standing, whichever of its two sides lets go first.
struct Watch {
    state: AtomicU8,
    abandoned: Arc<AtomicUsize>,
}

const RUNNING: u8 = 0;
const ABANDONED: u8 = 1;
const ENDED: u8 = 2;

impl Drop for Waiter {
    fn drop(&mut self) {
        let w = &self.0;
        // Counted before the state says so, so that the decode, which uncounts only what it sees
        // abandoned, never takes the count below zero.
        w.abandoned.fetch_add(1, Ordering::AcqRel);
        let marked =
            w.state
                .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
        if marked.is_err() {
            // The decode has ended: nothing is abandoned.
            w.abandoned.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let w = &self.watch;
        if w.state.swap(ENDED, Ordering::AcqRel) == ABANDONED {
            w.abandoned.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What a decode that nobody waits for ends with; no client reads it.
fn gone() -> ApiError {
    ApiError::unavailable("the request was answered or abandoned before its images were decoded")
}

/// Sets its flag when dropped: held by the request's handler while its images decode on the
/// blocking pool, so that the decoding stops when the handler returns on a timeout or is dropped
/// with a closed connection.
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageFormat, RgbImage};
    use std::io::Cursor;
    use std::time::Duration;

    fn png(side: u32) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(RgbImage::new(side, side))
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn budget_room_and_cancellation() {
        let limits = PixelLimits::new(10_000);
        let deadline = Instant::now() + Duration::from_secs(30);
        let gone = Arc::new(AtomicBool::new(false));
        let mut decoding = limits.request(deadline, Arc::clone(&gone));
        let (sixty, larger) = (png(60), png(120));
        let result = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            // 3600 + 3600 pixels fit in 10000; a third image does not, and is named.
            decoding.image(&sixty, &mut out).unwrap();
            decoding.image(&sixty, &mut out).unwrap();
            let e = decoding.image(&sixty, &mut out).unwrap_err();
            assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
            assert!(e.message.contains("60x60") && e.message.contains("2800 pixels left"));
            assert!(e.message.contains("10000"), "{}", e.message);
            // One image over the whole limit.
            let e = limits
                .request(deadline, Arc::new(AtomicBool::new(false)))
                .image(&larger, &mut out)
                .unwrap_err();
            assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
            assert!(!e.message.contains("left"), "{}", e.message);
            // Garbage is 400 and costs nothing of the budget.
            let mut fresh = limits.request(deadline, Arc::clone(&gone));
            assert_eq!(
                fresh.image(b"not an image", &mut out).unwrap_err().status,
                StatusCode::BAD_REQUEST
            );
            assert_eq!(fresh.left, 10_000);
            // Every permit came back.
            assert_eq!(limits.at_once.available_permits(), 10_000);
            // A request that is gone decodes nothing more.
            gone.store(true, Ordering::Relaxed);
            let before = out.len();
            assert_eq!(
                fresh.image(&sixty, &mut out).unwrap_err().status,
                StatusCode::SERVICE_UNAVAILABLE
            );
            assert_eq!(out.len(), before);
            out.len()
        })
        .await
        .unwrap();
        assert_eq!(result, 2 * crate::data::preprocess::INPUT_LEN);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_photo_counts_the_pixels_of_its_scaled_decode() {
        // 640x427 declares 273,280 pixels and decodes at 1/4: 160x107, 17,120.
        let photo = RgbImage::from_fn(640, 427, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode_image(&photo)
            .unwrap();
        let limits = PixelLimits::new(20_000);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut decoding = limits.request(deadline, Arc::new(AtomicBool::new(false)));
        let left = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            decoding.image(&jpeg, &mut out).unwrap();
            assert_eq!(out.len(), crate::data::preprocess::INPUT_LEN);
            decoding.left
        })
        .await
        .unwrap();
        assert_eq!(left, 20_000 - 160 * 107);
    }

    // Issue 28, point 1: an 8192x8192 colour progressive JPEG counted as its 1/8 decode (1M
    // pixels) while its decode held 402 MB of coefficients.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_progressive_jpeg_counts_the_memory_of_its_coefficients() {
        use crate::data::jpeg::synthetic::flat_progressive;
        let limits = PixelLimits::new(DEFAULT_MAX_DECODE_PIXELS);
        let deadline = Instant::now() + Duration::from_secs(30);
        let (bomb, photo) = (
            flat_progressive(8192, 8192, 3, 10),
            flat_progressive(4000, 3000, 3, 10),
        );
        let mut decoding = limits.request(deadline, Arc::new(AtomicBool::new(false)));
        let (refused, left) = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let refused = decoding.image(&bomb, &mut out).unwrap_err();
            // A 4000x3000 progressive photo is taken: 24 million pixels' worth.
            decoding.image(&photo, &mut out).unwrap();
            assert_eq!(out.len(), crate::data::preprocess::INPUT_LEN);
            (refused, decoding.left)
        })
        .await
        .unwrap();
        assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
        for part in [
            "8192x8192",
            "progressive",
            "135266304",
            "--max-decode-pixels",
        ] {
            assert!(refused.message.contains(part), "{}", refused.message);
        }
        assert_eq!(
            left,
            DEFAULT_MAX_DECODE_PIXELS - 500 * 375 - 500 * 375 * 128
        );
    }

    #[tokio::test]
    async fn slots_held_by_abandoned_decodes_are_counted_until_they_end() {
        let slots = DecoderSlots::new(2);
        // A decode that ends while its request waits is never abandoned.
        let slot = slots.acquire().await.unwrap();
        let waiter = slot.waiter();
        drop(slot);
        drop(waiter);
        assert_eq!(slots.abandoned.load(Ordering::Acquire), 0);
        // Two decodes whose requests let go first (a timeout, a client gone).
        let (a, b) = (
            slots.acquire().await.unwrap(),
            slots.acquire().await.unwrap(),
        );
        let (wa, wb) = (a.waiter(), b.waiter());
        drop(wa);
        assert!(!slots.all_abandoned(), "one slot of two");
        drop(wb);
        assert!(slots.all_abandoned());
        // One ends: its slot is free again.
        drop(a);
        assert!(!slots.all_abandoned());
        drop(b);
        assert_eq!(slots.abandoned.load(Ordering::Acquire), 0);
        assert_eq!(slots.slots.available_permits(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_server_makes_large_images_wait_until_the_deadline() {
        let limits = PixelLimits::new(10_000);
        let held = Arc::clone(&limits.at_once).acquire_many_owned(10_000).await;
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut decoding = limits.request(deadline, Arc::new(AtomicBool::new(false)));
        let (small, large) = (png(32), png(70));
        let statuses = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            // A small image does not wait; a large one waits for room, then gives up.
            let small = decoding.image(&small, &mut out).map(|_| ());
            let large = decoding.image(&large, &mut out).map_err(|e| e.status);
            (small, large)
        })
        .await
        .unwrap();
        assert_eq!(statuses, (Ok(()), Err(StatusCode::SERVICE_UNAVAILABLE)));
        drop(held);
    }
}
