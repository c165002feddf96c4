//! What makes one architecture differ from another, behind one trait: a new architecture is one
//! file implementing [`Architecture`] plus one line in [`super::registry`].

use anyhow::Result;
use burn::prelude::*;

use super::module_io::Trainable;
use super::onnx_graph::GraphProto;
use super::weights::Weights;

/// An architecture maas can train, save and run.
pub trait Architecture: Sync {
    /// Its name in files (`mlp-3072-relu-10`): a file of an architecture this maas lacks is
    /// refused by it.
    fn name(&self) -> &'static str;

    /// Its short name on the command line (`--arch mlp`).
    fn flag(&self) -> &'static str;

    /// One line for `maas train --help`: what it is and when to choose it.
    fn about(&self) -> &'static str;

    /// The width of its hidden layer when fixed by the architecture (`--hidden` is then refused);
    /// `None` when `--hidden` sets it.
    fn fixed_hidden(&self) -> Option<usize> {
        None
    }

    /// The names and shapes of its parameters, in the module's order: what its files hold.
    fn parameter_shapes(&self, hidden: usize, classes: usize) -> Vec<(String, Vec<usize>)>;

    /// Fresh weights, drawn on the host from `seed` so that every device starts from the same
    /// numbers.
    fn init_weights(&self, hidden: usize, classes: usize, seed: u64) -> Weights;

    /// The burn module of this shape on `device`, with whatever weights its constructor gives
    /// (they are replaced by name: [`Trainable::load`]).
    fn module(&self, hidden: usize, classes: usize, device: &Device) -> Box<dyn Trainable>;

    /// The model holding `weights` as an ONNX graph (input [`INPUT`](super::onnx_graph::INPUT)
    /// `[N, C, H, W]`, output probabilities), for `maas export --format onnx`; `None` for an
    /// architecture that describes none (export then says so).
    fn onnx_graph(
        &self,
        _input_shape: [usize; 3],
        _weights: &Weights,
    ) -> Result<Option<GraphProto>> {
        Ok(None)
    }

    /// The module holding `weights` on `device`; an error names an array that is missing or of
    /// the wrong shape.
    fn load(
        &self,
        hidden: usize,
        weights: &Weights,
        device: &Device,
    ) -> Result<Box<dyn Trainable>> {
        self.module(hidden, weights.classes(), device).load(weights)
    }
}
