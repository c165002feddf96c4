//! JPEG photos decoded small: the DCT itself scaled to 1/2, 1/4 or 1/8 (what PIL's `draft` and
//! libjpeg's `scale_num` do), so that a 4000x3000 photo is never decoded at its full size, and a
//! check that the file is whole (a JPEG cut short otherwise decodes as its first part, silently).
//!
//! The decoder is libjpeg-turbo (its TurboJPEG API, linked statically: see .cargo/config.toml),
//! the one PIL runs; this module is the only place that calls it, hence its `unsafe`.

use std::ffi::{CStr, c_int, c_ulong};

use anyhow::{Result, bail};
use turbojpeg_sys as tj;

/// The least the scaled decode keeps on each axis: twice the model's side, so that the
/// antialiased resize after it still has two source pixels or more behind each output pixel.
pub const MIN_SCALED_SIDE: u32 = 2 * super::preprocess::SIDE;

/// A JPEG whose header has been read and whose decode is set to the smallest DCT scale that keeps
/// [`MIN_SCALED_SIDE`] on both axes.
pub struct ScaledJpeg<'a> {
    bytes: &'a [u8],
    /// Width and height the header declares.
    declared: (u32, u32),
    /// Width and height the decode gives.
    scaled: (u32, u32),
}

/// Width or height after a DCT scale of `eighths`/8: libjpeg's rounding up.
fn scaled_len(len: u32, eighths: u32) -> u32 {
    (len * eighths).div_ceil(8)
}

/// The fewest eighths (1, 2, 4 or 8) that keep both sides at [`MIN_SCALED_SIDE`] or more.
fn eighths_for(width: u32, height: u32) -> u32 {
    [1, 2, 4]
        .into_iter()
        .find(|&e| {
            scaled_len(width, e) >= MIN_SCALED_SIDE && scaled_len(height, e) >= MIN_SCALED_SIDE
        })
        .unwrap_or(8)
}

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

impl<'a> ScaledJpeg<'a> {
    /// Reads the header of the JPEG in `bytes`. `Ok(None)` when a DCT-scaled decode would gain
    /// nothing (the image is less than twice [`MIN_SCALED_SIDE`] on a side), or this decoder
    /// does not read the header or gives no 8-bit RGB for it (12-bit, arithmetic-coded, CMYK):
    /// the general decoder takes those. `max_pixels` refuses a larger declared size before
    /// anything is allocated.
    pub fn open(bytes: &'a [u8], max_pixels: u64) -> Result<Option<Self>> {
        check_complete(bytes)?;
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
        if u64::from(width) * u64::from(height) > max_pixels {
            bail!("image is {width}x{height} pixels, more than the {max_pixels}-pixel limit");
        }
        let colorspace = u32::try_from(colorspace).unwrap_or(u32::MAX);
        if ![tj::TJCS_TJCS_RGB, tj::TJCS_TJCS_YCbCr, tj::TJCS_TJCS_GRAY].contains(&colorspace) {
            return Ok(None);
        }
        let eighths = eighths_for(width, height);
        if eighths == 8 {
            return Ok(None);
        }
        // TurboJPEG takes the largest scale whose size fits in the one asked: asking for exactly
        // this scale's size gets this scale.
        Ok(Some(Self {
            bytes,
            declared: (width, height),
            scaled: (scaled_len(width, eighths), scaled_len(height, eighths)),
        }))
    }

    /// Width and height the header declares.
    pub fn declared(&self) -> (u32, u32) {
        self.declared
    }

    /// Width and height of the scaled decode.
    pub fn scaled(&self) -> (u32, u32) {
        self.scaled
    }

    /// Decodes at the scale chosen: 8-bit RGB (grey replicated), row-major. A warning of the
    /// decoder is an error: corrupt entropy-coded data (which it would fill with grey), and stray
    /// bytes before a marker too, since corrupt data that still decodes ends in the same warning.
    pub fn decode_rgb(self) -> Result<Vec<u8>> {
        let decoder = Decompressor::new()?;
        let (w, h) = self.scaled;
        let mut rgb = vec![0u8; 3 * w as usize * h as usize];
        let (w, h) = (c_int::try_from(w)?, c_int::try_from(h)?);
        // SAFETY: the handle is live; the source is `bytes` with its length; the destination
        // holds `h` rows of `3 * w` bytes (pitch 0: packed rows), and the scale TurboJPEG picks
        // for a requested `w` x `h` gives at most that size.
        let done = unsafe {
            tj::tjDecompress2(
                decoder.0,
                self.bytes.as_ptr(),
                jpeg_size(self.bytes)?,
                rgb.as_mut_ptr(),
                w,
                0,
                h,
                tj::TJPF_TJPF_RGB,
                tj::TJFLAG_STOPONWARNING as c_int,
            )
        };
        if done != 0 {
            bail!("cannot decode the JPEG: {}", decoder.error());
        }
        Ok(rgb)
    }
}

/// Refuses a JPEG that stops before its end-of-image marker: the markers are walked (segments by
/// their lengths, entropy-coded data up to the next marker), so that an EXIF thumbnail's own end
/// marker, early in the file, does not count. Bytes after the end marker are allowed (cameras
/// and editors append some).
pub fn check_complete(bytes: &[u8]) -> Result<()> {
    let truncated = || anyhow::anyhow!("the JPEG is truncated (no end-of-image marker)");
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        bail!("not a JPEG (no start-of-image marker)");
    }
    let mut i = 2;
    loop {
        // A marker: 0xFF (fill bytes allowed), then its code.
        if bytes.get(i) != Some(&0xFF) {
            bail!("the JPEG is corrupt (no marker at byte {i})");
        }
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let code = *bytes.get(i).ok_or_else(truncated)?;
        i += 1;
        match code {
            0xD9 => return Ok(()),
            // Markers without a segment: RSTn, TEM.
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let len = match bytes.get(i..i + 2) {
            Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => return Err(truncated()),
        };
        if len < 2 {
            bail!("the JPEG is corrupt (a segment of length {len} at byte {i})");
        }
        i += len;
        if i > bytes.len() {
            return Err(truncated());
        }
        if code == 0xDA {
            // Entropy-coded data follows a start of scan, up to the next marker that is neither
            // a stuffed 0xFF00 nor a restart marker.
            loop {
                let at = memchr::memchr(0xFF, &bytes[i..]).ok_or_else(truncated)?;
                i += at;
                match bytes.get(i + 1) {
                    None => return Err(truncated()),
                    Some(0x00 | 0xD0..=0xD7) => i += 2,
                    Some(0xFF) => i += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_keeps_twice_the_model_side_on_both_axes() {
        assert_eq!(eighths_for(4000, 3000), 1); // 500x375
        assert_eq!(eighths_for(640, 427), 2); // 160x107 (1/8 would give 80x54)
        assert_eq!(eighths_for(640, 200), 4); // 320x100
        assert_eq!(eighths_for(120, 1000), 8); // 1/2 would give 60x500: no scaling
        assert_eq!(eighths_for(128, 1000), 4);
        assert_eq!(eighths_for(32, 32), 8);
        assert_eq!(scaled_len(427, 2), 107);
    }
}
