//! JPEG photos decoded small: the DCT itself scaled to 1/2, 1/4 or 1/8 (what PIL's `draft` and
//! libjpeg's `scale_num` do), so that a 4000x3000 photo is never decoded at its full size, and a
//! check, before either decoder runs, that the file is whole (a JPEG cut short otherwise decodes
//! as its first part, silently) and of few enough scans, which also tells the memory a progressive
//! decode holds whatever its scale ([`inspect`]).
//!
//! Two decoders do the scaled decode, chosen when maas is built: libjpeg-turbo (the one PIL
//! runs, about twice as fast) with the `turbojpeg` feature, which links Debian's static
//! `libturbojpeg0-dev` (see .cargo/config.toml; `.ci/run` and the Dockerfile build with it), and
//! the pure-Rust `jpeg-decoder` otherwise, so that a plain `cargo build` needs no C library.
//! Both give the same scale and the same checks; this module holds what they share.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

pub mod synthetic;

#[cfg(not(feature = "turbojpeg"))]
#[path = "jpeg/pure.rs"]
mod decoder;
#[cfg(feature = "turbojpeg")]
#[path = "jpeg/turbo.rs"]
#[allow(unsafe_code)]
mod decoder;

/// The error of a decode told to stop (serve's, once nobody waits for the answer).
pub const STOPPED: &str = "decoding stopped: nobody waits for the answer any more";

/// What a decoder reads from a JPEG's header.
struct Header {
    width: u32,
    height: u32,
}

/// The least the scaled decode keeps on each axis: twice the model's side, so that the
/// antialiased resize after it still has two source pixels or more behind each output pixel.
pub const MIN_SCALED_SIDE: u32 = 64;

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
    /// anything is allocated. `_inspected` is what [`inspect`] found in `bytes`: only a whole
    /// JPEG of few enough scans is decoded.
    pub fn open(bytes: &'a [u8], _inspected: &Layout, max_pixels: u64) -> Result<Option<Self>> {
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
    /// Nothing is decoded once `stop` is set; a decode under way stops with jpeg-decoder (at its
    /// next read of the file) and runs to its end with libjpeg-turbo.
    pub fn decode_rgb(self, stop: Option<&AtomicBool>) -> Result<Vec<u8>> {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            bail!(STOPPED);
        }
        let rgb = decoder::decode_scaled(self.bytes, self.scaled, stop)?;
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

/// Most scans (start-of-scan segments) a JPEG may have; more are refused before any is decoded.
///
/// A progressive decode keeps the coefficients of the whole image and goes over all of a
/// component's blocks at every scan, even one of a few bytes: an 8192x8192 file of 2,000 scans of
/// 80 bytes took 19 s of CPU (9.4 ms a scan), and a 16 MiB body would have held a core for half
/// an hour. Encoders write far fewer: libjpeg's progressive script has 10 scans (6 for grey),
/// mozjpeg's searched ones a dozen or two, a sequential file one per component. zune-jpeg (the
/// `image` crate's JPEG decoder) refuses more than 100 too; libjpeg-turbo's own limit
/// (`TJFLAG_LIMITSCANS`, also set in the turbo build) is 500. With this cap a scan-heavy file
/// costs at most 100 passes over its blocks, and the blocks are bounded by the pixel limits.
pub const MAX_SCANS: usize = 100;

/// What the walk over a whole JPEG's markers learns (see [`inspect`], the only maker of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Layout {
    /// Start-of-scan segments: at most [`MAX_SCANS`].
    pub scans: usize,
    /// Whether the frame is progressive (SOF2, SOF6, SOF10, SOF14).
    pub progressive: bool,
    /// Bytes of DCT coefficients the decoders hold for the whole image, at full resolution
    /// whatever the DCT scale of the output: those of every block of every component, 2 bytes a
    /// coefficient, when the file is progressive or its first scan leaves components out (libjpeg
    /// then buffers the whole image too); 0 for a sequential file of one scan, decoded as it is
    /// read.
    pub coefficient_bytes: u64,
}

/// One component of a frame header: its sampling factors.
#[derive(Clone, Copy)]
struct Sampling {
    h: u64,
    v: u64,
}

/// The frame header's fields that size the coefficient buffers.
struct Frame {
    progressive: bool,
    width: u64,
    height: u64,
    components: Vec<Sampling>,
}

impl Frame {
    /// Reads a start-of-frame segment's body (after its length).
    fn read(code: u8, body: &[u8]) -> Result<Self> {
        let corrupt = || anyhow::anyhow!("the JPEG is corrupt (a frame header too short)");
        let &[_precision, y0, y1, x0, x1, count, ref rest @ ..] = body else {
            return Err(corrupt());
        };
        let components = rest
            .get(..3 * usize::from(count))
            .ok_or_else(corrupt)?
            .chunks_exact(3)
            .map(|c| Sampling {
                h: u64::from(c[1] >> 4),
                v: u64::from(c[1] & 0x0F),
            })
            .collect();
        Ok(Self {
            progressive: matches!(code, 0xC2 | 0xC6 | 0xCA | 0xCE),
            width: u64::from(u16::from_be_bytes([x0, x1])),
            height: u64::from(u16::from_be_bytes([y0, y1])),
            components,
        })
    }

    /// Bytes of coefficients of every block of every component: libjpeg's whole-image buffer
    /// (jdcoefct.c), blocks rounded up to whole MCUs, 64 coefficients of 2 bytes a block.
    fn coefficient_bytes(&self) -> u64 {
        let h_max = self
            .components
            .iter()
            .map(|c| c.h)
            .max()
            .unwrap_or(1)
            .max(1);
        let v_max = self
            .components
            .iter()
            .map(|c| c.v)
            .max()
            .unwrap_or(1)
            .max(1);
        self.components
            .iter()
            .map(|c| {
                let (h, v) = (c.h.max(1), c.v.max(1));
                let across = (self.width * h).div_ceil(8 * h_max).next_multiple_of(h);
                let down = (self.height * v).div_ceil(8 * v_max).next_multiple_of(v);
                across * down * 64 * 2
            })
            .sum()
    }
}

/// Walks a JPEG's markers before it is decoded, every JPEG whichever decoder takes it: refuses
/// one that stops before its end-of-image marker or has more than [`MAX_SCANS`] scans, and tells
/// what its decode holds in memory.
///
/// The markers are walked (segments by their lengths, entropy-coded data up to the next marker),
/// so that an EXIF thumbnail's own end marker, early in the file, does not count. Bytes after the
/// end marker are allowed (cameras and editors append some). A JPEG cut short otherwise decodes
/// as its first part, silently.
pub fn inspect(bytes: &[u8]) -> Result<Layout> {
    let mut scans = 0;
    let mut frame: Option<Frame> = None;
    // Whether the first scan leaves components out (a sequential file in several scans).
    let mut partial_scan = false;
    walk(bytes, |code, body| {
        match code {
            // Start of frame: every 0xC0-0xCF but DHT (C4), JPG (C8) and DAC (CC). Only the first
            // counts (hierarchical files, which have more, are not decoded).
            0xC0..=0xCF if !matches!(code, 0xC4 | 0xC8 | 0xCC) && frame.is_none() => {
                frame = Some(Frame::read(code, body)?);
            }
            0xDA => {
                scans += 1;
                if scans > MAX_SCANS {
                    bail!(
                        "the JPEG has more than {MAX_SCANS} scans: too many to decode (a \
                         progressive photo has about 10)"
                    );
                }
                if scans == 1
                    && let (Some(frame), Some(&in_scan)) = (&frame, body.first())
                {
                    partial_scan = usize::from(in_scan) < frame.components.len();
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    let progressive = frame.as_ref().is_some_and(|f| f.progressive);
    let coefficient_bytes = match &frame {
        Some(f) if f.progressive || partial_scan => f.coefficient_bytes(),
        _ => 0,
    };
    Ok(Layout {
        scans,
        progressive,
        coefficient_bytes,
    })
}

/// Walks the markers of a whole JPEG (see [`inspect`]), handing `segment` the code and
/// body (after the length) of each marker segment, in order.
fn walk(bytes: &[u8], mut segment: impl FnMut(u8, &[u8]) -> Result<()>) -> Result<()> {
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
        let body = bytes.get(i + 2..i + len).ok_or_else(truncated)?;
        segment(code, body)?;
        i += len;
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

    // Issue 28, point 1: an 8192x8192 progressive JPEG of 2,000 scans of a few bytes took 19 s
    // of CPU to decode (11.7 s with libjpeg-turbo); now it is refused from its markers.
    #[test]
    fn scan_bombs_are_refused_before_decoding() {
        use crate::data::preprocess::{INPUT_LEN, image_bytes_to_input};
        let bomb = synthetic::flat_progressive(8192, 8192, 3, 2000);
        for err in [
            format!("{:#}", inspect(&bomb).unwrap_err()),
            format!("{:#}", image_bytes_to_input(&bomb).unwrap_err()),
        ] {
            assert!(err.contains("more than 100 scans"), "{err}");
        }
        // One scan over the cap, on both paths: the scaled decode (128 px or more a side) and the
        // general decoder (smaller).
        for side in [256, 64] {
            let over = synthetic::flat_progressive(side, side, 3, MAX_SCANS + 1);
            let err = format!("{:#}", image_bytes_to_input(&over).unwrap_err());
            assert!(err.contains("more than 100 scans"), "{side}: {err}");
            // At the cap it decodes: flat mid-grey.
            let at = synthetic::flat_progressive(side, side, 3, MAX_SCANS);
            assert_eq!(inspect(&at).unwrap().scans, MAX_SCANS);
            let input = image_bytes_to_input(&at).unwrap();
            assert_eq!(input.len(), INPUT_LEN);
            assert!(
                input.iter().all(|&v| (v - 128.0 / 255.0).abs() < 0.01),
                "{side}"
            );
        }
    }

    #[test]
    fn a_progressive_decode_holds_the_coefficients_of_the_whole_image() {
        // 8192x8192 colour: 3 components of 1024x1024 blocks of 64 coefficients of 2 bytes,
        // whatever the scale of the decode (1/8 here).
        let layout = inspect(&synthetic::flat_progressive(8192, 8192, 3, 10)).unwrap();
        assert!(layout.progressive);
        assert_eq!(layout.coefficient_bytes, 3 * 1024 * 1024 * 128);
        // Grey, a size that is no multiple of 8: blocks rounded up.
        let layout = inspect(&synthetic::flat_progressive(1001, 999, 1, 3)).unwrap();
        assert_eq!(layout.coefficient_bytes, 126 * 125 * 128);
        // A 4000x3000 photo in 4:2:0 (luma 2x2, chroma 1x1): 500x376 luma blocks (whole MCU
        // rows), 250x188 for each chroma, 36 MB.
        let photo = Frame {
            progressive: true,
            width: 4000,
            height: 3000,
            components: vec![
                Sampling { h: 2, v: 2 },
                Sampling { h: 1, v: 1 },
                Sampling { h: 1, v: 1 },
            ],
        };
        assert_eq!(photo.coefficient_bytes(), (500 * 376 + 2 * 250 * 188) * 128);
        // A sequential file of one scan is decoded as it is read: nothing held.
        let mut baseline = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut baseline)
            .encode_image(&image::RgbImage::new(640, 427))
            .unwrap();
        let baseline = inspect(&baseline).unwrap();
        assert_eq!((baseline.progressive, baseline.scans), (false, 1));
        assert_eq!(baseline.coefficient_bytes, 0);
    }
}
