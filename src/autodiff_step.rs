//! The training step of any burn module: burn's autodiff derives the gradients, and Keras' Adam
//! ([`crate::adam`], ours) applies them.
//!
//! Ours rather than `burn-optim`'s Adam: Keras folds both bias corrections into the step size and
//! adds epsilon to the root of the second moment (epsilon-hat), where burn's Adam corrects the
//! moments and adds epsilon inside; the two differ in the first steps, and the MLP's hand-derived
//! step ([`crate::sharded`]) must be the same optimizer as this one to be tested against it. Ours
//! also keeps the moments in maas's checkpoints by parameter name, which `--resume` needs to be
//! exact.
//!
//! Parameters are named by their module path (`hidden.weight`), as burn's derive visits them:
//! those names are what files hold ([`Weights`]).

use anyhow::{Result, bail};
use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Gradients, TensorData};

use crate::adam::{self, AdamConfig, AdamState, Moments};
use crate::container::Array;
use crate::model::{StepStats, Weights, read_f32};

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
fn parameters<M: Module>(module: &M) -> Vec<(String, Vec<usize>, Tensor<1>)> {
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

/// Applies one Adam step to every parameter from its gradient in `grads`.
struct AdamStep<'a> {
    grads: &'a Gradients,
    moments: &'a mut [Moments<1>],
    next: usize,
    lr_t: f64,
    config: AdamConfig,
}

impl ModuleMapper for AdamStep<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let at = self.next;
        self.next += 1;
        param.map(|tensor| {
            let (Some(grad), Some(moments)) = (tensor.grad(self.grads), self.moments.get_mut(at))
            else {
                // A parameter the loss does not reach keeps its value (and its moments).
                return tensor;
            };
            let dims = tensor.dims();
            let n = dims.iter().product::<usize>();
            let mut flat = tensor.inner().reshape([n]);
            adam::update_in_place(
                &mut flat,
                grad.reshape([n]),
                moments,
                self.lr_t,
                self.config,
            );
            flat.reshape(dims).autodiff().require_grad()
        })
    }
}

/// Mean cross-entropy of `logits` against one-hot `targets`, `[1]`.
pub fn mean_cross_entropy(logits: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let batch = logits.dims()[0] as f64;
    (log_softmax(logits, 1) * targets)
        .sum()
        .neg()
        .div_scalar(batch)
}

/// The batch's summed loss and right answers from its `logits` (outside autodiff).
fn stats(logits: Tensor<2>, targets: Tensor<2>, labels: Tensor<1, Int>) -> StepStats {
    let batch = logits.dims()[0];
    let loss_sum = (log_softmax(logits.clone(), 1) * targets).sum().neg();
    let correct = logits.argmax(1).reshape([batch]).equal(labels).int().sum();
    StepStats { loss_sum, correct }
}

/// A model and its optimizer while training through autodiff.
pub struct AutodiffTrainer<M: Network> {
    /// The model on the autodiff device, every parameter requiring its gradient.
    model: M,
    /// Adam's moments of each parameter, flattened, in the module's visiting order.
    moments: Vec<Moments<1>>,
    step: u64,
    config: AdamConfig,
}

impl<M: Network> AutodiffTrainer<M> {
    /// Trains `model` (any weights of the right shapes: they are replaced) from `weights` and
    /// Adam's `state` on `device` (autodiff is added to it).
    pub fn new(
        model: M,
        weights: &Weights,
        state: &AdamState,
        config: AdamConfig,
        device: &Device,
    ) -> Result<Self> {
        let inner = device.clone().inner();
        let model = load_weights(model.to_device(&inner), weights)?.map(&mut Track);
        let moments = parameters(&model)
            .into_iter()
            .map(|(name, _, flat)| {
                let shape = [flat.dims()[0]];
                let (m, v) = (state.m.get(&name)?, state.v.get(&name)?);
                if m.values.len() != shape[0] || v.values.len() != shape[0] {
                    bail!("Adam's moments of `{name}` do not match its shape");
                }
                Ok(Moments::upload(&m.values, &v.values, shape, &inner))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            model,
            moments,
            step: state.step,
            config,
        })
    }

    /// One step of Adam on the batch `input` `[N, 3072]` with one-hot `targets` and `labels`
    /// (all on the plain device).
    pub fn step(
        &mut self,
        input: Tensor<2>,
        targets: Tensor<2>,
        labels: Tensor<1, Int>,
    ) -> StepStats {
        self.step += 1;
        let logits = self.model.logits(input.autodiff());
        let loss = mean_cross_entropy(logits.clone(), targets.clone().autodiff());
        let grads = loss.backward();
        let mut adam = AdamStep {
            grads: &grads,
            moments: &mut self.moments,
            next: 0,
            lr_t: self.config.step_size(self.step),
            config: self.config,
        };
        self.model = self.model.clone().map(&mut adam);
        stats(logits.inner(), targets, labels)
    }

    /// The model as it stands, on the plain device, for testing.
    pub fn model(&self) -> M {
        self.model.valid()
    }

    /// The weights and Adam's state, copied to the host to be saved.
    pub fn state(&self) -> Result<(Weights, AdamState)> {
        let weights = weights_of(&self.model)?;
        let moment = |part: fn(&Moments<1>) -> &Tensor<1>| -> Result<Weights> {
            let arrays = weights
                .arrays
                .iter()
                .zip(&self.moments)
                .map(|(a, m)| {
                    Ok(Array::new(
                        &a.name,
                        a.shape.clone(),
                        read_f32(part(m).clone())?,
                    ))
                })
                .collect::<Result<_>>()?;
            Ok(Weights { arrays })
        };
        let adam = AdamState {
            step: self.step,
            m: moment(|m| &m.m)?,
            v: moment(|m| &m.v)?,
        };
        Ok((weights, adam))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mlp, max_difference, random_batch};
    use crate::sharded::ShardedTrainer;

    const CLASSES: usize = 10;

    fn autodiff_steps(
        weights: &Weights,
        state: &AdamState,
        steps: std::ops::Range<u64>,
    ) -> (Weights, AdamState) {
        let device = Device::flex();
        let model = Mlp::init(8, CLASSES, 0, &device);
        let mut trainer =
            AutodiffTrainer::new(model, weights, state, AdamConfig::new(0.01), &device).unwrap();
        for step in steps {
            let (x, y, l) = random_batch(8, CLASSES, step, &device);
            trainer.step(x, y, l);
        }
        trainer.state().unwrap()
    }

    #[test]
    fn weights_round_trip_by_name_through_any_module() {
        let device = Device::flex();
        let w = Weights::init(5, 3, 11);
        let loaded = load_weights(Mlp::init(5, 3, 0, &device), &w).unwrap();
        assert_eq!(weights_of(&loaded).unwrap(), w);
        let err = load_weights(Mlp::init(6, 3, 0, &device), &w)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hidden.weight") && err.contains("shape"),
            "{err}"
        );
    }

    #[test]
    fn the_autodiff_step_follows_the_hand_derived_sharded_step() {
        let start = Weights::init(8, CLASSES, 5);
        let zeros = AdamState::zeros_like(&start);
        let (auto, auto_state) = autodiff_steps(&start, &zeros, 1..7);
        let device = Device::flex();
        let mut sharded =
            ShardedTrainer::new(&start, &zeros, AdamConfig::new(0.01), 1, &device).unwrap();
        for step in 1..7 {
            let (x, y, l) = random_batch(8, CLASSES, step, &device);
            sharded.step(x, y, l);
        }
        let (hand, hand_state) = sharded.state().unwrap();
        assert_eq!(auto_state.step, 6);
        // The gradients agree to rounding (summed in another order), which Adam carries on.
        let diff = max_difference(&auto, &hand);
        assert!(diff <= 1e-4, "weights differ by {diff}");
        assert!(max_difference(&auto_state.v, &hand_state.v) <= 1e-4);
        assert!(
            max_difference(&start, &auto) > 1e-3,
            "the steps moved the weights"
        );
    }

    #[test]
    fn resuming_from_the_saved_state_is_exact() {
        let start = Weights::init(8, CLASSES, 2);
        let zeros = AdamState::zeros_like(&start);
        let straight = autodiff_steps(&start, &zeros, 1..5);
        let (half, half_state) = autodiff_steps(&start, &zeros, 1..3);
        let resumed = autodiff_steps(&half, &half_state, 3..5);
        assert_eq!(resumed, straight);
    }
}
