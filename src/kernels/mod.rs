//! Host kernels: the arithmetic of the CPU's hand-derived steps, on plain `f32` slices.

pub(crate) mod winograd;
