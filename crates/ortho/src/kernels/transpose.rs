//! 16 × 16 tile transposes of `f32` in AVX-512 registers.
//!
//! The skew fill (one half of `Q` is the negated transpose of the other) and the transposition
//! of column-major packed parameters move single elements between cache lines when written as
//! scalar loops; a tile of 16 vectors transposed with 64 register shuffles moves whole lines.
//! Only `f32` on AVX-512 takes this path: callers keep their scalar loop for everything else.

use std::any::TypeId;

use super::{Isa, Level};
use crate::real::Real;

/// Tile edge: one AVX-512 register of `f32`.
pub(crate) const TILE: usize = 16;

/// What to store of the transposed tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    /// `dst_c[r] = src_r[c]` for all `r, c < 16`.
    All,
    /// `dst_c[r] = −src_r[c]` for all `r, c < 16`.
    AllNegated,
    /// `dst_c[r] = −src_r[c]` for `r < c` only (the other entries of `dst` untouched).
    StrictlyUpperNegated,
}

/// Whether [`transpose_tile`] runs on this machine for `T`.
pub(crate) fn available<T: Real>() -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>() && Isa::detect().level() == Level::Avx512
}

/// `dst[c·ldd + r] = ±src[r·lds + c]` for `r, c < 16` (which entries: [`Store`]): the 16 vectors
/// `src[r·lds ..][..16]` are transposed into the 16 vectors `dst[c·ldd ..][..16]`. `src` and
/// `dst` may overlap (all of the tile is loaded before anything is stored).
///
/// Returns `false` (and touches nothing) unless [`available`] for `T`.
///
/// # Safety
/// `src + r·lds .. + 16` must be readable (initialised) and `dst + c·ldd .. + 16` writable for
/// every `r, c < 16`.
pub(crate) unsafe fn transpose_tile<T: Real>(
    src: *const T,
    lds: usize,
    dst: *mut T,
    ldd: usize,
    store: Store,
) -> bool {
    if !available::<T>() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `T` is `f32` and AVX-512F is present (both checked by `available`); the vectors
    // are valid (the contract).
    unsafe {
        transpose_avx512(src.cast(), lds, dst.cast(), ldd, store);
    }
    true
}

/// `dst[j + i·ld] = src[i, j]`: writes `srcᵀ` (`n × m` for an `m × n` `src`) into column-major
/// storage with column stride `ld ≥ n`, by [`transpose_tile`] where whole 16 × 16 tiles of a
/// column-major `src` allow it and element by element elsewhere (the same values either way).
///
/// # Panics
/// If `ld < n` (with `m > 1`) or `dst` is shorter than `(m − 1)·ld + n`.
pub(crate) fn transpose_into<T: Real>(src: faer::MatRef<'_, T>, dst: &mut [T], ld: usize) {
    let (m, n) = (src.nrows(), src.ncols());
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        m <= 1 || ld >= n,
        "transpose: column stride below the row count"
    );
    assert!(
        dst.len() >= (m - 1) * ld + n,
        "transpose: storage too short"
    );
    let tiles = available::<T>() && src.row_stride() == 1 && src.col_stride() > 0;
    let (mt, nt) = if tiles {
        (m / TILE * TILE, n / TILE * TILE)
    } else {
        (0, 0)
    };
    let lds = src.col_stride().unsigned_abs();
    for i0 in (0..mt).step_by(TILE) {
        for j0 in (0..nt).step_by(TILE) {
            // SAFETY: the tile reads rows `i0 .. i0 + 16 ≤ m` of columns `j0 + r < n` of the
            // column-major `src` and writes rows `j0 .. j0 + 16 ≤ n` of columns `i0 + c < m` of
            // `dst`, inside its `(m − 1)·ld + n` elements (asserted).
            let done = unsafe {
                transpose_tile(
                    src.as_ptr().add(i0 + j0 * lds),
                    lds,
                    dst.as_mut_ptr().add(j0 + i0 * ld),
                    ld,
                    Store::All,
                )
            };
            debug_assert!(done, "checked by `available`");
        }
    }
    // The rest: columns past the tiles of the tiled rows, then whole rows past them.
    for i in 0..m {
        let from = if i < mt { nt } else { 0 };
        for j in from..n {
            dst[j + i * ld] = src[(i, j)];
        }
    }
}

/// The AVX-512 body of [`transpose_tile`].
///
/// # Safety
/// AVX-512F is available; `src + r·lds .. + 16` is readable and `dst + c·ldd .. + 16` writable
/// for `r, c < 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_avx512(src: *const f32, lds: usize, dst: *mut f32, ldd: usize, store: Store) {
    use std::arch::x86_64::*;
    let mut r = [_mm512_setzero_ps(); TILE];
    for (i, v) in r.iter_mut().enumerate() {
        // SAFETY: the contract (vector `i` of `src` is readable).
        *v = unsafe { _mm512_loadu_ps(src.add(i * lds)) };
    }
    // Stage 1: interleave pairs of rows (32-bit elements).
    let mut t = [_mm512_setzero_ps(); TILE];
    for p in 0..TILE / 2 {
        t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    // Stage 2: interleave pairs of pairs (64-bit elements).
    let pd = _mm512_castps_pd;
    for q in 0..TILE / 4 {
        let (a, b, c, d) = (t[4 * q], t[4 * q + 1], t[4 * q + 2], t[4 * q + 3]);
        r[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
        r[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
        r[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
        r[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
    }
    // Stage 3: 128-bit lanes, rows 4 apart.
    for h in 0..2 {
        let o = 8 * h;
        for i in 0..4 {
            t[o + i] = _mm512_shuffle_f32x4::<0x88>(r[o + i], r[o + i + 4]);
            t[o + i + 4] = _mm512_shuffle_f32x4::<0xdd>(r[o + i], r[o + i + 4]);
        }
    }
    // Stage 4: 128-bit lanes, rows 8 apart.
    for i in 0..8 {
        r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[i + 8]);
        r[i + 8] = _mm512_shuffle_f32x4::<0xdd>(t[i], t[i + 8]);
    }
    // Negation flips the sign bit: an integer XOR (AVX-512F; `_mm512_xor_ps` needs AVX-512DQ).
    let sign = _mm512_set1_epi32(i32::MIN);
    let neg = |v: __m512| _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), sign));
    for (c, &v) in r.iter().enumerate() {
        // SAFETY (all arms): the contract (vector `c` of `dst` is writable).
        unsafe {
            match store {
                Store::All => _mm512_storeu_ps(dst.add(c * ldd), v),
                Store::AllNegated => _mm512_storeu_ps(dst.add(c * ldd), neg(v)),
                Store::StrictlyUpperNegated => {
                    _mm512_mask_storeu_ps(dst.add(c * ldd), ((1u32 << c) - 1) as u16, neg(v))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_match_scalar_transposes() {
        if !available::<f32>() {
            return; // nothing to compare on this machine
        }
        let (lds, ldd) = (19usize, 23usize);
        let src: Vec<f32> = (0..15 * lds + 16).map(|i| i as f32 * 0.5 - 7.0).collect();
        for store in [Store::All, Store::AllNegated, Store::StrictlyUpperNegated] {
            let mut dst = vec![1234.5f32; 15 * ldd + 16];
            // SAFETY: 16 vectors of 16 at strides `lds` / `ldd` fit in both buffers.
            let done = unsafe { transpose_tile(src.as_ptr(), lds, dst.as_mut_ptr(), ldd, store) };
            assert!(done);
            for c in 0..TILE {
                for r in 0..TILE {
                    let want = match store {
                        Store::All => src[r * lds + c],
                        Store::AllNegated => -src[r * lds + c],
                        Store::StrictlyUpperNegated if r < c => -src[r * lds + c],
                        Store::StrictlyUpperNegated => 1234.5,
                    };
                    assert_eq!(
                        dst[c * ldd + r].to_bits(),
                        want.to_bits(),
                        "{store:?} ({r}, {c})"
                    );
                }
            }
        }
        assert!(!available::<f64>());
    }

    #[test]
    fn transpose_into_matches_the_definition() {
        for (m, n) in [(1, 1), (16, 16), (32, 32), (33, 17), (5, 48), (48, 3)] {
            let src = faer::Mat::<f32>::from_fn(m, n, |i, j| (i * 100 + j) as f32);
            // Column-major (tiles where they fit) and row-major (element by element).
            let src_t = src.transpose().to_owned();
            for view in [src.as_ref(), src_t.transpose()] {
                let ld = n + 2;
                let mut dst = vec![-1.0f32; (m - 1) * ld + n];
                transpose_into(view, &mut dst, ld);
                for i in 0..m {
                    for j in 0..n {
                        assert_eq!(dst[j + i * ld], src[(i, j)], "{m}×{n} ({i}, {j})");
                    }
                }
            }
            let f64src = faer::Mat::<f64>::from_fn(m, n, |i, j| (i * 100 + j) as f64);
            let mut dst = vec![0.0f64; m * n];
            transpose_into(f64src.as_ref(), &mut dst, n);
            assert!((0..m).all(|i| (0..n).all(|j| dst[j + i * n] == f64src[(i, j)])));
        }
    }
}
