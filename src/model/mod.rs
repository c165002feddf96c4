//! THE model: a 3x32x32 image, flattened channel-major, Dense(hidden) + ReLU, Dense(classes).
//!
//! The number of classes is a parameter of the model: the length of its class names (10 for
//! CIFAR-10, the number of class folders for an image folder), and the width of `b2`.
//!
//! Training works on the logits with cross-entropy; inference returns softmax probabilities.
//! Nothing here knows about files or the command line: the weights cross that boundary as a
//! plain [`Weights`] value.

pub mod cnn;
mod loss;
pub mod mlp;
mod module_io;
mod weights;

pub use loss::{StepStats, batch_tensors, mean_cross_entropy, stats};
pub use mlp::{MLP_PARAMETERS, Mlp, MlpWeights};
pub(crate) use module_io::parameters;
pub use module_io::{Network, load_weights, weights_of};
pub use weights::{Array, Weights, read_f32};

#[cfg(test)]
pub(crate) use loss::random_batch;
pub(crate) use mlp::{beyond_first_product, first_layer_gradient};
#[cfg(test)]
pub(crate) use weights::max_difference;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};

use crate::data::preprocess::{INPUT_LEN, Preprocessing};

use crate::data::MAX_CLASSES;
/// The default width of the hidden layer.
pub const DEFAULT_HIDDEN: usize = 64;

/// Everything needed to rebuild the model and feed it, saved beside its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The architecture's name, so that a file of another architecture is refused by name.
    pub architecture: String,
    /// Input shape, channels first.
    pub input_shape: [usize; 3],
    /// Width of the hidden layer.
    pub hidden: usize,
    /// Class names, index order.
    pub classes: Vec<String>,
    /// How an image becomes the model's input.
    pub preprocessing: Preprocessing,
}

/// The MLP's name in every file (the card's model).
pub const ARCHITECTURE: &str = "mlp-3072-relu-10";
/// The CNN's name in every file.
pub const CNN_ARCHITECTURE: &str = "cnn-conv32-conv64-dense128";

/// The architectures `maas train --arch` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// The card's MLP: Dense(hidden) + ReLU, Dense(classes).
    Mlp,
    /// The small CNN of [`crate::model::cnn`].
    Cnn,
}

impl Arch {
    /// The architecture named `name` in a file.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            ARCHITECTURE => Some(Arch::Mlp),
            CNN_ARCHITECTURE => Some(Arch::Cnn),
            _ => None,
        }
    }

    /// Its name in files.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => ARCHITECTURE,
            Arch::Cnn => CNN_ARCHITECTURE,
        }
    }

    /// Its short name on the command line (`--arch`).
    pub fn flag(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Cnn => "cnn",
        }
    }
}

impl ModelConfig {
    /// The configuration of an MLP of the given width and classes.
    pub fn new(hidden: usize, classes: Vec<String>) -> Self {
        Self {
            architecture: ARCHITECTURE.to_string(),
            input_shape: [3, 32, 32],
            hidden,
            classes,
            preprocessing: Preprocessing::current(),
        }
    }

    /// The configuration of a model of `arch` with the given classes; `hidden` is the MLP's
    /// width (the CNN's dense layer is always [`crate::model::cnn::DENSE`] wide, and recorded so).
    pub fn of(arch: Arch, hidden: usize, classes: Vec<String>) -> Self {
        let hidden = match arch {
            Arch::Mlp => hidden,
            Arch::Cnn => crate::model::cnn::DENSE,
        };
        Self {
            architecture: arch.name().to_string(),
            ..Self::new(hidden, classes)
        }
    }

    /// The architecture; an error names one this maas does not run.
    pub fn arch(&self) -> Result<Arch> {
        Arch::from_name(&self.architecture).with_context(|| {
            format!(
                "architecture `{}` is not supported (this maas runs `{ARCHITECTURE}` and \
                 `{CNN_ARCHITECTURE}`)",
                self.architecture
            )
        })
    }

    /// The names and shapes of the model's parameters, in order: what its files hold.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        if self.arch().ok() == Some(Arch::Cnn) {
            return crate::model::cnn::parameter_shapes(self.classes.len());
        }
        let shapes = MlpWeights::shapes(self.hidden, self.classes.len());
        MLP_PARAMETERS
            .iter()
            .map(|name| name.to_string())
            .zip(shapes)
            .collect()
    }

    /// Checks that this maas can run a model of this configuration.
    pub fn check_supported(&self) -> Result<()> {
        self.arch()?;
        if self.input_shape != [3, 32, 32] {
            bail!(
                "input shape {:?} is not supported (expected [3, 32, 32])",
                self.input_shape
            );
        }
        if !(2..=MAX_CLASSES).contains(&self.classes.len()) {
            bail!(
                "has {} class names, expected 2 to {MAX_CLASSES}",
                self.classes.len()
            );
        }
        if self.hidden == 0 {
            bail!("hidden width 0 is not supported");
        }
        if !self
            .preprocessing
            .compatible_with(&Preprocessing::current())
        {
            bail!(
                "its preprocessing {:?} differs from this maas's {:?}",
                self.preprocessing,
                Preprocessing::current()
            );
        }
        Ok(())
    }
}

/// A model of either architecture, ready to run (prediction, evaluation, explanation).
// A model or two per process: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Model {
    /// The MLP.
    Mlp(Mlp),
    /// The CNN.
    Cnn(crate::model::cnn::Cnn),
}

impl Model {
    /// The model of `config` holding `weights`, on `device`; an error names an array that is
    /// missing or of the wrong shape.
    pub fn from_weights(config: &ModelConfig, weights: &Weights, device: &Device) -> Result<Self> {
        Ok(match config.arch()? {
            Arch::Mlp => Model::Mlp(Mlp::from_weights(weights, device)?),
            Arch::Cnn => {
                let cnn = crate::model::cnn::Cnn::new(config.classes.len(), device);
                Model::Cnn(crate::model::load_weights(cnn, weights)?)
            }
        })
    }

    /// Logits `[N, classes]` for a batch of preprocessed images `[N, 3072]`.
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        match self {
            Model::Mlp(m) => m.forward(input),
            Model::Cnn(c) => c.forward(input),
        }
    }

    /// Class probabilities `[N, classes]` (softmax of the logits).
    pub fn probabilities(&self, input: Tensor<2>) -> Tensor<2> {
        softmax(self.forward(input), 1)
    }
}

/// Checks that the model of `config` holding `weights` answers in finite numbers: it is run on
/// the CPU once, on a black, a grey and a white image. Finite weights can still overflow
/// (3e38 everywhere: every sum is infinite, every probability NaN), which no look at the
/// weights alone tells for every architecture; a model that fails this would answer NaN.
pub fn check_answers_finite(config: &ModelConfig, weights: &Weights) -> Result<()> {
    let device = Device::flex();
    let model = Model::from_weights(config, weights, &device)?;
    let levels = [0.0f32, 0.5, 1.0];
    let probe: Vec<f32> = levels
        .iter()
        .flat_map(|&level| std::iter::repeat_n(level, INPUT_LEN))
        .collect();
    let input = Tensor::<2>::from_data(TensorData::new(probe, [levels.len(), INPUT_LEN]), &device);
    let logits = read_f32(model.forward(input))?;
    if let Some(bad) = logits.iter().find(|v| !v.is_finite()) {
        bail!(
            "the weights are finite but too large: the model's output for a plain image is \
             {bad:?}, so every answer would be NaN (did its training diverge? train again with \
             a lower --lr)"
        );
    }
    Ok(())
}
