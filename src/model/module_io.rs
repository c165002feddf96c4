//! Any burn module's parameters by name: read to the host ([`weights_of`]) and loaded from it
//! ([`load_weights`]). Parameters are named by their module path (`hidden.weight`), as burn's
//! derive visits them: those names are what files hold ([`Weights`]).

use anyhow::{Result, bail};
use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::weights::{Array, Weights, read_f32};

/// A classifier that can be trained here: a burn module from a batch of preprocessed images
/// `[N, 3072]` to logits `[N, classes]`.
pub trait Network: Module {
    /// Logits `[N, classes]` for inputs `[N, 3072]`.
    fn logits(&self, input: Tensor<2>) -> Tensor<2>;
}

/// The module path of the tensor being visited: the names of the fields entered.
#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn name(&self) -> String {
        self.0.join(".")
    }
}

/// Collects every float parameter of a module, named by path, with its shape and tensor.
#[derive(Default)]
struct Collect {
    path: Path,
    found: Vec<(String, Vec<usize>, Tensor<1>)>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.0.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.0.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val().inner();
        let shape = tensor.dims().to_vec();
        let flat = tensor.reshape([shape.iter().product::<usize>()]);
        self.found.push((self.path.name(), shape, flat));
    }
}

/// The parameters of `module` in visiting order: name, shape, values flattened (row-major).
pub(crate) fn parameters<M: Module>(module: &M) -> Vec<(String, Vec<usize>, Tensor<1>)> {
    let mut collect = Collect::default();
    module.visit(&mut collect);
    collect.found
}

/// The weights of `module`, copied to the host.
pub fn weights_of<M: Module>(module: &M) -> Result<Weights> {
    let arrays = parameters(module)
        .into_iter()
        .map(|(name, shape, flat)| Ok(Array::new(&name, shape, read_f32(flat)?)))
        .collect::<Result<_>>()?;
    Ok(Weights { arrays })
}

/// Replaces every float parameter by the array of its name, on the parameter's device.
struct Load<'a> {
    path: Path,
    weights: &'a Weights,
    error: Option<String>,
}

impl ModuleMapper for Load<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.0.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.0.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.name();
        param.map(|tensor| {
            let dims = tensor.dims();
            match self.weights.get_shaped(&name, &dims) {
                Ok(array) => {
                    let data = TensorData::new(array.values.clone(), dims);
                    Tensor::<D>::from_data(data, &tensor.device())
                }
                Err(e) => {
                    self.error.get_or_insert(e.to_string());
                    tensor
                }
            }
        })
    }
}

/// `module` holding `weights`, matched by name and checked by shape.
pub fn load_weights<M: Module>(module: M, weights: &Weights) -> Result<M> {
    let mut load = Load {
        path: Path::default(),
        weights,
        error: None,
    };
    let module = module.map(&mut load);
    match load.error {
        Some(error) => bail!("{error}"),
        None => Ok(module),
    }
}
