//! Any burn module's parameters by name: read to the host ([`weights_of`]) and loaded from it
//! ([`load_weights`]). Parameters are named by their module path (`hidden.weight`), as burn's
//! derive visits them: those names are what files hold ([`Weights`]).

use anyhow::{Result, bail};
use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::{Gradients, TensorData};

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

/// Puts every parameter under autodiff, its gradient retained.
struct Track;

impl ModuleMapper for Track {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|tensor| tensor.autodiff().require_grad())
    }
}

/// The signature of an optimizer's update of one parameter: its index in visiting order, its
/// values and its gradient (flattened, off autodiff); the new values.
pub type UpdateFn<'a> = dyn FnMut(usize, Tensor<1>, Tensor<1>) -> Tensor<1> + 'a;

/// Replaces every parameter that `grads` holds a gradient of by the update's result, under
/// autodiff again. A parameter the loss does not reach keeps its value.
struct Update<'a, 'f> {
    grads: &'a Gradients,
    update: &'a mut UpdateFn<'f>,
    next: usize,
}

impl ModuleMapper for Update<'_, '_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let at = self.next;
        self.next += 1;
        param.map(|tensor| {
            let Some(grad) = tensor.grad(self.grads) else {
                return tensor;
            };
            let dims = tensor.dims();
            let n = dims.iter().product::<usize>();
            let flat = (self.update)(at, tensor.inner().reshape([n]), grad.reshape([n]));
            flat.reshape(dims).autodiff().require_grad()
        })
    }
}

/// Any [`Network`] as an object: what the architecture registry hands out, inference runs and the
/// autodiff trainer trains, without knowing the module's type.
pub trait Trainable: Send + std::fmt::Debug {
    /// Logits `[N, classes]` for inputs `[N, 3072]`.
    fn logits(&self, input: Tensor<2>) -> Tensor<2>;
    /// A copy of the module (its tensors are shared until written).
    fn boxed_clone(&self) -> Box<dyn Trainable>;
    /// The module holding `weights`, matched by name and checked by shape.
    fn load(&self, weights: &Weights) -> Result<Box<dyn Trainable>>;
    /// The weights, copied to the host.
    fn weights(&self) -> Result<Weights>;
    /// The parameters in visiting order: name, shape, values flattened (row-major).
    fn parameters(&self) -> Vec<(String, Vec<usize>, Tensor<1>)>;
    /// Every parameter under autodiff, its gradient retained (to train it).
    fn track(&self) -> Box<dyn Trainable>;
    /// Every parameter that `grads` reaches replaced by `update`'s result ([`UpdateFn`]).
    fn update(&self, grads: &Gradients, update: &mut UpdateFn<'_>) -> Box<dyn Trainable>;
    /// The module on `device`.
    fn to_device(&self, device: &Device) -> Box<dyn Trainable>;
    /// The module for inference: off autodiff, on the plain device.
    fn valid(&self) -> Box<dyn Trainable>;
    /// Whether the logits are computed by host kernels of the model's own, where a lone row
    /// costs what a row does (burn's product takes a slow path for a single row).
    fn answers_on_host(&self) -> bool {
        false
    }
}

impl<M: Network + 'static> Trainable for M {
    fn logits(&self, input: Tensor<2>) -> Tensor<2> {
        Network::logits(self, input)
    }
    fn boxed_clone(&self) -> Box<dyn Trainable> {
        Box::new(self.clone())
    }
    fn load(&self, weights: &Weights) -> Result<Box<dyn Trainable>> {
        Ok(Box::new(load_weights(self.clone(), weights)?))
    }
    fn weights(&self) -> Result<Weights> {
        weights_of(self)
    }
    fn parameters(&self) -> Vec<(String, Vec<usize>, Tensor<1>)> {
        parameters(self)
    }
    fn track(&self) -> Box<dyn Trainable> {
        Box::new(self.clone().map(&mut Track))
    }
    fn update(&self, grads: &Gradients, update: &mut UpdateFn<'_>) -> Box<dyn Trainable> {
        let mut mapper = Update {
            grads,
            update,
            next: 0,
        };
        Box::new(self.clone().map(&mut mapper))
    }
    fn to_device(&self, device: &Device) -> Box<dyn Trainable> {
        Box::new(self.clone().to_device(device))
    }
    fn valid(&self) -> Box<dyn Trainable> {
        Box::new(Module::valid(self))
    }
}
