//! Fused CPU operations, added to burn through its backend-extension API.
//!
//! Why: burn's CPU backend (flex) runs every elementwise operation as its own pass over memory,
//! and every matmul allocates its output and then copies it once more to align it. Adam's update
//! was twelve passes; over `w1`'s 197k values that was a quarter of a training step at batch 32,
//! and the copy of the first layer's gradient a fifth. Two backend operations replace them:
//!
//! - [`FusedOps::adam_step`]: Adam as one pass that updates a parameter and both moments in place.
//! - [`FusedOps::first_layer_adam`]: a block of `w1`'s rows at a time, its gradient into a reused
//!   buffer that stays in the cache, then Adam on those rows. The gradient never goes to memory.
//!
//! burn routes a call to the backend that holds the tensors. Only the CPU backend has these, so
//! callers check [`on_flex`] and keep the composed tensor operations everywhere else (a GPU runs
//! those as fused kernels of its own).
//!
//! The arithmetic is that of the composed operations, operation for operation in f32, and the
//! product is burn's own (`gemm`, same strides), so both give the same bits (tested here, and
//! through the whole training step in `sharded`).

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchDevice, DispatchTensor, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;

use crate::kernels::matmul::{Strided, product};
use crate::train::adam::{self, AdamConfig, Moments};

/// Operations burn's CPU backend lacks.
#[backend_extension(Flex)]
pub trait FusedOps: Backend {
    /// One Adam update: returns the parameter, the first and the second moment, each of the shape
    /// of `param`. `lr_t` is the step size ([`AdamConfig::step_size`]).
    fn adam_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        lr_t: f64,
        config: AdamConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Rows `first_row..first_row + R` of the first layer, `w1` `[R, hidden]` with its moments `m`
    /// and `v`: their gradient `input[:, rows]^T @ d_pre` (`input` `[N, >= first_row + R]`,
    /// `d_pre` `[N, hidden]`) and the Adam update it makes. Returns `w1`, `m`, `v`.
    #[allow(clippy::too_many_arguments)]
    fn first_layer_adam(
        input: FloatTensor<Self>,
        d_pre: FloatTensor<Self>,
        w1: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        first_row: usize,
        lr_t: f64,
        config: AdamConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Rows of `w1` whose gradient is computed and applied at a time by `first_layer_adam`: the
/// gradient block, and the weights and moments it updates, stay in the core's cache (4 x 64 KiB
/// at 64 hidden units) instead of a whole shard's gradient going to memory and coming back.
const BLOCK_ROWS: usize = 256;

impl FusedOps for Flex {
    fn adam_step(
        param: FlexTensor,
        grad: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        lr_t: f64,
        c: AdamConfig,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (mut param, grad, mut m, mut v) =
            (writable(param), writable(grad), writable(m), writable(v));
        let step = AdamStep::new(lr_t, c);
        step.apply(
            values_mut(&mut param),
            values(&grad),
            values_mut(&mut m),
            values_mut(&mut v),
        );
        (param, m, v)
    }

    fn first_layer_adam(
        input: FlexTensor,
        d_pre: FlexTensor,
        w1: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        first_row: usize,
        lr_t: f64,
        c: AdamConfig,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (input, d_pre) = (writable(input), writable(d_pre));
        let (mut w1, mut m, mut v) = (writable(w1), writable(m), writable(v));
        let (rows, hidden) = (w1.layout().shape()[0], w1.layout().shape()[1]);
        let width = input.layout().shape()[1];
        let (x, d) = (values(&input), values(&d_pre));
        let step = AdamStep::new(lr_t, c);
        let (p, m_out, v_out) = (values_mut(&mut w1), values_mut(&mut m), values_mut(&mut v));
        let mut grad = vec![0f32; BLOCK_ROWS.min(rows) * hidden];
        for start in (0..rows).step_by(BLOCK_ROWS) {
            let len = BLOCK_ROWS.min(rows - start);
            let grad = &mut grad[..len * hidden];
            let rows_t = Strided::dense(x, width).columns(first_row + start, len).t();
            product(rows_t, Strided::dense(d, hidden), grad, false);
            let span = start * hidden..(start + len) * hidden;
            step.apply(
                &mut p[span.clone()],
                grad,
                &mut m_out[span.clone()],
                &mut v_out[span],
            );
        }
        (w1, m, v)
    }
}

/// One Adam update of the parameter `p` and its moments `m` and `v` from the gradient `g`, in
/// place: the arithmetic of [`FusedOps::adam_step`], on host slices.
pub(crate) fn adam_apply(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr_t: f64,
    config: AdamConfig,
) {
    AdamStep::new(lr_t, config).apply(p, g, m, v);
}

/// Adam's constants for one step, rounded to f32 as the composed operations round them.
struct AdamStep {
    beta1: f32,
    beta2: f32,
    keep1: f32,
    keep2: f32,
    lr_t: f32,
    epsilon: f32,
    decay: f32,
}

impl AdamStep {
    fn new(lr_t: f64, c: AdamConfig) -> Self {
        Self {
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            keep1: (1.0 - c.beta1) as f32,
            keep2: (1.0 - c.beta2) as f32,
            lr_t: lr_t as f32,
            epsilon: c.epsilon as f32,
            decay: c.decay as f32,
        }
    }

    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        assert!(
            g.len() == p.len() && m.len() == p.len() && v.len() == p.len(),
            "Adam: the parameter, its gradient and its moments differ in length"
        );
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { self.apply_avx2(p, g, m, v) };
        }
        self.apply_portable(p, g, m, v)
    }

    /// The same loop, compiled for AVX2: eight lanes, and a vector square root (the baseline
    /// x86-64 build takes the root one lane at a time, which made the pass several times slower).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn apply_avx2(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.apply_portable(p, g, m, v)
    }

    #[inline(always)]
    fn apply_portable(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        // Decoupled weight decay (AdamW) first, as `adam::update` does it; skipped at 0, where
        // it would change nothing.
        if self.decay != 0.0 {
            for p in p.iter_mut() {
                *p -= *p * self.decay;
            }
        }
        for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
            // Operation for operation what `adam::update` does (no fused multiply-add: Rust
            // does not contract `a * b + c`), so the two agree to the bit.
            *m = *m * self.beta1 + g * self.keep1;
            *v = *v * self.beta2 + (g * g) * self.keep2;
            *p -= (*m * self.lr_t) / (v.sqrt() + self.epsilon);
        }
    }
}

/// `tensor` laid out contiguously from the start of its own buffer (a copy only when it is not);
/// `storage_mut` then copies it once more only if the buffer is shared.
fn writable(tensor: FlexTensor) -> FlexTensor {
    let n = tensor.layout().num_elements();
    if tensor.layout().contiguous_offsets() == Some((0, n)) {
        tensor
    } else {
        let copy = tensor.to_contiguous();
        if copy.layout().contiguous_offsets() == Some((0, n)) {
            copy
        } else {
            FlexTensor::from_data(copy.into_data())
        }
    }
}

/// The f32 values of a tensor [`writable`] returned (its buffer may be longer than the tensor).
fn values(tensor: &FlexTensor) -> &[f32] {
    &tensor.storage::<f32>()[..tensor.layout().num_elements()]
}

/// [`values`], to write (after a copy if the buffer is shared).
fn values_mut(tensor: &mut FlexTensor) -> &mut [f32] {
    let n = tensor.layout().num_elements();
    &mut tensor.storage_mut::<f32>()[..n]
}

/// Whether `device` is the CPU backend.
pub fn is_flex(device: &Device) -> bool {
    matches!(device.as_dispatch(), DispatchDevice::Flex(_))
}

/// Whether `tensor` can take the fused path: f32 on the CPU backend.
pub fn on_flex<const D: usize>(tensor: &Tensor<D>) -> bool {
    tensor.dtype() == DType::F32 && is_flex(&tensor.device())
}

/// [`FusedOps::first_layer_adam`] on tensors for which [`on_flex`] holds.
#[allow(clippy::too_many_arguments)]
pub fn first_layer_adam(
    input: Tensor<2>,
    d_pre: Tensor<2>,
    w1: Tensor<2>,
    m: Tensor<2>,
    v: Tensor<2>,
    first_row: usize,
    lr_t: f64,
    config: AdamConfig,
) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    tensors(<Dispatch as FusedOps>::first_layer_adam(
        input.into_dispatch(),
        d_pre.into_dispatch(),
        w1.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        first_row,
        lr_t,
        config,
    ))
}

/// [`FusedOps::adam_step`] on tensors for which [`on_flex`] holds.
pub fn adam_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    m: Tensor<D>,
    v: Tensor<D>,
    lr_t: f64,
    config: AdamConfig,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    tensors(<Dispatch as FusedOps>::adam_step(
        param.into_dispatch(),
        grad.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        lr_t,
        config,
    ))
}

/// The parameter and moments a fused operation returns, as tensors again.
fn tensors<const D: usize>(
    (p, m, v): (DispatchTensor, DispatchTensor, DispatchTensor),
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}

/// Runs `op` on `param` and its `moments` moved out, and stores the three tensors it returns.
///
/// Moved, not cloned: a fused CPU operation then owns the buffers and writes into them, where a
/// clone would make it copy each buffer first. Their places hold empty tensors meanwhile.
pub(crate) fn replace_with<const D: usize>(
    param: &mut Tensor<D>,
    moments: &mut Moments<D>,
    op: impl FnOnce(Tensor<D>, Tensor<D>, Tensor<D>) -> (Tensor<D>, Tensor<D>, Tensor<D>),
) {
    let device = param.device();
    let take = |t: &mut Tensor<D>| std::mem::replace(t, Tensor::empty([0; D], &device));
    let (p, m, v) = op(take(param), take(&mut moments.m), take(&mut moments.v));
    (*param, moments.m, moments.v) = (p, m, v);
}

/// One Adam update of `param` and its `moments` from `grad`, in place where the backend allows:
/// on the CPU as one fused pass ([`adam_step`]), elsewhere as [`adam::update`].
pub(crate) fn update_in_place<const D: usize>(
    param: &mut Tensor<D>,
    grad: Tensor<D>,
    moments: &mut Moments<D>,
    lr_t: f64,
    c: AdamConfig,
) {
    if on_flex(param) {
        replace_with(param, moments, |p, m, v| adam_step(p, grad, m, v, lr_t, c));
    } else {
        *param = adam::update(param.clone(), grad, moments, lr_t, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::read_f32;
    use burn::tensor::TensorData;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    /// `n` values drawn evenly from `[-scale / 2, scale / 2)`.
    fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| rng.random_range(-0.5..0.5) * scale)
            .collect()
    }

    fn tensor(v: Vec<f32>, device: &Device) -> Tensor<1> {
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), device)
    }

    #[test]
    fn fused_adam_gives_the_bits_of_the_composed_operations() {
        let device = Device::flex();
        let mut config = AdamConfig::new(0.003);
        // Lengths around the 8-lane width, so the loop's tail is covered too.
        for n in [1, 7, 8, 9, 1003] {
            let start = pseudo_random(n, 1, 0.2);
            let zeros = vec![0.0; n];
            let (mut fused_p, mut fused_m) = (
                tensor(start.clone(), &device),
                Moments::upload(&zeros, &zeros, [n], &device),
            );
            let (mut plain_p, mut plain_m) = (
                tensor(start.clone(), &device),
                Moments::upload(&zeros, &zeros, [n], &device),
            );
            for step in 1..=5 {
                // Gradients of very different sizes, as the first layer's are.
                let scale = if step % 2 == 0 { 1e-4 } else { 3.0 };
                let grad = pseudo_random(n, 10 + step, scale);
                let lr_t = config.step_size(step);
                // Decoupled weight decay on most steps (none on every third): both ways.
                config.decay = if step % 3 == 0 {
                    0.0
                } else {
                    0.07 * step as f64
                };
                update_in_place(
                    &mut fused_p,
                    tensor(grad.clone(), &device),
                    &mut fused_m,
                    lr_t,
                    config,
                );
                plain_p = adam::update(plain_p, tensor(grad, &device), &mut plain_m, lr_t, config);
            }
            let bits = |t: &Tensor<1>| -> Vec<u32> {
                read_f32(t.clone())
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            };
            assert_eq!(bits(&fused_p), bits(&plain_p), "weights, n = {n}");
            assert_eq!(bits(&fused_m.m), bits(&plain_m.m), "first moments, n = {n}");
            assert_eq!(
                bits(&fused_m.v),
                bits(&plain_m.v),
                "second moments, n = {n}"
            );
            assert_ne!(read_f32(fused_p).unwrap(), start, "the weights moved");
        }
    }

    #[test]
    fn fused_adam_leaves_other_holders_of_the_buffers_alone() {
        let device = Device::flex();
        let config = AdamConfig::new(0.01);
        let mut param = tensor(vec![1.0; 16], &device);
        let mut moments = Moments::upload(&[0.0; 16], &[0.0; 16], [16], &device);
        // A model built for evaluation shares the weights' buffer; an update must not reach it.
        let (held_p, held_m) = (param.clone(), moments.m.clone());
        let grad = tensor(vec![0.5; 16], &device);
        update_in_place(&mut param, grad, &mut moments, config.step_size(1), config);
        assert_eq!(read_f32(held_p).unwrap(), vec![1.0; 16]);
        assert_eq!(read_f32(held_m).unwrap(), vec![0.0; 16]);
        assert!(
            read_f32(param)
                .unwrap()
                .iter()
                .all(|&w| (w - 0.99).abs() < 1e-5)
        );
    }

    #[test]
    fn fused_first_layer_step_equals_gradient_then_adam() {
        let device = Device::flex();
        let config = AdamConfig::new(0.01);
        let (n, width, hidden, first, rows) = (5, 700, 3, 40, 600);
        let input = Tensor::<2>::from_data(
            TensorData::new(pseudo_random(n * width, 7, 2.0), [n, width]),
            &device,
        );
        let d_pre = Tensor::<2>::from_data(
            TensorData::new(pseudo_random(n * hidden, 8, 0.1), [n, hidden]),
            &device,
        );
        let w1 = Tensor::<2>::from_data(
            TensorData::new(pseudo_random(rows * hidden, 9, 0.5), [rows, hidden]),
            &device,
        );
        let zeros = vec![0.0; rows * hidden];
        let mut plain_m = Moments::upload(&zeros, &zeros, [rows, hidden], &device);
        // The reference: burn's matmul for the gradient, burn's operations for Adam.
        let columns = input.clone().slice_dim(1, first..first + rows);
        let grad = crate::model::first_layer_gradient(columns, d_pre.clone());
        let expected = adam::update(w1.clone(), grad, &mut plain_m, 0.01, config);
        // 600 rows: two whole blocks and a part of one.
        let fresh = Moments::upload(&zeros, &zeros, [rows, hidden], &device);
        let (fused, m, v) = first_layer_adam(
            input,
            d_pre,
            w1.clone(),
            fresh.m,
            fresh.v,
            first,
            0.01,
            config,
        );
        let fused = read_f32(fused).unwrap();
        assert_eq!(fused, read_f32(expected).unwrap());
        assert_eq!(read_f32(m).unwrap(), read_f32(plain_m.m).unwrap());
        assert_eq!(read_f32(v).unwrap(), read_f32(plain_m.v).unwrap());
        assert_ne!(fused, read_f32(w1).unwrap(), "the step moved the weights");
    }

    #[test]
    fn fused_adam_takes_views_of_part_of_a_buffer() {
        let device = Device::flex();
        let config = AdamConfig::new(0.01);
        // Values 4..12 start inside the buffer; values 0..8 start with it and end before it does.
        for part in [4..12, 0..8] {
            let whole = tensor(pseudo_random(20, 3, 1.0), &device);
            let mut param = whole.clone().slice(part.clone());
            let mut reference = param.clone();
            let mut fused_m = Moments::upload(&[0.0; 8], &[0.0; 8], [8], &device);
            let mut plain_m = fused_m.clone();
            let grad = tensor(pseudo_random(8, 4, 1.0), &device);
            update_in_place(&mut param, grad.clone(), &mut fused_m, 0.01, config);
            reference = adam::update(reference, grad, &mut plain_m, 0.01, config);
            assert_eq!(param.dims(), [8], "{part:?}");
            assert_eq!(
                read_f32(param).unwrap(),
                read_f32(reference).unwrap(),
                "{part:?}"
            );
            assert_eq!(
                read_f32(whole).unwrap(),
                pseudo_random(20, 3, 1.0),
                "{part:?}"
            );
        }
    }
}
