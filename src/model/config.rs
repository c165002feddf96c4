//! What a model is, saved beside its weights: its architecture, shape, classes and
//! preprocessing.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::registry::Arch;
use super::weights::Weights;
use crate::data::MAX_CLASSES;
use crate::data::preprocess::Preprocessing;

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

impl ModelConfig {
    /// The configuration of an MLP of the given width and classes.
    pub fn new(hidden: usize, classes: Vec<String>) -> Self {
        Self {
            architecture: super::mlp::ARCHITECTURE.to_string(),
            input_shape: [3, 32, 32],
            hidden,
            classes,
            preprocessing: Preprocessing::current(),
        }
    }

    /// The configuration of a model of `arch` with the given classes; `hidden` is the width
    /// asked for, where the architecture does not fix its own (which is then recorded).
    pub fn of(arch: Arch, hidden: usize, classes: Vec<String>) -> Self {
        let hidden = arch.get().fixed_hidden().unwrap_or(hidden);
        Self {
            architecture: arch.name().to_string(),
            ..Self::new(hidden, classes)
        }
    }

    /// The architecture; an error names one this maas does not run.
    pub fn arch(&self) -> Result<Arch> {
        Arch::from_name(&self.architecture).with_context(|| {
            let known: Vec<String> = Arch::all().map(|a| format!("`{}`", a.name())).collect();
            format!(
                "architecture `{}` is not supported (this maas runs {})",
                self.architecture,
                known.join(" and ")
            )
        })
    }

    /// The names and shapes of the model's parameters, in order: what its files hold.
    pub fn parameter_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        Ok(self
            .arch()?
            .get()
            .parameter_shapes(self.hidden, self.classes.len()))
    }

    /// The initial weights of this model, drawn from `seed`.
    pub fn init_weights(&self, seed: u64) -> Result<Weights> {
        Ok(self
            .arch()?
            .get()
            .init_weights(self.hidden, self.classes.len(), seed))
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
