//! The hand-derived training steps of the CPU: the same arithmetic as burn's autodiff on the
//! same modules, in fewer, fused passes (each tested against autodiff).

pub mod cnn;
#[allow(unsafe_code)]
pub(crate) mod fused;
pub mod sharded;
#[allow(unsafe_code)]
pub(crate) mod subnormals;
