//! Max-pooling 2x2 of channels-last images, remembering where each maximum came from, and the
//! way back.

/// Where the four inputs of pooled cell `cell` start in channels-last images
/// `[n, size, size, ch]`, row-major.
pub(crate) fn pool_inputs(cell: usize, size: usize, ch: usize) -> [usize; 4] {
    let half = size / 2;
    let (s, py, px) = (cell / (half * half), cell / half % half, cell % half);
    [0, 1, 2, 3].map(|q| ((s * size + 2 * py + q / 2) * size + 2 * px + q % 2) * ch)
}

/// Max-pool 2x2 of channels-last `a` `[n, size, size, ch]`: the maxima `[n, size/2, size/2, ch]`
/// and, for each, which of its four inputs it was (row-major; the first on ties); into `out` and
/// `from`.
pub(crate) fn max_pool(a: &[f32], size: usize, ch: usize, out: &mut Vec<f32>, from: &mut Vec<u8>) {
    out.resize(a.len() / 4, 0.0);
    from.resize(out.len(), 0);
    let cells = out.chunks_exact_mut(ch).zip(from.chunks_exact_mut(ch));
    for (cell, (o, f)) in cells.enumerate() {
        let quad = pool_inputs(cell, size, ch).map(|at| &a[at..at + ch]);
        o.copy_from_slice(quad[0]);
        f.fill(0);
        for (q, input) in quad.iter().enumerate().skip(1) {
            for ((o, f), &v) in o.iter_mut().zip(f.iter_mut()).zip(*input) {
                if v > *o {
                    *o = v;
                    *f = q as u8;
                }
            }
        }
    }
}

/// The gradient before the ReLU under a [`max_pool`]: each pooled gradient goes to the input it
/// came from, where that input (`a`, after the ReLU) was positive; every value of `d` written.
pub(crate) fn unpool(
    d_out: &[f32],
    from: &[u8],
    a: &[f32],
    size: usize,
    ch: usize,
    d: &mut Vec<f32>,
) {
    d.resize(a.len(), 0.0);
    let cells = d_out.chunks_exact(ch).zip(from.chunks_exact(ch));
    for (cell, (g, f)) in cells.enumerate() {
        for (q, at) in pool_inputs(cell, size, ch).into_iter().enumerate() {
            let (d, a) = (&mut d[at..at + ch], &a[at..at + ch]);
            for (((d, &a), &g), &f) in d.iter_mut().zip(a).zip(g).zip(f) {
                *d = if usize::from(f) == q && a > 0.0 {
                    g
                } else {
                    0.0
                };
            }
        }
    }
}
