//! Adam, as Keras applies it (the seed program's optimizer), over the model's four parameters.
//!
//! Its state lives on the device beside the weights and is copied to the host only to be saved,
//! so that a checkpoint holds everything needed to resume exactly.

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::model::{Gradients, Mlp, Weights, read_f32};

/// Adam's hyper-parameters (Keras defaults but for the learning rate, which is the user's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment, as Keras does (epsilon-hat).
    pub epsilon: f64,
}

impl AdamConfig {
    /// Keras' defaults with the learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
        }
    }
}

/// The first and second moments of each parameter, on the host, in the model's [`Weights`] layout.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamState {
    /// Steps taken so far.
    pub step: u64,
    /// First moments.
    pub m: Weights,
    /// Second moments.
    pub v: Weights,
}

impl AdamState {
    /// The state before the first step.
    pub fn zeros(hidden: usize, classes: usize) -> Self {
        let zeros = |w: &Weights| Weights {
            hidden,
            w1: vec![0.0; w.w1.len()],
            b1: vec![0.0; w.b1.len()],
            w2: vec![0.0; w.w2.len()],
            b2: vec![0.0; w.b2.len()],
        };
        let shape = Weights::init(hidden, classes, 0);
        Self {
            step: 0,
            m: zeros(&shape),
            v: zeros(&shape),
        }
    }
}

/// One parameter's moments on the device.
struct Moments<const D: usize> {
    m: Tensor<D>,
    v: Tensor<D>,
}

/// Adam with its state on the device.
pub struct Adam {
    config: AdamConfig,
    step: u64,
    w1: Moments<2>,
    b1: Moments<1>,
    w2: Moments<2>,
    b2: Moments<1>,
}

impl Adam {
    /// Adam resuming from `state` (zeros for a fresh run) on `device`.
    pub fn new(config: AdamConfig, state: &AdamState, device: &Device) -> Self {
        let h = state.m.hidden;
        let t2 = |v: &[f32], shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), device)
        };
        let t1 = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
        let input = state.m.w1.len() / h.max(1);
        let classes = state.m.b2.len();
        Self {
            config,
            step: state.step,
            w1: Moments {
                m: t2(&state.m.w1, [input, h]),
                v: t2(&state.v.w1, [input, h]),
            },
            b1: Moments {
                m: t1(&state.m.b1),
                v: t1(&state.v.b1),
            },
            w2: Moments {
                m: t2(&state.m.w2, [h, classes]),
                v: t2(&state.v.w2, [h, classes]),
            },
            b2: Moments {
                m: t1(&state.m.b2),
                v: t1(&state.v.b2),
            },
        }
    }

    /// Applies one update to `model` from `grads`.
    pub fn step(&mut self, model: Mlp, grads: Gradients) -> Mlp {
        self.step += 1;
        let c = self.config;
        let t = self.step as f64;
        // Keras folds both bias corrections into the step size.
        let lr_t = c.lr * (1.0 - c.beta2.powf(t)).sqrt() / (1.0 - c.beta1.powf(t));
        let (w1, b1, w2, b2) = model.parameters();
        let w1 = update(w1, grads.w1, &mut self.w1, lr_t, c);
        let b1 = update(b1, grads.b1, &mut self.b1, lr_t, c);
        let w2 = update(w2, grads.w2, &mut self.w2, lr_t, c);
        let b2 = update(b2, grads.b2, &mut self.b2, lr_t, c);
        model.with_parameters(w1, b1, w2, b2)
    }

    /// Copies the state to the host, to be saved.
    pub fn state(&self) -> Result<AdamState> {
        let hidden = self.b1.m.dims()[0];
        let host =
            |w1: &Tensor<2>, b1: &Tensor<1>, w2: &Tensor<2>, b2: &Tensor<1>| -> Result<Weights> {
                Ok(Weights {
                    hidden,
                    w1: read_f32(w1.clone())?,
                    b1: read_f32(b1.clone())?,
                    w2: read_f32(w2.clone())?,
                    b2: read_f32(b2.clone())?,
                })
            };
        Ok(AdamState {
            step: self.step,
            m: host(&self.w1.m, &self.b1.m, &self.w2.m, &self.b2.m)?,
            v: host(&self.w1.v, &self.b1.v, &self.w2.v, &self.b2.v)?,
        })
    }
}

fn update<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: &mut Moments<D>,
    lr_t: f64,
    c: AdamConfig,
) -> Tensor<D> {
    let m = moments.m.clone().mul_scalar(c.beta1) + grad.clone().mul_scalar(1.0 - c.beta1);
    let v = moments.v.clone().mul_scalar(c.beta2) + grad.square().mul_scalar(1.0 - c.beta2);
    let next = param
        - m.clone()
            .div(v.clone().sqrt().add_scalar(c.epsilon))
            .mul_scalar(lr_t);
    moments.m = m;
    moments.v = v;
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_weight_by_about_the_learning_rate_against_its_gradient() {
        let device = Device::flex();
        let model = Mlp::init(4, 10, 1, &device);
        let before = model.weights().unwrap();
        let (w1, b1, w2, b2) = model.parameters();
        let grads = Gradients {
            w1: w1.ones_like(),
            b1: b1.ones_like().neg(),
            w2: w2.zeros_like(),
            b2: b2.ones_like(),
        };
        let mut adam = Adam::new(AdamConfig::new(0.01), &AdamState::zeros(4, 10), &device);
        let after = adam.step(model, grads).weights().unwrap();
        assert!((before.w1[0] - after.w1[0] - 0.01).abs() < 1e-5);
        assert!((after.b1[0] - before.b1[0] - 0.01).abs() < 1e-5);
        assert_eq!(before.w2, after.w2);
        let state = adam.state().unwrap();
        assert_eq!(state.step, 1);
        assert!((state.m.w1[0] - 0.1).abs() < 1e-6);
        assert!((state.v.w1[0] - 0.001).abs() < 1e-6);
    }
}
