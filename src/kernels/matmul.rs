//! The matrix product on host slices, into the caller's buffer: our register tiles
//! ([`super::tiled`]) where the instruction set and the shapes allow, else `gemm` with burn's
//! strides and settings.

use super::isa::{Isa, isa};
use super::tiled;

/// A matrix read through strides from a slice: element `(i, j)` is
/// `data[offset + i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Strided<'a> {
    /// A row-major `[data.len() / cols, cols]` matrix.
    pub(crate) fn dense(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            offset: 0,
            rows: data.len() / cols.max(1),
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Columns `first..first + len` of `self`.
    pub(crate) fn columns(self, first: usize, len: usize) -> Self {
        Self {
            offset: self.offset + first * self.col_stride,
            cols: len,
            ..self
        }
    }

    /// The transpose, without a copy.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside `data` (an overflow counts as outside).
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(r, c)| r.checked_add(c))
            .and_then(|rc| rc.checked_add(self.offset));
        last.is_some_and(|last| last < self.data.len())
    }
}

/// `out` (row-major `[a.rows, b.cols]`) = `a @ b`.
///
/// On AVX-512 or AVX2 ([`isa`]), a right-hand side of a multiple of 16 columns whose rows are
/// contiguous goes through our register tiles, the sums in
/// another order than `gemm`'s. Otherwise it calls the matrix product burn's CPU backend uses
/// (the `gemm` crate) with the strides and settings `burn_flex`'s matmul would pass for the same
/// views, so the sums are burn's. Either way into a buffer of the caller's: burn's matmul
/// allocates its output and then copies it once more to align it, for every call. On one
/// thread, or on rayon's pool when `parallel` (for a product that is alone on the machine at
/// that moment).
pub(crate) fn product(a: Strided, b: Strided, out: &mut [f32], parallel: bool) {
    // The bounds the raw-pointer call relies on.
    assert!(
        a.cols == b.rows && out.len() == a.rows * b.cols && a.in_bounds() && b.in_bounds(),
        "fused product: the shapes do not fit"
    );
    if out.is_empty() || a.cols == 0 {
        out.fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let ours: Option<unsafe fn(tiled::Operands)> = match isa() {
            Isa::Avx512 => Some(tiled::product_avx512),
            Isa::Avx2 => Some(tiled::product_avx2),
            Isa::Portable => None,
        };
        // A right-hand side read across its rows (a dense layer's weights, transposed) stays
        // with `gemm`, which packs it: a copy here was slower (9% of a step).
        if let Some(ours) = ours
            && b.cols.is_multiple_of(tiled::COLUMNS)
            && b.col_stride == 1
        {
            let operands = tiled::Operands {
                m: a.rows,
                n: b.cols,
                k: a.cols,
                a: a.data[a.offset..].as_ptr(),
                a_rs: a.row_stride,
                a_cs: a.col_stride,
                b: b.data[b.offset..].as_ptr(),
                b_rs: b.row_stride,
                c: out.as_mut_ptr(),
                c_rs: b.cols,
            };
            // SAFETY: `ours` is built for an instruction set the CPU runs (`isa`); the bounds
            // were checked above through the strides, b's rows are contiguous and hold a
            // multiple of COLUMNS, and `out` is a separate mutable borrow of exactly
            // `a.rows * b.cols` elements.
            unsafe {
                if parallel {
                    tiled::in_parallel(operands, ours)
                } else {
                    ours(operands)
                }
            }
            return;
        }
    }
    let stride = |s: usize| s as isize;
    // SAFETY: every element of `a` and `b` that gemm reads lies inside its slice (checked above
    // through the strides), and `out`, a separate mutable borrow, holds exactly
    // `a.rows * b.cols` elements, written row-major. With read_dst false, gemm writes `out`
    // without reading it.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            out.as_mut_ptr(),
            1,
            stride(b.cols),
            false,
            a.data.as_ptr().add(a.offset),
            stride(a.col_stride),
            stride(a.row_stride),
            b.data.as_ptr().add(b.offset),
            stride(b.col_stride),
            stride(b.row_stride),
            0.0,
            1.0,
            false,
            false,
            false,
            if parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::isa::TEST_CAP;

    /// `a @ b` in f64, element by element.
    fn reference(a: Strided, b: Strided) -> Vec<f64> {
        let at = |m: Strided, i: usize, j: usize| {
            f64::from(m.data[m.offset + i * m.row_stride + j * m.col_stride])
        };
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols).map(|p| at(a, i, p) * at(b, p, j)).sum();
            }
        }
        out
    }

    #[test]
    fn products_of_every_shape_and_layout_agree_with_a_direct_sum() {
        // Rows that fill no tile, one tile, tiles and a remainder; columns of every tile width
        // (16, 32, 64 and their sums) and none (10, the classes: gemm's); right-hand sides
        // row-major (ours) and transposed (gemm's); left-hand sides row-major and transposed;
        // one thread and rayon's.
        let values = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        for (m, k, n) in [
            (1, 3, 16),
            (5, 27, 32),
            (6, 32, 64),
            (13, 64, 48),
            (37, 288, 64),
            (40, 9, 112),
            (7, 300, 10),
            (3, 130, 160),
        ] {
            for (transpose_a, transpose_b, parallel) in [
                (false, false, false),
                (true, false, false),
                (false, true, false),
                (true, true, true),
                (false, false, true),
            ] {
                let (a_data, b_data) = (values(m * k, m), values(k * n, n));
                let a = if transpose_a {
                    Strided::dense(&a_data, m).t()
                } else {
                    Strided::dense(&a_data, k)
                };
                let b = if transpose_b {
                    Strided::dense(&b_data, k).t()
                } else {
                    Strided::dense(&b_data, n)
                };
                // Our tiles on each instruction set this CPU runs, and gemm's.
                for cap in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
                    TEST_CAP.with(|c| c.set(cap));
                    let mut out = vec![f32::NAN; m * n];
                    product(a, b, &mut out, parallel);
                    let lanes = isa();
                    for (got, want) in out.iter().zip(reference(a, b)) {
                        assert!(
                            (f64::from(*got) - want).abs() <= 1e-5 * (k as f64).sqrt() * 4.0,
                            "{m}x{k}x{n} (a^T {transpose_a}, b^T {transpose_b}, {lanes:?}): \
                             {got} against {want}"
                        );
                    }
                }
                TEST_CAP.with(|c| c.set(Isa::Avx512));
            }
        }
    }

    #[test]
    fn strided_bounds_count_overflow_as_outside() {
        let data = [0.0f32; 12];
        let m = Strided::dense(&data, 4);
        assert!(m.in_bounds());
        assert!(!m.columns(1, 4).in_bounds());
        assert!(m.columns(1, 3).t().in_bounds());
        let huge = Strided {
            row_stride: usize::MAX / 2,
            ..m
        };
        assert!(!huge.in_bounds());
    }
}
