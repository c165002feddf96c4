//! The architectures this maas knows: one line each for its own, and [`register`] for those a
//! program built on the library brings (`examples/custom_model.rs`).

use std::fmt;
use std::sync::RwLock;

use anyhow::{Result, bail};

use super::arch::Architecture;
use super::{cnn, mlp};

/// maas's own architectures, the default (`--arch` not given) first.
static BUILT_IN: &[&dyn Architecture] = &[&mlp::MlpArchitecture, &cnn::CnnArchitecture];

/// Those added by [`register`], after the built-in ones.
static REGISTERED: RwLock<Vec<&'static dyn Architecture>> = RwLock::new(Vec::new());

/// Adds `arch` to every command of this process (`--arch`, loading its files, training,
/// serving); refused when its name or flag is already taken.
pub fn register(arch: &'static dyn Architecture) -> Result<()> {
    if let Some(taken) = Arch::all().find(|a| a.name() == arch.name() || a.flag() == arch.flag()) {
        bail!(
            "cannot register architecture `{}` (--arch {}): `{}` (--arch {}) is already registered",
            arch.name(),
            arch.flag(),
            taken.name(),
            taken.flag()
        );
    }
    REGISTERED
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(arch);
    Ok(())
}

/// One registered architecture: a handle that is cheap to copy and compare.
#[derive(Clone, Copy)]
pub struct Arch(&'static dyn Architecture);

impl Arch {
    /// Every architecture, the default first.
    pub fn all() -> impl Iterator<Item = Arch> {
        let registered = REGISTERED
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        BUILT_IN.iter().copied().chain(registered).map(Arch)
    }

    /// The one `maas train` makes when `--arch` is not given: the card's MLP.
    pub fn default_arch() -> Arch {
        Arch(BUILT_IN[0])
    }

    /// The architecture named `name` in a file.
    pub fn from_name(name: &str) -> Option<Arch> {
        Self::all().find(|a| a.name() == name)
    }

    /// The architecture of the command line's `--arch flag`.
    pub fn from_flag(flag: &str) -> Option<Arch> {
        Self::all().find(|a| a.flag() == flag)
    }

    /// Its name in files.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// Its name on the command line.
    pub fn flag(self) -> &'static str {
        self.0.flag()
    }

    /// What it implements.
    pub fn get(self) -> &'static dyn Architecture {
        self.0
    }
}

impl PartialEq for Arch {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Arch {}

impl fmt::Debug for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flag())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_flags_are_unique_and_shapes_end_in_the_classes() {
        let all: Vec<Arch> = Arch::all().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(a.name() != b.name() && a.flag() != b.flag(), "{a:?} {b:?}");
            }
            assert_eq!(Arch::from_name(a.name()), Some(*a));
            assert_eq!(Arch::from_flag(a.flag()), Some(*a));
            let hidden = a.get().fixed_hidden().unwrap_or(8);
            let shapes = a.get().parameter_shapes(hidden, 7);
            let weights = a.get().init_weights(hidden, 7, 1);
            let got: Vec<_> = weights
                .arrays
                .iter()
                .map(|w| (w.name.clone(), w.shape.clone()))
                .collect();
            assert_eq!(
                got, shapes,
                "{a:?}: initial weights have the declared shapes"
            );
            assert_eq!(weights.classes(), 7);
        }
        assert_eq!(Arch::default_arch().flag(), "mlp");
        assert_eq!(Arch::from_name("resnet"), None);
        let err = register(&mlp::MlpArchitecture).unwrap_err().to_string();
        assert!(err.contains("already registered"), "{err}");
    }
}
