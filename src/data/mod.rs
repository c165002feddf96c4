//! Bytes on disk or on the wire, turned into CIFAR-10 records.
//!
//! [`cifar10`] reads the official binary layout, [`download`] fetches, verifies and installs it,
//! [`preprocess`] turns images into the tensors the model sees, and [`synthetic`] writes small,
//! learnable stand-ins in the real layout so that tests never need the network.

pub mod cifar10;
pub mod download;
pub mod preprocess;
pub mod synthetic;
