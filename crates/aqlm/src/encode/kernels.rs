//! Small SIMD-friendly kernels shared by k-means and the code searches.
//!
//! Every kernel is written once as portable Rust and compiled twice: for the baseline target
//! and, selected at run time, with AVX2 enabled. Only element-wise operations in a fixed order
//! are used (Rust never fuses or reassociates floating point), so both versions give identical
//! bits.

/// `out[k] = nrm[k] − 2 Σ_b x[b]·cbt[b·K + k]` for `k < K = out.len()`: the squared distance
/// from `x` to codeword `k` minus `‖x‖²`, with the codebook stored transposed (`cbt [d, K]`).
pub(crate) fn dist_scores(x: &[f32], cbt: &[f32], nrm: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { dist_scores_avx2(x, cbt, nrm, out) };
            return;
        }
    }
    dist_scores_impl(x, cbt, nrm, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dist_scores_avx2(x: &[f32], cbt: &[f32], nrm: &[f32], out: &mut [f32]) {
    dist_scores_impl(x, cbt, nrm, out);
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

/// Index and value of the first minimum of `v` (`v` non-empty; NaNs never win).
pub(crate) fn argmin(v: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (i, &x) in v.iter().enumerate() {
        if x < best.1 {
            best = (i, x);
        }
    }
    best
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
    }
}
