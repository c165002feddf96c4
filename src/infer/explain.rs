//! Why this answer: gradient x input through the same burn model (autodiff), drawn as a heat map
//! beside the image.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::tensor::TensorData;
use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::artifact::export::LoadedModel;
use crate::data::preprocess::{INPUT_LEN, SIDE};
use crate::infer::predict::{Classifier, Ranked};
use crate::model::{Model, read_f32};

/// How many screen pixels each of the model's 32x32 input pixels becomes in the picture.
const SCALE: u32 = 8;
/// Gap between the image and its heat map, in screen pixels.
const GAP: u32 = 8;

/// What `explain` says about one image.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The image file.
    pub file: String,
    /// The predicted class.
    pub label: String,
    /// Its index.
    pub index: usize,
    /// Its probability.
    pub probability: f32,
    /// The most probable classes.
    pub top_k: Vec<Ranked>,
    /// The picture: the image beside the heat map of what pushed `label` up.
    pub picture: PathBuf,
}

/// A model that can be differentiated with respect to its input.
pub struct Explainer {
    /// The model, or why the weights do not make one (see [`crate::infer::predict::Classifier`]).
    model: std::result::Result<Model, String>,
    device: Device,
}

impl Explainer {
    /// Puts `loaded` on `device` with autodiff.
    pub fn new(loaded: &LoadedModel, device: &Device) -> Self {
        let device = device.clone().autodiff();
        Self {
            model: Model::from_weights(&loaded.config, &loaded.weights, &device)
                .map_err(|e| format!("{e:#}")),
            device,
        }
    }

    fn model(&self) -> Result<&Model> {
        self.model.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Gradient of the logit of `class` with respect to each input value, times that value
    /// ([`INPUT_LEN`] values, channel-major).
    pub fn gradient_x_input(&self, input: &[f32], class: usize) -> Result<Vec<f32>> {
        let x = Tensor::<2>::from_data(
            TensorData::new(input.to_vec(), [1, INPUT_LEN]),
            &self.device,
        )
        .require_grad();
        let logit = self
            .model()?
            .forward(x.clone())
            .slice([0..1, class..class + 1])
            .sum();
        let grads = logit.backward();
        let gradient = x.grad(&grads).context("the input received no gradient")?;
        read_f32(gradient * x.detach())
    }

    /// The logit of `class` for one input (to check gradients against finite differences).
    #[cfg(test)]
    fn logit(&self, input: &[f32], class: usize) -> Result<f32> {
        let x = Tensor::<2>::from_data(
            TensorData::new(input.to_vec(), [1, INPUT_LEN]),
            &self.device,
        );
        Ok(read_f32(self.model()?.forward(x))?
            .get(class)
            .copied()
            .unwrap_or(f32::NAN))
    }
}

/// The image (left) beside the heat map of the positive evidence (right), each pixel 8x8.
pub fn picture(input: &[f32], evidence: &[f32]) -> RgbImage {
    let plane = (SIDE * SIDE) as usize;
    let side = SIDE * SCALE;
    // Per pixel: the evidence of its three channels; only what pushed the class up is drawn.
    let heat: Vec<f32> = (0..plane)
        .map(|i| (evidence[i] + evidence[plane + i] + evidence[2 * plane + i]).max(0.0))
        .collect();
    let peak = heat.iter().copied().fold(0f32, f32::max);
    let mut out = RgbImage::from_pixel(2 * side + GAP, side, Rgb([255, 255, 255]));
    for y in 0..side {
        for x in 0..side {
            let i = ((y / SCALE) * SIDE + x / SCALE) as usize;
            let byte = |c: usize| (input[c * plane + i].clamp(0.0, 1.0) * 255.0).round() as u8;
            out.put_pixel(x, y, Rgb([byte(0), byte(1), byte(2)]));
            let t = if peak > 0.0 { heat[i] / peak } else { 0.0 };
            out.put_pixel(side + GAP + x, y, hot(t));
        }
    }
    out
}

/// [`picture`] encoded as PNG, for a file or an HTTP answer.
pub fn picture_png(input: &[f32], evidence: &[f32]) -> Result<Vec<u8>> {
    let mut png = std::io::Cursor::new(Vec::new());
    picture(input, evidence)
        .write_to(&mut png, image::ImageFormat::Png)
        .context("cannot encode the picture")?;
    Ok(png.into_inner())
}

/// The "hot" colour map: black, red, yellow, white as `t` goes from 0 to 1.
fn hot(t: f32) -> Rgb<u8> {
    let channel = |start: f32| (((t - start) * 3.0).clamp(0.0, 1.0) * 255.0).round();
    Rgb([
        channel(0.0) as u8,
        channel(1.0 / 3.0) as u8,
        channel(2.0 / 3.0) as u8,
    ])
}

/// The picture of each file: `<out>/<file stem>.explain.png`, or `<stem>-2`, `-3`, ... for a file
/// whose name an earlier one took, so that `a/x.png b/x.png` keeps both pictures. Names are
/// compared ignoring case, as the file systems of macOS and Windows do.
pub fn picture_paths(files: &[PathBuf], out: &Path) -> Vec<PathBuf> {
    let mut taken = HashSet::new();
    files
        .iter()
        .map(|file| {
            // The stem as the file system has it: a name that is not UTF-8 keeps its bytes.
            let stem = file
                .file_stem()
                .map_or_else(|| "image".into(), std::ffi::OsStr::to_os_string);
            let mut n = 1;
            loop {
                let mut name = stem.clone();
                if n > 1 {
                    name.push(format!("-{n}"));
                }
                name.push(".explain.png");
                // Case folded: on a case-insensitive file system X.png and x.png would collide.
                if taken.insert(name.to_string_lossy().to_lowercase()) {
                    break out.join(name);
                }
                n += 1;
            }
        })
        .collect()
}

/// Explains one input: classifies it, computes the evidence for its top class and writes the
/// picture to `picture_path` (see [`picture_paths`]).
pub fn explain(
    classifier: &Classifier,
    explainer: &Explainer,
    file: &Path,
    input: &[f32],
    picture_path: &Path,
    k: usize,
) -> Result<Explanation> {
    let probabilities = classifier.probabilities(input)?;
    let prediction = classifier.prediction(file.display().to_string(), &probabilities, k);
    let evidence = explainer.gradient_x_input(input, prediction.index)?;
    crate::fsutil::write_atomic(picture_path, &picture_png(input, &evidence)?)?;
    Ok(Explanation {
        file: prediction.file,
        label: prediction.label,
        index: prediction.index,
        probability: prediction.probability,
        top_k: prediction.top_k,
        picture: picture_path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, Weights};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    #[test]
    fn gradients_match_finite_differences() {
        let classes = (0..10).map(|i| i.to_string()).collect();
        let loaded = LoadedModel {
            config: ModelConfig::new(16, classes),
            weights: Weights::init(16, 10, 3),
            provenance: None,
            train: None,
            path: PathBuf::from("test"),
        };
        let explainer = Explainer::new(&loaded, &Device::flex());
        let mut rng = StdRng::seed_from_u64(1);
        let x: Vec<f32> = (0..INPUT_LEN).map(|_| rng.random_range(0.2..0.8)).collect();
        let evidence = explainer.gradient_x_input(&x, 4).unwrap();
        let h = 1e-2f32;
        for i in [0, 100, 1500, 3071] {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += h;
            down[i] -= h;
            let slope =
                (explainer.logit(&up, 4).unwrap() - explainer.logit(&down, 4).unwrap()) / (2.0 * h);
            let expected = slope * x[i];
            assert!(
                (evidence[i] - expected).abs() < 1e-3,
                "input {i}: {} vs finite difference {expected}",
                evidence[i]
            );
        }
    }

    #[test]
    fn pictures_of_files_with_one_name_do_not_collide() {
        let files: Vec<PathBuf> = ["a/x.png", "b/x.png", "c/x-2.png", "X.jpg", "y.png"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let names: Vec<PathBuf> = ["x", "x-2", "x-2-2", "X-3", "y"]
            .iter()
            .map(|s| Path::new("E").join(format!("{s}.explain.png")))
            .collect();
        assert_eq!(picture_paths(&files, Path::new("E")), names);
    }

    #[test]
    fn the_picture_puts_the_image_beside_its_heat_map() {
        let input = vec![1.0; INPUT_LEN];
        let mut evidence = vec![0.0; INPUT_LEN];
        evidence[0] = 1.0; // pixel (0, 0), red channel
        let p = picture(&input, &evidence);
        assert_eq!(p.dimensions(), (2 * 256 + GAP, 256));
        assert_eq!(p.get_pixel(0, 0), &Rgb([255, 255, 255]));
        assert_eq!(p.get_pixel(256 + GAP, 0), &Rgb([255, 255, 255])); // the peak is white-hot
        assert_eq!(p.get_pixel(256 + GAP + 8, 0), &Rgb([0, 0, 0])); // no evidence is black
    }
}
