//! Rearrangements: convolution kernels between the module's layout and the patches', images
//! between channel-major and channels-last, and column sums.

use super::conv::TAPS;

/// Which way [`relayout_kernel`] goes.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Toward {
    /// From the module's `[out, in, 3, 3]` to the matrix that multiplies patches,
    /// `[(ky * 3 + kx) * in + ci, out]`.
    Patches,
    /// Back.
    Kernel,
}

/// A convolution's weights (or their gradient) with `out` and `inp` channels, laid out the
/// other way ([`Toward`]).
pub(crate) fn relayout_kernel(w: &[f32], out: usize, inp: usize, toward: Toward) -> Vec<f32> {
    let mut to = vec![0.0; w.len()];
    for o in 0..out {
        for ci in 0..inp {
            for tap in 0..TAPS {
                let (kernel, patch) = ((o * inp + ci) * TAPS + tap, (tap * inp + ci) * out + o);
                match toward {
                    Toward::Patches => to[patch] = w[kernel],
                    Toward::Kernel => to[kernel] = w[patch],
                }
            }
        }
    }
    to
}

/// Each image of `src`, a `[rows, cols]` matrix, transposed into `dst`: channel-major to
/// channels-last (rows are channels) or back (rows are pixels).
pub(crate) fn transpose_images(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    let len = rows * cols;
    for (img, out) in src.chunks_exact(len).zip(dst.chunks_exact_mut(len)) {
        for r in 0..rows {
            for c in 0..cols {
                out[c * rows + r] = img[r * cols + c];
            }
        }
    }
}

/// Column sums of a row-major matrix of `cols` columns.
pub(crate) fn column_sums(m: &[f32], cols: usize) -> Vec<f32> {
    let mut sums = vec![0.0; cols];
    for row in m.chunks_exact(cols) {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_round_trip_through_the_patch_layout() {
        // The cnn's second convolution: 64 outputs of 32 input channels.
        let (out, inp) = (64, 32);
        let w: Vec<f32> = (0..out * inp * TAPS).map(|i| i as f32).collect();
        let for_patches = relayout_kernel(&w, out, inp, Toward::Patches);
        assert_eq!(relayout_kernel(&for_patches, out, inp, Toward::Kernel), w);
        // Output 1, input channel 2, tap (0, 1) is row (1 * 32 + 2) of the patch matrix.
        assert_eq!(for_patches[(inp + 2) * out + 1], w[(inp + 2) * TAPS + 1]);
    }
}
