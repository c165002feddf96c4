//! The matrix product of [`super::matmul::product`] on AVX-512, for the shapes of the cnn: a
//! right-hand side with contiguous rows and a multiple of 16 columns (the channels of a
//! convolution, the width of a dense layer), any left-hand side.
//!
//! Why: the `gemm` crate runs 8-wide AVX2 kernels here (its AVX-512 ones, enabled by its
//! `x86-v4` feature, made the cnn's step slower: 1,500 against 1,900 samples/s), and packs both
//! sides of every product; the cnn's products are small (Winograd's are 128 x 32 by 32 x 64) so
//! packing is a large share of each. Here a tile of up to 6 rows x 64 columns of the result stays
//! in 24 of the 32 vector registers for the whole sum: each step of the sum loads one row of
//! `b` (4 vectors, read in place) and broadcasts one value of `a` per row, 24 fused
//! multiply-adds. Nothing is packed. Each value of the result is one sum in `k`'s order.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
};

/// Whether this CPU runs AVX-512 (checked once; the standard library caches the answer).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One product's operands as raw parts: `c [m, n]` (row stride `c_rs`) = `a [m, k]` (element
/// `(i, p)` at `a + i * a_rs + p * a_cs`) @ `b [k, n]` (element `(p, j)` at `b + p * b_rs + j`).
#[derive(Clone, Copy)]
pub(crate) struct Operands {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: *const f32,
    pub a_rs: usize,
    pub a_cs: usize,
    pub b: *const f32,
    pub b_rs: usize,
    pub c: *mut f32,
    pub c_rs: usize,
}

// The pointers are only read (a, b) or written at disjoint rows (c) by the threads a product is
// split over.
unsafe impl Send for Operands {}
unsafe impl Sync for Operands {}

impl Operands {
    /// Rows `first..first + len` of the product.
    fn rows(self, first: usize, len: usize) -> Self {
        Self {
            m: len,
            a: self.a.wrapping_add(first * self.a_rs),
            c: self.c.wrapping_add(first * self.c_rs),
            ..self
        }
    }
}

/// `c = a @ b` for `n` a multiple of 16.
///
/// # Safety
/// The CPU runs AVX-512F ([`available`]); every element the strides name lies inside live
/// allocations, `c`'s rows are disjoint from `a`'s and `b`'s, and `n % 16 == 0`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn product(o: Operands) {
    // A long sum in slices of DEPTH, each added to the last's: the slice of `b` under a column
    // of tiles stays in the cache for every row of the result (a dense layer's 4096 x 64
    // columns, 1 MiB, were read once per 6 rows).
    const DEPTH: usize = 256;
    let mut p = 0;
    while p < o.k || p == 0 {
        let depth = DEPTH.min(o.k - p);
        let slice = Operands {
            k: depth,
            a: o.a.wrapping_add(p * o.a_cs),
            b: o.b.wrapping_add(p * o.b_rs),
            ..o
        };
        // SAFETY: the caller's bounds cover rows p..p + depth of b, columns of a.
        unsafe { slice_product(slice, p > 0) };
        p += DEPTH;
    }
}

/// `c = a @ b`, or `c += a @ b` when `add`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn slice_product(o: Operands, add: bool) {
    // Widest tiles first: 4 vectors x 6 rows, then 2 x 12, then 1 x 12 for what is left.
    let mut j = 0;
    while j < o.n {
        let left = o.n - j;
        let shifted = Operands {
            b: o.b.wrapping_add(j),
            c: o.c.wrapping_add(j),
            ..o
        };
        // SAFETY: the caller's bounds cover columns j.. of b and c.
        unsafe {
            if left >= 64 {
                columns::<4, 6>(shifted, add);
                j += 64;
            } else if left >= 32 {
                columns::<2, 12>(shifted, add);
                j += 32;
            } else {
                columns::<1, 12>(shifted, add);
                j += 16;
            }
        }
    }
}

/// Columns `0..16 * V` of the product, `R` rows at a time, the last rows by a smaller tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn columns<const V: usize, const R: usize>(o: Operands, add: bool) {
    let whole = o.m / R * R;
    let mut i = 0;
    while i < whole {
        // SAFETY: rows i..i + R lie inside the product.
        unsafe { tile::<V, R>(o.rows(i, R), add) };
        i += R;
    }
    let rest = o.rows(whole, o.m - whole);
    // SAFETY: rows whole..m lie inside the product; each arm's tile has exactly that many.
    unsafe {
        match rest.m {
            0 => {}
            1 => tile::<V, 1>(rest, add),
            2 => tile::<V, 2>(rest, add),
            3 => tile::<V, 3>(rest, add),
            4 => tile::<V, 4>(rest, add),
            5 => tile::<V, 5>(rest, add),
            6 => tile::<V, 6>(rest, add),
            7 => tile::<V, 7>(rest, add),
            8 => tile::<V, 8>(rest, add),
            9 => tile::<V, 9>(rest, add),
            10 => tile::<V, 10>(rest, add),
            _ => tile::<V, 11>(rest, add),
        }
    }
}

/// `R` rows x `16 * V` columns of the result (added to what `c` holds when `add`), summed over
/// all of `k` in registers.
///
/// (Pointers move by `wrapping_add`, the counts by `wrapping_mul`: the build checks overflow
/// in `add` and `*`, and those branches in the inner loop cost a third of its speed.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile<const V: usize, const R: usize>(o: Operands, add: bool) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    if add {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row r, columns 16v.. of c lie inside the result.
                *acc =
                    unsafe { _mm512_loadu_ps(o.c.wrapping_add(r.wrapping_mul(o.c_rs) + 16 * v)) };
            }
        }
    }
    let (mut row, mut column) = (o.b, o.a);
    for _ in 0..o.k {
        // SAFETY (the whole loop): row p of b's V vectors and a's column p of these R rows lie
        // inside the operands (the caller's contract).
        unsafe {
            let mut bv: [__m512; V] = [_mm512_setzero_ps(); V];
            for (v, b) in bv.iter_mut().enumerate() {
                *b = _mm512_loadu_ps(row.wrapping_add(16 * v));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*column.wrapping_add(r.wrapping_mul(o.a_rs)));
                for (acc, b) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_fmadd_ps(av, *b, *acc);
                }
            }
        }
        row = row.wrapping_add(o.b_rs);
        column = column.wrapping_add(o.a_cs);
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, acc) in acc.iter().enumerate() {
            // SAFETY: row r, columns 16v.. of c lie inside the result.
            unsafe { _mm512_storeu_ps(o.c.wrapping_add(r.wrapping_mul(o.c_rs) + 16 * v), *acc) };
        }
    }
}

/// `c = a @ b` split over rayon's threads by rows (for a product alone on the machine).
///
/// # Safety
/// As [`product`].
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn product_parallel(o: Operands) {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads().max(1);
    // Row blocks of whole 12-row tiles, a few per thread.
    let block = o.m.div_ceil(threads * 4).next_multiple_of(12).max(12);
    (0..o.m.div_ceil(block)).into_par_iter().for_each(|b| {
        let first = b * block;
        let part = o.rows(first, block.min(o.m - first));
        // SAFETY: the caller's contract; the parts write disjoint rows of c.
        unsafe { product(part) };
    });
}
