//! The scaled decode by libjpeg-turbo (its TurboJPEG 2 API, linked statically: see
//! .cargo/config.toml); the only place maas calls it, hence its `unsafe`.

use std::ffi::{CStr, c_int, c_ulong};
use std::sync::atomic::AtomicBool;

use anyhow::{Result, bail};
use turbojpeg_sys as tj;

use super::Header;

/// A TurboJPEG decompressor, destroyed when dropped.
struct Decompressor(tj::tjhandle);

impl Decompressor {
    fn new() -> Result<Self> {
        // SAFETY: no arguments; a null handle is checked.
        let handle = unsafe { tj::tjInitDecompress() };
        if handle.is_null() {
            bail!("cannot start the JPEG decoder");
        }
        Ok(Self(handle))
    }

    /// The decoder's message for its last failure.
    fn error(&self) -> String {
        // SAFETY: the handle is live; the message is a NUL-terminated string the handle owns,
        // copied before the handle is used again.
        let message = unsafe { CStr::from_ptr(tj::tjGetErrorStr2(self.0)) };
        message.to_string_lossy().trim().to_string()
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: the handle is live and dropped once.
        unsafe { tj::tjDestroy(self.0) };
    }
}

/// `bytes.len()` as the decoder takes it.
fn jpeg_size(bytes: &[u8]) -> Result<c_ulong> {
    Ok(c_ulong::try_from(bytes.len())?)
}

/// The header's size; `None` when TurboJPEG does not read it or gives no 8-bit RGB for it.
pub(super) fn read_header(bytes: &[u8]) -> Result<Option<Header>> {
    let decoder = Decompressor::new()?;
    let (mut width, mut height, mut subsampling, mut colorspace): (c_int, c_int, c_int, c_int) =
        (0, 0, 0, 0);
    // SAFETY: the handle is live, the buffer is `bytes` with its length, and the four
    // outputs are valid for writes.
    let read = unsafe {
        tj::tjDecompressHeader3(
            decoder.0,
            bytes.as_ptr(),
            jpeg_size(bytes)?,
            &mut width,
            &mut height,
            &mut subsampling,
            &mut colorspace,
        )
    };
    if read != 0 {
        return Ok(None);
    }
    let (Ok(width), Ok(height)) = (u32::try_from(width), u32::try_from(height)) else {
        bail!("the JPEG header declares a negative size");
    };
    let colorspace = u32::try_from(colorspace).unwrap_or(u32::MAX);
    if ![tj::TJCS_TJCS_RGB, tj::TJCS_TJCS_YCbCr, tj::TJCS_TJCS_GRAY].contains(&colorspace) {
        return Ok(None);
    }
    Ok(Some(Header { width, height }))
}

/// Decodes at the scale whose size is `(w, h)` (TurboJPEG takes the largest scale whose size
/// fits in the one asked: asking for exactly this scale's size gets this scale). A warning of the
/// decoder is an error: corrupt entropy-coded data (which it would fill with grey), and stray
/// bytes before a marker too, since corrupt data that still decodes ends in the same warning.
/// It runs to its end whatever `_stop` says: nothing in the TurboJPEG API stops a decode under
/// way, so its cost is bounded beforehand (`MAX_SCANS`, and the pixels a caller admits).
pub(super) fn decode_scaled(
    bytes: &[u8],
    (w, h): (u32, u32),
    _stop: Option<&AtomicBool>,
) -> Result<Vec<u8>> {
    let decoder = Decompressor::new()?;
    let mut rgb = vec![0u8; 3 * w as usize * h as usize];
    let (w, h) = (c_int::try_from(w)?, c_int::try_from(h)?);
    // SAFETY: the handle is live; the source is `bytes` with its length; the destination
    // holds `h` rows of `3 * w` bytes (pitch 0: packed rows), and the scale TurboJPEG picks
    // for a requested `w` x `h` gives at most that size.
    let done = unsafe {
        tj::tjDecompress2(
            decoder.0,
            bytes.as_ptr(),
            jpeg_size(bytes)?,
            rgb.as_mut_ptr(),
            w,
            0,
            h,
            tj::TJPF_TJPF_RGB,
            // LIMITSCANS: libjpeg-turbo's own cap on scans (500), behind `MAX_SCANS`.
            (tj::TJFLAG_STOPONWARNING | tj::TJFLAG_LIMITSCANS) as c_int,
        )
    };
    if done != 0 {
        bail!("cannot decode the JPEG: {}", decoder.error());
    }
    Ok(rgb)
}
