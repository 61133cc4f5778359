//! Numerical diagnostics: orthogonality error, certified bounds on `‖Q‖₂`, Neumann convergence.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par, Side};

use crate::error::{OrthoError, Result};
use crate::kernels::block_gemm::gemm_acc;
use crate::matrix::zeroed_storage_with;
use crate::real::Real;

/// Orthogonality error `‖RᵀR − I‖₂` (spectral norm) of one block.
///
/// Computed from the eigenvalues of the symmetric matrix `RᵀR − I` (faer); if that decomposition
/// fails, the Frobenius norm (an upper bound) is returned instead.
pub fn orthogonality_error<T: Real>(r: MatRef<'_, T>) -> T {
    let e = gram_minus_identity(r);
    match e.as_ref().self_adjoint_eigenvalues(Side::Lower) {
        Ok(ev) => ev.into_iter().fold(T::zero(), |m, x| m.max(x.abs())),
        Err(_) => e.as_ref().norm_l2(),
    }
}

/// Orthogonality error `‖RᵀR − I‖_F` (Frobenius norm) of one block: cheap, and `≥` the spectral one.
pub fn orthogonality_error_frobenius<T: Real>(r: MatRef<'_, T>) -> T {
    gram_minus_identity(r).as_ref().norm_l2()
}

fn gram_minus_identity<T: Real>(r: MatRef<'_, T>) -> Mat<T> {
    let b = r.ncols();
    let mut e = Mat::<T>::from_fn(b, b, |i, j| if i == j { -T::one() } else { T::zero() });
    matmul(e.as_mut(), Accum::Add, r.transpose(), r, T::one(), Par::Seq);
    crate::kernels::isa::clear_upper_simd_state();
    e
}

/// A certified upper bound on the spectral norm `‖Q‖₂` of a skew block.
///
/// `min(‖Q‖_F, ‖Q‖₁, √‖Q²‖₁)`, where `‖·‖₁` is the largest absolute column sum (for skew `Q`,
/// `‖Q‖₂² = ‖QᵀQ‖₂ = ‖Q²‖₂ ≤ ‖Q²‖₁`), inflated by `1 + 4(b+1)u` (`u` the unit roundoff of `T`)
/// so that rounding in its evaluation cannot make it smaller than the true norm. Costs one
/// `b × b` product (none for a Cayley–Neumann rotation's blocks, whose tape holds `Q²`).
///
/// ```
/// use oftq_ortho::{skew_from_packed, skew_norm_bound};
/// let q = skew_from_packed(&[0.5f64], 2).unwrap(); // ‖Q‖₂ = 0.5
/// let bound = skew_norm_bound(q.as_ref());
/// assert!(bound >= 0.5 && bound < 0.5 + 1e-14);
/// ```
pub fn skew_norm_bound<T: Real>(q: MatRef<'_, T>) -> T {
    let b = q.nrows();
    let q2 = zeroed_storage_with(b, b, |s, ld| gemm_acc(T::one(), q, q, s, ld));
    skew_norm_bound_with_square(q, q2.as_ref())
}

/// [`skew_norm_bound`] given `Q²` (the Cayley–Neumann tape holds it as `A`), without the product.
/// The tape's `A` is computed by the same kernel from the same `Q`, so the bits are the same.
pub(crate) fn skew_norm_bound_with_square<T: Real>(q: MatRef<'_, T>, q2: MatRef<'_, T>) -> T {
    let b = q.nrows();
    let col_sum_max = |m: MatRef<'_, T>| {
        (0..m.ncols())
            .map(|j| m.col(j).iter().map(|v| v.abs()).sum::<T>())
            .fold(T::zero(), T::max)
    };
    let fro = q.norm_l2();
    let one = col_sum_max(q);
    let sq = col_sum_max(q2).sqrt();
    let best = fro.min(one).min(sq);
    best * (T::one() + T::c(4.0 * (b as f64 + 1.0)) * T::epsilon())
}

/// What to do when the Cayley–Neumann series is not certified to converge (bound on `‖Q‖₂ ≥ 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DivergencePolicy {
    /// Say nothing.
    Ignore,
    /// Log a warning through the `log` facade (the default).
    #[default]
    Warn,
    /// Return [`OrthoError::NeumannDivergence`].
    Error,
}

/// Checks per-block bounds on `‖Q‖₂` (e.g. from [`skew_norm_bound`]) against 1.
///
/// The truncated series `R_p` converges to the Cayley transform as `p → ∞` iff `‖Q‖₂ < 1`
/// (oft-numerics F5); at or beyond 1 the truncation error is `≥ 1` whatever the number of terms.
/// Returns the index of the first block whose bound is `≥ 1`, if any (after warning under
/// [`DivergencePolicy::Warn`]).
///
/// # Errors
/// [`OrthoError::NeumannDivergence`] under [`DivergencePolicy::Error`] when a bound is `≥ 1`.
pub fn check_neumann_convergence<T: Real>(
    bounds: &[T],
    policy: DivergencePolicy,
) -> Result<Option<usize>> {
    let Some((block, bound)) = bounds.iter().enumerate().find(|(_, b)| !(b.f64() < 1.0)) else {
        return Ok(None);
    };
    let err = OrthoError::NeumannDivergence {
        block,
        bound: bound.f64(),
    };
    match policy {
        DivergencePolicy::Ignore => {}
        DivergencePolicy::Warn => log::warn!("{err}"),
        DivergencePolicy::Error => return Err(err),
    }
    Ok(Some(block))
}

/// Number of Neumann terms `t` (PEFT convention, even `t` = odd highest power `p = t − 1`) that makes
/// the truncation error of [`NeumannFlavor::OddPower`](crate::NeumannFlavor::OddPower) at most `eps`,
/// given a bound `theta ≥ ‖Q‖₂`:
/// the smallest odd `p` with `θ^{2p} ≤ eps` (orthogonality error `‖RᵀR − I‖₂ = θ^{2p}`) and
/// `θᵖ ≤ eps` (distance to the exact Cayley transform `‖R − C‖₂ = θᵖ`), returned as `t = p + 1`.
///
/// # Errors
/// [`OrthoError::NeumannDivergence`] if `theta ≥ 1` (no number of terms suffices);
/// [`OrthoError::InvalidOption`] if `eps` is not in `(0, ∞)` or `theta` is negative or NaN.
pub fn neumann_terms_for(eps: f64, theta: f64) -> Result<usize> {
    if !(eps > 0.0) || !(theta >= 0.0) {
        return Err(OrthoError::InvalidOption(format!(
            "neumann_terms_for needs eps > 0 and theta >= 0, got eps {eps}, theta {theta}"
        )));
    }
    if theta >= 1.0 {
        return Err(OrthoError::NeumannDivergence {
            block: 0,
            bound: theta,
        });
    }
    let mut p = 1usize;
    // θ^p ≤ eps also gives θ^{2p} ≤ eps² ≤ eps for eps ≤ 1; for eps > 1 p = 1 already suffices.
    while theta.powi(i32::try_from(p).unwrap_or(i32::MAX)) > eps {
        p += 2;
        if p > 100_000 {
            return Err(OrthoError::InvalidOption(format!(
                "theta {theta} too close to 1 for eps {eps}"
            )));
        }
    }
    Ok(p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::skew_from_packed;

    #[test]
    fn bound_is_above_spectral_norm() {
        let v: Vec<f64> = (0..28).map(|k| ((k * 7 + 3) as f64).sin() * 0.3).collect();
        let q = skew_from_packed(&v, 8).unwrap();
        let sv = q.as_ref().singular_values().unwrap();
        let s = sv.iter().fold(0.0f64, |m, &x| m.max(x));
        let bound = skew_norm_bound(q.as_ref());
        assert!(bound >= s && bound <= q.as_ref().norm_l2() * (1.0 + 1e-12));
    }

    #[test]
    fn divergence_policy() {
        assert_eq!(
            check_neumann_convergence(&[0.5f64, 0.9], DivergencePolicy::Error).unwrap(),
            None
        );
        assert_eq!(
            check_neumann_convergence(&[0.5f64, 1.0], DivergencePolicy::Ignore).unwrap(),
            Some(1)
        );
        assert!(check_neumann_convergence(&[f64::NAN], DivergencePolicy::Error).is_err());
        assert!(check_neumann_convergence(&[1.5f32], DivergencePolicy::Error).is_err());
    }

    #[test]
    fn terms_for_eps() {
        assert_eq!(neumann_terms_for(1e-6, 0.1).unwrap(), 8); // p = 7: 1e-7 ≤ 1e-6
        assert!(neumann_terms_for(1e-6, 1.0).is_err());
        assert!(neumann_terms_for(0.0, 0.5).is_err());
    }
}
