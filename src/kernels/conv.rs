//! 3x3 convolutions (padding 1) of channels-last images as matrix products over their patches
//! (`im2col`), and the way back.

use super::matmul::{Strided, product};

/// Taps of a 3x3 kernel.
pub(crate) const TAPS: usize = 9;

/// The runs of patch row `pixel` (of images `[n, size, size, ch]`) that come from inside the
/// image, one per kernel row: the run's start in the row, its start in the images, its length.
/// The three taps of a kernel row are neighbours in the image, so each is one run.
pub(crate) fn patch_runs(
    pixel: usize,
    size: usize,
    ch: usize,
) -> impl Iterator<Item = (usize, usize, usize)> {
    let (s, y, x) = (pixel / (size * size), pixel / size % size, pixel % size);
    // The taps `first..last` of each kernel row lie inside the image.
    let (first, last) = (usize::from(x == 0), if x + 1 == size { 2 } else { 3 });
    (0..3).filter_map(move |ky| {
        let iy = (y + ky).checked_sub(1).filter(|&iy| iy < size)?;
        let at = ((s * size + iy) * size + x + first - 1) * ch;
        Some(((ky * 3 + first) * ch, at, (last - first) * ch))
    })
}

/// The 3x3 patches (padding 1) of `n` channels-last images `[n, size, size, ch]`: one row
/// `[(ky * 3 + kx) * ch + c]` per output pixel, `[n * size * size, 9 * ch]`, copied a run at a
/// time ([`patch_runs`]).
///
/// Into `cols`, which keeps the zeros of the padding from call to call: the padding is at the
/// same places in every image, and nothing else writes there.
pub(crate) fn patches(x: &[f32], n: usize, size: usize, ch: usize, cols: &mut Vec<f32>) {
    cols.resize(n * size * size * TAPS * ch, 0.0);
    for (pixel, row) in cols.chunks_exact_mut(TAPS * ch).enumerate() {
        for (start, at, len) in patch_runs(pixel, size, ch) {
            row[start..start + len].copy_from_slice(&x[at..at + len]);
        }
    }
}

/// `rows @ weight + bias`, then ReLU, into `out`: a convolution over its patches, or a dense
/// layer.
pub(crate) fn affine_relu(
    rows: &[f32],
    weight: &[f32],
    bias: &[f32],
    parallel: bool,
    out: &mut Vec<f32>,
) {
    let (inputs, outputs) = (weight.len() / bias.len(), bias.len());
    out.resize(rows.len() / inputs * outputs, 0.0);
    product(
        Strided::dense(rows, inputs),
        Strided::dense(weight, outputs),
        out,
        parallel,
    );
    for row in out.chunks_exact_mut(outputs) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = (*v + b).max(0.0);
        }
    }
}
