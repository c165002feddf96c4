//! Host kernels: the arithmetic of the CPU's hand-derived steps, on plain `f32` slices.

// Tile transforms compiled for AVX2, called where the CPU has it.
#[allow(unsafe_code)]
pub(crate) mod winograd;
