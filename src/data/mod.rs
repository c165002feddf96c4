//! Bytes on disk or on the wire, turned into 32x32 images with labels.
//!
//! [`cifar10`] reads the official binary layout, [`download`] fetches, verifies and installs it,
//! [`folder`] reads a folder of class folders of your own images, [`source`] decides which of
//! the two `--data` names, [`preprocess`] turns images into the tensors the model sees,
//! [`jpeg`] decodes photos at a reduced DCT scale, [`files`] says which files are images,
//! [`labelled`] holds the loaded images with their labels, whichever source they came from, and [`synthetic`] writes small, learnable stand-ins
//! in the real layout so that tests never need the network.
//!
//! Nothing here depends on the model, training or inference: they depend on this.

pub mod cifar10;
pub mod download;
pub mod files;
pub mod folder;
pub mod jpeg;
pub mod labelled;
pub mod preprocess;
pub mod source;
pub mod synthetic;

pub use files::FileError;
pub use labelled::LabelledImages;

/// The most classes a dataset (and so a model) may have: labels are stored as bytes.
pub const MAX_CLASSES: usize = 256;
