//! Image to model input: THE one preprocessing, shared by training, prediction, serving and the
//! metadata of every exported model, so that what the model saw in training is what it sees in
//! production.
//!
//! CIFAR-10 records are already 32x32 RGB bytes, channel-major; any other image is decoded,
//! turned to RGB (grey is replicated, alpha is dropped, as PIL's `convert("RGB")` does), resized
//! to 32x32 with a triangle filter, and laid out channel-major. Both then go through
//! [`normalize`]: bytes scaled to [0, 1].

use std::borrow::Cow;
use std::io::{BufRead, Cursor, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use image::{
    DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage, imageops::FilterType,
};

use super::jpeg::{self, ScaledJpeg};
use serde::{Deserialize, Serialize};

/// Width and height of the model's input.
pub const SIDE: u32 = 32;
/// Values in one model input: 3 channels of 32x32.
pub const INPUT_LEN: usize = 3 * (SIDE * SIDE) as usize;
// The JPEG decoder scales down to no less than twice the input's side (see its comment).
const _: () = assert!(jpeg::MIN_SCALED_SIDE == 2 * SIDE);
/// Largest image accepted, in pixels: larger ones are refused before they are decoded, so that a
/// small file claiming huge dimensions (a decompression bomb) cannot exhaust memory.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;
/// Largest image file read, in bytes: an uncompressed 8-bit RGBA image at the pixel limit
/// (256 MiB). Compressed images of that size are far smaller; the bound is for what is not an
/// image at all (`/dev/zero`, a runaway file).
pub const MAX_FILE_BYTES: u64 = 4 * MAX_PIXELS;

/// The largest difference in a model input value (on the 0-1 scale) between a JPEG decoded at a
/// reduced DCT scale and the same JPEG decoded at full size, both then resized: what the tests
/// hold the scaled path to (README, "Photos").
pub const MAX_SCALED_DIFFERENCE: f32 = 0.08;

/// A description of the preprocessing, saved in every model file and checked on load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Colour channels and their order.
    pub color: String,
    /// Memory layout of the input.
    pub layout: String,
    /// Height and width the image is resized to.
    pub size: [u32; 2],
    /// Resampling filter used to resize.
    pub resize: String,
    /// Factor applied to each 0-255 byte.
    pub scale: f32,
    /// How images are decoded before the resize, in words (absent in files written before
    /// JPEGs were decoded at a reduced DCT scale; informative, not checked on load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode: Option<String>,
}

impl Preprocessing {
    /// The preprocessing this maas applies.
    pub fn current() -> Self {
        Self {
            color: "rgb".into(),
            layout: "chw".into(),
            size: [SIDE, SIDE],
            resize: "triangle, aspect ratio not kept".into(),
            scale: 1.0 / 255.0,
            decode: Some(
                "JPEG of 128 px or more a side: decoded at the smallest DCT scale (1/2, 1/4, 1/8) \
                 keeping 64 px or more on both axes, then resized; other images decoded at full \
                 size; triangle filter, antialiased"
                    .into(),
            ),
        }
    }

    /// Whether a model made with `self` takes the same inputs as one made with `other`: everything
    /// but the [`Self::decode`] description, which files of before lack.
    pub fn compatible_with(&self, other: &Self) -> bool {
        let Self {
            color,
            layout,
            size,
            resize,
            scale,
            decode: _,
        } = other;
        (
            &self.color,
            &self.layout,
            &self.size,
            &self.resize,
            &self.scale,
        ) == (color, layout, size, resize, scale)
    }
}

/// Channel-major RGB bytes (`[3, 32, 32]`) to model input values in [0, 1], appended to `out`.
///
/// Appended, not written over zeros: filling a zeroed buffer took twice as long (training
/// assembles every batch with this).
pub fn normalize(pixels: &[u8], out: &mut Vec<f32>) {
    out.extend(pixels.iter().map(|&p| pixel_value(p)));
}

/// THE scaling of one byte to a model input value; every path goes through it.
const fn pixel_value(p: u8) -> f32 {
    p as f32 * (1.0 / 255.0)
}

/// An image of any size and colour type to channel-major RGB bytes of 32x32.
pub fn image_to_chw(image: &DynamicImage) -> Vec<u8> {
    let rgb = rgb_32x32(image);
    let plane = (SIDE * SIDE) as usize;
    let mut chw = vec![0u8; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = px.0[c];
        }
    }
    chw
}

/// Decodes and preprocesses an encoded image into channel-major RGB bytes of 32x32: what
/// training on a folder keeps of each image (one byte a value, normalised per batch).
pub fn image_bytes_to_chw(bytes: &[u8]) -> Result<Vec<u8>> {
    Ok(image_to_chw(&open_image(bytes)?.decode()?))
}

/// Decodes an encoded image (any format the `image` crate reads, told by its content); the
/// header is read first, and an image of more than [`MAX_PIXELS`] pixels is refused undecoded.
/// A large JPEG comes at its reduced DCT scale (see [`OpenedImage::decode`]).
pub fn decode_image(bytes: &[u8]) -> Result<DynamicImage> {
    open_image(bytes)?.decode()
}

/// The message of a decoder's error, each cause once. The `image` crate's errors (and those of
/// the decoders below it) put their cause in their own message and return it as their source
/// too, so printing the chain said it twice: "Format error decoding Png: X: X". A cause already
/// in the message is left out; one that is not is kept.
fn image_error(error: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    anyhow::anyhow!(message)
}

/// The limits decoding runs under: at most 1 GiB allocated.
fn decode_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(1 << 30);
    limits
}

/// Reads and preprocesses the image file at `path` into model input values.
pub fn load_image_file(path: &Path) -> Result<Vec<f32>> {
    if path.is_dir() {
        anyhow::bail!("is a folder, expected an image file");
    }
    let bytes = crate::fsutil::read_regular(path, MAX_FILE_BYTES)?;
    image_bytes_to_input(&bytes)
}

/// Decodes and preprocesses an encoded image into model input values.
pub fn image_bytes_to_input(bytes: &[u8]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(INPUT_LEN);
    open_image(bytes)?.to_input(&mut out)?;
    Ok(out)
}

/// [`image_bytes_to_input`] for an image that declares at most `max_pixels` pixels: `None` when
/// it declares more or anything goes wrong, for the caller to take the general path (serve
/// decodes larger images off its async threads, under its pixel budget).
pub fn small_image_to_input(bytes: &[u8], max_pixels: u64) -> Option<Vec<f32>> {
    let image = open_image(bytes).ok()?;
    if image.pixels() > max_pixels {
        return None;
    }
    let mut out = Vec::with_capacity(INPUT_LEN);
    image.to_input(&mut out).ok()?;
    Some(out)
}

/// An encoded image whose header has been read: its size is known and no pixel is decoded yet,
/// so that a caller can refuse it, or wait for room, before paying for the pixels (a PNG of half
/// a megabyte can declare 8192x8192 16-bit pixels: 550 MB and a second of CPU).
pub struct OpenedImage<'a> {
    source: Source<'a>,
    /// Memory the decode holds besides its pixels, as pixels of 3 bytes: a progressive JPEG's
    /// coefficients, at full resolution whatever the scale of its decode (0 for anything else).
    held: u64,
    /// Set when nobody waits for the decode any more (see [`open_image_until`]).
    stop: Option<Arc<AtomicBool>>,
}

enum Source<'a> {
    /// A JPEG of at least 128 pixels a side, decoded at a reduced DCT scale.
    Jpeg(Box<ScaledJpeg<'a>>),
    /// Any other image, decoded at full size by the `image` crate.
    General(Box<dyn ImageDecoder + 'a>),
}

/// Reads the header of an encoded image (any format the `image` crate reads, told by its
/// content); an image of more than [`MAX_PIXELS`] pixels is refused here, undecoded. A JPEG cut
/// short is refused here too.
pub fn open_image(bytes: &[u8]) -> Result<OpenedImage<'_>> {
    open_image_until(bytes, None)
}

/// [`open_image`] for a decode that stops, with an error, at its next read once `stop` is set:
/// serve's decoding of a request that has been answered (a timeout) or abandoned. A large PNG
/// reads its data as it decodes, so it stops within a few rows, and so does a large JPEG with
/// jpeg-decoder (within a scan); libjpeg-turbo's decode (the `turbojpeg` build) cannot be stopped
/// once started and runs to its end. Either way a JPEG's cost is bounded before it starts: a
/// reduced DCT scale, at most [`jpeg::MAX_SCANS`] scans, and a progressive file's full-size
/// coefficients counted in [`OpenedImage::decoded_pixels`].
pub fn open_image_until(bytes: &[u8], stop: Option<Arc<AtomicBool>>) -> Result<OpenedImage<'_>> {
    let source = StopReader {
        inner: Cursor::new(bytes),
        stop: stop.clone(),
    };
    let mut reader = ImageReader::new(source)
        .with_guessed_format()
        .map_err(|e| image_error(&e))
        .context("cannot read image")?;
    let Some(format) = reader.format() else {
        anyhow::bail!("not an image in a format maas reads (PNG, JPEG, GIF, BMP, TIFF, WebP, ...)");
    };
    // Every JPEG, whichever decoder takes it, is walked first: whole, few enough scans, and the
    // memory of its coefficients known.
    let mut held = 0;
    if format == ImageFormat::Jpeg {
        let layout = jpeg::inspect(bytes)?;
        held = layout.coefficient_bytes.div_ceil(3);
        if let Some(jpeg) = ScaledJpeg::open(bytes, &layout, MAX_PIXELS)? {
            return Ok(OpenedImage {
                source: Source::Jpeg(Box::new(jpeg)),
                held,
                stop,
            });
        }
    }
    reader.limits(decode_limits());
    let image = OpenedImage {
        source: Source::General(Box::new(
            reader
                .into_decoder()
                .map_err(|e| image_error(&e))
                .context("cannot read the image's header")?,
        )),
        held,
        stop,
    };
    if image.pixels() > MAX_PIXELS {
        let (w, h) = image.dimensions();
        anyhow::bail!("image is {w}x{h} pixels, more than the {MAX_PIXELS}-pixel limit");
    }
    Ok(image)
}

/// The encoded bytes, read until a flag says stop.
struct StopReader<'a> {
    inner: Cursor<&'a [u8]>,
    stop: Option<Arc<AtomicBool>>,
}

impl StopReader<'_> {
    fn check(&self) -> std::io::Result<()> {
        match &self.stop {
            Some(stop) if stop.load(Ordering::Relaxed) => Err(std::io::Error::other(jpeg::STOPPED)),
            _ => Ok(()),
        }
    }
}

impl Read for StopReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.check()?;
        self.inner.read(buf)
    }
}

impl BufRead for StopReader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.check()?;
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        self.inner.consume(amount);
    }
}

impl Seek for StopReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(to)
    }
}

impl OpenedImage<'_> {
    /// Width and height, as the header declares them.
    pub fn dimensions(&self) -> (u32, u32) {
        match &self.source {
            Source::Jpeg(jpeg) => jpeg.declared(),
            Source::General(decoder) => decoder.dimensions(),
        }
    }

    /// Pixels, as the header declares them.
    pub fn pixels(&self) -> u64 {
        let (w, h) = self.dimensions();
        u64::from(w) * u64::from(h)
    }

    /// Pixels the decode will produce: fewer than [`Self::pixels`] for a JPEG decoded at a
    /// reduced DCT scale (a 4000x3000 photo decodes to 500x375). A progressive JPEG adds the
    /// memory of its coefficients, held at full resolution while it decodes, as pixels of 3
    /// bytes ([`Self::held_pixels`]): 2 bytes a pixel and component, 6 for 8192x8192 colour
    /// (402 MB, 134 million pixels' worth), 3 for a 4:2:0 photo (4000x3000: 36 MB, 12 million).
    pub fn decoded_pixels(&self) -> u64 {
        let (w, h) = match &self.source {
            Source::Jpeg(jpeg) => jpeg.scaled(),
            Source::General(decoder) => decoder.dimensions(),
        };
        u64::from(w) * u64::from(h) + self.held
    }

    /// The part of [`Self::decoded_pixels`] that is not pixels: a progressive JPEG's
    /// coefficients, as pixels of 3 bytes; 0 for anything else.
    pub fn held_pixels(&self) -> u64 {
        self.held
    }

    /// Decodes the pixels: a large JPEG at its reduced DCT scale, anything else at full size.
    pub fn decode(self) -> Result<DynamicImage> {
        match self.source {
            Source::Jpeg(jpeg) => {
                let (w, h) = jpeg.scaled();
                let rgb = jpeg.decode_rgb(self.stop.as_deref())?;
                RgbImage::from_raw(w, h, rgb)
                    .map(DynamicImage::ImageRgb8)
                    .context("cannot decode image: the JPEG decoded to the wrong size")
            }
            Source::General(decoder) => {
                // What `ImageReader::decode` checks before allocating the image.
                decode_limits()
                    .reserve(decoder.total_bytes())
                    .map_err(|e| image_error(&e))
                    .context("cannot decode image")?;
                DynamicImage::from_decoder(decoder)
                    .map_err(|e| image_error(&e))
                    .context("cannot decode image")
            }
        }
    }

    /// Decodes the pixels and appends the model input values to `out`: the preprocessing of
    /// [`image_bytes_to_input`].
    pub fn to_input(self, out: &mut Vec<f32>) -> Result<()> {
        image_to_input(&self.decode()?, out);
        Ok(())
    }
}

/// [`image_to_chw`] and [`normalize`] at once, without the intermediate bytes: a decoded image's
/// model input values, appended to `out`.
pub fn image_to_input(image: &DynamicImage, out: &mut Vec<f32>) {
    let rgb = rgb_32x32(image);
    let plane = (SIDE * SIDE) as usize;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    let (r, rest) = out[start..].split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (((px, r), g), b) in rgb.as_raw().chunks_exact(3).zip(r).zip(g).zip(b) {
        *r = SCALED[usize::from(px[0])];
        *g = SCALED[usize::from(px[1])];
        *b = SCALED[usize::from(px[2])];
    }
}

/// THE resize and colour conversion: the image as 8-bit RGB of 32x32, borrowed when it already is.
fn rgb_32x32(image: &DynamicImage) -> Cow<'_, RgbImage> {
    let is_side = image.width() == SIDE && image.height() == SIDE;
    match image.as_rgb8() {
        Some(rgb) if is_side => Cow::Borrowed(rgb),
        _ if is_side => Cow::Owned(image.to_rgb8()),
        Some(rgb) => Cow::Owned(resize_rgb(rgb)),
        None => Cow::Owned(resize_rgb(&image.to_rgb8())),
    }
}

/// THE resize: a triangle (bilinear) filter whose support widens with the reduction, so that
/// every source pixel counts (antialiased, as PIL's); SIMD through `fast_image_resize`.
fn resize_rgb(rgb: &RgbImage) -> RgbImage {
    use fast_image_resize::images::{Image, ImageRef};
    use fast_image_resize::{FilterType as Filter, PixelType, ResizeAlg, ResizeOptions, Resizer};
    let resized = ImageRef::new(rgb.width(), rgb.height(), rgb.as_raw(), PixelType::U8x3)
        .ok()
        .and_then(|src| {
            let mut dst = Image::new(SIDE, SIDE, PixelType::U8x3);
            let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(Filter::Bilinear));
            Resizer::new().resize(&src, &mut dst, &options).ok()?;
            Some(dst.into_vec())
        });
    match resized.and_then(|v| RgbImage::from_raw(SIDE, SIDE, v)) {
        Some(out) => out,
        // Not reached: the buffers above are made to fit. The `image` crate's triangle filter
        // rather than a panic.
        None => image::imageops::resize(rgb, SIDE, SIDE, FilterType::Triangle),
    }
}

/// Every byte's [`pixel_value`], computed at compile time: for one image a lookup costs less
/// than the conversion and product.
const SCALED: [f32; 256] = {
    let mut table = [0.0; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = pixel_value(i as u8);
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb, RgbImage, RgbaImage};

    fn png(image: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn channel_major_and_scaled_to_unit_range() {
        let mut img = RgbImage::new(32, 32);
        img.put_pixel(1, 0, Rgb([255, 0, 51]));
        let input = image_bytes_to_input(&png(&DynamicImage::ImageRgb8(img))).unwrap();
        assert_eq!(input.len(), INPUT_LEN);
        assert_eq!(input[1], 1.0); // red plane, x = 1
        assert_eq!(input[1024 + 1], 0.0); // green plane
        assert!((input[2048 + 1] - 0.2).abs() < 1e-6); // blue plane
    }

    #[test]
    fn any_size_grey_or_rgba_becomes_32x32_rgb() {
        let grey =
            DynamicImage::ImageLuma8(image::GrayImage::from_pixel(100, 60, image::Luma([128])));
        let input = image_bytes_to_input(&png(&grey)).unwrap();
        assert_eq!(input.len(), INPUT_LEN);
        assert!(input.iter().all(|&v| (v - 128.0 / 255.0).abs() < 1e-6));
        let rgba =
            DynamicImage::ImageRgba8(RgbaImage::from_pixel(7, 9, image::Rgba([0, 255, 0, 10])));
        let input = image_bytes_to_input(&png(&rgba)).unwrap();
        assert!(
            input[..1024].iter().all(|&v| v == 0.0) && input[1024..2048].iter().all(|&v| v == 1.0)
        );
    }

    #[test]
    fn the_one_pass_path_gives_the_same_values_as_the_general_one() {
        let mut rgb = RgbImage::new(32, 32);
        for (i, px) in rgb.pixels_mut().enumerate() {
            *px = Rgb([(i * 7) as u8, (i * 13 + 5) as u8, (i * 31) as u8]);
        }
        let grey = image::GrayImage::from_fn(50, 20, |x, y| image::Luma([(x * 5 + y) as u8]));
        for image in [
            DynamicImage::ImageRgb8(rgb),
            DynamicImage::ImageLuma8(grey),
            DynamicImage::ImageRgba8(RgbaImage::from_pixel(7, 9, image::Rgba([9, 250, 3, 10]))),
        ] {
            let bytes = png(&image);
            let mut general = Vec::new();
            normalize(&image_to_chw(&decode_image(&bytes).unwrap()), &mut general);
            let fast = small_image_to_input(&bytes, MAX_PIXELS).unwrap();
            assert_eq!(fast, general);
            assert_eq!(image_bytes_to_input(&bytes).unwrap(), general);
        }
        for i in 0..=255u8 {
            assert_eq!(SCALED[usize::from(i)], f32::from(i) * (1.0 / 255.0));
        }
        let big = png(&DynamicImage::ImageRgb8(RgbImage::new(40, 40)));
        assert!(small_image_to_input(&big, 1000).is_none());
        assert!(small_image_to_input(b"hello", MAX_PIXELS).is_none());
    }

    #[test]
    fn garbage_and_bombs_are_errors() {
        assert!(image_bytes_to_input(b"hello, I am text").is_err());
        assert!(image_bytes_to_input(&[]).is_err());
        let full = png(&DynamicImage::ImageRgb8(RgbImage::new(40, 40)));
        assert!(image_bytes_to_input(&full[..full.len() / 2]).is_err());
        // A PNG header that claims 100000 x 100000 pixels.
        let mut bomb = full.clone();
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = format!("{:#}", image_bytes_to_input(&bomb).unwrap_err());
        assert!(err.contains("limit"), "{err}");
        // The header alone tells: refused before any pixel is decoded.
        let err = format!("{:#}", open_image(&bomb).err().unwrap());
        assert!(err.contains("100000x100000"), "{err}");
        let opened = open_image(&full).unwrap();
        assert_eq!((opened.dimensions(), opened.pixels()), ((40, 40), 1600));
    }

    /// A smooth photo-like picture of `w` x `h`, as a JPEG of quality 90.
    pub(crate) fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            Rgb([
                (255.0 * fx) as u8,
                (255.0 * fy) as u8,
                (128.0 + 100.0 * (6.0 * fx + 4.0 * fy).sin()) as u8,
            ])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    }

    /// Today's values of a 32x32 image: decoded by the `image` crate, no resize, byte / 255.
    fn unresized(bytes: &[u8]) -> Vec<f32> {
        let rgb = image::load_from_memory(bytes).unwrap().to_rgb8();
        let mut out = vec![0.0; INPUT_LEN];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                out[c * 1024 + i] = f32::from(px.0[c]) * (1.0 / 255.0);
            }
        }
        out
    }

    #[test]
    fn images_of_32x32_give_exactly_the_values_of_before() {
        let rgb = RgbImage::from_fn(32, 32, |x, y| Rgb([(x * 8) as u8, (y * 8) as u8, 77]));
        for bytes in [png(&DynamicImage::ImageRgb8(rgb)), jpeg(32, 32)] {
            assert_eq!(image_bytes_to_input(&bytes).unwrap(), unresized(&bytes));
        }
    }

    #[test]
    fn large_jpegs_decode_scaled_and_close_to_a_full_decode() {
        for (w, h, decoded) in [
            (640, 427, (160, 107)),
            (1000, 700, (125, 88)),
            (200, 150, (100, 75)),
        ] {
            let bytes = jpeg(w, h);
            let opened = open_image(&bytes).unwrap();
            assert_eq!(opened.dimensions(), (w, h));
            assert_eq!(opened.decoded_pixels(), decoded.0 * decoded.1);
            let scaled = image_bytes_to_input(&bytes).unwrap();
            let full = image::load_from_memory(&bytes).unwrap();
            let mut reference = Vec::new();
            image_to_input(&full, &mut reference);
            let worst = scaled
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst <= MAX_SCALED_DIFFERENCE, "{w}x{h}: {worst}");
        }
        // Below 128 pixels on a side the general decoder takes it, at full size.
        let small = jpeg(120, 500);
        assert_eq!(open_image(&small).unwrap().decoded_pixels(), 120 * 500);
    }

    #[test]
    fn truncated_corrupt_and_huge_jpegs_are_errors() {
        for (w, h) in [(640, 427), (40, 40)] {
            let full = jpeg(w, h);
            for cut in [full.len() / 2, full.len() - 2, 300] {
                let err = format!("{:#}", image_bytes_to_input(&full[..cut]).unwrap_err());
                assert!(err.contains("truncated"), "{w}x{h} cut at {cut}: {err}");
            }
            // Bytes after the end marker are allowed; a segment length that lies is not.
            let mut trailing = full.clone();
            trailing.extend_from_slice(b"trailer");
            assert!(image_bytes_to_input(&trailing).is_ok());
            let mut lying = full.clone();
            lying[4..6].copy_from_slice(&[0, 1]);
            assert!(image_bytes_to_input(&lying).is_err());
        }
        // A frame header that claims 65000 x 65000 pixels: refused before any pixel is decoded.
        let mut bomb = jpeg(640, 427);
        let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bomb[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
        let err = format!("{:#}", open_image(&bomb).err().unwrap());
        assert!(
            err.contains("65000x65000") && err.contains("limit"),
            "{err}"
        );
    }

    #[test]
    fn the_decode_description_is_saved_but_files_without_it_still_load() {
        let current = Preprocessing::current();
        let json = serde_json::to_string(&current).unwrap();
        assert!(json.contains("DCT scale"), "{json}");
        let mut before: serde_json::Value = serde_json::from_str(&json).unwrap();
        before.as_object_mut().unwrap().remove("decode");
        let before: Preprocessing = serde_json::from_value(before).unwrap();
        assert_eq!(before.decode, None);
        assert!(before.compatible_with(&current));
        let other = Preprocessing {
            scale: 1.0,
            ..current.clone()
        };
        assert!(!other.compatible_with(&current));
    }

    #[test]
    fn a_decode_stops_at_its_next_read_once_told() {
        // Noise, so that the PNG's data is far larger than what reading its header buffers.
        let mut state = 1u32;
        let noisy = RgbImage::from_fn(512, 512, |_, _| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            Rgb([(state >> 24) as u8, (state >> 16) as u8, (state >> 8) as u8])
        });
        let bytes = png(&DynamicImage::ImageRgb8(noisy));
        let stop = Arc::new(AtomicBool::new(false));
        let opened = open_image_until(&bytes, Some(Arc::clone(&stop))).unwrap();
        stop.store(true, Ordering::Relaxed);
        let err = format!("{:#}", opened.to_input(&mut Vec::new()).unwrap_err());
        assert!(err.contains("stopped"), "{err}");
        let opened = open_image_until(&bytes, Some(Arc::new(AtomicBool::new(false)))).unwrap();
        assert!(opened.to_input(&mut Vec::new()).is_ok());
        // A JPEG at a reduced DCT scale, told before its decode starts, decodes nothing (it used
        // to run to its end whatever the flag said).
        let photo = jpeg(640, 427);
        let stop = Arc::new(AtomicBool::new(false));
        let opened = open_image_until(&photo, Some(Arc::clone(&stop))).unwrap();
        stop.store(true, Ordering::Relaxed);
        let err = format!("{:#}", opened.to_input(&mut Vec::new()).unwrap_err());
        assert!(err.contains("stopped"), "{err}");
    }

    #[test]
    fn a_progressive_jpeg_counts_its_coefficients_as_decoded_pixels() {
        use crate::data::jpeg::synthetic::flat_progressive;
        // 8192x8192 colour decodes at 1/8 (1024x1024) but holds 402 MB of coefficients: 134
        // million pixels of 3 bytes, more than the default limit of serve (MAX_PIXELS).
        let bomb = flat_progressive(8192, 8192, 3, 10);
        let opened = open_image(&bomb).unwrap();
        assert_eq!(opened.held_pixels(), 1024 * 1024 * 128);
        assert_eq!(opened.decoded_pixels(), 1024 * 1024 + 1024 * 1024 * 128);
        assert!(opened.decoded_pixels() > MAX_PIXELS);
        // A 4000x3000 progressive photo stays well within it (24 million in 4:4:4, 12 in 4:2:0),
        // and decodes.
        let photo = flat_progressive(4000, 3000, 3, 10);
        let opened = open_image(&photo).unwrap();
        assert_eq!(opened.decoded_pixels(), 500 * 375 + 3 * 500 * 375 * 128 / 3);
        assert!(opened.decoded_pixels() < MAX_PIXELS / 2);
        assert!(opened.to_input(&mut Vec::new()).is_ok());
        // Small ones on the general decoder count theirs too; baseline files nothing more.
        assert_eq!(
            open_image(&flat_progressive(64, 64, 1, 3))
                .unwrap()
                .decoded_pixels(),
            64 * 64 + (8 * 8 * 128u64).div_ceil(3)
        );
        assert_eq!(open_image(&jpeg(640, 427)).unwrap().held_pixels(), 0);
    }

    #[test]
    fn decoder_messages_say_each_cause_once() {
        let full = png(&DynamicImage::ImageRgb8(RgbImage::new(40, 40)));
        // A chunk type mangled (its checksum now wrong too), and a JPEG whose first marker lies.
        let mut chunk = full.clone();
        chunk[40] ^= 0xff;
        let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe0];
        jpeg.extend([0; 500]);
        for bytes in [chunk, jpeg] {
            let err = format!("{:#}", image_bytes_to_input(&bytes).unwrap_err());
            let parts: Vec<&str> = err.split(": ").collect();
            for (i, part) in parts.iter().enumerate() {
                assert!(!parts[i + 1..].contains(part), "said twice: {err}");
            }
        }
    }
}
