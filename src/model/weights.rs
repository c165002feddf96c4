//! The model's parameters on the host: named arrays, whatever the architecture.

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// A named array of f32 values with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Name, unique in its file.
    pub name: String,
    /// Dimensions; their product is `values.len()`.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: Vec<f32>,
}

impl Array {
    /// An array named `name` of the given shape.
    pub fn new(name: &str, shape: Vec<usize>, values: Vec<f32>) -> Self {
        Self {
            name: name.to_string(),
            shape,
            values,
        }
    }
}

/// The model's parameters on the host: named arrays with their shapes, in the architecture's
/// order ([`ModelConfig::parameter_shapes`]). The names are burn's module paths
/// (`hidden.weight`), so files, checkpoints and Adam's state hold any architecture's parameters
/// without naming them in code.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// The parameters, row-major.
    pub arrays: Vec<Array>,
}

impl Weights {
    /// Arrays of the same names and shapes, all zero (Adam's moments before the first step).
    pub fn zeros_like(&self) -> Self {
        let arrays = self
            .arrays
            .iter()
            .map(|a| Array::new(&a.name, a.shape.clone(), vec![0.0; a.values.len()]))
            .collect();
        Self { arrays }
    }

    /// The array named `name`.
    pub fn get(&self, name: &str) -> Result<&Array> {
        self.arrays
            .iter()
            .find(|a| a.name == name)
            .with_context(|| format!("the weights have no array `{name}`"))
    }

    /// The array named `name`, checked to be of `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&Array> {
        let array = self.get(name)?;
        if array.shape != shape {
            bail!(
                "array `{name}` has shape {:?}, expected {shape:?}",
                array.shape
            );
        }
        Ok(array)
    }

    /// The number of classes: the width of the output layer, whose bias is the last array.
    pub fn classes(&self) -> usize {
        self.arrays
            .last()
            .and_then(|a| a.shape.last())
            .copied()
            .unwrap_or(0)
    }

    /// Checks that every weight is a finite number. A model whose training diverged can hold NaN
    /// in a file whose checksum is fine, and would then answer every image with NaN probabilities.
    pub fn check_finite(&self) -> Result<()> {
        if let Some((name, at, value)) = self.first_non_finite() {
            bail!(
                "weight {name} holds {value:?} (element {at}): every answer would be NaN (did its \
                 training diverge? train again with a lower --lr)"
            );
        }
        Ok(())
    }

    /// The first value that is not a finite number: its array's name, its index and itself.
    pub fn first_non_finite(&self) -> Option<(&str, usize, f32)> {
        self.arrays.iter().find_map(|a| {
            let at = a.values.iter().position(|v| !v.is_finite())?;
            Some((a.name.as_str(), at, a.values[at]))
        })
    }
}

/// Fresh weights of the given names and shapes as Keras initialises Conv2D and Dense layers
/// (Glorot uniform, zero bias), drawn on the host from `seed` in the given order, so that every
/// device starts from the same numbers. A dense weight is `[in, out]`, a convolution's
/// `[out, in, kh, kw]` (whose fans count the kernel's taps); one dimension is a bias.
pub fn glorot_uniform(shapes: Vec<(String, Vec<usize>)>, seed: u64) -> Weights {
    let mut rng = StdRng::seed_from_u64(seed);
    let arrays = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values = if shape.len() == 1 {
                vec![0.0; n]
            } else {
                let (fan_in, fan_out) = match shape.as_slice() {
                    [fan_in, fan_out] => (*fan_in, *fan_out),
                    [out, inp, kh, kw] => (inp * kh * kw, out * kh * kw),
                    _ => (n, n),
                };
                let limit = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
                (0..n).map(|_| rng.random_range(-limit..limit)).collect()
            };
            Array::new(&name, shape, values)
        })
        .collect();
    Weights { arrays }
}

/// Reads a tensor back to the host as f32 values.
pub fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    let data = tensor
        .try_into_data()
        .map_err(|e| anyhow::anyhow!("reading a tensor from the device failed: {e:?}"))?;
    data.try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("unexpected tensor data: {e:?}"))
}

/// The largest difference between two sets of weights of the same names and shapes.
#[cfg(test)]
pub(crate) fn max_difference(a: &Weights, b: &Weights) -> f32 {
    assert_eq!(a.arrays.len(), b.arrays.len());
    a.arrays
        .iter()
        .zip(&b.arrays)
        .inspect(|(x, y)| assert_eq!((&x.name, &x.shape), (&y.name, &y.shape)))
        .flat_map(|(x, y)| x.values.iter().zip(&y.values).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}
