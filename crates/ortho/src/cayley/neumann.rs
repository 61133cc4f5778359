//! Truncated Cayley–Neumann polynomials `R = Σₖ cₖ Qᵏ` and their vector–Jacobian product.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};

use crate::matrix::zeroed_with;

use crate::real::Real;

/// Evaluates `R = Σ_{k=0}^{p} cₖ Qᵏ` by Horner's rule, `Hₚ = cₚI`, `Hₖ = cₖI + Q·Hₖ₊₁`, `R = H₀`.
///
/// Returns `R` and the Horner intermediates `H₁ … Hₚ` the backward pass needs.
/// Costs `p − 1` matrix products (`H_{p−1}` is formed without one).
pub(crate) fn neumann_with_tape<T: Real>(
    q: MatRef<'_, T>,
    coeffs: &[f64],
) -> (Mat<T>, Vec<Mat<T>>) {
    let b = q.nrows();
    let p = coeffs.len().saturating_sub(1);
    let add_diagonal = |mut m: MatMut<'_, T>, c: f64| {
        let c = T::c(c);
        for i in 0..b {
            m[(i, i)] += c;
        }
    };
    let h = zeroed_with(b, b, |m| {
        add_diagonal(m, coeffs.last().copied().unwrap_or(1.0))
    });
    if p == 0 {
        return (h, Vec::new());
    }
    let mut tape: Vec<Mat<T>> = Vec::with_capacity(p);
    // H_{p−1} = c_{p−1}I + Q·(c_p I) = c_{p−1}I + c_p Q, without a product.
    let cp = T::c(coeffs[p]);
    let mut h = {
        let next = zeroed_with(b, b, |mut m| {
            m.copy_from(q);
            for j in 0..b {
                for x in m.as_mut().col_mut(j).iter_mut() {
                    *x *= cp;
                }
            }
            add_diagonal(m, coeffs[p - 1]);
        });
        tape.push(h);
        next
    };
    for k in (0..p - 1).rev() {
        // H_k = c_k I + Q·H_{k+1}: one product, then the diagonal.
        let next = zeroed_with(b, b, |mut m| {
            matmul(
                m.as_mut(),
                Accum::Replace,
                q,
                h.as_ref(),
                T::one(),
                Par::Seq,
            );
            add_diagonal(m, coeffs[k]);
        });
        tape.push(h);
        h = next;
    }
    tape.reverse(); // tape[k] = H_{k+1}
    (h, tape)
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
    neumann_vjp_with_tape(q, &tape, g)
}

pub(crate) fn neumann_vjp_with_tape<T: Real>(
    q: MatRef<'_, T>,
    tape: &[Mat<T>],
    g: MatRef<'_, T>,
) -> Mat<T> {
    let b = q.nrows();
    let mut dq = zeroed_with(b, b, |_| {});
    if tape.is_empty() {
        return dq;
    }
    let mut gk = zeroed_with(b, b, |mut m| m.copy_from(g));
    let mut next = zeroed_with(b, b, |_| {});
    for (k, h) in tape.iter().enumerate() {
        matmul(
            dq.as_mut(),
            Accum::Add,
            gk.as_ref(),
            h.transpose(),
            T::one(),
            Par::Seq,
        );
        if k + 1 < tape.len() {
            matmul(
                next.as_mut(),
                Accum::Replace,
                q.transpose(),
                gk.as_ref(),
                T::one(),
                Par::Seq,
            );
            std::mem::swap(&mut gk, &mut next);
        }
    }
    dq
}
