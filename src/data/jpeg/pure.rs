//! The scaled decode by `jpeg-decoder` (pure Rust): what a build without libjpeg-turbo uses.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use jpeg_decoder::{Decoder, PixelFormat};

use super::{Header, STOPPED};

/// The header's size; `None` when the decoder gives no 8-bit RGB or grey for it (16-bit, CMYK).
pub(super) fn read_header(bytes: &[u8]) -> Result<Option<Header>> {
    let mut decoder = Decoder::new(bytes);
    decoder.read_info().context("cannot read the JPEG header")?;
    let Some(info) = decoder.info() else {
        bail!("cannot read the JPEG header");
    };
    Ok(match info.pixel_format {
        PixelFormat::RGB24 | PixelFormat::L8 => Some(Header {
            width: u32::from(info.width),
            height: u32::from(info.height),
        }),
        _ => None,
    })
}

/// Decodes at the scale whose size is `(w, h)` (jpeg-decoder picks the smallest scale that
/// reaches the request on either axis: asking for exactly this scale's size gets this scale).
/// Once `stop` is set the decode ends, with an error, at its next read of the file: jpeg-decoder
/// reads as it decodes, so a progressive file stops within the scan under way.
pub(super) fn decode_scaled(
    bytes: &[u8],
    (w, h): (u32, u32),
    stop: Option<&AtomicBool>,
) -> Result<Vec<u8>> {
    let mut decoder = Decoder::new(Stoppable { bytes, stop });
    decoder.read_info().context("cannot read the JPEG header")?;
    let grey = matches!(decoder.info(), Some(info) if info.pixel_format == PixelFormat::L8);
    decoder
        .scale(u16::try_from(w)?, u16::try_from(h)?)
        .context("cannot scale the JPEG decode")?;
    let pixels = decoder.decode().context("cannot decode the JPEG")?;
    Ok(if grey {
        pixels.iter().flat_map(|&p| [p, p, p]).collect()
    } else {
        pixels
    })
}

/// The file's bytes, read until a flag says stop.
struct Stoppable<'a> {
    bytes: &'a [u8],
    stop: Option<&'a AtomicBool>,
}

impl Read for Stoppable<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(std::io::Error::other(STOPPED));
        }
        self.bytes.read(buf)
    }
}
