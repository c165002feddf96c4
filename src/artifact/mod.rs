//! What maas writes to disk and reads back: the byte container (named arrays and a header,
//! knowing nothing of models), files of older formats brought up to date, training
//! checkpoints, the deployable model file and its ONNX twin.

pub mod checkpoint;
pub mod container;
pub mod export;
mod migrate;
mod onnx;
