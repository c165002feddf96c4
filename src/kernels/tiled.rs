//! The matrix product of [`super::matmul::product`] in register tiles of our own, on AVX-512 or
//! AVX2 + FMA, for the shapes of the cnn: a right-hand side with contiguous rows and a multiple of
//! 16 columns (the channels of a convolution, the width of a dense layer), any left-hand side.
//!
//! Why: the `gemm` crate packs both sides of every product, and the cnn's products are small
//! (Winograd's are 128 x 32 by 32 x 64), so packing is a large share of each; its AVX-512 kernels
//! (its `x86-v4` feature) made the cnn's step slower here (1,500 against 1,900 samples/s). Here a
//! tile of the result stays in vector registers for the whole sum (AVX-512: 6 rows x 64 columns
//! in 24 of its 32 registers; AVX2: 6 rows x 16 columns in 12 of its 16): each step of the sum
//! loads one row of `b` (read in place) and broadcasts one value of `a` per row. Nothing is
//! packed. Each value of the result is one sum in `k`'s order, in slices of [`DEPTH`].

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m256, __m512, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps,
    _mm256_storeu_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_storeu_ps,
};

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

// SAFETY: the pointers are only read (a, b) or written at disjoint rows (c) by the threads a
// product is split over.
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

    /// Columns `first..` of the product.
    #[inline(always)]
    fn columns(self, first: usize) -> Self {
        Self {
            b: self.b.wrapping_add(first),
            c: self.c.wrapping_add(first),
            ..self
        }
    }
}

/// Columns a product's right-hand side must have a multiple of.
pub(crate) const COLUMNS: usize = 16;

/// A long sum is taken in slices of this many terms, each added to the last's: the slice of `b`
/// under a column of tiles stays in the cache for every row of the result (a dense layer's
/// 4096 x 64 columns, 1 MiB, were read once per 6 rows).
const DEPTH: usize = 256;

/// A vector register of floats and the three things a tile does with it.
trait Vector: Copy {
    /// Floats in a register.
    const LANES: usize;
    fn zero() -> Self;
    /// # Safety
    /// `LANES` floats at `p` are readable.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `LANES` floats at `p` are writable.
    unsafe fn store(self, p: *mut f32);
    fn splat(v: f32) -> Self;
    /// `self * b + acc`, rounded once.
    fn fma(self, b: Self, acc: Self) -> Self;
}

// SAFETY (both implementations): only the functions compiled for their instruction set
// (`product_avx512`, `product_avx2`, entered after a runtime check) make and use these
// registers, so the CPU runs each intrinsic; the pointers' bounds are the callers'.
#[cfg(target_arch = "x86_64")]
impl Vector for __m512 {
    const LANES: usize = 16;
    #[inline(always)]
    fn zero() -> Self {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { _mm512_storeu_ps(p, self) }
    }
    #[inline(always)]
    fn splat(v: f32) -> Self {
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    fn fma(self, b: Self, acc: Self) -> Self {
        unsafe { _mm512_fmadd_ps(self, b, acc) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Vector for __m256 {
    const LANES: usize = 8;
    #[inline(always)]
    fn zero() -> Self {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { _mm256_storeu_ps(p, self) }
    }
    #[inline(always)]
    fn splat(v: f32) -> Self {
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    fn fma(self, b: Self, acc: Self) -> Self {
        unsafe { _mm256_fmadd_ps(self, b, acc) }
    }
}

/// `c = a @ b` on AVX-512.
///
/// # Safety
/// The CPU runs AVX-512F; every element the strides name lies inside live allocations, `c`'s
/// rows are disjoint from `a`'s and `b`'s, and `n` is a multiple of [`COLUMNS`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn product_avx512(o: Operands) {
    for (slice, add) in slices(o) {
        // Widest tiles first: 4 registers x 6 rows, then 2 x 12, then 1 x 12.
        let mut j = 0;
        while j < slice.n {
            let left = slice.n - j;
            let columns = slice.columns(j);
            // SAFETY: the caller's contract, for these columns.
            unsafe {
                if left >= 64 {
                    tiles::<__m512, 4, 6>(columns, add);
                    j += 64;
                } else if left >= 32 {
                    tiles::<__m512, 2, 12>(columns, add);
                    j += 32;
                } else {
                    tiles::<__m512, 1, 12>(columns, add);
                    j += 16;
                }
            }
        }
    }
}

/// `c = a @ b` on AVX2 + FMA, in tiles of 2 registers (16 columns) x 6 rows.
///
/// # Safety
/// As [`product_avx512`], for AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn product_avx2(o: Operands) {
    for (slice, add) in slices(o) {
        for j in (0..slice.n).step_by(16) {
            // SAFETY: the caller's contract, for these columns.
            unsafe { tiles::<__m256, 2, 6>(slice.columns(j), add) };
        }
    }
}

/// The slices of [`DEPTH`] terms of `o`'s sum, and whether each adds to the last's (an empty
/// sum is one slice, which writes zeros).
fn slices(o: Operands) -> impl Iterator<Item = (Operands, bool)> {
    (0..o.k.max(1)).step_by(DEPTH).map(move |p| {
        let slice = Operands {
            k: DEPTH.min(o.k - p),
            a: o.a.wrapping_add(p * o.a_cs),
            b: o.b.wrapping_add(p * o.b_rs),
            ..o
        };
        (slice, p > 0)
    })
}

/// Columns `0..V * LANES` of the product, `R` rows at a time, the last rows by a smaller tile.
///
/// # Safety
/// The operands' rows and those columns lie inside live allocations; the CPU runs `T`.
#[inline(always)]
unsafe fn tiles<T: Vector, const V: usize, const R: usize>(o: Operands, add: bool) {
    let whole = o.m / R * R;
    let mut i = 0;
    // SAFETY (all calls): rows i..i + R, and whole..m, lie inside the product; each remainder
    // arm's tile has exactly that many rows.
    while i < whole {
        unsafe { tile::<T, V, R>(o.rows(i, R), add) };
        i += R;
    }
    let rest = o.rows(whole, o.m - whole);
    unsafe {
        match rest.m {
            0 => {}
            1 => tile::<T, V, 1>(rest, add),
            2 => tile::<T, V, 2>(rest, add),
            3 => tile::<T, V, 3>(rest, add),
            4 => tile::<T, V, 4>(rest, add),
            5 => tile::<T, V, 5>(rest, add),
            6 => tile::<T, V, 6>(rest, add),
            7 => tile::<T, V, 7>(rest, add),
            8 => tile::<T, V, 8>(rest, add),
            9 => tile::<T, V, 9>(rest, add),
            10 => tile::<T, V, 10>(rest, add),
            _ => tile::<T, V, 11>(rest, add),
        }
    }
}

/// `R` rows x `V` registers of columns of the result (added to what `c` holds when `add`),
/// summed over all of `k` in registers.
///
/// (Pointers move by `wrapping_add`, the counts by `wrapping_mul`: no overflow branches in the
/// inner loop, whatever the build.)
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn tile<T: Vector, const V: usize, const R: usize>(o: Operands, add: bool) {
    let at = |r: usize, v: usize| o.c.wrapping_add(r.wrapping_mul(o.c_rs) + T::LANES * v);
    let mut acc = [[T::zero(); V]; R];
    if add {
        for (r, acc) in acc.iter_mut().enumerate() {
            for (v, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row r, register v of c lies inside the result.
                *acc = unsafe { T::load(at(r, v)) };
            }
        }
    }
    let (mut row, mut column) = (o.b, o.a);
    for _ in 0..o.k {
        let mut bv = [T::zero(); V];
        for (v, b) in bv.iter_mut().enumerate() {
            // SAFETY: this row of b's V registers lies inside b.
            *b = unsafe { T::load(row.wrapping_add(T::LANES * v)) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: a's value at row r of this column lies inside a.
            let av = T::splat(unsafe { *column.wrapping_add(r.wrapping_mul(o.a_rs)) });
            for (acc, b) in acc.iter_mut().zip(&bv) {
                *acc = av.fma(*b, *acc);
            }
        }
        row = row.wrapping_add(o.b_rs);
        column = column.wrapping_add(o.a_cs);
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, acc) in acc.iter().enumerate() {
            // SAFETY: row r, register v of c lies inside the result.
            unsafe { acc.store(at(r, v)) };
        }
    }
}

/// `product(o)` split over rayon's threads by rows (for a product alone on the machine).
///
/// # Safety
/// `product`'s.
pub(crate) unsafe fn in_parallel(o: Operands, product: unsafe fn(Operands)) {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads().max(1);
    // Row blocks of whole 12-row tiles, a few per thread.
    let block = o.m.div_ceil(threads * 4).next_multiple_of(12).max(12);
    (0..o.m.div_ceil(block)).into_par_iter().for_each(|b| {
        let first = b * block;
        // SAFETY: the caller's contract; the parts write disjoint rows of c.
        unsafe { product(o.rows(first, block.min(o.m - first))) };
    });
}
