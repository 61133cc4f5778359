//! `C = Xᵀ·D` for rotation blocks of 32 and more features, by register tiles over a transposed
//! panel of `X`.
//!
//! For a block of `b ≥ 32` features and many tokens, `∂L/∂R_j = x_jᵀ·dy_j` is a `b × b` product
//! with a long inner dimension (the tokens). The lane-split kernel ([`gemm_tn_uninit`]) keeps one
//! 16-lane accumulator per output element, so it re-reads `x_j` and `dy_j` for every tile of `C`;
//! faer's product packs both operands. Here only `X` is repacked: chunk by chunk of [`KC`]
//! tokens, 32 of its columns are transposed in 16 × 16 register tiles into a panel
//! (`panel[t·32 + s] = X[i0 + t, p0 + s]`, the layout of the `X·B` kernel), and each `32 × 8` tile
//! of `C` continues its accumulators in registers over the chunk, `D` broadcast element by element
//! from its columns. The accumulators are kept between chunks, so each element of `C` is one
//! chain over all tokens.
//!
//! Rounding: `c_pq = (…((x_0p·d_0q) + x_1p·d_1q) + …) + x_{m−1,p}·d_{m−1,q}`, one fused
//! multiply-add per token in ascending order starting from 0. It runs with AVX-512 and `f32` only
//! (where the tile transpose exists), so its bits are those of that chain on any such CPU and for
//! any number of threads.
//!
//! Measured (128 blocks of `512 × 32`, `x_jᵀ·dy_j` after `dy_j·R_jᵀ`, the rotation's backward):
//! 1.95 → 1.82 ms on 2 threads and 3.86 → 3.17 ms on one against faer's packed product (medians
//! of 8 and 5 alternating runs, together with the small-product changes of this commit). A
//! software prefetch of the next chunk of `X` made no measurable difference and was dropped.
//!
//! [`gemm_tn_uninit`]: super::gemm_tn_uninit

use std::mem::MaybeUninit;

use faer::MatRef;

use super::{GemmArgs, Store};
use crate::kernels::madd;
use crate::kernels::transpose::{self, Store as TileStore, TILE, transpose_tile};
use crate::real::Real;

/// Rows of `C` per panel: the row tile of the AVX-512 `f32` `X·B` kernel.
const MR: usize = 32;
/// Columns of `C` per register tile.
const NR: usize = 8;
/// Tokens per chunk: the chunk's panel (`KC·MR` elements) and the columns of `D` it meets stay
/// in L1 while every column tile of `C` passes over them.
const KC: usize = 128;

/// Whether [`gemm_tn_panel_uninit`] runs for `X` of `m × k` on this machine: `f32` with AVX-512,
/// `m` and `k` multiples of 16.
pub(crate) fn applies<T: Real>(m: usize, k: usize) -> bool {
    transpose::available::<T>() && m.is_multiple_of(TILE) && k.is_multiple_of(TILE)
}

/// Writes `C = Xᵀ·D` into `c` (column-major, column stride `ldc`, `C[p, q]` at `c[p + q·ldc]`),
/// never reading it, and returns `true`; on return every `c[p + q·ldc]`, `p < k`, `q < n`, is
/// initialised. `X` is `m × k` with unit row stride (column-major, as a rotation block of
/// activations is), `D` is `m × n` with any strides. Rounding: see the module notes.
///
/// Returns `false` and touches nothing unless [`applies`] for `X`'s shape and `X` has unit row
/// stride and a non-negative column stride; the caller then uses another kernel.
///
/// # Panics
/// If `X` and `D` have different row counts, `ldc < k` with more than one column, or `c` is too
/// short.
pub(crate) fn gemm_tn_panel_uninit<T: Real>(
    x: MatRef<'_, T>,
    d: MatRef<'_, T>,
    c: &mut [MaybeUninit<T>],
    ldc: usize,
) -> bool {
    let (m, k) = (x.nrows(), x.ncols());
    if !applies::<T>(m, k) || x.row_stride() != 1 || x.col_stride() < 0 {
        return false;
    }
    // The product is `Y = Xᵀ·D` for the `X·B` kernel: `k` rows, `m` terms, `n` columns.
    let args = GemmArgs::new(
        T::one(),
        x.transpose(),
        d,
        c.as_mut_ptr().cast(),
        c.len(),
        ldc,
        Store::Overwrite,
    );
    if args.m == 0 || args.n == 0 {
        return true;
    }
    let ldx = x.col_stride().unsigned_abs();
    // SAFETY: `args` was checked against `c`, borrowed mutably (so it overlaps neither input);
    // `x` is readable as `m × k` with unit row stride and column stride `ldx`; `applies` proved
    // `T = f32`, AVX-512 and `m, k` multiples of 16.
    unsafe { panel_avx512(args, x.as_ptr(), ldx) };
    true
}

/// The driver, compiled for AVX-512: per row tile of `C` (`MR` columns of `X`) and per chunk of
/// `KC` tokens, transposes `X[chunk, p0 .. p0 + mr]` into `panel`, then continues the
/// accumulators of every column of the tile (`acc[q]`, kept across chunks, so each element is
/// still one chain over all tokens) with the `MR × NR` micro-kernel and a `MR × 1` one for the
/// remaining columns; the finished tile is written to `C`.
///
/// # Safety
/// The CPU supports AVX-512F/VL and FMA and `T = f32`; `a` describes `C = Xᵀ·D` as in
/// [`gemm_tn_panel_uninit`] (`a.m = k`, `a.k = m`, both multiples of 16, at least 1 column);
/// `x` is readable as `a.k × a.m` with unit row stride and column stride `ldx`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn panel_avx512<T: Real>(a: GemmArgs<T>, x: *const T, ldx: usize) {
    // In a partial last tile (`mr = 16`), lanes from `mr` on keep the previous tile's values:
    // their sums are never stored.
    let mut panel = vec![T::zero(); MR * KC];
    let mut acc = vec![[T::zero(); MR]; a.n];
    let mut p0 = 0;
    while p0 < a.m {
        let mr = MR.min(a.m - p0);
        acc.fill([T::zero(); MR]);
        let mut i0 = 0;
        while i0 < a.k {
            let kc = KC.min(a.k - i0);
            for s0 in (0..mr).step_by(TILE) {
                for t0 in (0..kc).step_by(TILE) {
                    // SAFETY: tokens `i0 + t0 .. + 16 ≤ a.k` of columns `p0 + s0 .. + 16 ≤ a.m`
                    // of `X` are readable; `panel[(t0 + c)·MR + s0 ..][..16]` for `c < 16` is
                    // in the panel (`t0 + 15 < KC`, `s0 + 16 ≤ MR`).
                    let done = unsafe {
                        transpose_tile(
                            x.add(i0 + t0 + (p0 + s0) * ldx),
                            ldx,
                            panel.as_mut_ptr().add(t0 * MR + s0),
                            MR,
                            TileStore::All,
                        )
                    };
                    debug_assert!(done, "the tile transpose runs (checked by `applies`)");
                }
            }
            let mut q0 = 0;
            while q0 + NR <= a.n {
                // SAFETY: tokens `i0 .. i0 + kc ≤ a.k` and columns `q0 .. q0 + NR ≤ n` of `D`.
                unsafe { chain_step::<T, NR>(&panel, kc, a, i0, q0, &mut acc) };
                q0 += NR;
            }
            while q0 < a.n {
                // SAFETY: column `q0 < n`.
                unsafe { chain_step::<T, 1>(&panel, kc, a, i0, q0, &mut acc) };
                q0 += 1;
            }
            i0 += kc;
        }
        for (q, col) in acc.iter().enumerate() {
            for (s, &v) in col.iter().take(mr).enumerate() {
                // SAFETY: `C[p0 + s, q]` with `p0 + s < k`, `q < n`: in range (checked by
                // `GemmArgs::new`), a raw write to possibly uninitialised memory.
                unsafe { a.y.add(p0 + s + q * a.ldy).write(v) };
            }
        }
        p0 += MR;
    }
}

/// Continues `acc[q0 + j][s] ← fma(panel[t·MR + s], D[i0 + t, q0 + j], acc[q0 + j][s])` for
/// `t < kc` in ascending order, `j < W`, `s < MR`, in registers.
///
/// # Safety
/// Rows `i0 .. i0 + kc` and columns `q0 .. q0 + W` of `D` (`a.b`, strides `a.rsb`, `a.csb`) are
/// readable; `panel` holds `kc·MR` elements; `acc` has `q0 + W` entries.
#[inline(always)]
unsafe fn chain_step<T: Real, const W: usize>(
    panel: &[T],
    kc: usize,
    a: GemmArgs<T>,
    i0: usize,
    q0: usize,
    acc: &mut [[T; MR]],
) {
    let mut r: [[T; MR]; W] = std::array::from_fn(|j| acc[q0 + j]);
    // SAFETY: `D[i0, q0]`, in range.
    let d0 = unsafe { a.b.offset(i0 as isize * a.rsb + q0 as isize * a.csb) };
    for (t, xv) in panel.chunks_exact(MR).take(kc).enumerate() {
        // SAFETY: row `i0 + t` of `D`, in range.
        let drow = unsafe { d0.offset(t as isize * a.rsb) };
        for (j, rj) in r.iter_mut().enumerate() {
            // SAFETY: `D[i0 + t, q0 + j]`, in range.
            let dj = unsafe { *drow.offset(j as isize * a.csb) };
            for s in 0..MR {
                rj[s] = madd::<T, true>(xv[s], dj, rj[s]);
            }
        }
    }
    acc[q0..q0 + W].copy_from_slice(&r);
}

/// Off x86-64 [`applies`] is never true, so this is never called.
///
/// # Safety
/// Never called.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn panel_avx512<T: Real>(_: GemmArgs<T>, _: *const T, _: usize) {
    unreachable!("the transposed-panel product runs with AVX-512 only")
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    fn filled(rows: usize, cols: usize, seed: u64) -> Mat<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        Mat::from_fn(rows, cols, |_, _| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
    }

    /// The module's chain: ascending tokens, one `mul_add` each, from 0.
    fn chain(x: MatRef<'_, f32>, d: MatRef<'_, f32>, p: usize, q: usize) -> f32 {
        (0..x.nrows()).fold(0.0f32, |acc, i| x[(i, p)].mul_add(d[(i, q)], acc))
    }

    #[test]
    fn gives_the_chain_bits_for_every_shape() {
        if !applies::<f32>(16, 16) {
            return; // no AVX-512 here: the callers use their other kernels
        }
        for (m, k, n, pad) in [
            (0, 16, 3, 0),
            (16, 16, 1, 0),
            (512, 32, 32, 3),
            (64, 48, 13, 0),
            (32, 64, 64, 1),
            (48, 16, 9, 2),
        ] {
            let (x, d) = (filled(m, k, 1 + m as u64), filled(m, n, 2 + k as u64));
            // `D` as a column block of a wider matrix (strided columns) and transposed.
            let wide = filled(m, 3 * n, 7);
            let dt = d.transpose().to_owned();
            for dv in [d.as_ref(), wide.subcols(n, n), dt.transpose()] {
                let ldc = k + pad;
                let sentinel = 12345.0f32;
                let mut c = vec![MaybeUninit::new(sentinel); ldc * n];
                assert!(gemm_tn_panel_uninit(x.as_ref(), dv, &mut c, ldc));
                // SAFETY: every element was initialised (sentinel or kernel).
                let c: Vec<f32> = c.into_iter().map(|v| unsafe { v.assume_init() }).collect();
                for q in 0..n {
                    for p in 0..ldc {
                        let got = c[p + q * ldc];
                        if p < k {
                            let want = chain(x.as_ref(), dv, p, q);
                            assert_eq!(got.to_bits(), want.to_bits(), "{m}×{k}×{n} ({p}, {q})");
                        } else {
                            assert_eq!(got, sentinel, "padding written at ({p}, {q})");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn declines_what_it_cannot_run() {
        let (x, d) = (filled(20, 16, 1), filled(20, 4, 2));
        let mut c = vec![MaybeUninit::new(0.0f32); 16 * 4];
        assert!(!gemm_tn_panel_uninit(x.as_ref(), d.as_ref(), &mut c, 16));
        let xt = filled(16, 32, 3);
        let (x64, d64) = (filled(32, 16, 1), filled(32, 4, 2));
        let mut c64 = vec![MaybeUninit::new(0.0f64); 16 * 4];
        let (x64, d64) = (
            Mat::<f64>::from_fn(32, 16, |i, j| f64::from(x64[(i, j)])),
            Mat::<f64>::from_fn(32, 4, |i, j| f64::from(d64[(i, j)])),
        );
        assert!(!gemm_tn_panel_uninit(
            x64.as_ref(),
            d64.as_ref(),
            &mut c64,
            16
        ));
        // Rows of `X` not contiguous: a transposed view.
        let d2 = filled(32, 4, 4);
        let mut c2 = vec![MaybeUninit::new(0.0f32); 16 * 4];
        assert!(!gemm_tn_panel_uninit(
            xt.transpose(),
            d2.as_ref(),
            &mut c2,
            16
        ));
    }
}
