//! Exact joint code search for two codebooks (the 2x8 fast path).
//!
//! For a group `x = w_g/s_o` and codebooks `C₁, C₂` with `K ≤ 256` entries each,
//! `‖x − C₁[k₁] − C₂[k₂]‖² = ‖x‖² + T[k₁][k₂] − 2x·C₁[k₁] − 2x·C₂[k₂]` with the pair table
//! `T[k₁][k₂] = ‖C₁[k₁] + C₂[k₂]‖²` computed once per round. Every group then scans all `K²`
//! pairs: per row `k₁` the minimum over `k₂` of `T[k₁][k₂] − 2x·C₂[k₂]` (a SIMD min-reduction over
//! four groups at a time, so each table row is loaded once per four groups), then the best row.
//! This is the global optimum for the codes, not a coordinate-descent step.

use rayon::prelude::*;

use super::beam::Transposed;
use super::kernels::{argmin, dist_scores};
use super::problem::{GROUP_CHUNK, Layout, State};
use crate::kernels::simd::multiversion;

/// Lanes per SIMD block of the pair table.
const LANES: usize = 16;
/// Groups scanned together against one pass over the table.
const BATCH: usize = 4;

type Block = [f32; LANES];

/// Whether the exact pair search applies: two codebooks of at most 256 entries.
pub(crate) fn applicable(l: &Layout) -> bool {
    l.m == 2 && l.k <= 256
}

/// Replaces every group's codes by the best pair (kept when no pair is strictly better).
pub(crate) fn search_pairs(w: &[f32], st: &mut State, l: &Layout) {
    let (k, d) = (l.k, l.d);
    let kc = k.div_ceil(LANES);
    let c1 = &st.codebooks[..k * d];
    let c2 = &st.codebooks[k * d..2 * k * d];
    // Pair table, each row padded with +inf to a whole number of blocks.
    let mut table = vec![[f32::INFINITY; LANES]; k * kc];
    for k1 in 0..k {
        for k2 in 0..k {
            let e1 = &c1[k1 * d..][..d];
            let e2 = &c2[k2 * d..][..d];
            let s: f64 = e1
                .iter()
                .zip(e2)
                .map(|(&a, &b)| f64::from(a + b).powi(2))
                .sum();
            table[k1 * kc + k2 / LANES][k2 % LANES] = s as f32;
        }
    }
    let tr = Transposed::new(st, l);
    let zeros = vec![0.0f32; k];
    let scales = &st.scales;
    st.codes
        .par_chunks_mut(GROUP_CHUNK * 2)
        .enumerate()
        .for_each(|(c, codes)| {
            let n = codes.len() / 2;
            let mut x = vec![0.0f32; d];
            let mut a = vec![vec![0.0f32; k]; BATCH];
            let mut b = vec![vec![[f32::INFINITY; LANES]; kc]; BATCH];
            let mut bflat = vec![0.0f32; k];
            let mut rowmin = vec![vec![0.0f32; k]; BATCH];
            let mut vals = vec![f32::INFINITY; kc * LANES];
            for start in (0..n).step_by(BATCH) {
                for t in 0..BATCH {
                    let g = c * GROUP_CHUNK + (start + t).min(n - 1);
                    let s = scales[g / l.n_in];
                    let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
                    for (xv, &v) in x.iter_mut().zip(&w[g * d..][..d]) {
                        *xv = v * inv;
                    }
                    // a[k1] = −2x·C₁[k1], b[k2] = −2x·C₂[k2].
                    dist_scores(&x, &tr.t[0], &zeros, &mut a[t]);
                    dist_scores(&x, &tr.t[1], &zeros, &mut bflat);
                    for (i, &v) in bflat.iter().enumerate() {
                        b[t][i / LANES][i % LANES] = v;
                    }
                }
                row_mins(&table, kc, &b, &mut rowmin);
                for t in 0..BATCH.min(n - start) {
                    let i = start + t;
                    let g = c * GROUP_CHUNK + i;
                    if scales[g / l.n_in] == 0.0 {
                        continue;
                    }
                    let (cur1, cur2) = (codes[2 * i] as usize, codes[2 * i + 1] as usize);
                    let cur = (table[cur1 * kc + cur2 / LANES][cur2 % LANES]
                        + b[t][cur2 / LANES][cur2 % LANES])
                        + a[t][cur1];
                    let mut best = (0usize, f32::INFINITY);
                    for (k1, (&r, &av)) in rowmin[t].iter().zip(&a[t]).enumerate() {
                        let v = r + av;
                        if v < best.1 {
                            best = (k1, v);
                        }
                    }
                    if best.1 < cur {
                        let k1 = best.0;
                        let row = &table[k1 * kc..][..kc];
                        for (j, (tb, bb)) in row.iter().zip(&b[t]).enumerate() {
                            for lane in 0..LANES {
                                vals[j * LANES + lane] = tb[lane] + bb[lane];
                            }
                        }
                        let (k2, _) = argmin(&vals);
                        codes[2 * i] = k1 as u16;
                        codes[2 * i + 1] = k2 as u16;
                    }
                }
            }
        });
}

multiversion! {
    max = avx512;
    /// `out[t][k1] = min_{k2} (T[k1][k2] + b[t][k2])` for the `BATCH` groups `t`.
    fn row_mins(table: &[Block], kc: usize, b: &[Vec<Block>], out: &mut [Vec<f32>]) {
        row_mins_impl(table, kc, b, out)
    }
}

#[inline(always)]
fn row_mins_impl(table: &[Block], kc: usize, b: &[Vec<Block>], out: &mut [Vec<f32>]) {
    let [b0, b1, b2, b3] = b else { return };
    let [o0, o1, o2, o3] = out else { return };
    let rows = table.chunks_exact(kc);
    let outs = o0
        .iter_mut()
        .zip(o1.iter_mut())
        .zip(o2.iter_mut())
        .zip(o3.iter_mut());
    for (row, (((r0, r1), r2), r3)) in rows.zip(outs) {
        let mut a0 = [f32::INFINITY; LANES];
        let mut a1 = [f32::INFINITY; LANES];
        let mut a2 = [f32::INFINITY; LANES];
        let mut a3 = [f32::INFINITY; LANES];
        for ((((tc, x0), x1), x2), x3) in row.iter().zip(b0).zip(b1).zip(b2).zip(b3) {
            for lane in 0..LANES {
                let t = tc[lane];
                let v0 = t + x0[lane];
                let v1 = t + x1[lane];
                let v2 = t + x2[lane];
                let v3 = t + x3[lane];
                a0[lane] = if v0 < a0[lane] { v0 } else { a0[lane] };
                a1[lane] = if v1 < a1[lane] { v1 } else { a1[lane] };
                a2[lane] = if v2 < a2[lane] { v2 } else { a2[lane] };
                a3[lane] = if v3 < a3[lane] { v3 } else { a3[lane] };
            }
        }
        *r0 = hmin(&a0);
        *r1 = hmin(&a1);
        *r2 = hmin(&a2);
        *r3 = hmin(&a3);
    }
}

#[inline(always)]
fn hmin(a: &Block) -> f32 {
    let mut m = a[0];
    for &v in &a[1..] {
        m = if v < m { v } else { m };
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::rng::SplitMix64;

    #[test]
    fn dispatched_scan_is_bit_identical_to_portable() {
        let mut rng = SplitMix64::new(3);
        let mut r = || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        let (k, kc) = (40, 3);
        let table: Vec<Block> = (0..k * kc).map(|_| std::array::from_fn(|_| r())).collect();
        let b: Vec<Vec<Block>> = (0..BATCH)
            .map(|_| (0..kc).map(|_| std::array::from_fn(|_| r())).collect())
            .collect();
        let mut fast = vec![vec![0.0f32; k]; BATCH];
        let mut port = vec![vec![0.0f32; k]; BATCH];
        row_mins(&table, kc, &b, &mut fast);
        row_mins_impl(&table, kc, &b, &mut port);
        assert_eq!(fast, port);
        for t in 0..BATCH {
            for k1 in 0..k {
                let direct = (0..kc * LANES)
                    .map(|i| table[k1 * kc + i / LANES][i % LANES] + b[t][i / LANES][i % LANES])
                    .fold(f32::INFINITY, f32::min);
                assert_eq!(port[t][k1], direct);
            }
        }
    }
}
