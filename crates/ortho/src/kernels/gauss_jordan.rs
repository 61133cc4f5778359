//! In-place Gauss–Jordan inversion without pivoting of a small row-major matrix.
//!
//! Meant for matrices whose symmetric part is positive definite (`I ± Q` with `Q` skew): every
//! leading principal minor is non-zero and elimination without pivoting is stable (Golub & Van
//! Loan, §4.4, growth at most about `1 + ‖Q‖₂²`). The caller checks the pivots it is given back and
//! falls back to a pivoted LU if one is small.

use super::{Isa, isa, madd};
use crate::real::Real;

/// Step `k` for every `k`: `row_k ← row_k / a_kk`, then `a_kk ← 1/a_kk`; for `i ≠ k`,
/// `row_i ← row_i − a_ik·row_k` except in column `k`, where `a_ik ← −a_ik/a_kk`. On return `a`
/// holds `A⁻¹`. Returns `false` as soon as a pivot is not at least `min_pivot` (or not finite);
/// `a` is then garbage.
#[inline(always)]
fn invert_imp<T: Real, const FMA: bool>(a: &mut [T], n: usize, min_pivot: T) -> bool {
    for k in 0..n {
        let (before, rest) = a.split_at_mut(k * n);
        let (row_k, after) = rest.split_at_mut(n);
        let p = row_k[k];
        if !(p >= min_pivot) || !p.is_finite() {
            return false;
        }
        let inv = T::one() / p;
        for v in row_k.iter_mut() {
            *v *= inv;
        }
        row_k[k] = inv;
        let row_k = &*row_k;
        eliminate::<T, FMA, 16>(before, row_k, k, inv);
        eliminate::<T, FMA, 16>(after, row_k, k, inv);
    }
    true
}

/// `row_i ← row_i − a_ik·row_k` for every row of `rows`, then `a_ik ← −a_ik·inv`.
#[inline(always)]
fn eliminate<T: Real, const FMA: bool, const W: usize>(
    rows: &mut [T],
    row_k: &[T],
    k: usize,
    inv: T,
) {
    for row_i in rows.chunks_exact_mut(row_k.len()) {
        let f = -row_i[k];
        // Fixed-width chunks (unrolled into whole vector registers), then the scalar tail.
        let mut xs = row_i.chunks_exact_mut(W);
        let mut ys = row_k.chunks_exact(W);
        for (x, y) in (&mut xs).zip(&mut ys) {
            // Local copies: no aliasing for the vectorizer to worry about.
            let mut xv = [T::zero(); W];
            let mut yv = [T::zero(); W];
            xv.copy_from_slice(x);
            yv.copy_from_slice(y);
            for l in 0..W {
                xv[l] = madd::<T, FMA>(f, yv[l], xv[l]);
            }
            x.copy_from_slice(&xv);
        }
        for (x, &y) in xs.into_remainder().iter_mut().zip(ys.remainder()) {
            *x = madd::<T, FMA>(f, y, *x);
        }
        // Column k was eliminated: its new entry is −a_ik/a_kk (a scalar store after the vector
        // pass, so the next vector read of this row is far away and forwards cleanly).
        row_i[k] = f * inv;
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

/// Inverts the `n × n` row-major `a` in place (see the module notes); `false` if a pivot is below
/// `min_pivot` or not finite.
pub(crate) fn invert_unpivoted<T: Real>(a: &mut [T], n: usize, min_pivot: T) -> bool {
    invert_unpivoted_with(isa(), a, n, min_pivot)
}

/// [`invert_unpivoted`] with an explicit instruction set (tests compare them).
pub(crate) fn invert_unpivoted_with<T: Real>(
    isa: Isa,
    a: &mut [T],
    n: usize,
    min_pivot: T,
) -> bool {
    debug_assert_eq!(a.len(), n * n);
    match isa {
        // SAFETY: the instruction sets are only used if detected.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { invert_avx512(a, n, min_pivot) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { invert_avx2(a, n, min_pivot) },
        _ => invert_imp::<T, false>(a, n, min_pivot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<f64> {
        // I + Qᵀ for a skew Q with entries of size ~0.3.
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in i + 1..n {
                let v = 0.3 * (((i * 31 + j * 17) % 13) as f64 / 6.0 - 1.0);
                a[i * n + j] = -v;
                a[j * n + i] = v;
            }
            a[i * n + i] = 1.0;
        }
        a
    }

    #[test]
    fn inverse_and_instruction_sets_agree() {
        for n in [1usize, 3, 17, 32, 40] {
            let a = sample(n);
            let mut inv = a.clone();
            assert!(invert_unpivoted_with(Isa::Portable, &mut inv, n, 0.5));
            for i in 0..n {
                for j in 0..n {
                    let s: f64 = (0..n).map(|k| a[i * n + k] * inv[k * n + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((s - want).abs() < 1e-13, "n {n} ({i},{j}): {s}");
                }
            }
            #[cfg(target_arch = "x86_64")]
            if isa() == Isa::Avx512 {
                let (mut x2, mut x512) = (a.clone(), a.clone());
                assert!(invert_unpivoted_with(Isa::Avx2, &mut x2, n, 0.5));
                assert!(invert_unpivoted_with(Isa::Avx512, &mut x512, n, 0.5));
                assert_eq!(x2, x512);
            }
        }
    }

    #[test]
    fn small_pivot_is_reported() {
        let mut a = vec![0.0f32, 1.0, 1.0, 0.0];
        assert!(!invert_unpivoted(&mut a, 2, 0.5));
        let mut nan = vec![f32::NAN];
        assert!(!invert_unpivoted(&mut nan, 1, 0.5));
    }
}
