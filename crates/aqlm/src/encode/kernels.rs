//! Small SIMD-friendly kernels shared by k-means and the code searches.
//!
//! Every kernel is written once as portable Rust and compiled for the baseline target, AVX2 and
//! AVX-512, selected at run time by the crate's one dispatch mechanism
//! ([`multiversion!`](crate::kernels::simd)). Only element-wise operations in a fixed order are
//! used (Rust never fuses or reassociates floating point), so every build gives identical bits.

use crate::kernels::simd::multiversion;

multiversion! {
    max = avx512;
    /// `out[k] = nrm[k] − 2 Σ_b x[b]·cbt[b·K + k]` for `k < K = out.len()`: the squared distance
    /// from `x` to codeword `k` minus `‖x‖²`, with the codebook stored transposed (`cbt [d, K]`).
    pub(crate) fn dist_scores(x: &[f32], cbt: &[f32], nrm: &[f32], out: &mut [f32]) {
        dist_scores_impl(x, cbt, nrm, out)
    }
}

multiversion! {
    max = avx512;
    /// Index and value of the first minimum of `v` (`(0, ∞)` if empty or all ∞/NaN; NaN never wins).
    pub(crate) fn argmin(v: &[f32]) -> (usize, f32) {
        argmin_impl(v)
    }
}

multiversion! {
    max = avx512;
    /// The nearest codeword: [`dist_scores`] into `scores`, then [`argmin`] of it.
    pub(crate) fn nearest(x: &[f32], cbt: &[f32], nrm: &[f32], scores: &mut [f32]) -> (usize, f32) {
        nearest_impl(x, cbt, nrm, scores)
    }
}

#[inline(always)]
fn nearest_impl(x: &[f32], cbt: &[f32], nrm: &[f32], scores: &mut [f32]) -> (usize, f32) {
    dist_scores_impl(x, cbt, nrm, scores);
    argmin_impl(scores)
}

#[inline(always)]
fn dist_scores_impl(x: &[f32], cbt: &[f32], nrm: &[f32], out: &mut [f32]) {
    let k = out.len();
    out.copy_from_slice(&nrm[..k]);
    for (&xb, col) in x.iter().zip(cbt.chunks_exact(k)) {
        let f = -2.0 * xb;
        for (o, &c) in out.iter_mut().zip(col) {
            *o += f * c;
        }
    }
}

#[inline(always)]
fn argmin_impl(v: &[f32]) -> (usize, f32) {
    const L: usize = 16;
    let mut mv = [f32::INFINITY; L];
    let mut mi = [0u32; L];
    let chunks = v.chunks_exact(L);
    let rem = chunks.remainder();
    let full = v.len() - rem.len();
    for (c, ch) in chunks.enumerate() {
        let base = (c * L) as u32;
        for l in 0..L {
            let x = ch[l];
            let lt = x < mv[l];
            mv[l] = if lt { x } else { mv[l] };
            mi[l] = if lt { base + l as u32 } else { mi[l] };
        }
    }
    // Each lane holds its first minimum; the smallest value wins, ties go to the lower index.
    let mut best = (usize::MAX, f32::INFINITY);
    for l in 0..L {
        let i = mi[l] as usize;
        if mv[l] < best.1 || (mv[l] == best.1 && i < best.0) {
            best = (i, mv[l]);
        }
    }
    for (i, &x) in rem.iter().enumerate() {
        if x < best.1 {
            best = (full + i, x);
        }
    }
    if best.0 == usize::MAX || best.0 >= v.len() {
        (0, f32::INFINITY)
    } else {
        best
    }
}

/// Transposes a codebook `[K, d]` into `[d, K]` and returns it with the squared norms `[K]`.
pub(crate) fn transpose_with_norms(cb: &[f32], k: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut t = vec![0.0f32; k * d];
    let mut n = vec![0.0f32; k];
    for (i, e) in cb.chunks_exact(d).enumerate().take(k) {
        let mut s = 0.0f32;
        for (b, &v) in e.iter().enumerate() {
            t[b * k + i] = v;
            s += v * v;
        }
        n[i] = s;
    }
    (t, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_direct_distances() {
        let (k, d) = (13, 3);
        let cb: Vec<f32> = (0..k * d).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let (t, n) = transpose_with_norms(&cb, k, d);
        let x = [0.5f32, -1.0, 2.0];
        let mut out = vec![0.0; k];
        dist_scores(&x, &t, &n, &mut out);
        let xx: f32 = x.iter().map(|v| v * v).sum();
        for i in 0..k {
            let direct: f32 = (0..d).map(|b| (x[b] - cb[i * d + b]).powi(2)).sum();
            assert!((out[i] + xx - direct).abs() < 1e-4);
        }
        let mut port = vec![0.0; k];
        dist_scores_impl(&x, &t, &n, &mut port);
        assert_eq!(out, port);
        assert_eq!(argmin(&[3.0, 1.0, 1.0, 2.0]), (1, 1.0));
        let mut scores = vec![0.0; k];
        let (i, v) = nearest(&x, &t, &n, &mut scores);
        assert_eq!((i, v), argmin(&out));
        // Lane-parallel argmin = sequential first minimum, on every length and with ties.
        for len in [0usize, 1, 15, 16, 17, 40, 256] {
            let v: Vec<f32> = (0..len).map(|i| ((i * 37) % 11) as f32).collect();
            let mut seq = (0, f32::INFINITY);
            for (i, &x) in v.iter().enumerate() {
                if x < seq.1 {
                    seq = (i, x);
                }
            }
            assert_eq!(argmin(&v), seq, "len {len}");
        }
        assert_eq!(argmin(&[f32::NAN, f32::INFINITY]), (0, f32::INFINITY));
    }
}
