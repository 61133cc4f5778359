//! A lossless 8-bit copy of a dense `f32` weight whose values are 8-bit integers times one scale
//! per 32 values of a row — as every value of a GGUF `Q8_0` tensor is once dequantized (SmolLM2's
//! tied embedding and head) — and the product `y = x·Wᵀ` of a few rows of `x` with it.
//!
//! Generating one token multiplies the head, `[49152, 576]` for SmolLM2: 113 MB of `f32` to
//! stream from memory per token, which bounds that product at about 3.8 ms on this machine. The
//! same values as codes and scales are 32 MB. [`Q8Rows::recover`] finds the codes only when the
//! values *are* `d·q` exactly, so nothing is rounded: the products below give, bit for bit, what
//! the same dot products give on the `f32` weight.
//!
//! Each output is one dot product of a row of `x` with a row of `W`, summed in a fixed order
//! whatever the instruction set and thread count: 64 partial sums `p[l]`, element `c` added to
//! `p[c mod 64]` in ascending `c` (the weight `w_c = d_{⌊c/32⌋}·q_c` formed exactly in `f32`),
//! then combined pairwise (`p[l] += p[l + 32]`, then `+ 16`, … down to `p[0]`). The body is
//! written once and compiled for AVX-512, AVX2 and the baseline; it never calls `mul_add` and Rust
//! does not contract `a·b + c`, so every build gives the same bits.

use oftq_candle::candle_core::{Storage, Tensor};
use rayon::prelude::*;

use super::ops::slice;
use super::vector_math::combine_pairwise;

/// Values per scale (GGUF's `Q8_0` block).
pub(crate) const BLOCK: usize = 32;

/// Rows of `x` up to which [`Llama::head`](super::Llama::head) uses the 8-bit copy: for more
/// rows each weight is reused enough that the packed `f32` product wins.
pub(crate) const MAX_ROWS: usize = 4;

/// Rows of `W` per task (288 KiB of SmolLM2's head): enough tasks for the threads to balance.
const ROWS_PER_TASK: usize = 512;

/// How far ahead, in rows of `W`, [`Q8Rows::product_t`] prefetches: with row `i` it prefetches
/// the codes and scales of row `i + PREFETCH_ROWS`.
/// Without it the product waited on each row's codes (the conversion after their load held
/// over half of its samples): SmolLM2-135M, 128 greedy tokens on 2 threads, alternating runs,
/// 50.5–53.8 tokens/s without, 54.9–55.3 four rows ahead, 53.7–55.2 sixteen.
const PREFETCH_ROWS: usize = 4;

/// Partial sums per dot product (four 512-bit vectors).
const LANES: usize = 64;

/// A `[rows, cols]` row-major weight as `i8` codes and one `f32` scale per [`BLOCK`] values of
/// a row: `W[i, c] = scales[(i·cols + c) / 32] · codes[i·cols + c]`, exactly.
#[derive(Clone)]
pub(crate) struct Q8Rows {
    rows: usize,
    cols: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
}

impl std::fmt::Debug for Q8Rows {
    /// The shape only (the codes are tens of MB for a real head).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Q8Rows")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

/// The codes of one block of values if they are exactly `d·q` for integers `|q| ≤ 127` with
/// `d = max|v| / 127` (how `Q8_0` quantizes: its largest value gets the code ±127).
fn recover_block(v: &[f32], codes: &mut [i8]) -> Option<f32> {
    let amax = v
        .iter()
        .try_fold(0f32, |m, x| x.is_finite().then(|| m.max(x.abs())))?;
    let d = amax / 127.0;
    for (c, &x) in codes.iter_mut().zip(v) {
        let q = if d == 0.0 { 0.0 } else { (x / d).round() };
        if q.abs() > 127.0 || d * q != x {
            return None;
        }
        *c = q as i8;
    }
    Some(d)
}

impl Q8Rows {
    /// The 8-bit copy of `w [rows, cols]` (row-major), or `None` unless `cols` is a multiple of
    /// [`BLOCK`] and every block of 32 values of a row is exactly `d·q` for one `d` and integers
    /// `|q| ≤ 127` (then `d` is the block's largest magnitude over 127).
    pub(crate) fn recover(w: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || w.len() != rows.checked_mul(cols)? {
            return None;
        }
        let mut codes = vec![0i8; w.len()];
        let scales = w
            .par_chunks(BLOCK)
            .zip(codes.par_chunks_mut(BLOCK))
            .map(|(v, c)| recover_block(v, c))
            .collect::<Option<Vec<f32>>>()?;
        Some(Self {
            rows,
            cols,
            codes,
            scales,
        })
    }

    /// [`Q8Rows::recover`] of a `[rows, cols]` tensor; `None` for anything else, a tensor that is
    /// not a contiguous `f32` matrix on the CPU included.
    pub(crate) fn from_tensor(w: &Tensor) -> Option<Self> {
        let (rows, cols) = w.dims2().ok()?;
        let (storage, layout) = w.storage_and_layout();
        match &*storage {
            Storage::Cpu(c) => Self::recover(slice(c, layout, "head").ok()?, rows, cols),
            _ => None,
        }
    }

    /// `(rows, cols)`.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// `y = x·Wᵀ` for `x [n, cols]` and `y [n, rows]`, row-major (see the module notes for the
    /// order of each sum), the rows of `W` split over rayon's threads.
    ///
    /// # Panics
    /// If `x` or `y` is shorter than its shape says.
    pub(crate) fn product_t(&self, y: &mut [f32], x: &[f32], n: usize) {
        let (m, k) = (self.rows, self.cols);
        let (y, x) = (&mut y[..n * m], &x[..n * k]);
        if n == 0 || m == 0 {
            return;
        }
        // Tasks write `yt [m, n]` (the transpose of `y`, so each task's outputs are contiguous);
        // for one row of `x` that is `y` itself.
        let mut scratch = Vec::new();
        let yt: &mut [f32] = if n == 1 {
            y
        } else {
            scratch.resize(m * n, 0.0);
            &mut scratch
        };
        yt.par_chunks_mut(ROWS_PER_TASK * n)
            .zip(self.codes.par_chunks(ROWS_PER_TASK * k))
            .zip(self.scales.par_chunks(ROWS_PER_TASK * k / BLOCK))
            .for_each(|((yc, q), s)| dots(yc, x, q, s, n, k));
        if n > 1 {
            for (i, col) in scratch.chunks_exact(n).enumerate() {
                for (r, &v) in col.iter().enumerate() {
                    y[r * m + i] = v;
                }
            }
        }
    }
}

/// `Σ_c x[c]·(s[c/32]·q[c])` in the order of the module notes (`x` and `q` of equal length, a
/// multiple of 32).
#[inline(always)]
fn dot(x: &[f32], q: &[i8], s: &[f32]) -> f32 {
    let mut p = [0f32; LANES];
    let (cx, rx) = x.as_chunks::<LANES>();
    let (cq, rq) = q.as_chunks::<LANES>();
    let (cs, rs) = s.as_chunks::<2>();
    for ((xv, qv), sv) in cx.iter().zip(cq).zip(cs) {
        for l in 0..LANES {
            p[l] += xv[l] * (sv[l / BLOCK] * f32::from(qv[l]));
        }
    }
    for (l, (xv, qv)) in rx.iter().zip(rq).enumerate() {
        p[l] += xv * (rs[l / BLOCK] * f32::from(*qv));
    }
    combine_pairwise(p)
}

/// `yt[i·n + r] = ⟨x_r, W_i⟩` for the rows `W_i` (codes `q`, scales `s`) of one task.
#[inline(always)]
fn dots_imp(yt: &mut [f32], x: &[f32], q: &[i8], s: &[f32], n: usize, k: usize) {
    let rows = yt.chunks_exact_mut(n).zip(q.chunks_exact(k));
    for ((out, qi), si) in rows.zip(s.chunks_exact(k / BLOCK)) {
        // The codes and scales of the row `PREFETCH_ROWS` ahead (past the task's rows too: a
        // hint never faults).
        prefetch_range(qi.as_ptr().wrapping_add(PREFETCH_ROWS * k).cast(), k);
        prefetch_range(
            si.as_ptr().wrapping_add(PREFETCH_ROWS * k / BLOCK).cast(),
            k / BLOCK * size_of::<f32>(),
        );
        for (o, xr) in out.iter_mut().zip(x.chunks_exact(k)) {
            *o = dot(xr, qi, si);
        }
    }
}

/// Hints the CPU to bring every cache line holding one of the `len` bytes from `p` into L1 (a
/// no-op off x86-64). Never faults, whatever the range: a prefetch is only a hint. (oftq-aqlm
/// and oftq-ortho have their own copies, crate-private as this one.)
#[inline(always)]
fn prefetch_range(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let first = p.wrapping_sub(p as usize % 64);
        for line in 0..(p as usize % 64 + len).div_ceil(64) {
            // SAFETY: a prefetch does not access memory architecturally and never faults, for any
            // address; SSE is part of the x86-64 baseline.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    first.wrapping_add(64 * line).cast(),
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// [`dots_imp`] compiled for AVX-512F/VL (with AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn dots_avx512(yt: &mut [f32], x: &[f32], q: &[i8], s: &[f32], n: usize, k: usize) {
    dots_imp(yt, x, q, s, n, k);
}

/// [`dots_imp`] compiled for AVX2 (with FMA).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dots_avx2(yt: &mut [f32], x: &[f32], q: &[i8], s: &[f32], n: usize, k: usize) {
    dots_imp(yt, x, q, s, n, k);
}

/// [`dots_imp`] in the best build this CPU runs (detection is cached by the standard library).
fn dots(yt: &mut [f32], x: &[f32], q: &[i8], s: &[f32], n: usize, k: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports every feature the build enables (checked above).
            return unsafe { dots_avx512(yt, x, q, s, n, k) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above, for AVX2 and FMA.
            return unsafe { dots_avx2(yt, x, q, s, n, k) };
        }
    }
    dots_imp(yt, x, q, s, n, k);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented order over the `f32` weight, written out directly.
    fn reference(x: &[f32], w: &[f32]) -> f32 {
        let mut p = [0f32; LANES];
        for (c, (a, b)) in x.iter().zip(w).enumerate() {
            p[c % LANES] += a * b;
        }
        combine_pairwise(p)
    }

    fn uniform(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32)
            .map(|v| v / (1u32 << 24) as f32 - 0.5)
            .collect()
    }

    /// A weight of `Q8_0`-dequantized values (`f16`-like scales, codes up to ±127, the largest
    /// of each block ±127), one block all zero.
    fn q8_weight(rows: usize, cols: usize) -> Vec<f32> {
        let u = uniform(rows * cols, 9);
        let mut w = Vec::with_capacity(rows * cols);
        for (b, blk) in u.chunks(BLOCK).enumerate() {
            let d = if b == 3 {
                0.0
            } else {
                (1 + b % 7) as f32 / 1024.0
            };
            for (i, v) in blk.iter().enumerate() {
                let q = if i == b % BLOCK {
                    127.0
                } else {
                    (v * 254.0).round()
                };
                w.push(d * q);
            }
        }
        w
    }

    #[test]
    fn products_equal_the_f32_dot_products_bit_for_bit() {
        // cols with and without a partial chunk of 64; rows over several tasks.
        for &(n, k, m) in &[(1, 576, 1300), (3, 96, 1030), (4, 32, 5), (2, 64, 512)] {
            let w = q8_weight(m, k);
            let q8 = Q8Rows::recover(&w, m, k).expect("Q8_0 values are recovered");
            assert_eq!(q8.shape(), (m, k));
            let x = uniform(n * k, 1);
            let mut y = vec![f32::NAN; n * m + 3];
            q8.product_t(&mut y, &x, n);
            for r in 0..n {
                for i in 0..m {
                    let want = reference(&x[r * k..][..k], &w[i * k..][..k]);
                    assert_eq!(
                        y[r * m + i].to_bits(),
                        want.to_bits(),
                        "{n}×{k}·{m}: ({r}, {i})"
                    );
                }
            }
            assert!(
                y[n * m..].iter().all(|v| v.is_nan()),
                "wrote past the output"
            );
            // The portable build gives the same bits as the dispatched one.
            let mut yt = vec![0f32; m * n];
            dots_imp(&mut yt, &x, &q8.codes, &q8.scales, n, k);
            for r in 0..n {
                for i in 0..m {
                    assert_eq!(yt[i * n + r].to_bits(), y[r * m + i].to_bits());
                }
            }
        }
    }

    #[test]
    fn recovers_only_exact_values() {
        let w = q8_weight(4, 64);
        assert!(Q8Rows::recover(&w, 4, 64).is_some());
        // One value off the grid of its block, a NaN, an infinity: no copy.
        for bad in [w[70] * (1.0 + f32::EPSILON), f32::NAN, f32::INFINITY] {
            let mut v = w.clone();
            v[70] = bad;
            assert!(Q8Rows::recover(&v, 4, 64).is_none(), "{bad}");
        }
        // Rows that are not whole blocks, a wrong length, nothing at all.
        let w = q8_weight(2, 48);
        assert!(Q8Rows::recover(&w, 2, 48).is_none());
        assert!(Q8Rows::recover(&w[1..], 3, 32).is_none());
        assert!(Q8Rows::recover(&[], 0, 0).is_none());
        // Generic f32 values (a trained or f16 weight) are not recovered.
        assert!(Q8Rows::recover(&uniform(64, 5), 2, 32).is_none());
    }
}
