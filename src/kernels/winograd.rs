//! Winograd's F(2x2, 3x3): a 3x3 convolution (stride 1, padding 1) of channels-last images
//! `[n, size, size, ch]`, forward and back, in 16 matrix products that each have a quarter of
//! the rows of the patch product (`im2col`), so 2.25 times fewer multiplications.
//!
//! Why: the cnn's second convolution (32 -> 64 channels on 16x16) was over half of a training
//! step on the CPU as patch products, forward, weight gradient and input gradient (and writing
//! and summing back the patches). Here each image is cut into tiles of 2x2 output pixels, whose
//! 4x4 input windows (`d`) and the kernel (`g`) are transformed, `V = Bᵀ d B` and
//! `U = G g Gᵀ`; then for each of the 16 points of a tile, `M = V @ U` over the channels is one
//! matrix product over all the tiles; the output is `Aᵀ M A`. The backward pass is that
//! algorithm's own gradient, exactly (every step is linear): `dM = A dY Aᵀ`, `dU = Vᵀ @ dM`
//! (reusing the forward's `V`), `dV = dM @ Uᵀ`, `dg = Gᵀ dU G` and `dx` the sum of `B dV Bᵀ`
//! over the overlapping windows. Only sums are taken in another order than a direct convolution.
//!
//! The transforms run on lanes of channels (contiguous in channels-last images): 16 in an AVX-512
//! register where the CPU has them ([`Wide`]), 8 in an AVX2 register ([`Narrow`]), else 8 in an
//! array the compiler vectorises ([`Portable`]). (The arrays, built for AVX2 or AVX-512, were
//! no faster: the compiler moved their lanes through the stack one float at a time. In
//! registers of their own the cnn's step ran a third faster, 4,450 -> 6,000 samples/s at batch
//! 32 on AVX-512.)

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m256, __m256i, __m512, _mm256_add_ps, _mm256_cmpgt_epi32, _mm256_maskload_ps,
    _mm256_maskstore_ps, _mm256_max_ps, _mm256_mul_ps, _mm256_set1_epi32, _mm256_set1_ps,
    _mm256_setr_epi32, _mm256_setzero_ps, _mm256_sub_ps, _mm256_xor_ps, _mm512_add_ps,
    _mm512_castps_si512, _mm512_castsi512_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps,
    _mm512_max_ps, _mm512_mul_ps, _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_sub_ps, _mm512_xor_si512,
};

use crate::kernels::isa::{Isa, isa};
use crate::kernels::layout::transpose_images;
use crate::kernels::matmul::{Strided, product};

/// Points of a transformed tile (4x4).
const POINTS: usize = 16;
/// A lane of channels and the arithmetic the transforms do on it.
trait Lane: Copy {
    /// Channels in a lane.
    const WIDTH: usize;
    fn zero() -> Self;
    /// The first `s.len()` (at most `WIDTH`) channels from `s`, the rest zero.
    fn load(s: &[f32]) -> Self;
    /// The first `s.len()` channels into `s`.
    fn store(self, s: &mut [f32]);
    fn add(self, b: Self) -> Self;
    fn sub(self, b: Self) -> Self;
    fn half(self) -> Self;
    fn neg(self) -> Self;
    fn relu(self) -> Self;
}

/// 8 channels in an array, on any CPU.
type Portable = [f32; 8];

impl Lane for Portable {
    const WIDTH: usize = 8;
    #[inline(always)]
    fn zero() -> Self {
        [0.0; 8]
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        // A whole lane without a call to `memcpy` (a slice of unknown length is copied by one).
        if let Ok(lane) = Self::try_from(s) {
            return lane;
        }
        let mut lane = Self::zero();
        for (l, v) in lane.iter_mut().zip(s) {
            *l = *v;
        }
        lane
    }
    #[inline(always)]
    fn store(self, s: &mut [f32]) {
        if let Ok(whole) = <&mut Self>::try_from(&mut *s) {
            *whole = self;
            return;
        }
        for (d, v) in s.iter_mut().zip(self) {
            *d = v;
        }
    }
    #[inline(always)]
    fn add(mut self, b: Self) -> Self {
        for (a, b) in self.iter_mut().zip(b) {
            *a += b;
        }
        self
    }
    #[inline(always)]
    fn sub(mut self, b: Self) -> Self {
        for (a, b) in self.iter_mut().zip(b) {
            *a -= b;
        }
        self
    }
    #[inline(always)]
    fn half(mut self) -> Self {
        for a in &mut self {
            *a *= 0.5;
        }
        self
    }
    #[inline(always)]
    fn neg(mut self) -> Self {
        for a in &mut self {
            *a = -*a;
        }
        self
    }
    #[inline(always)]
    fn relu(mut self) -> Self {
        for a in &mut self {
            *a = a.max(0.0);
        }
        self
    }
}

/// 16 channels in an AVX-512 register. Only functions compiled for AVX-512F ([`widest!`]) make
/// and use one: each method's intrinsic is inlined into them.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Wide(__m512);

#[cfg(target_arch = "x86_64")]
impl Wide {
    /// The mask of the first `len` of 16 channels.
    #[inline(always)]
    fn mask(len: usize) -> u16 {
        ((1u32 << len.min(16)) - 1) as u16
    }
}

// SAFETY (every method): a `Wide` is only made and used inside functions compiled for AVX-512F
// (see the type), so the CPU runs these instructions; the masked loads and stores touch only the
// first `s.len()` channels, inside `s`.
#[cfg(target_arch = "x86_64")]
impl Lane for Wide {
    const WIDTH: usize = 16;
    #[inline(always)]
    fn zero() -> Self {
        Self(unsafe { _mm512_setzero_ps() })
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        Self(unsafe { _mm512_maskz_loadu_ps(Self::mask(s.len()), s.as_ptr()) })
    }
    #[inline(always)]
    fn store(self, s: &mut [f32]) {
        unsafe { _mm512_mask_storeu_ps(s.as_mut_ptr(), Self::mask(s.len()), self.0) }
    }
    #[inline(always)]
    fn add(self, b: Self) -> Self {
        Self(unsafe { _mm512_add_ps(self.0, b.0) })
    }
    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        Self(unsafe { _mm512_sub_ps(self.0, b.0) })
    }
    #[inline(always)]
    fn half(self) -> Self {
        Self(unsafe { _mm512_mul_ps(self.0, _mm512_set1_ps(0.5)) })
    }
    #[inline(always)]
    fn neg(self) -> Self {
        // The sign bit flipped, as `-x` does (0 - x would make -0 of 0).
        let sign = unsafe { _mm512_set1_epi32(i32::MIN) };
        Self(unsafe { _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(self.0), sign)) })
    }
    #[inline(always)]
    fn relu(self) -> Self {
        Self(unsafe { _mm512_max_ps(self.0, _mm512_setzero_ps()) })
    }
}

/// 8 channels in an AVX2 register. Only functions compiled for AVX2 ([`widest!`]) make and use
/// one: each method's intrinsic is inlined into them.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Narrow(__m256);

#[cfg(target_arch = "x86_64")]
impl Narrow {
    /// The mask of the first `len` of 8 channels.
    #[inline(always)]
    fn mask(len: usize) -> __m256i {
        let len = len.min(8) as i32;
        let lanes = unsafe { _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7) };
        unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(len), lanes) }
    }
}

// SAFETY (every method): as `Wide`'s, for AVX2.
#[cfg(target_arch = "x86_64")]
impl Lane for Narrow {
    const WIDTH: usize = 8;
    #[inline(always)]
    fn zero() -> Self {
        Self(unsafe { _mm256_setzero_ps() })
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        Self(unsafe { _mm256_maskload_ps(s.as_ptr(), Self::mask(s.len())) })
    }
    #[inline(always)]
    fn store(self, s: &mut [f32]) {
        unsafe { _mm256_maskstore_ps(s.as_mut_ptr(), Self::mask(s.len()), self.0) }
    }
    #[inline(always)]
    fn add(self, b: Self) -> Self {
        Self(unsafe { _mm256_add_ps(self.0, b.0) })
    }
    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        Self(unsafe { _mm256_sub_ps(self.0, b.0) })
    }
    #[inline(always)]
    fn half(self) -> Self {
        Self(unsafe { _mm256_mul_ps(self.0, _mm256_set1_ps(0.5)) })
    }
    #[inline(always)]
    fn neg(self) -> Self {
        // The sign bit flipped, as `-x` does.
        Self(unsafe { _mm256_xor_ps(self.0, _mm256_set1_ps(-0.0)) })
    }
    #[inline(always)]
    fn relu(self) -> Self {
        Self(unsafe { _mm256_max_ps(self.0, _mm256_setzero_ps()) })
    }
}

/// `fn $name`, running `$generic` on the widest lanes the kernels may use ([`isa`]): [`Wide`]
/// inside a copy compiled for AVX-512F, [`Narrow`] inside one for AVX2, else [`Portable`].
macro_rules! widest {
    ($(#[$doc:meta])* fn $name:ident = $generic:ident($($arg:ident: $ty:ty),* $(,)?);) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn wide($($arg: $ty),*) {
                    $generic::<Wide>($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn narrow($($arg: $ty),*) {
                    $generic::<Narrow>($($arg),*)
                }
                match isa() {
                    // SAFETY: the CPU runs AVX-512F, which `wide` is compiled for.
                    Isa::Avx512 => return unsafe { wide($($arg),*) },
                    // SAFETY: the CPU runs AVX2, which `narrow` is compiled for.
                    Isa::Avx2 => return unsafe { narrow($($arg),*) },
                    Isa::Portable => {}
                }
            }
            $generic::<Portable>($($arg),*)
        }
    };
}

/// `Bᵀ`: the input window's transform, along one side.
#[inline(always)]
fn b_t<L: Lane>([d0, d1, d2, d3]: [L; 4]) -> [L; 4] {
    [d0.sub(d2), d1.add(d2), d2.sub(d1), d1.sub(d3)]
}
/// `B`: back from the transformed window's gradient to the window's.
#[inline(always)]
fn b<L: Lane>([v0, v1, v2, v3]: [L; 4]) -> [L; 4] {
    [v0, v1.sub(v2).add(v3), v1.sub(v0).add(v2), v3.neg()]
}
/// `G`: the kernel's transform.
#[inline(always)]
fn g<L: Lane>([g0, g1, g2]: [L; 3]) -> [L; 4] {
    let outer = g0.add(g2);
    [g0, outer.add(g1).half(), outer.sub(g1).half(), g2]
}
/// `Gᵀ`: back from the transformed kernel's gradient to the kernel's.
#[inline(always)]
fn g_t<L: Lane>([u0, u1, u2, u3]: [L; 4]) -> [L; 3] {
    let (s, d) = (u1.add(u2).half(), u1.sub(u2).half());
    [u0.add(s), d, s.add(u3)]
}
/// `Aᵀ`: the output tile from its transformed products.
#[inline(always)]
fn a_t<L: Lane>([m0, m1, m2, m3]: [L; 4]) -> [L; 2] {
    [m0.add(m1).add(m2), m1.sub(m2).sub(m3)]
}
/// `A`: back from the output tile's gradient to the products'.
#[inline(always)]
fn a<L: Lane>([y0, y1]: [L; 2]) -> [L; 4] {
    [y0, y0.add(y1), y0.sub(y1), y1.neg()]
}

/// `F tile Fᵀ` for the one-sided transform `f`: `f` down each column, then along each row.
#[inline(always)]
// (Loops, not `array::from_fn`, whose closures the compiler left as calls.)
fn both_sides<L: Lane, const I: usize, const O: usize>(
    tile: [[L; I]; I],
    f: impl Fn([L; I]) -> [L; O],
) -> [[L; O]; O] {
    let mut columns = [[L::zero(); O]; I];
    for (c, column) in columns.iter_mut().enumerate() {
        let mut input = [L::zero(); I];
        for (r, v) in input.iter_mut().enumerate() {
            *v = tile[r][c];
        }
        *column = f(input);
    }
    let mut out = [[L::zero(); O]; O];
    for (r, row) in out.iter_mut().enumerate() {
        let mut input = [L::zero(); I];
        for (c, v) in input.iter_mut().enumerate() {
            *v = columns[c][r];
        }
        *row = f(input);
    }
    out
}

/// The lanes of `L` over `ch` channels: start and length.
#[inline(always)]
fn blocks<L: Lane>(ch: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..ch)
        .step_by(L::WIDTH)
        .map(move |c| (c, L::WIDTH.min(ch - c)))
}

/// Where tiles lie in `n` images of side `size`.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
struct Tiling {
    n: usize,
    size: usize,
}

impl Tiling {
    /// Tiles per side (an odd side's last tile hangs over by a pixel).
    fn side(self) -> usize {
        self.size.div_ceil(2)
    }
    fn count(self) -> usize {
        self.n * self.side() * self.side()
    }
    /// Where tile `t` lies: its image, and its first row and column of pixels.
    fn corner(self, t: usize) -> [usize; 3] {
        let side = self.side();
        [t / (side * side), 2 * (t / side % side), 2 * (t % side)]
    }
    /// The pixel index (image, row, column) of row `r`, column `c` of the window at `corner`
    /// ([`Self::corner`]) that starts `offset` pixels up and left of it, if inside the image.
    #[inline(always)]
    fn pixel(self, [img, y0, x0]: [usize; 3], r: usize, c: usize, offset: usize) -> Option<usize> {
        let y = (y0 + r).checked_sub(offset).filter(|&y| y < self.size)?;
        let x = (x0 + c).checked_sub(offset).filter(|&x| x < self.size)?;
        Some((img * self.size + y) * self.size + x)
    }
}

/// Tiles `first..first + count`, held in a buffer of planes of `rows` tiles from its row 0.
#[derive(Clone, Copy)]
struct Span {
    first: usize,
    count: usize,
    rows: usize,
}

impl Span {
    fn tiles(self) -> std::ops::Range<usize> {
        self.first..self.first + self.count
    }
}

/// Tiles whose products, transformed gradients and so on a pass holds at once: their planes
/// (16 x 128 x 64 values at most, 512 KiB) stay in the core's L2 cache between the transforms and
/// the products, instead of a whole chunk's going out to memory and back.
const BLOCK: usize = 128;

/// The [`Span`]s of `tiles` tiles, [`BLOCK`] at a time.
fn spans(tiles: usize) -> impl Iterator<Item = Span> {
    (0..tiles).step_by(BLOCK).map(move |first| Span {
        first,
        count: BLOCK.min(tiles - first),
        rows: BLOCK,
    })
}

widest! {
    /// `V = Bᵀ d B` of every tile's 4x4 window (zeros outside the images) of channels-last `x`:
    /// `v` `[16][tiles][ch]`.
    fn transform_input = transform_input_lanes(x: &[f32], tiling: Tiling, ch: usize, v: &mut Vec<f32>);
}

#[inline(always)]
fn transform_input_lanes<L: Lane>(x: &[f32], tiling: Tiling, ch: usize, v: &mut Vec<f32>) {
    let tiles = tiling.count();
    let stride = plane_stride(tiles * ch);
    v.resize(POINTS * stride, 0.0);
    for t in 0..tiles {
        let corner = tiling.corner(t);
        for (c0, len) in blocks::<L>(ch) {
            let mut window = [[L::zero(); 4]; 4];
            for (r, row) in window.iter_mut().enumerate() {
                for (c, lane) in row.iter_mut().enumerate() {
                    if let Some(p) = tiling.pixel(corner, r, c, 1) {
                        *lane = L::load(&x[p * ch + c0..][..len]);
                    }
                }
            }
            let out = both_sides(window, b_t);
            for (point, lane) in out.iter().flatten().enumerate() {
                lane.store(&mut v[point * stride + t * ch + c0..][..len]);
            }
        }
    }
}

widest! {
    /// `Σ B dV Bᵀ` over the windows that cover each pixel, from `dv` `[16][tiles][ch]`: the
    /// gradient of the images that [`transform_input`] read, into `dx`.
    fn transform_input_gradient = transform_input_gradient_lanes(dv: &[f32], tiling: Tiling, span: Span, ch: usize, dx: &mut [f32]);
}

#[inline(always)]
fn transform_input_gradient_lanes<L: Lane>(
    dv: &[f32],
    tiling: Tiling,
    span: Span,
    ch: usize,
    dx: &mut [f32],
) {
    let stride = plane_stride(span.rows * ch);
    for (at, t) in span.tiles().enumerate() {
        let corner = tiling.corner(t);
        for (c0, len) in blocks::<L>(ch) {
            let mut grad = [[L::zero(); 4]; 4];
            for (r, row) in grad.iter_mut().enumerate() {
                for (c, lane) in row.iter_mut().enumerate() {
                    *lane = L::load(&dv[(r * 4 + c) * stride + at * ch + c0..][..len]);
                }
            }
            let window = both_sides(grad, b);
            for (r, row) in window.iter().enumerate() {
                for (c, lane) in row.iter().enumerate() {
                    if let Some(p) = tiling.pixel(corner, r, c, 1) {
                        let to = &mut dx[p * ch + c0..][..len];
                        L::load(to).add(*lane).store(to);
                    }
                }
            }
        }
    }
}

/// `U = G g Gᵀ` of the kernel `w` `[cout, cin, 3, 3]` (the module's layout): `u`
/// `[16][cin][cout]`.
fn transform_kernel(w: &[f32], cout: usize, cin: usize, u: &mut Vec<f32>) {
    let stride = plane_stride(cin * cout);
    u.resize(POINTS * stride, 0.0);
    for ci in 0..cin {
        for (o0, len) in blocks::<Portable>(cout) {
            let kernel: [[Portable; 3]; 3] = std::array::from_fn(|ky| {
                std::array::from_fn(|kx| {
                    std::array::from_fn(|l| {
                        let o = (o0 + l).min(cout - 1);
                        w[(o * cin + ci) * 9 + ky * 3 + kx]
                    })
                })
            });
            let out = both_sides(kernel, g);
            for (point, lane) in out.iter().flatten().enumerate() {
                lane.store(&mut u[point * stride + ci * cout + o0..][..len]);
            }
        }
    }
}

/// `dg = Gᵀ dU G` from `du` `[16][cin][cout]`: the kernel's gradient `[cout, cin, 3, 3]`, into
/// `dw`.
fn kernel_gradient(du: &[f32], cout: usize, cin: usize, dw: &mut Vec<f32>) {
    let stride = plane_stride(cin * cout);
    dw.resize(cout * cin * 9, 0.0);
    for ci in 0..cin {
        for (o0, len) in blocks::<Portable>(cout) {
            let grad: [[Portable; 4]; 4] = std::array::from_fn(|r| {
                std::array::from_fn(|c| {
                    Portable::load(&du[(r * 4 + c) * stride + ci * cout + o0..][..len])
                })
            });
            let kernel = both_sides(grad, g_t);
            for (tap, lane) in kernel.iter().flatten().enumerate() {
                for (l, v) in lane.iter().take(len).enumerate() {
                    dw[((o0 + l) * cin + ci) * 9 + tap] = *v;
                }
            }
        }
    }
}

widest! {
    /// `relu(Aᵀ M A + bias)` of every tile's products `m` `[16][tiles][cout]`: the output pixels,
    /// channels-last, into `out`.
    fn transform_output = transform_output_lanes(m: &[f32], tiling: Tiling, span: Span, cout: usize, bias: &[f32], out: &mut [f32]);
}

#[inline(always)]
fn transform_output_lanes<L: Lane>(
    m: &[f32],
    tiling: Tiling,
    span: Span,
    cout: usize,
    bias: &[f32],
    out: &mut [f32],
) {
    let stride = plane_stride(span.rows * cout);
    for (at, t) in span.tiles().enumerate() {
        let corner = tiling.corner(t);
        for (o0, len) in blocks::<L>(cout) {
            let mut products = [[L::zero(); 4]; 4];
            for (r, row) in products.iter_mut().enumerate() {
                for (c, lane) in row.iter_mut().enumerate() {
                    *lane = L::load(&m[(r * 4 + c) * stride + at * cout + o0..][..len]);
                }
            }
            let bias = L::load(&bias[o0..o0 + len]);
            let y = both_sides(products, a_t);
            for (r, row) in y.iter().enumerate() {
                for (c, lane) in row.iter().enumerate() {
                    if let Some(p) = tiling.pixel(corner, r, c, 0) {
                        lane.add(bias)
                            .relu()
                            .store(&mut out[p * cout + o0..][..len]);
                    }
                }
            }
        }
    }
}

widest! {
    /// `dM = A dY Aᵀ` of every tile of the output's gradient `dy` (channels-last): `dm`
    /// `[16][tiles][cout]`.
    fn transform_output_gradient = transform_output_gradient_lanes(dy: &[f32], tiling: Tiling, span: Span, cout: usize, dm: &mut [f32]);
}

#[inline(always)]
fn transform_output_gradient_lanes<L: Lane>(
    dy: &[f32],
    tiling: Tiling,
    span: Span,
    cout: usize,
    dm: &mut [f32],
) {
    let stride = plane_stride(span.rows * cout);
    for (at, t) in span.tiles().enumerate() {
        let corner = tiling.corner(t);
        for (o0, len) in blocks::<L>(cout) {
            let mut grad = [[L::zero(); 2]; 2];
            for (r, row) in grad.iter_mut().enumerate() {
                for (c, lane) in row.iter_mut().enumerate() {
                    if let Some(p) = tiling.pixel(corner, r, c, 0) {
                        *lane = L::load(&dy[p * cout + o0..][..len]);
                    }
                }
            }
            let products = both_sides(grad, a);
            for (point, lane) in products.iter().flatten().enumerate() {
                lane.store(&mut dm[point * stride + at * cout + o0..][..len]);
            }
        }
    }
}

/// Where each point's plane of `len` values starts after the previous one's: a few cache lines
/// apart from a multiple of the page, because a tile transform reads or writes all 16 planes at
/// once, and 16 addresses a multiple of 4 KiB apart could compete for the same few ways of the
/// L1 cache (the planes are 8 KiB to 256 KiB long here). Measured in the review (step_bench,
/// 6 interleaved pairs each at batch 32 and 128): the step is 2-3% faster with the gap at batch
/// 32, the same within noise at 128.
fn plane_stride(len: usize) -> usize {
    const GAP: usize = 48;
    len + GAP
}

/// The slice of point `point` of a `[16][rows][cols]` array.
fn plane(a: &[f32], point: usize, len: usize) -> &[f32] {
    &a[point * plane_stride(len)..][..len]
}
fn plane_mut(a: &mut [f32], point: usize, len: usize) -> &mut [f32] {
    &mut a[point * plane_stride(len)..][..len]
}

/// A 3x3 convolution (stride 1, padding 1) with bias and ReLU by F(2x2, 3x3), and its
/// gradients; what the forward pass transformed is kept for the backward pass, and the buffers
/// from call to call.
#[derive(Default)]
pub(crate) struct Conv3x3 {
    tiling: Tiling,
    cin: usize,
    cout: usize,
    /// The input transformed, `[16][tiles][cin]`.
    v: Vec<f32>,
    /// The kernel transformed, `[16][cin][cout]`.
    u: Vec<f32>,
    /// Its planes transposed, `[16][cout][cin]`, for the input gradient's products (once a
    /// backward pass, where the products read them once a block).
    ut: Vec<f32>,
    /// One block's products `[16][BLOCK][cout]`; in the backward pass its output gradient
    /// transformed.
    m: Vec<f32>,
    /// One block's gradient of `v`, `[16][BLOCK][cin]`.
    dv: Vec<f32>,
    /// The gradient of `u`, and one block of tiles' share of it.
    du: Vec<f32>,
    du_block: Vec<f32>,
}

/// A kernel transformed once (`U = G g Gᵀ`), for forward passes with fixed weights (inference).
pub(crate) struct Kernel {
    u: Vec<f32>,
    cin: usize,
    cout: usize,
}

impl Kernel {
    /// The kernel `w` `[cout, cin, 3, 3]` (the module's layout), transformed.
    pub(crate) fn new(w: &[f32], cout: usize) -> Self {
        let cin = w.len() / (9 * cout);
        let mut u = Vec::new();
        transform_kernel(w, cout, cin, &mut u);
        Self { u, cin, cout }
    }
}

impl Conv3x3 {
    /// `relu(conv(x, w) + bias)` of `n` channels-last images `x` `[n, size, size, cin]` with the
    /// kernel `w` `[cout, cin, 3, 3]`: `out` `[n, size, size, cout]`.
    pub(crate) fn forward_relu(
        &mut self,
        x: &[f32],
        size: usize,
        w: &[f32],
        bias: &[f32],
        out: &mut Vec<f32>,
    ) {
        let cout = bias.len();
        let cin = w.len() / (9 * cout);
        let mut u = std::mem::take(&mut self.u);
        transform_kernel(w, cout, cin, &mut u);
        self.forward_transformed(x, size, &u, cin, bias, out);
        self.u = u;
    }

    /// [`Self::forward_relu`] with a kernel transformed before ([`Kernel`]).
    pub(crate) fn forward_relu_with(
        &mut self,
        x: &[f32],
        size: usize,
        kernel: &Kernel,
        bias: &[f32],
        out: &mut Vec<f32>,
    ) {
        assert_eq!(kernel.cout, bias.len(), "a bias per output channel");
        self.forward_transformed(x, size, &kernel.u, kernel.cin, bias, out);
    }

    fn forward_transformed(
        &mut self,
        x: &[f32],
        size: usize,
        u: &[f32],
        cin: usize,
        bias: &[f32],
        out: &mut Vec<f32>,
    ) {
        let cout = bias.len();
        let n = x.len() / (size * size * cin);
        let tiling = Tiling { n, size };
        (self.tiling, self.cin, self.cout) = (tiling, cin, cout);
        let tiles = tiling.count();
        transform_input(x, tiling, cin, &mut self.v);
        out.resize(n * size * size * cout, 0.0);
        self.m.resize(POINTS * plane_stride(BLOCK * cout), 0.0);
        for span in spans(tiles) {
            for point in 0..POINTS {
                let v = plane(&self.v, point, tiles * cin);
                product(
                    Strided::dense(&v[span.first * cin..][..span.count * cin], cin),
                    Strided::dense(plane(u, point, cin * cout), cout),
                    &mut plane_mut(&mut self.m, point, BLOCK * cout)[..span.count * cout],
                    false,
                );
            }
            transform_output(&self.m, tiling, span, cout, bias, out);
        }
    }

    /// From `dy`, the gradient before the ReLU of the last [`Self::forward_relu`]'s output
    /// `[n, size, size, cout]`: the kernel's gradient `[cout, cin, 3, 3]` into `dw`, and, when
    /// asked, the input's `[n, size, size, cin]` into `dx`. (The bias's is `dy`'s column sums.)
    pub(crate) fn backward(&mut self, dy: &[f32], dw: &mut Vec<f32>, dx: Option<&mut Vec<f32>>) {
        let (tiling, cin, cout) = (self.tiling, self.cin, self.cout);
        let tiles = tiling.count();
        let mut dx = dx;
        if let Some(dx) = dx.as_deref_mut() {
            dx.clear();
            dx.resize(tiling.n * tiling.size * tiling.size * cin, 0.0);
        }
        let weights = POINTS * plane_stride(cin * cout);
        self.du.clear();
        self.du.resize(weights, 0.0);
        self.du_block.resize(weights, 0.0);
        self.dv.resize(POINTS * plane_stride(BLOCK * cin), 0.0);
        if dx.is_some() {
            self.ut.resize(weights, 0.0);
            for point in 0..POINTS {
                let u = plane(&self.u, point, cin * cout);
                transpose_images(u, cin, cout, plane_mut(&mut self.ut, point, cin * cout));
            }
        }
        // A block of tiles at a time: dM = A dY Aᵀ into `m` (whose products are spent), its
        // share of dU added to `du`, and dV = dM Uᵀ back to the pixels.
        for span in spans(tiles) {
            transform_output_gradient(dy, tiling, span, cout, &mut self.m);
            for point in 0..POINTS {
                let v = plane(&self.v, point, tiles * cin);
                let dm = &plane(&self.m, point, BLOCK * cout)[..span.count * cout];
                product(
                    Strided::dense(&v[span.first * cin..][..span.count * cin], cin).t(),
                    Strided::dense(dm, cout),
                    plane_mut(&mut self.du_block, point, cin * cout),
                    false,
                );
            }
            for (sum, part) in self.du.iter_mut().zip(&self.du_block) {
                *sum += part;
            }
            let Some(dx) = dx.as_deref_mut() else {
                continue;
            };
            for point in 0..POINTS {
                let dm = &plane(&self.m, point, BLOCK * cout)[..span.count * cout];
                product(
                    Strided::dense(dm, cout),
                    Strided::dense(plane(&self.ut, point, cin * cout), cin),
                    &mut plane_mut(&mut self.dv, point, BLOCK * cin)[..span.count * cin],
                    false,
                );
            }
            transform_input_gradient(&self.dv, tiling, span, cin, dx);
        }
        kernel_gradient(&self.du, cout, cin, dw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::isa::TEST_CAP;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// The input pixel under tap (`ky`, `kx`) of output pixel (`y`, `x`), if inside.
    fn under(size: usize, y: usize, x: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (y + ky).checked_sub(1).filter(|&v| v < size)?;
        let ix = (x + kx).checked_sub(1).filter(|&v| v < size)?;
        Some((iy, ix))
    }

    /// The direct convolution in f64, before bias and ReLU: `[n, size, size, cout]`.
    fn direct(x: &[f32], n: usize, size: usize, cin: usize, w: &[f32], cout: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * size * size * cout];
        for img in 0..n {
            for y in 0..size {
                for xx in 0..size {
                    for o in 0..cout {
                        let mut sum = 0.0f64;
                        for (ky, kx) in (0..9).map(|k| (k / 3, k % 3)) {
                            let Some((iy, ix)) = under(size, y, xx, ky, kx) else {
                                continue;
                            };
                            for ci in 0..cin {
                                let v = x[((img * size + iy) * size + ix) * cin + ci];
                                sum +=
                                    f64::from(v) * f64::from(w[(o * cin + ci) * 9 + ky * 3 + kx]);
                            }
                        }
                        out[((img * size + y) * size + xx) * cout + o] = sum;
                    }
                }
            }
        }
        out
    }

    /// The direct gradients of `Σ dy · conv(x, w)`: the kernel's and the input's, in f64.
    fn direct_gradients(
        x: &[f32],
        dy: &[f32],
        n: usize,
        size: usize,
        cin: usize,
        cout: usize,
        w: &[f32],
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut dw, mut dx) = (vec![0.0; cout * cin * 9], vec![0.0; x.len()]);
        for img in 0..n {
            for y in 0..size {
                for xx in 0..size {
                    for o in 0..cout {
                        let g = f64::from(dy[((img * size + y) * size + xx) * cout + o]);
                        for (ky, kx) in (0..9).map(|k| (k / 3, k % 3)) {
                            let Some((iy, ix)) = under(size, y, xx, ky, kx) else {
                                continue;
                            };
                            for ci in 0..cin {
                                let at = ((img * size + iy) * size + ix) * cin + ci;
                                let tap = (o * cin + ci) * 9 + ky * 3 + kx;
                                dw[tap] += g * f64::from(x[at]);
                                dx[at] += g * f64::from(w[tap]);
                            }
                        }
                    }
                }
            }
        }
        (dw, dx)
    }

    /// The largest difference between `got` and `want`, relative to `want`'s largest value.
    fn relative_error(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        let diff = got
            .iter()
            .zip(want)
            .fold(0f64, |m, (g, w)| m.max((f64::from(*g) - w).abs()));
        diff / scale
    }

    /// Forward, kernel gradient and input gradient against the direct convolution.
    /// [`check_lanes`] on every lane this CPU runs: AVX-512's, AVX2's, the portable ones.
    fn check(n: usize, size: usize, cin: usize, cout: usize) {
        for cap in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
            TEST_CAP.with(|c| c.set(cap));
            check_lanes(n, size, cin, cout);
        }
        TEST_CAP.with(|c| c.set(Isa::Avx512));
    }

    /// The convolution forward and back against the direct one in f64.
    fn check_lanes(n: usize, size: usize, cin: usize, cout: usize) {
        let x = random(n * size * size * cin, 1);
        let w = random(cout * cin * 9, 2);
        let bias = random(cout, 3);
        let dy = random(n * size * size * cout, 4);
        let mut conv = Conv3x3::default();
        let mut out = Vec::new();
        conv.forward_relu(&x, size, &w, &bias, &mut out);
        let want: Vec<f64> = direct(&x, n, size, cin, &w, cout)
            .iter()
            .enumerate()
            .map(|(i, v)| (v + f64::from(bias[i % cout])).max(0.0))
            .collect();
        let lanes = isa();
        let shape = format!("{n} images {size}x{size}, {cin} -> {cout}, {lanes:?}");
        assert!(relative_error(&out, &want) < 1e-5, "forward, {shape}");
        assert!(out.contains(&0.0) && out.iter().any(|&v| v > 0.0));

        let (mut dw, mut dx) = (Vec::new(), Vec::new());
        conv.backward(&dy, &mut dw, Some(&mut dx));
        let (want_dw, want_dx) = direct_gradients(&x, &dy, n, size, cin, cout, &w);
        assert!(
            relative_error(&dw, &want_dw) < 1e-5,
            "kernel gradient, {shape}"
        );
        assert!(
            relative_error(&dx, &want_dx) < 1e-5,
            "input gradient, {shape}"
        );
        // Without the input's gradient, the kernel's is the same.
        let mut dw_alone = Vec::new();
        conv.backward(&dy, &mut dw_alone, None);
        assert_eq!(dw_alone, dw);
    }

    #[test]
    fn the_cnns_second_convolution_is_the_direct_one() {
        check(3, 16, 32, 64);
    }

    #[test]
    fn the_cnns_first_convolution_is_the_direct_one() {
        check(2, 32, 3, 32);
    }

    #[test]
    fn odd_sides_and_channels_are_the_direct_one() {
        check(2, 7, 5, 11);
        check(1, 1, 9, 3);
    }

    #[test]
    fn buffers_are_reused_across_shapes() {
        let mut conv = Conv3x3::default();
        let (mut out, mut dw, mut dx) = (Vec::new(), Vec::new(), Vec::new());
        let (x, w, b) = (random(2 * 36 * 4, 5), random(6 * 4 * 9, 6), random(6, 7));
        conv.forward_relu(&x, 6, &w, &b, &mut out);
        conv.backward(&random(2 * 36 * 6, 8), &mut dw, Some(&mut dx));
        // A smaller batch after a larger one: the same as a fresh convolution.
        let x1 = &x[..36 * 4];
        let dy = random(36 * 6, 9);
        conv.forward_relu(x1, 6, &w, &b, &mut out);
        conv.backward(&dy, &mut dw, Some(&mut dx));
        let mut fresh = Conv3x3::default();
        let (mut out1, mut dw1, mut dx1) = (Vec::new(), Vec::new(), Vec::new());
        fresh.forward_relu(x1, 6, &w, &b, &mut out1);
        fresh.backward(&dy, &mut dw1, Some(&mut dx1));
        assert_eq!((out, dw, dx), (out1, dw1, dx1));
    }
}
