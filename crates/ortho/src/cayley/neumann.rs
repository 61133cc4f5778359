//! Truncated Cayley–Neumann polynomials `R = Σₖ cₖ Qᵏ` and their vector–Jacobian product.

use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};

use crate::matrix::{zeroed_storage_with, zeroed_with};
use crate::packing::fill_skew;

use crate::real::Real;

/// Evaluates `R = Σ_{k=0}^{p} cₖ Qᵏ` by Horner's rule, `Hₚ = cₚI`, `Hₖ = cₖI + Q·Hₖ₊₁`, `R = H₀`.
///
/// Returns `R` and the tape the backward pass needs: one `b × (p+1)·b` matrix whose column block
/// 0 is `Q` and column block `k ≥ 1` is `Hₖ` (two allocations per block whatever `p`).
/// Costs `p − 1` matrix products (`H_{p−1}` is formed without one).
pub(crate) fn neumann_with_tape<T: Real>(q: MatRef<'_, T>, coeffs: &[f64]) -> (Mat<T>, Mat<T>) {
    let b = q.nrows();
    let mut tape = zeroed_with(b, tape_blocks(coeffs) * b, |mut t| {
        t.rb_mut().subcols_mut(0, b).copy_from(q);
    });
    let r = horner(&mut tape, b, coeffs);
    (r, tape)
}

/// [`neumann_with_tape`] for the skew block of a packed row `v` (see
/// [`skew_from_packed`](crate::skew_from_packed)), written straight into the tape. The caller
/// checked `v`'s length.
pub(crate) fn neumann_packed<T: Real>(v: &[T], b: usize, coeffs: &[f64]) -> (Mat<T>, Mat<T>) {
    let mut tape = zeroed_storage_with(b, tape_blocks(coeffs) * b, |t, ld| {
        fill_skew(v, b, t, ld);
    });
    let r = horner(&mut tape, b, coeffs);
    (r, tape)
}

/// Column blocks of the tape: `Q`, then `H₁ … Hₚ`.
fn tape_blocks(coeffs: &[f64]) -> usize {
    coeffs.len().max(1)
}

/// Horner's rule on a tape whose column block 0 holds `Q` (the other blocks are zero): writes
/// `Hₚ … H₁` into blocks `p … 1` and returns `R = H₀`.
fn horner<T: Real>(tape: &mut Mat<T>, b: usize, coeffs: &[f64]) -> Mat<T> {
    let p = coeffs.len().saturating_sub(1);
    let add_diagonal = |mut m: MatMut<'_, T>, c: f64| {
        let c = T::c(c);
        for i in 0..b {
            m[(i, i)] += c;
        }
    };
    let c_last = coeffs.last().copied().unwrap_or(1.0);
    if p == 0 {
        return zeroed_with(b, b, |m| add_diagonal(m, c_last));
    }
    let cp = T::c(coeffs[p]);
    // `dst ← c_p·Q + c·I` (H_{p−1}, or R when p = 1: no product).
    let scaled_q_plus = |mut dst: MatMut<'_, T>, q: MatRef<'_, T>, c: f64| {
        for j in 0..b {
            for (x, &v) in dst.rb_mut().col_mut(j).iter_mut().zip(q.col(j).iter()) {
                *x = v * cp;
            }
        }
        add_diagonal(dst, c);
    };
    let (q, mut hs) = tape.as_mut().split_at_col_mut(b);
    let q = q.rb();
    add_diagonal(hs.rb_mut().subcols_mut((p - 1) * b, b), c_last);
    if p == 1 {
        return zeroed_with(b, b, |m| scaled_q_plus(m, q, coeffs[0]));
    }
    scaled_q_plus(hs.rb_mut().subcols_mut((p - 2) * b, b), q, coeffs[p - 1]);
    // H_k (block k − 1 of `hs`) = c_k I + Q·H_{k+1}, for k = p−2 … 1, then R = H_0.
    for k in (1..p - 1).rev() {
        let (left, right) = hs.rb_mut().split_at_col_mut(k * b);
        let mut hk = left.subcols_mut((k - 1) * b, b);
        matmul(
            hk.rb_mut(),
            Accum::Replace,
            q,
            right.rb().subcols(0, b),
            T::one(),
            Par::Seq,
        );
        add_diagonal(hk, coeffs[k]);
    }
    zeroed_with(b, b, |mut m| {
        matmul(
            m.rb_mut(),
            Accum::Replace,
            q,
            hs.rb().subcols(0, b),
            T::one(),
            Par::Seq,
        );
        add_diagonal(m, coeffs[0]);
    })
}

/// Cayley–Neumann polynomial `R = Σ_{k=0}^{p} cₖ Qᵏ` of one block (coefficients from
/// [`Parameterization::neumann_coefficients`](crate::Parameterization::neumann_coefficients)).
///
/// ```
/// use oftq_ortho::{neumann_polynomial, skew_from_packed};
/// let q = skew_from_packed(&[0.1f64, -0.2, 0.3, 0.05, -0.15, 0.25], 4).unwrap();
/// let r = neumann_polynomial(q.as_ref(), &[1.0, 2.0, 2.0, 2.0, 1.0]);
/// assert!((r[(0, 0)] - 0.75175).abs() < 1e-12); // PEFT 0.21.2, t = 5
/// ```
pub fn neumann_polynomial<T: Real>(q: MatRef<'_, T>, coeffs: &[f64]) -> Mat<T> {
    neumann_with_tape(q, coeffs).0
}

/// Vector–Jacobian product of [`neumann_polynomial`] at `Q`: returns `∂L/∂Q` for `G = ∂L/∂R`.
///
/// Reverse mode through Horner's rule: with `G₀ = G`, for `k = 0 … p−1`:
/// `∂L/∂Q += Gₖ·Hₖ₊₁ᵀ` and `Gₖ₊₁ = Qᵀ·Gₖ`.
pub fn neumann_vjp<T: Real>(q: MatRef<'_, T>, coeffs: &[f64], g: MatRef<'_, T>) -> Mat<T> {
    let (_, tape) = neumann_with_tape(q, coeffs);
    neumann_vjp_with_tape(tape.as_ref(), g)
}

/// [`neumann_vjp`] from the tape of [`neumann_with_tape`] (column block 0 is `Q`, block `k` is
/// `Hₖ`).
pub(crate) fn neumann_vjp_with_tape<T: Real>(tape: MatRef<'_, T>, g: MatRef<'_, T>) -> Mat<T> {
    let b = tape.nrows();
    let p = tape.ncols().checked_div(b).unwrap_or(1).saturating_sub(1);
    let mut dq = zeroed_with(b, b, |_| {});
    if p == 0 {
        return dq;
    }
    let q = tape.subcols(0, b);
    // G_k and G_{k+1} side by side in one allocation.
    let mut work = zeroed_with(b, 2 * b, |mut m| m.rb_mut().subcols_mut(0, b).copy_from(g));
    for k in 0..p {
        let cur = (k % 2) * b; // G_k's column block; G_{k+1} goes to the other
        let h = tape.subcols((k + 1) * b, b);
        matmul(
            dq.as_mut(),
            Accum::Add,
            work.as_ref().subcols(cur, b),
            h.transpose(),
            T::one(),
            Par::Seq,
        );
        if k + 1 < p {
            let (left, right) = work.as_mut().split_at_col_mut(b);
            let (gk, next) = if cur == 0 {
                (left.rb(), right)
            } else {
                (right.rb(), left)
            };
            matmul(next, Accum::Replace, q.transpose(), gk, T::one(), Par::Seq);
        }
    }
    dq
}
