//! Answers from a trained model: predictions for images, the test split's evaluation, and the
//! explanation of one answer.

pub(crate) mod eval;
pub(crate) mod explain;
pub mod predict;
