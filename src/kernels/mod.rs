//! Host kernels: the arithmetic of the CPU's hand-derived steps and forward passes, on plain
//! `f32` slices.
//!
//! Below `model` and everything else: they know nothing of tensors, devices or models, only of
//! row-major matrices and channels-last images, and use only std (its AVX-512 and AVX2
//! intrinsics behind [`isa`]'s runtime choice), `gemm` (the matrix product burn's CPU backend
//! uses) and rayon. The cnn's training step (`train::cpu::cnn`) and its host forward
//! (`model::cnn_host`) are compositions of them; the MLP's fused first layer uses
//! [`matmul::product`].

pub(crate) mod conv;
pub(crate) mod isa;
pub(crate) mod layout;
// The one raw-pointer call into `gemm`.
#[allow(unsafe_code)]
pub(crate) mod matmul;
pub(crate) mod pool;
// Raw-pointer AVX-512 and AVX2 kernels behind a runtime check.
#[allow(unsafe_code)]
pub(crate) mod tiled;
// Its transforms' AVX-512 lanes (intrinsics, behind a runtime check).
#[allow(unsafe_code)]
pub(crate) mod winograd;
