//! Where a photo's preprocessing time goes, and how much the DCT-scaled decode changes the
//! model's input and answer (bench/photos.py runs it; see bench/README.md, "Photos").
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --example photo_bench -- [--model M.maas] PHOTO...
//! ```
//!
//! Per size of photo: the time of a full decode and of the resize after it (what maas did before
//! issue 13: `image` crate decode, its triangle filter), and of maas's preprocessing now, best of
//! a few runs each on the calling thread, and of the pure-Rust scaled decode maas used before
//! libjpeg-turbo (`jpeg-decoder` at the same DCT scale, then the same resize). Over all photos:
//! the largest difference of one input value between now and a full decode + the same resize, and
//! with `--model`, the share of photos whose predicted class is the same as with the
//! preprocessing of before.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use image::DynamicImage;
use image::imageops::FilterType;
use maas::artifact::export::load_model;
use maas::data::preprocess::{INPUT_LEN, image_bytes_to_input, image_to_input, normalize};
use maas::device::{DeviceChoice, select};
use maas::infer::predict::Classifier;

/// The best time of `runs` calls (one at least), and the last call's result.
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let t = Instant::now();
    let mut out = f();
    let mut best = t.elapsed();
    for _ in 1..runs {
        let t = Instant::now();
        out = f();
        best = best.min(t.elapsed());
    }
    (best, out)
}

/// Channel-major values of a 32x32 RGB image.
fn values(rgb: &image::RgbImage) -> Vec<f32> {
    let mut chw = vec![0u8; INPUT_LEN];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            chw[c * 1024 + i] = px.0[c];
        }
    }
    let mut out = Vec::new();
    normalize(&chw, &mut out);
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[derive(Default)]
struct Row {
    n: usize,
    decode: Duration,
    resize: Duration,
    maas: Duration,
    jpeg_decoder: Duration,
}

/// The preprocessing with `jpeg-decoder` in place of libjpeg-turbo, at the same DCT scale
/// (issue 13's first version); the same as maas's for images it would not scale.
fn jpeg_decoder_input(bytes: &[u8]) -> anyhow::Result<Vec<f32>> {
    use jpeg_decoder::{Decoder, PixelFormat};
    let side = 2 * maas::data::preprocess::SIDE;
    let mut decoder = Decoder::new(bytes);
    decoder.read_info()?;
    let info = decoder
        .info()
        .ok_or_else(|| anyhow::anyhow!("no JPEG header"))?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let Some(e) = [1u32, 2, 4]
        .into_iter()
        .find(|&e| (w * e).div_ceil(8) >= side && (h * e).div_ceil(8) >= side)
    else {
        return image_bytes_to_input(bytes);
    };
    let (sw, sh) = ((w * e).div_ceil(8) as u16, (h * e).div_ceil(8) as u16);
    let (sw, sh) = decoder.scale(sw, sh)?;
    let pixels = decoder.decode()?;
    let rgb = match info.pixel_format {
        PixelFormat::L8 => pixels.iter().flat_map(|&p| [p, p, p]).collect(),
        _ => pixels,
    };
    let image = image::RgbImage::from_raw(u32::from(sw), u32::from(sh), rgb)
        .ok_or_else(|| anyhow::anyhow!("short decode"))?;
    let mut out = Vec::new();
    image_to_input(&DynamicImage::ImageRgb8(image), &mut out);
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let classifier = match args.iter().position(|a| a == "--model") {
        Some(i) => {
            let path = args.remove(i + 1);
            args.remove(i);
            let loaded = load_model(&PathBuf::from(path))?;
            Some(Classifier::new(&loaded, &select(DeviceChoice::Cpu)?.device))
        }
        None => None,
    };
    let mut rows: BTreeMap<(u32, u32), Row> = BTreeMap::new();
    let (mut worst, mut worst_before, mut worst_lib) = (0.0f32, 0.0f32, 0.0f32);
    let (mut before_all, mut now_all) = (Vec::new(), Vec::new());
    for file in &args {
        let bytes = std::fs::read(file)?;
        let runs = if bytes.len() > 1_000_000 { 3 } else { 10 };
        let (decode, full) = best(runs, || image::load_from_memory(&bytes));
        let full: DynamicImage = full?;
        let (resize, small) = best(runs, || {
            full.resize_exact(32, 32, FilterType::Triangle).to_rgb8()
        });
        let (jpeg_decoder, before_lib) = best(runs, || jpeg_decoder_input(&bytes));
        let (maas, now) = best(runs, || image_bytes_to_input(&bytes));
        let now = now?;
        worst_lib = worst_lib.max(max_diff(&now, &before_lib?));
        // Full decode, then the resize maas uses now: the difference the DCT scaling makes.
        let mut full_now_resize = Vec::new();
        image_to_input(&full, &mut full_now_resize);
        worst = worst.max(max_diff(&now, &full_now_resize));
        let before = values(&small);
        worst_before = worst_before.max(max_diff(&now, &before));
        before_all.extend(before);
        now_all.extend(now);
        let row = rows.entry((full.width(), full.height())).or_default();
        row.n += 1;
        row.decode += decode;
        row.resize += resize;
        row.maas += maas;
        row.jpeg_decoder += jpeg_decoder;
    }
    println!(
        "size        photos  full decode  resize (before)  jpeg-decoder scaled  \
         maas now (libjpeg-turbo scaled + resize)"
    );
    for ((w, h), r) in &rows {
        let n = r.n as u32;
        println!(
            "{:<11} {:>6}  {:>8.2} ms  {:>12.2} ms  {:>16.3} ms  {:>12.3} ms",
            format!("{w}x{h}"),
            r.n,
            (r.decode / n).as_secs_f64() * 1e3,
            (r.resize / n).as_secs_f64() * 1e3,
            (r.jpeg_decoder / n).as_secs_f64() * 1e3,
            (r.maas / n).as_secs_f64() * 1e3
        );
    }
    println!(
        "largest input difference: {worst:.4} against a full decode + the same resize, \
         {worst_before:.4} against the preprocessing of before, {worst_lib:.4} against \
         jpeg-decoder at the same scale"
    );
    if let Some(c) = classifier {
        let k = c.num_classes();
        let (p_before, p_now) = (c.probabilities(&before_all)?, c.probabilities(&now_all)?);
        let argmax = |p: &[f32]| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i)
        };
        let same = p_before
            .chunks(k)
            .zip(p_now.chunks(k))
            .filter(|(a, b)| argmax(a) == argmax(b))
            .count();
        println!(
            "predicted class unchanged: {same} of {} photos ({:.1}%)",
            args.len(),
            100.0 * same as f64 / args.len() as f64
        );
    }
    Ok(())
}
