//! Which vector instructions the host kernels use: the widest the CPU runs, or fewer when
//! `MAAS_MAX_ISA` says so (as oneDNN's `ONEDNN_MAX_CPU_ISA` does), to measure or rule out the
//! wider kernels on a CPU that has them.

use std::sync::OnceLock;

use anyhow::{Result, bail};

/// The environment variable that caps the kernels' instructions.
pub(crate) const MAX_ISA: &str = "MAAS_MAX_ISA";

/// Instruction sets the kernels are built for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// Plain Rust the compiler vectorises for the baseline target.
    Portable,
    /// AVX2 and FMA: 8 floats a register, 16 registers.
    Avx2,
    /// AVX-512F: 16 floats a register, 32 registers.
    Avx512,
}

impl Isa {
    const NAMES: [(&'static str, Isa); 3] = [
        ("avx512", Isa::Avx512),
        ("avx2", Isa::Avx2),
        ("portable", Isa::Portable),
    ];

    /// The widest set this CPU runs.
    fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// The set `MAAS_MAX_ISA` names, if set; an error names the variable and the values it takes.
    fn cap() -> Result<Option<Isa>> {
        let Some(value) = std::env::var_os(MAX_ISA) else {
            return Ok(None);
        };
        let value = value.to_string_lossy();
        match Self::NAMES
            .iter()
            .find(|(name, _)| value.eq_ignore_ascii_case(name))
        {
            Some(&(_, isa)) => Ok(Some(isa)),
            None => bail!("{MAX_ISA}={value:?} is not one of avx512, avx2, portable"),
        }
    }
}

/// Refuses a `MAAS_MAX_ISA` that names no instruction set (the command line checks it first).
pub(crate) fn check_env() -> Result<()> {
    Isa::cap().map(|_| ())
}

#[cfg(test)]
thread_local! {
    /// Tests cap it on their own thread, to run the narrower kernels on a wider CPU.
    pub(crate) static TEST_CAP: std::cell::Cell<Isa> = const { std::cell::Cell::new(Isa::Avx512) };
}

/// The instructions the kernels use now: the CPU's widest, under `MAAS_MAX_ISA`'s cap (checked
/// once; a value [`check_env`] refuses caps nothing).
pub(crate) fn isa() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    let chosen = *CHOSEN.get_or_init(|| {
        let detected = Isa::detected();
        Isa::cap()
            .ok()
            .flatten()
            .map_or(detected, |cap| cap.min(detected))
    });
    #[cfg(test)]
    let chosen = chosen.min(TEST_CAP.with(|c| c.get()));
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_cap_narrows_the_choice_on_its_thread_only() {
        let widest = isa();
        TEST_CAP.with(|c| c.set(Isa::Portable));
        assert_eq!(isa(), Isa::Portable);
        std::thread::spawn(move || assert_eq!(isa(), widest))
            .join()
            .unwrap();
        TEST_CAP.with(|c| c.set(Isa::Avx512));
        assert_eq!(isa(), widest);
    }
}
