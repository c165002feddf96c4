//! JPEG photos decoded small: the DCT itself scaled to 1/2, 1/4 or 1/8 (what PIL's `draft` and
//! libjpeg's `scale_num` do), so that a 4000x3000 photo is never decoded at its full size, and a
//! check that the file is whole (a JPEG cut short otherwise decodes as its first part, silently).
//!
//! Two decoders do the scaled decode, chosen when maas is built: libjpeg-turbo (the one PIL
//! runs, about twice as fast) with the `turbojpeg` feature, which links Debian's static
//! `libturbojpeg0-dev` (see .cargo/config.toml; `.ci/run` and the Dockerfile build with it), and
//! the pure-Rust `jpeg-decoder` otherwise, so that a plain `cargo build` needs no C library.
//! Both give the same scale and the same checks; this module holds what they share.

use anyhow::{Result, bail};

#[cfg(not(feature = "turbojpeg"))]
#[path = "jpeg/pure.rs"]
mod decoder;
#[cfg(feature = "turbojpeg")]
#[path = "jpeg/turbo.rs"]
#[allow(unsafe_code)]
mod decoder;

/// What a decoder reads from a JPEG's header.
struct Header {
    width: u32,
    height: u32,
}

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

/// Width or height after a DCT scale of `eighths`/8: libjpeg's and jpeg-decoder's rounding up.
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

impl<'a> ScaledJpeg<'a> {
    /// Reads the header of the JPEG in `bytes`. `Ok(None)` when a DCT-scaled decode would gain
    /// nothing (the image is less than twice [`MIN_SCALED_SIDE`] on a side), or the decoder
    /// does not read the header or gives no 8-bit RGB for it (12-bit, arithmetic-coded, CMYK):
    /// the general decoder takes those. `max_pixels` refuses a larger declared size before
    /// anything is allocated.
    pub fn open(bytes: &'a [u8], max_pixels: u64) -> Result<Option<Self>> {
        check_complete(bytes)?;
        let Some(Header { width, height }) = decoder::read_header(bytes)? else {
            return Ok(None);
        };
        if u64::from(width) * u64::from(height) > max_pixels {
            bail!("image is {width}x{height} pixels, more than the {max_pixels}-pixel limit");
        }
        let eighths = eighths_for(width, height);
        if eighths == 8 {
            return Ok(None);
        }
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

    /// Decodes at the scale chosen: 8-bit RGB (grey replicated), row-major, `3 * w * h` bytes.
    pub fn decode_rgb(self) -> Result<Vec<u8>> {
        let rgb = decoder::decode_scaled(self.bytes, self.scaled)?;
        let expected = 3 * self.scaled.0 as usize * self.scaled.1 as usize;
        if rgb.len() != expected {
            bail!(
                "the JPEG decoded to {} bytes, expected {expected}",
                rgb.len()
            );
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
