//! The matrix product on host slices: `gemm` with burn's strides and settings, into the caller's
//! buffer.

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
/// It calls the matrix product burn's CPU backend uses (the `gemm` crate) with the strides and
/// settings `burn_flex`'s matmul would pass for the same views, so the sums are the same, but
/// into a buffer of the caller's: burn's matmul allocates its output and then copies it once
/// more to align it, for every call. On one thread, or on rayon's pool when `parallel` (for a
/// product that is alone on the machine at that moment).
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
