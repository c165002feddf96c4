//! Bytes on disk or on the wire, turned into 32x32 images with labels.
//!
//! [`cifar10`] reads the official binary layout, [`download`] fetches, verifies and installs it,
//! [`folder`] reads a folder of class folders of your own images, [`source`] decides which of
//! the two `--data` names, [`preprocess`] turns images into the tensors the model sees,
//! [`files`] says which files are images, and [`synthetic`] writes small, learnable stand-ins in
//! the real layout so that tests never need the network.

pub mod cifar10;
pub mod download;
pub mod files;
pub mod folder;
pub mod preprocess;
pub mod source;
pub mod synthetic;
