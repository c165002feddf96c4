//! Subnormal floats flushed to zero on the CPU while training.
//!
//! Why: once a model fits its data, its gradients and Adam's second moments fall below f32's
//! normal range (1.2e-38), and x86 cores handle such subnormal values in microcode, a hundred
//! times slower than normal ones: on the tests' data every MLP epoch after the first ran at a
//! third of the first's speed. Values that small change no weight that Adam updates (they are
//! under its epsilon by 30 orders of magnitude), so flushing them to zero, as PyTorch's CPU
//! kernels (oneDNN) do, changes what training learns by nothing measurable. The setting is per
//! thread: it is made on the caller and on every thread of rayon's pool, where burn's CPU
//! backend and `gemm` run.

/// Flushes subnormal results to zero and treats subnormal inputs as zero, on this thread and on
/// every thread of rayon's global pool. Elsewhere than x86-64 it does nothing.
pub fn flush_to_zero() {
    rayon::broadcast(|_| flush_here());
    flush_here();
}

#[cfg(target_arch = "x86_64")]
fn flush_here() {
    // MXCSR bits: 15 flush-to-zero (FTZ), 6 denormals-are-zero (DAZ).
    const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);
    let mut csr: u32 = 0;
    // SAFETY: stmxcsr stores the 32-bit control register into `csr`, which is valid for writes;
    // ldmxcsr loads it back with two mode bits set, which changes only the rounding of values
    // below f32's normal range (no exception is unmasked).
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
        csr |= FTZ_DAZ;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn flush_here() {}

#[cfg(test)]
mod tests {
    #[test]
    fn subnormal_results_become_zero() {
        super::flush_to_zero();
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        let product = std::hint::black_box(tiny * 0.5);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(product, 0.0);
        }
    }
}
