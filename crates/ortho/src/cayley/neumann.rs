//! Truncated Cayley–Neumann polynomials `R = Σₖ cₖ Qᵏ` and their vector–Jacobian product.

use faer::{Mat, MatRef};

use crate::kernels::block_gemm::gemm_acc;
use crate::matrix::zeroed_storage_with;
use crate::packing::fill_skew;

use crate::real::Real;

/// Evaluates `R = Σ_{k=0}^{p} cₖ Qᵏ` by Horner's rule, `Hₚ = cₚI`, `Hₖ = cₖI + Q·Hₖ₊₁`, `R = H₀`.
///
/// Returns `R` and the tape the backward pass needs: one `b × (p+1)·b` matrix whose column block
/// 0 is `Q` and column block `k ≥ 1` is `Hₖ`. Costs `p − 1` matrix products (`H_{p−1}` is formed
/// without one).
pub(crate) fn neumann_with_tape<T: Real>(q: MatRef<'_, T>, coeffs: &[f64]) -> (Mat<T>, Mat<T>) {
    let b = q.nrows();
    let width = tape_width(b, coeffs);
    let mut tape = None;
    let r = zeroed_storage_with(b, b, |r, ldr| {
        tape = Some(zeroed_storage_with(b, width, |t, ld| {
            for j in 0..b {
                for (x, &v) in t[j * ld..j * ld + b].iter_mut().zip(q.col(j).iter()) {
                    *x = v;
                }
            }
            horner(t, ld, b, coeffs, r, ldr);
        }));
    });
    (r, tape.unwrap_or_else(|| Mat::zeros(b, width)))
}

/// [`neumann_with_tape`] for the skew block of a packed row `v` (see
/// [`skew_from_packed`](crate::skew_from_packed)), into caller storage: the zeroed tape `t`
/// (`b ×` [`tape_width`], column stride `ldt`), whose block 0 `Q` is written straight from `v`,
/// and the zeroed `R` (`b × b`, column stride `ldr`). The caller checked `v`'s length.
pub(crate) fn neumann_packed_into<T: Real>(
    v: &[T],
    b: usize,
    coeffs: &[f64],
    t: &mut [T],
    ldt: usize,
    r: &mut [T],
    ldr: usize,
) {
    fill_skew(v, b, t, ldt);
    horner(t, ldt, b, coeffs, r, ldr);
}

/// Columns of the tape of a `b × b` block: `Q`, then `H₁ … Hₚ`.
pub(crate) fn tape_width(b: usize, coeffs: &[f64]) -> usize {
    coeffs.len().max(1) * b
}

/// The `b × b` matrix at the start of `s`, column-major with column stride `ld`.
fn block<T: Real>(s: &[T], b: usize, ld: usize) -> MatRef<'_, T> {
    let len = if b == 0 { 0 } else { (b - 1) * ld + b };
    MatRef::from_column_major_slice_with_stride(&s[..len], b, b, ld)
}

/// `m[i + i·ld] += c` for `i < b`.
fn add_diagonal<T: Real>(m: &mut [T], b: usize, ld: usize, c: f64) {
    let c = T::c(c);
    for i in 0..b {
        m[i + i * ld] += c;
    }
}

/// Horner's rule on the zeroed column-major storage `t` (column stride `ld`) of a tape whose
/// column block 0 holds `Q`: writes `Hₚ … H₁` into blocks `p … 1` and `R = H₀` into the zeroed
/// `r` (column stride `ldr`).
fn horner<T: Real>(t: &mut [T], ld: usize, b: usize, coeffs: &[f64], r: &mut [T], ldr: usize) {
    let p = coeffs.len().saturating_sub(1);
    let w = b * ld; // one column block of the storage
    let c_last = coeffs.last().copied().unwrap_or(1.0);
    if p == 0 || b == 0 {
        add_diagonal(r, b, ldr, c_last);
        return;
    }
    let cp = T::c(coeffs[p]);
    add_diagonal(&mut t[p * w..], b, ld, c_last);
    // `dst ← c_p·Q + c·I` (H_{p−1}, or R when p = 1: no product).
    let scaled_q_plus = |dst: &mut [T], ldd: usize, q: &[T], c: f64| {
        for j in 0..b {
            for (x, &v) in dst[j * ldd..j * ldd + b]
                .iter_mut()
                .zip(&q[j * ld..j * ld + b])
            {
                *x = v * cp;
            }
        }
        add_diagonal(dst, b, ldd, c);
    };
    if p == 1 {
        scaled_q_plus(r, ldr, t, coeffs[0]);
        return;
    }
    let (q, hs) = t.split_at_mut(w);
    scaled_q_plus(&mut hs[(p - 2) * w..], ld, q, coeffs[p - 1]);
    let q = block(q, b, ld);
    // H_k (block k − 1 of `hs`) = c_k I + Q·H_{k+1}, for k = p−2 … 1, then R = H_0.
    for k in (1..p - 1).rev() {
        let (left, right) = hs.split_at_mut(k * w);
        let hk = &mut left[(k - 1) * w..];
        add_diagonal(hk, b, ld, coeffs[k]);
        gemm_acc(T::one(), q, block(right, b, ld), hk, ld);
    }
    add_diagonal(r, b, ldr, coeffs[0]);
    gemm_acc(T::one(), q, block(hs, b, ld), r, ldr);
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
    neumann_vjp_transposed(tape.as_ref(), g)
        .transpose()
        .to_owned()
}

/// The transpose `(∂L/∂Q)ᵀ` of [`neumann_vjp`], from the tape of [`neumann_with_tape`] (column
/// block 0 is `Q`, block `k` is `Hₖ`).
///
/// Runs the recursion transposed, `Fₖ = Gₖᵀ`: `F₀ = Gᵀ`, `Fₖ₊₁ = Fₖ·Q` and
/// `(∂L/∂Q)ᵀ = Σₖ Hₖ₊₁·Fₖ`. Every entry is the same chain of products in the same order as in
/// the untransposed recursion (bit for bit), but the left factors `Fₖ` and `Hₖ₊₁` are
/// column-major, so the product kernel packs them with plain copies; `Qᵀ` as a left factor
/// would be a strided gather per product (about half the cost of a `32 × 32` product).
///
/// The last term needs no product: `Hₚ = cₚI` (Horner's start), so `Hₚ·Fₚ₋₁ = cₚFₚ₋₁`, added
/// entrywise with the same two roundings as the product kernel's (`cₚ·f`, then the sum). That
/// leaves `2p − 2` products of `b × b` matrices instead of `2p − 1`.
pub(crate) fn neumann_vjp_transposed<T: Real>(tape: MatRef<'_, T>, g: MatRef<'_, T>) -> Mat<T> {
    let b = tape.nrows();
    let p = tape.ncols().checked_div(b).unwrap_or(1).saturating_sub(1);
    let q = tape.subcols(0, b);
    // F_1 … F_{p−1} (F_0 = Gᵀ), each b × b with column stride b, zero until written.
    let mut work = vec![T::zero(); p.saturating_sub(1) * b * b];
    zeroed_storage_with(b, b, |dqt, ld| {
        for k in 0..p {
            let (done, next) = work.split_at_mut(k * b * b);
            let fk = if k == 0 {
                g.transpose()
            } else {
                block(&done[(k - 1) * b * b..], b, b)
            };
            if k + 1 < p {
                gemm_acc(T::one(), tape.subcols((k + 1) * b, b), fk, dqt, ld);
                gemm_acc(T::one(), fk, q, next, b);
            } else {
                // H_p = c_p·I: its diagonal is c_p (b ≥ 1 here, as the loop runs).
                let cp = tape[(0, p * b)];
                for j in 0..b {
                    for (d, &f) in dqt[j * ld..j * ld + b].iter_mut().zip(fk.col(j).iter()) {
                        *d += cp * f;
                    }
                }
            }
        }
    })
}
