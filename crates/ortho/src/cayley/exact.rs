//! The exact Cayley transform of a skew block, by one LU solve, and its vector–Jacobian product.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::lu::partial_pivoting::{factor, solve};
use faer::{Conj, Mat, MatRef, Par};

use crate::error::{OrthoError, Result};
use crate::kernels::block_gemm::gemm_acc;
use crate::kernels::gauss_jordan::{MAX_N, invert_unpivoted, padded_stride};
use crate::kernels::vectorized;
use crate::matrix::{zeroed_storage_padded, zeroed_storage_with};
use crate::packing::{fill_skew, skew_from_slice};
use crate::parameterization::CayleyConvention;
use crate::real::Real;

/// Exact Cayley transform of one skew block `Q` (`b × b`).
///
/// - [`CayleyConvention::Peft`]: `R = (I − Q)(I + Q)⁻¹ = 2(I + Q)⁻¹ − I` (PEFT's exact branch);
/// - [`CayleyConvention::Textbook`]: `R = (I + Q)(I − Q)⁻¹ = 2(I − Q)⁻¹ − I`.
///
/// (`(I ∓ Q)(I ± Q)⁻¹ = (2I − (I ± Q))(I ± Q)⁻¹`.) The inverse is computed by Gauss–Jordan
/// elimination without pivoting (for `b ≤ 64`), which is stable here: `I ± Q` has symmetric part `I` when `Q` is
/// skew, so every pivot is at least 1 in exact arithmetic (Golub & Van Loan §4.4). If a pivot falls
/// below ½ (a `Q` far from skew) or the result is not finite, the transform is recomputed from
/// faer's partially pivoted LU of `I − Q`: `X = (I − Q)⁻¹(I + Q)` is the textbook `C` and, because
/// `Qᵀ = −Q`, PEFT's `R = Xᵀ`. `I − Q` is invertible for every real skew `Q` (eigenvalues `1 ∓ iθⱼ`).
///
/// # Errors
/// [`OrthoError::Singular`] (block 0) if the result is not finite (a non-skew or non-finite `Q`).
///
/// ```
/// use oftq_ortho::{CayleyConvention, cayley_exact, skew_from_packed};
/// let q = skew_from_packed(&[0.3f64], 2).unwrap();
/// let r = cayley_exact(q.as_ref(), CayleyConvention::Peft).unwrap();
/// // a 2 × 2 rotation by the angle 2·atan(0.3)
/// let (c, s) = ((2.0 * 0.3f64.atan()).cos(), (2.0 * 0.3f64.atan()).sin());
/// assert!((r[(0, 0)] - c).abs() < 1e-15 && (r[(0, 1)] + s).abs() < 1e-15);
/// ```
pub fn cayley_exact<T: Real>(q: MatRef<'_, T>, convention: CayleyConvention) -> Result<Mat<T>> {
    let b = q.nrows();
    let by_gauss_jordan = rotation_by_gauss_jordan(b, convention, Skew::Dense(q));
    by_gauss_jordan.map_or_else(|| cayley_exact_lu(q, convention), Ok)
}

/// [`cayley_exact`] of the skew block of a packed row `v` (see
/// [`skew_from_packed`](crate::skew_from_packed)) into the caller's zeroed storage `r`
/// (column-major `b × b`, column stride `ld`), with `Q` written straight into it. The caller
/// checked `v`'s length.
///
/// # Errors
/// As [`cayley_exact`].
pub(crate) fn cayley_exact_packed_into<T: Real>(
    v: &[T],
    b: usize,
    convention: CayleyConvention,
    r: &mut [T],
    ld: usize,
) -> Result<()> {
    if b <= MAX_N
        && ld == padded_stride(b)
        && r.len() == b * ld
        && vectorized(
            #[inline(always)]
            || rotation_in_place(r, b, convention, Skew::Packed(v)),
        )
    {
        return Ok(());
    }
    let lu = cayley_exact_lu(skew_from_slice(v, b).as_ref(), convention)?;
    for (j, col) in r.chunks_mut(ld).take(b).enumerate() {
        for (i, x) in col[..b].iter_mut().enumerate() {
            *x = lu[(i, j)];
        }
    }
    Ok(())
}

/// The exact transform by Gauss–Jordan elimination in the output's own storage, for `b ≤`
/// [`MAX_N`]; `None` on a small pivot or a non-finite result (or a larger `b`).
///
/// `Qᵀ` is written row-major with row stride `ld` = [`padded_stride`]`(b)` into zeroed storage
/// `m`; adding `I` gives `M = I + Qᵀ`, which is inverted in place: `X = M⁻¹`. Read
/// column-major, as the output matrix, the storage then holds `Xᵀ = (I + Q)⁻¹`, so PEFT's
/// `R = 2(I + Q)⁻¹ − I` is `2·m − I` in place; the textbook `2(I − Q)⁻¹ − I = 2X − I` (`Q` skew)
/// is its transpose, bit for bit.
fn rotation_by_gauss_jordan<T: Real>(
    b: usize,
    convention: CayleyConvention,
    q: Skew<'_, T>,
) -> Option<Mat<T>> {
    let ld = padded_stride(b);
    if b == 0 {
        return Some(Mat::zeros(0, 0));
    }
    if b > MAX_N {
        return None;
    }
    let (r, ok) = zeroed_storage_padded(b, b, ld, |m, got_ld| {
        // Unless faer padded differently (then the LU path takes over).
        got_ld == ld
            && vectorized(
                #[inline(always)]
                || rotation_in_place(m, b, convention, q),
            )
    });
    ok.then_some(r)
}

/// Where the skew block comes from (a plain enum rather than a closure, so that writing it is
/// inlined into the caller's instruction-set-specific code).
#[derive(Clone, Copy)]
enum Skew<'a, T> {
    /// A packed row (see [`skew_from_packed`](crate::skew_from_packed)).
    Packed(&'a [T]),
    /// A `b × b` matrix.
    Dense(MatRef<'a, T>),
}

impl<T: Real> Skew<'_, T> {
    /// Writes `Qᵀ` row-major with row stride `ld` into `m` (`b` rows): column `i` of `Q` is row
    /// `i` of `Qᵀ`, and column-major `Q` with column stride `ld` is exactly that.
    #[inline(always)]
    fn write_transposed(self, b: usize, m: &mut [T], ld: usize) {
        match self {
            Skew::Packed(v) => fill_skew(v, b, m, ld),
            Skew::Dense(q) => {
                for (i, row) in m.chunks_exact_mut(ld).enumerate() {
                    let row = &mut row[..b];
                    match q.col(i).try_as_col_major() {
                        Some(col) => row.copy_from_slice(col.as_slice()),
                        None => {
                            for (j, v) in row.iter_mut().enumerate() {
                                *v = q[(j, i)];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The body of [`rotation_by_gauss_jordan`] on the zeroed storage `m` (row stride
/// [`padded_stride`]`(b)`); `false` on a small pivot or a non-finite result.
#[inline(always)]
fn rotation_in_place<T: Real>(
    m: &mut [T],
    b: usize,
    convention: CayleyConvention,
    q: Skew<'_, T>,
) -> bool {
    let ld = padded_stride(b);
    q.write_transposed(b, m, ld);
    for i in 0..b {
        m[i * ld + i] += T::one();
    }
    if !invert_unpivoted(m, b, T::c(0.5)) {
        return false;
    }
    let two = T::c(2.0);
    // A boolean AND (associative, so it vectorizes, unlike a float sum used as a NaN check).
    let mut finite = true;
    for x in m.iter_mut() {
        finite &= x.is_finite();
        *x = two * *x;
    }
    for i in 0..b {
        m[i * ld + i] -= T::one();
    }
    if convention == CayleyConvention::Textbook {
        for j in 1..b {
            for i in 0..j {
                m.swap(i + j * ld, j + i * ld);
            }
        }
    }
    finite
}

/// [`cayley_exact`] by faer's partially pivoted LU of `I − Q` (the fallback).
fn cayley_exact_lu<T: Real>(q: MatRef<'_, T>, convention: CayleyConvention) -> Result<Mat<T>> {
    let b = q.nrows();
    // A = I − Q, X = I + Q.
    let mut a = Mat::<T>::from_fn(b, b, |i, j| if i == j { T::one() } else { -q[(i, j)] });
    let mut x = Mat::<T>::from_fn(b, b, |i, j| if i == j { T::one() } else { q[(i, j)] });
    let mut perm = vec![0usize; b];
    let mut perm_inv = vec![0usize; b];
    let mut mem = MemBuffer::new(
        factor::lu_in_place_scratch::<usize, T>(b, b, Par::Seq, Default::default())
            .or(solve::solve_in_place_scratch::<usize, T>(b, b, Par::Seq)),
    );
    let stack = MemStack::new(&mut mem);
    let (_, p) = factor::lu_in_place(
        a.as_mut(),
        &mut perm,
        &mut perm_inv,
        Par::Seq,
        stack,
        Default::default(),
    );
    solve::solve_in_place_with_conj(
        a.as_ref(),
        a.as_ref(),
        p,
        Conj::No,
        x.as_mut(),
        Par::Seq,
        stack,
    );
    if !x.as_ref().is_all_finite() {
        return Err(OrthoError::Singular { block: 0 });
    }
    Ok(match convention {
        CayleyConvention::Textbook => x,
        CayleyConvention::Peft => x.transpose().to_owned(),
    })
}

/// Vector–Jacobian product of [`cayley_exact`]: given `R` and `G = ∂L/∂R`, returns `∂L/∂Q`.
///
/// From `dC = ½(C + I)·dQ·(C + I)` for the textbook `C = (I + Q)(I − Q)⁻¹` (oft-numerics F3):
/// - textbook: `∂L/∂Q = ½ (R + I)ᵀ G (R + I)ᵀ`;
/// - PEFT (`R = C(−Q)`): `∂L/∂Q = −½ (R + I)ᵀ G (R + I)ᵀ`.
///
/// Only `R` is needed: no second solve. The result is not projected onto skew matrices; use the
/// packed gradient (`G[i][j] − G[j][i]`) to reach the parameters.
pub fn cayley_exact_vjp<T: Real>(
    r: MatRef<'_, T>,
    convention: CayleyConvention,
    g: MatRef<'_, T>,
) -> Mat<T> {
    let b = r.nrows();
    // P = (R + I)ᵀ, column-major with column stride b.
    let mut p = vec![T::zero(); b * b];
    for (j, col) in p.chunks_exact_mut(b.max(1)).enumerate().take(b) {
        for (i, x) in col.iter_mut().enumerate() {
            *x = r[(j, i)];
        }
        col[j] += T::one();
    }
    let p = MatRef::from_column_major_slice(&p, b, b);
    let mut pg = vec![T::zero(); b * b];
    gemm_acc(T::one(), p, g, &mut pg, b);
    let half = match convention {
        CayleyConvention::Textbook => T::c(0.5),
        CayleyConvention::Peft => T::c(-0.5),
    };
    zeroed_storage_with(b, b, |out, ld| {
        gemm_acc(half, MatRef::from_column_major_slice(&pg, b, b), p, out, ld);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::skew_from_packed;

    #[test]
    fn peft_vector_b4() {
        // PEFT 0.21.2 test vector (peft-oft.md §9).
        let v = [0.1f64, -0.2, 0.3, 0.05, -0.15, 0.25];
        let q = skew_from_packed(&v, 4).unwrap();
        let r = cayley_exact(q.as_ref(), CayleyConvention::Peft).unwrap();
        let want: [[f64; 4]; 4] = [
            [0.77174976, -0.07738677, 0.20935158, -0.59547084],
            [0.25659824, 0.94281525, 0.00733138, 0.21260997],
            [-0.43743891, 0.18002607, 0.82877159, -0.29895732],
            [0.38367546, -0.26963180, 0.51889866, 0.71472792],
        ];
        for i in 0..4 {
            for j in 0..4 {
                assert!((r[(i, j)] - want[i][j]).abs() < 1e-8, "({i},{j})");
            }
        }
        let t = cayley_exact(q.as_ref(), CayleyConvention::Textbook).unwrap();
        assert!((t.transpose() - &r).norm_max() < 1e-15);
    }

    #[test]
    fn zero_gives_identity_exactly() {
        let q = Mat::<f32>::zeros(7, 7);
        let r = cayley_exact(q.as_ref(), CayleyConvention::Peft).unwrap();
        assert_eq!(r, Mat::<f32>::identity(7, 7));
    }

    #[test]
    fn small_pivot_falls_back_to_lu() {
        // Not skew: the second pivot of I + Qᵀ is 0, so the pivoted LU of I − Q takes over, and
        // finds it singular too.
        let q = faer::mat![[0.0f64, 1.0], [1.0, 0.0]];
        assert!(cayley_exact(q.as_ref(), CayleyConvention::Peft).is_err());
        // A skew block takes the Gauss–Jordan path and matches the LU fallback to rounding.
        let q = skew_from_packed(&[0.4f64, -0.7, 1.3, 0.2, -0.9, 0.6], 4).unwrap();
        for conv in [CayleyConvention::Peft, CayleyConvention::Textbook] {
            let gj = cayley_exact(q.as_ref(), conv).unwrap();
            let lu = cayley_exact_lu(q.as_ref(), conv).unwrap();
            assert!((gj - lu).norm_max() < 1e-14);
        }
    }

    #[test]
    fn non_finite_is_an_error() {
        let mut q = Mat::<f64>::zeros(3, 3);
        q[(0, 1)] = f64::NAN;
        q[(1, 0)] = f64::NAN;
        assert!(cayley_exact(q.as_ref(), CayleyConvention::Peft).is_err());
    }
}
