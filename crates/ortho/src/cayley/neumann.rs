//! Truncated Cayley–Neumann polynomials `R = Σₖ cₖ Qᵏ` and their vector–Jacobian product.
//!
//! **Evaluation (Paterson–Stockmeyer in `A = Q²`).** With `Bⱼ = c₂ⱼI + c₂ⱼ₊₁Q` (coefficients
//! past `p` are 0) and `m = ⌊p/2⌋`: `Kₘ = Bₘ`, `Kⱼ = Bⱼ + A·Kⱼ₊₁` for `j = m−1 … 0`, `R = K₀`.
//! That is one product for `A` and one per step, except the first step when `p` is even
//! (`Kₘ = c_p I`, so `A·Kₘ = c_p·A`): `⌈p/2⌉` products of `b × b` matrices for `p ≥ 2`, against
//! Horner's `p − 1` (2 against 3 for PEFT's default of 5 terms, `p = 4`).
//!
//! **Tape.** One `b ×` [`tape_width`] matrix per block: column block 0 is `Q`; for `p ≥ 2`,
//! block 1 is `A` and block `1 + j` is `Kⱼ` for `j = 1 … m` (`… m − 1` when `p` is even:
//! `Kₘ = c_p·I` is not stored).

use faer::{Mat, MatRef};

use crate::kernels::block_gemm::gemm_acc;
use crate::kernels::transpose::transpose_into;
use crate::matrix::zeroed_storage_with;
use crate::packing::fill_skew;

use crate::real::Real;

/// Evaluates `R = Σ_{k=0}^{p} cₖ Qᵏ` (see the module notes) and returns `R` and its tape.
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
            paterson_stockmeyer(t, ld, b, coeffs, r, ldr);
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
    paterson_stockmeyer(t, ldt, b, coeffs, r, ldr);
}

/// Columns of the tape of a `b × b` block: `Q`, then for `p ≥ 2` `A = Q²` and the stored `Kⱼ`.
pub(crate) fn tape_width(b: usize, coeffs: &[f64]) -> usize {
    let p = coeffs.len().saturating_sub(1);
    if p < 2 { b } else { (2 + stored_ks(p)) * b }
}

/// How many of `K₁ … Kₘ` the tape holds (`p ≥ 2`): all but `Kₘ = c_p·I` when `p` is even.
fn stored_ks(p: usize) -> usize {
    p / 2 - usize::from(p.is_multiple_of(2))
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

/// `dst ← dst + s·F` for the `b × b` matrix `F` (`dst` column-major, column stride `ld`); nothing
/// when `s = 0`.
fn add_scaled<T: Real>(dst: &mut [T], ld: usize, f: MatRef<'_, T>, s: T) {
    if s == T::zero() {
        return;
    }
    for j in 0..f.ncols() {
        for (d, &x) in dst[j * ld..j * ld + f.nrows()]
            .iter_mut()
            .zip(f.col(j).iter())
        {
            *d += s * x;
        }
    }
}

/// The coefficient `cₖ` (0 past the last one).
fn coeff(coeffs: &[f64], k: usize) -> f64 {
    coeffs.get(k).copied().unwrap_or(0.0)
}

/// Paterson–Stockmeyer (module notes) on the zeroed column-major storage `t` (column stride
/// `ld`) of a tape whose column block 0 holds `Q`: writes `A` and `K₁ … Kₘ` into the blocks after
/// it and `R = K₀` into the zeroed `r` (column stride `ldr`).
fn paterson_stockmeyer<T: Real>(
    t: &mut [T],
    ld: usize,
    b: usize,
    coeffs: &[f64],
    r: &mut [T],
    ldr: usize,
) {
    let p = coeffs.len().saturating_sub(1);
    let w = b * ld; // one column block of the storage
    // `dst ← Bⱼ = c₂ⱼI + c₂ⱼ₊₁Q` on zeroed storage.
    let linear = |dst: &mut [T], ldd: usize, q: &[T], j: usize| {
        add_scaled(dst, ldd, block(q, b, ld), T::c(coeff(coeffs, 2 * j + 1)));
        add_diagonal(dst, b, ldd, coeff(coeffs, 2 * j));
    };
    if p < 2 || b == 0 {
        linear(r, ldr, t, 0);
        return;
    }
    let m = p / 2;
    let even = p.is_multiple_of(2);
    let (q, rest) = t.split_at_mut(w);
    let (a, ks) = rest.split_at_mut(w);
    let qm = block(q, b, ld);
    gemm_acc(T::one(), qm, qm, a, ld);
    let a = block(a, b, ld);
    if !even {
        linear(&mut ks[(m - 1) * w..], ld, q, m);
    }
    // Kⱼ (block j − 1 of `ks`) = Bⱼ + A·Kⱼ₊₁ for j = m−1 … 1, then R = K₀ = B₀ + A·K₁.
    for j in (0..m).rev() {
        let (left, right) = ks.split_at_mut(j * w);
        let (dst, ldd) = if j == 0 {
            (&mut *r, ldr)
        } else {
            (&mut left[(j - 1) * w..], ld)
        };
        linear(dst, ldd, q, j);
        if j + 1 == m && even {
            // A·Kₘ with Kₘ = c_p·I.
            add_scaled(dst, ldd, a, T::c(coeffs[p]));
        } else {
            gemm_acc(T::one(), a, block(right, b, ld), dst, ldd);
        }
    }
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
/// Reverse mode through the module's evaluation: with `G₀ = G` and `Gⱼ₊₁ = Aᵀ·Gⱼ`,
/// `∂L/∂A = Σ_{j<m} Gⱼ·Kⱼ₊₁ᵀ` and `∂L/∂Q = Σ_{j≤m} c₂ⱼ₊₁Gⱼ + ∂L/∂A·Qᵀ + Qᵀ·∂L/∂A`.
pub fn neumann_vjp<T: Real>(q: MatRef<'_, T>, coeffs: &[f64], g: MatRef<'_, T>) -> Mat<T> {
    let (_, tape) = neumann_with_tape(q, coeffs);
    neumann_vjp_transposed(tape.as_ref(), coeffs, g)
        .transpose()
        .to_owned()
}

/// The transpose `(∂L/∂Q)ᵀ` of [`neumann_vjp`], from the tape of [`neumann_with_tape`] built
/// with the same `coeffs`.
///
/// Runs the recursion transposed, `Fⱼ = Gⱼᵀ`: `F₀ = Gᵀ`, `Fⱼ₊₁ = Fⱼ·A`,
/// `D = (∂L/∂A)ᵀ = Σ_{j<m} Kⱼ₊₁·Fⱼ` and `(∂L/∂Q)ᵀ = Σ_{j≤m} c₂ⱼ₊₁Fⱼ + Q·D + D·Q`, so that the left
/// factors (`Kⱼ₊₁`, `Fⱼ` for `j ≥ 1`, `Q`, `D`) are column-major and the product kernel packs them
/// with plain copies. When `p` is even, `Kₘ = c_p·I` makes the last term of `D` a scaled `Fₘ₋₁`
/// and `Fₘ` is not needed: `p` products for an even `p ≥ 2`, `p + 1` for an odd one, against
/// Horner's `2p − 2` (4 against 6 for `p = 4`).
pub(crate) fn neumann_vjp_transposed<T: Real>(
    tape: MatRef<'_, T>,
    coeffs: &[f64],
    g: MatRef<'_, T>,
) -> Mat<T> {
    let b = tape.nrows();
    let p = coeffs.len().saturating_sub(1);
    let c = |k: usize| T::c(coeff(coeffs, k));
    zeroed_storage_with(b, b, |dqt, ld| {
        // Fⱼ, Fⱼ₊₁ and D, column stride b, in one allocation; F₀ = Gᵀ materialised, so that every
        // product below reads its left factor in place (a transposed view would be gathered).
        let bb = b * b;
        let mut scratch = vec![T::zero(); 3 * bb];
        let (mut f, rest) = scratch.split_at_mut(bb);
        let (mut f_next, d) = rest.split_at_mut(bb);
        transpose_into(g, f, b);
        add_scaled(dqt, ld, block(f, b, b), c(1));
        if p < 2 || b == 0 {
            return;
        }
        let m = p / 2;
        let even = p.is_multiple_of(2);
        let (q, a) = (tape.subcols(0, b), tape.subcols(b, b));
        for j in 0..m {
            let fj = block(f, b, b);
            if j + 1 == m && even {
                add_scaled(d, b, fj, c(p));
            } else {
                gemm_acc(T::one(), tape.subcols((j + 2) * b, b), fj, d, b);
            }
            if j + 1 < m || !even {
                f_next.fill(T::zero());
                gemm_acc(T::one(), fj, a, f_next, b);
                add_scaled(dqt, ld, block(f_next, b, b), c(2 * j + 3));
                std::mem::swap(&mut f, &mut f_next);
            }
        }
        let d = block(d, b, b);
        gemm_acc(T::one(), q, d, dqt, ld);
        gemm_acc(T::one(), d, q, dqt, ld);
    })
}
