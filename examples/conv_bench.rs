//! Times the matrix products of the cnn's second convolution (32 -> 64 channels on 16x16, one
//! core's chunk of 16 images) as the `gemm` crate runs them: the patch product (`im2col`) against
//! Winograd F(2x2, 3x3)'s 16 point products, forward, weight gradient and input gradient.
//!
//!     cargo run --features turbojpeg --example conv_bench -- [IMAGES] [REPEATS]
use std::time::Instant;

/// `out [m, n] = a [m, k] @ b [k, n]`, with `a` and `b` read through (row, column) strides.
#[allow(unsafe_code)]
fn product(
    m: usize,
    n: usize,
    k: usize,
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    out: &mut [f32],
) {
    assert!(out.len() == m * n && a.0.len() >= m * k && b.0.len() >= k * n);
    let s = |v: usize| v as isize;
    // SAFETY: the strides describe matrices inside the slices (dense, or their transposes).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            s(n),
            false,
            a.0.as_ptr(),
            s(a.2),
            s(a.1),
            b.0.as_ptr(),
            s(b.2),
            s(b.1),
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

fn time(label: &str, flops: f64, repeats: usize, mut f: impl FnMut()) {
    f();
    let mut best = f64::MAX;
    for _ in 0..repeats {
        let start = Instant::now();
        f();
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{label:40} {:8.0} us {:6.1} GFLOP/s",
        best * 1e6,
        flops / best / 1e9
    );
}

fn main() {
    let arg = |n: usize, d: usize| {
        std::env::args()
            .nth(n)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (images, repeats) = (arg(1, 16), arg(2, 20));
    let (cin, cout) = (32, 64);
    let rows = images * 256;
    let tiles = images * 64;
    let fill = |len: usize| (0..len).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<f32>>();
    let (cols, w) = (fill(rows * 9 * cin), fill(9 * cin * cout));
    let (d, mut out) = (fill(rows * cout), vec![0.0; rows * cout]);
    let mut d_cols = vec![0.0; rows * 9 * cin];
    let mut dw = vec![0.0; 9 * cin * cout];
    let direct = 2.0 * (rows * 9 * cin * cout) as f64;
    time("im2col forward [r,288]@[288,64]", direct, repeats, || {
        product(
            rows,
            cout,
            9 * cin,
            (&cols, 9 * cin, 1),
            (&w, cout, 1),
            &mut out,
        )
    });
    time("im2col weight grad cols^T @ d", direct, repeats, || {
        product(
            9 * cin,
            cout,
            rows,
            (&cols, 1, 9 * cin),
            (&d, cout, 1),
            &mut dw,
        )
    });
    time("im2col input grad d @ w^T", direct, repeats, || {
        product(
            rows,
            9 * cin,
            cout,
            (&d, cout, 1),
            (&w, 1, cout),
            &mut d_cols,
        )
    });
    let (v, u) = (fill(16 * tiles * cin), fill(16 * cin * cout));
    let (mut m, dm) = (vec![0.0; 16 * tiles * cout], fill(16 * tiles * cout));
    let (mut du, mut dv) = (vec![0.0; 16 * cin * cout], vec![0.0; 16 * tiles * cin]);
    let wino = 2.0 * (16 * tiles * cin * cout) as f64;
    let (vp, up, mp) = (tiles * cin, cin * cout, tiles * cout);
    time("winograd forward 16x [t,32]@[32,64]", wino, repeats, || {
        for p in 0..16 {
            product(
                tiles,
                cout,
                cin,
                (&v[p * vp..], cin, 1),
                (&u[p * up..], cout, 1),
                &mut m[p * mp..][..mp],
            )
        }
    });
    time("winograd weight grad 16x V^T @ dM", wino, repeats, || {
        for p in 0..16 {
            product(
                cin,
                cout,
                tiles,
                (&v[p * vp..], 1, cin),
                (&dm[p * mp..], cout, 1),
                &mut du[p * up..][..up],
            )
        }
    });
    time("winograd input grad 16x dM @ U^T", wino, repeats, || {
        for p in 0..16 {
            product(
                tiles,
                cin,
                cout,
                (&dm[p * mp..], cout, 1),
                (&u[p * up..], 1, cout),
                &mut dv[p * vp..][..vp],
            )
        }
    });
}
