//! Residual k-means initialisation of the codebooks (aqlm.md §3 step 3).

use rayon::prelude::*;

use super::kernels::{nearest, transpose_with_norms};
use super::problem::{GROUP_CHUNK, Layout};
use super::rng::SplitMix64;

/// Lloyd's k-means of the rows of `data [n, d]` into `k` centroids.
///
/// Initial centroids: `k` distinct random points (a seeded permutation, cycled when `n < k`);
/// assignment `argmin_c ‖c‖² − 2x·c`; update: mean of the assigned points (accumulated in f64 in
/// point order), an empty cluster keeps its centroid. Stops after `iters` iterations or when no
/// assignment changes. Returns the centroids `[k, d]` and the final assignment `[n]`.
pub(crate) fn kmeans(
    data: &[f32],
    d: usize,
    k: usize,
    iters: usize,
    rng: &mut SplitMix64,
) -> (Vec<f32>, Vec<u16>) {
    let n = data.len() / d;
    let mut perm: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut perm);
    let mut cent = vec![0.0f32; k * d];
    for (c, e) in cent.chunks_exact_mut(d).enumerate() {
        let p = perm[c % n];
        e.copy_from_slice(&data[p * d..][..d]);
    }
    let mut assign = vec![0u16; n];
    assign_all(data, d, &cent, k, &mut assign);
    for _ in 0..iters {
        let mut sums = vec![0.0f64; k * d];
        let mut counts = vec![0usize; k];
        for (x, &a) in data.chunks_exact(d).zip(&assign) {
            counts[a as usize] += 1;
            for (s, &v) in sums[a as usize * d..][..d].iter_mut().zip(x) {
                *s += f64::from(v);
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                let inv = 1.0 / counts[c] as f64;
                for (e, &s) in cent[c * d..][..d].iter_mut().zip(&sums[c * d..][..d]) {
                    *e = (s * inv) as f32;
                }
            }
        }
        let old = assign.clone();
        assign_all(data, d, &cent, k, &mut assign);
        if old == assign {
            break;
        }
    }
    (cent, assign)
}

/// Nearest centroid of every point, in parallel over fixed chunks.
fn assign_all(data: &[f32], d: usize, cent: &[f32], k: usize, assign: &mut [u16]) {
    let (t, nrm) = transpose_with_norms(cent, k, d);
    assign
        .par_chunks_mut(GROUP_CHUNK)
        .enumerate()
        .for_each(|(c, out)| {
            let mut scores = vec![0.0f32; k];
            for (i, a) in out.iter_mut().enumerate() {
                let p = c * GROUP_CHUNK + i;
                *a = nearest(&data[p * d..][..d], &t, &nrm, &mut scores).0 as u16;
            }
        });
}

/// Residual k-means over the normalised groups `x [G, d]`: for `m = 0..M`, fit `K` centroids to
/// the residual, assign, and subtract. Returns codebooks `[M, K, d]` and codes `[G, M]`.
pub(crate) fn residual_kmeans(
    x: &[f32],
    l: &Layout,
    iters: usize,
    rng: &mut SplitMix64,
) -> (Vec<f32>, Vec<u16>) {
    let mut resid = x.to_vec();
    let mut codebooks = Vec::with_capacity(l.m * l.k * l.d);
    let mut codes = vec![0u16; l.groups() * l.m];
    for m in 0..l.m {
        let (cent, assign) = kmeans(&resid, l.d, l.k, iters, rng);
        for (g, (r, &a)) in resid.chunks_exact_mut(l.d).zip(&assign).enumerate() {
            codes[g * l.m + m] = a;
            for (v, &c) in r.iter_mut().zip(&cent[a as usize * l.d..][..l.d]) {
                *v -= c;
            }
        }
        codebooks.extend_from_slice(&cent);
    }
    (codebooks, codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_obvious_clusters() {
        // Two tight clusters around (0,0) and (10,10).
        let mut data = Vec::new();
        for i in 0..20 {
            let e = i as f32 * 0.001;
            if i % 2 == 0 {
                data.extend([e, -e]);
            } else {
                data.extend([10.0 + e, 10.0 - e]);
            }
        }
        let (cent, assign) = kmeans(&data, 2, 2, 50, &mut SplitMix64::new(1));
        for (i, &a) in assign.iter().enumerate() {
            let c = &cent[a as usize * 2..][..2];
            let x = &data[i * 2..][..2];
            assert!((c[0] - x[0]).abs() < 0.1 && (c[1] - x[1]).abs() < 0.1);
        }
    }
}
