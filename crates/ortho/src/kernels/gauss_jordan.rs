//! In-place Gauss–Jordan inversion without pivoting of a small row-major matrix, blocked by
//! two pivots.
//!
//! Meant for matrices whose symmetric part is positive definite (`I ± Q` with `Q` skew): every
//! leading principal minor is non-zero and elimination without pivoting is stable (Golub & Van
//! Loan, §4.4, growth at most about `1 + ‖Q‖₂²`). The caller checks the pivots it is given back and
//! falls back to a pivoted LU if one is small.
//!
//! The matrix is stored row-major with a row stride of [`padded_stride`]`(n)` (a multiple of 16
//! elements, so every row is whole vector registers); the padding columns must be zero and stay
//! zero. Rows are held in fixed-size local arrays, one monomorphisation per stride (16, 32, 48, 64),
//! which LLVM keeps in vector registers.

use super::{Isa, Level, madd};
use crate::real::Real;

/// Pivots eliminated together: one pass over the other rows applies a rank-`NB` update, so each
/// row is loaded and stored once per `NB` pivots instead of once per pivot. Measured at
/// `n = 32`, `f32` (timing probe, one core): 1.6 µs unblocked, 0.9 µs with 2, 0.9–1.1 µs with 3,
/// 1.2–1.6 µs with 4, 1.5–1.7 µs with 8 (more live registers than the ISA has).
const NB: usize = 2;

/// Row strides are multiples of this many elements.
const STRIDE_MULTIPLE: usize = 16;

/// Largest `n` the kernel inverts (larger sizes return `false`: use a pivoted LU, whose rounding
/// error grows more slowly with `n`; `f32` at `n = 256` exceeded the `5·10⁻⁶` orthogonality
/// budget of the Cayley transform with Gauss–Jordan: `5.4·10⁻⁶`).
pub(crate) const MAX_N: usize = 64;

/// Row stride of an `n × n` matrix for [`invert_unpivoted`]: `n` rounded up to a multiple of 16.
pub(crate) const fn padded_stride(n: usize) -> usize {
    n.div_ceil(STRIDE_MULTIPLE) * STRIDE_MULTIPLE
}

/// Gauss–Jordan steps `k … k + P − 1` (`P` pivots, columns `K`) on the row-major `a` of stride
/// `LD`.
///
/// One step `k` is: `row_k ← row_k / a_kk` and `a_kk ← 1/a_kk`; for `i ≠ k`,
/// `row_i ← row_i − a_ik·row_k` except in column `k`, where `a_ik ← −a_ik/a_kk`. Blocked, the
/// same `P` steps are (in exact arithmetic):
/// 1. invert the `P × P` pivot block `A₁₁ = a_K,K` in scalar registers by those steps (their
///    pivots are the sequential ones, checked against `min_pivot`);
/// 2. pivot rows: `a_K,· ← A₁₁⁻¹·a_K,·` with the `K` columns taken as zero, then `a_K,K ← A₁₁⁻¹`;
/// 3. every other row `i`, with `f = a_i,K` (old values): `a_i,K ← 0`,
///    `row_i ← row_i − Σₗ fₗ·row_{k+l}` — rows `k + P …` first, so that the next pivot block is
///    ready early and its scalar steps (a chain of divisions) overlap the rest of this update.
///
/// Returns `false` if a pivot is not at least `min_pivot` (or not finite).
#[inline(always)]
fn steps<T: Real, const FMA: bool, const LD: usize, const P: usize>(
    a: &mut [T],
    n: usize,
    k: usize,
    min_pivot: T,
) -> bool {
    let mut s = [[T::zero(); P]; P];
    for l in 0..P {
        for m in 0..P {
            s[l][m] = a[(k + l) * LD + k + m];
        }
    }
    for l in 0..P {
        let p = s[l][l];
        if !(p >= min_pivot) || !p.is_finite() {
            return false;
        }
        let inv = T::one() / p;
        for m in 0..P {
            s[l][m] *= inv;
        }
        s[l][l] = inv;
        for r in 0..P {
            if r != l {
                let f = -s[r][l];
                for m in 0..P {
                    s[r][m] = madd::<T, FMA>(f, s[l][m], s[r][m]);
                }
                s[r][l] = f * inv;
            }
        }
    }
    // 0 in the pivot columns, 1 elsewhere: zeroes a_·,K in registers (exact for finite entries).
    let mut keep = [T::one(); LD];
    for l in 0..P {
        keep[k + l] = T::zero();
    }
    let mut old = [[T::zero(); LD]; P];
    for l in 0..P {
        old[l].copy_from_slice(&a[(k + l) * LD..(k + l + 1) * LD]);
        for j in 0..LD {
            old[l][j] *= keep[j];
        }
    }
    for l in 0..P {
        let mut x = [T::zero(); LD];
        for m in 0..P {
            for j in 0..LD {
                x[j] = madd::<T, FMA>(s[l][m], old[m][j], x[j]);
            }
        }
        let row = &mut a[(k + l) * LD..(k + l + 1) * LD];
        row.copy_from_slice(&x);
        row[k..k + P].copy_from_slice(&s[l]);
    }
    let mut piv = [[T::zero(); LD]; P];
    for l in 0..P {
        piv[l].copy_from_slice(&a[(k + l) * LD..(k + l + 1) * LD]);
    }
    // Two plain loops (a `chain` costs a third of the loop's instructions in state checks).
    let (before, rest) = a.split_at_mut(k * LD);
    for row in rest[P * LD..(n - k) * LD].chunks_exact_mut(LD) {
        rank_update::<T, FMA, LD, P>(row, k, &piv, &keep);
    }
    for row in before.chunks_exact_mut(LD) {
        rank_update::<T, FMA, LD, P>(row, k, &piv, &keep);
    }
    true
}

/// `row ← row ⊙ keep − Σₗ row[k + l]·piv[l]` (the row's old pivot-column entries as factors).
///
/// A plain function marked `inline(always)` (no closure or iterator adaptor): it must be inlined
/// into the `target_feature` caller, or `mul_add` becomes a library call.
#[inline(always)]
fn rank_update<T: Real, const FMA: bool, const LD: usize, const P: usize>(
    row: &mut [T],
    k: usize,
    piv: &[[T; LD]; P],
    keep: &[T; LD],
) {
    let mut f = [T::zero(); P];
    for l in 0..P {
        f[l] = -row[k + l];
    }
    let mut x = [T::zero(); LD];
    x.copy_from_slice(row);
    for j in 0..LD {
        x[j] *= keep[j];
    }
    for l in 0..P {
        for j in 0..LD {
            x[j] = madd::<T, FMA>(f[l], piv[l][j], x[j]);
        }
    }
    row.copy_from_slice(&x);
}

/// All `n` steps: blocks of [`NB`] pivots, then single pivots for the remainder.
#[inline(always)]
fn invert_ld<T: Real, const FMA: bool, const LD: usize>(
    a: &mut [T],
    n: usize,
    min_pivot: T,
) -> bool {
    let mut k = 0;
    while k + NB <= n {
        if !steps::<T, FMA, LD, NB>(a, n, k, min_pivot) {
            return false;
        }
        k += NB;
    }
    while k < n {
        if !steps::<T, FMA, LD, 1>(a, n, k, min_pivot) {
            return false;
        }
        k += 1;
    }
    true
}

/// Dispatch on the row stride (the caller checked `n ≤ MAX_N` and the buffer length).
#[inline(always)]
fn invert_imp<T: Real, const FMA: bool>(a: &mut [T], n: usize, min_pivot: T) -> bool {
    match padded_stride(n) {
        16 => invert_ld::<T, FMA, 16>(a, n, min_pivot),
        32 => invert_ld::<T, FMA, 32>(a, n, min_pivot),
        48 => invert_ld::<T, FMA, 48>(a, n, min_pivot),
        64 => invert_ld::<T, FMA, 64>(a, n, min_pivot),
        _ => false,
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn invert_avx512<T: Real>(a: &mut [T], n: usize, min_pivot: T) -> bool {
    invert_imp::<T, true>(a, n, min_pivot)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn invert_avx2<T: Real>(a: &mut [T], n: usize, min_pivot: T) -> bool {
    invert_imp::<T, true>(a, n, min_pivot)
}

/// Inverts the `n × n` row-major `a` (row stride [`padded_stride`]`(n)`, zero padding, `a.len()`
/// = `n ·` stride) in place (see the module notes). Returns `false`, leaving `a` garbage, if a
/// pivot is below `min_pivot` or not finite, if `n > MAX_N`, or if `a` has the wrong length.
pub(crate) fn invert_unpivoted<T: Real>(a: &mut [T], n: usize, min_pivot: T) -> bool {
    invert_unpivoted_with(Isa::detect(), a, n, min_pivot)
}

/// [`invert_unpivoted`] with an explicit instruction set (tests compare them). Safe for any
/// `isa`: an [`Isa`] exists only for a level this CPU supports.
pub(crate) fn invert_unpivoted_with<T: Real>(
    isa: Isa,
    a: &mut [T],
    n: usize,
    min_pivot: T,
) -> bool {
    if n == 0 || n > MAX_N || a.len() != n * padded_stride(n) {
        return n == 0 && a.is_empty();
    }
    match isa.level() {
        // SAFETY: an `Isa` proves the CPU supports its level.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { invert_avx512(a, n, min_pivot) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { invert_avx2(a, n, min_pivot) },
        _ => invert_imp::<T, false>(a, n, min_pivot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `I + Qᵀ` for a skew `Q` with entries of size ~0.3, row-major with the padded stride.
    fn sample(n: usize) -> Vec<f64> {
        let ld = padded_stride(n);
        let mut a = vec![0.0; n * ld];
        for i in 0..n {
            for j in i + 1..n {
                let v = 0.3 * (((i * 31 + j * 17) % 13) as f64 / 6.0 - 1.0);
                a[i * ld + j] = -v;
                a[j * ld + i] = v;
            }
            a[i * ld + i] = 1.0;
        }
        a
    }

    /// One unblocked step at a time (the textbook loop), as the reference.
    fn invert_reference(a: &mut [f64], n: usize) {
        let ld = padded_stride(n);
        for k in 0..n {
            let inv = 1.0 / a[k * ld + k];
            for j in 0..n {
                a[k * ld + j] *= inv;
            }
            a[k * ld + k] = inv;
            for i in (0..n).filter(|&i| i != k) {
                let f = -a[i * ld + k];
                for j in 0..n {
                    a[i * ld + j] += f * a[k * ld + j];
                }
                a[i * ld + k] = f * inv;
            }
        }
    }

    #[test]
    fn inverse_matches_unblocked_and_instruction_sets_agree() {
        for n in [1usize, 3, 4, 5, 16, 17, 32, 40, 63, 64] {
            let ld = padded_stride(n);
            let a = sample(n);
            let mut inv = a.clone();
            assert!(invert_unpivoted_with(Isa::portable(), &mut inv, n, 0.5));
            for i in 0..n {
                for j in 0..n {
                    let s: f64 = (0..n).map(|k| a[i * ld + k] * inv[k * ld + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((s - want).abs() < 1e-13, "n {n} ({i},{j}): {s}");
                }
                assert!(inv[i * ld + n..(i + 1) * ld].iter().all(|&v| v == 0.0));
            }
            let mut unblocked = a.clone();
            invert_reference(&mut unblocked, n);
            let diff = inv
                .iter()
                .zip(&unblocked)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-14, "n {n}: blocked vs unblocked {diff}");
            // Every fused build (AVX2, AVX-512) gives the same bits.
            let fused: Vec<Isa> = Isa::available()
                .into_iter()
                .filter(|i| i.level() != Level::Portable)
                .collect();
            for pair in fused.windows(2) {
                let (mut x2, mut x512) = (a.clone(), a.clone());
                assert!(invert_unpivoted_with(pair[0], &mut x2, n, 0.5));
                assert!(invert_unpivoted_with(pair[1], &mut x512, n, 0.5));
                assert_eq!(x2, x512);
                let (mut y2, mut y512): (Vec<f32>, Vec<f32>) = (
                    a.iter().map(|&v| v as f32).collect(),
                    a.iter().map(|&v| v as f32).collect(),
                );
                assert!(invert_unpivoted_with(pair[0], &mut y2, n, 0.5));
                assert!(invert_unpivoted_with(pair[1], &mut y512, n, 0.5));
                assert_eq!(y2, y512);
            }
        }
    }

    #[test]
    fn small_pivot_and_bad_shapes_are_reported() {
        // [[0, 1], [1, 0]]: the first pivot is 0.
        let mut a = vec![0.0f32; 2 * 16];
        a[1] = 1.0;
        a[16] = 1.0;
        assert!(!invert_unpivoted(&mut a, 2, 0.5));
        let mut nan = vec![0.0f32; 16];
        nan[0] = f32::NAN;
        assert!(!invert_unpivoted(&mut nan, 1, 0.5));
        // A small pivot inside a later pivot block (its second) is caught too.
        let mut b = vec![0.0f64; 4 * 16];
        for i in 0..4 {
            b[i * 16 + i] = if i == 3 { 0.1 } else { 1.0 };
        }
        assert!(!invert_unpivoted(&mut b, 4, 0.5));
        assert!(!invert_unpivoted(&mut [1.0f64; 3], 2, 0.5));
        assert!(!invert_unpivoted(&mut vec![1.0f64; 65 * 80], 65, 0.5));
        assert!(invert_unpivoted::<f64>(&mut [], 0, 0.5));
    }
}
