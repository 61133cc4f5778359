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

use std::mem::MaybeUninit;

use faer::{Mat, MatRef};

use crate::kernels::block_gemm::{gemm_acc, gemm_uninit};
use crate::kernels::transpose::transpose_into;
use crate::matrix::{as_uninit_mut, assume_init_mut, zero_padding, zeroed_storage_with};
use crate::packing::fill_skew_uninit;

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
            let (q, rest) = t.split_at_mut(b * ld);
            // SAFETY: `paterson_stockmeyer` writes initialised values only.
            let (rest, r) = unsafe { (as_uninit_mut(rest), as_uninit_mut(r)) };
            paterson_stockmeyer(q, rest, ld, b, coeffs, r, ldr);
        }));
    });
    (r, tape.unwrap_or_else(|| Mat::zeros(b, width)))
}

/// [`neumann_with_tape`] for the skew block of a packed row `v` (see
/// [`skew_from_packed`](crate::skew_from_packed)), into caller storage that need not be
/// initialised: the tape `t` (`b ×` [`tape_width`], column stride `ldt`), whose block 0 `Q` is
/// written straight from `v`, and `R` (`b × b`, column stride `ldr`). On return both are
/// initialised, padding rows included (zeros), so the caller may take them as `[T]`. Every
/// entry is written once, never zero-filled first: building `R` for 128 blocks of 32 (5 terms)
/// went from 305–343 to 264–283 µs on one thread and from 220–286 to 166–219 µs on two
/// (alternating runs) when the zero-filled tapes (a 2 MiB `memset` per build, then adds onto the
/// zeros) gave way to this. The caller checked `v`'s length.
///
/// # Panics
/// If `t` is shorter than one `b × b` block of stride `ldt` (the whole tape is written).
pub(crate) fn neumann_packed_into<T: Real>(
    v: &[T],
    b: usize,
    coeffs: &[f64],
    t: &mut [MaybeUninit<T>],
    ldt: usize,
    r: &mut [MaybeUninit<T>],
    ldr: usize,
) {
    zero_padding(t, b, ldt);
    zero_padding(r, b, ldr);
    let (q, rest) = t.split_at_mut(b * ldt);
    fill_skew_uninit(v, b, q, ldt);
    // SAFETY: `fill_skew_uninit` wrote the `b × b` entries, `zero_padding` the rest.
    let q = unsafe { assume_init_mut(q) };
    paterson_stockmeyer(q, rest, ldt, b, coeffs, r, ldr);
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

/// Writes `Bⱼ = c₂ⱼI + c₂ⱼ₊₁Q`, plus `s·A` when `plus` is `Some((A, s))`, into the `b × b` block
/// at the start of `dst` (column stride `ldd`; `Q` and `A` column stride `ld`), each entry once:
/// `((0 + c₂ⱼ₊₁·q) + c₂ⱼ·δ) + s·a`, where a term with a zero factor (`c₂ⱼ₊₁`, `s`) is left out
/// and `δ` is 1 on the diagonal only. The leading `0 +` turns the `−0` of `c·(−0)` into `+0`
/// (`Q`'s lower triangle is `−v`, so zero parameters give `−0` there), so that zero parameters
/// give the identity bit for bit.
#[inline(always)]
fn write_linear<T: Real>(
    dst: &mut [MaybeUninit<T>],
    ldd: usize,
    q: &[T],
    ld: usize,
    b: usize,
    (c_i, c_q): (T, T),
    plus: Option<(&[T], T)>,
) {
    let s = plus.map_or(T::zero(), |(_, s)| s);
    // One expression per entry: the whole column as off the diagonal, then its diagonal entry
    // stored over it from the inputs. (Adding `c₂ⱼ` to the stored entry instead would read it
    // back right after the vector stores and stall on store forwarding.)
    let entry = |q: T, a: T, diagonal: bool| {
        let mut x = if c_q == T::zero() {
            T::zero()
        } else {
            T::zero() + c_q * q
        };
        if diagonal {
            x += c_i;
        }
        if s == T::zero() { x } else { x + s * a }
    };
    for j in 0..b {
        let qj = &q[j * ld..j * ld + b];
        let aj = plus.map_or(qj, |(a, _)| &a[j * ld..j * ld + b]);
        let col = &mut dst[j * ldd..j * ldd + b];
        for ((x, &q), &a) in col.iter_mut().zip(qj).zip(aj) {
            *x = MaybeUninit::new(entry(q, a, false));
        }
        col[j] = MaybeUninit::new(entry(qj[j], aj[j], true));
    }
}

/// Paterson–Stockmeyer (module notes) for the initialised `Q` (`b × b` at the start of `q`,
/// column stride `ld`): writes `A` and `K₁ … Kₘ` into the blocks of `rest` (the tape after `Q`,
/// same stride) and `R = K₀` into `r` (column stride `ldr`), all of which need not be
/// initialised: each block is written before it is read. Padding rows are not written.
#[inline(always)]
fn paterson_stockmeyer<T: Real>(
    q: &[T],
    rest: &mut [MaybeUninit<T>],
    ld: usize,
    b: usize,
    coeffs: &[f64],
    r: &mut [MaybeUninit<T>],
    ldr: usize,
) {
    let p = coeffs.len().saturating_sub(1);
    let w = b * ld; // one column block of the storage
    let c = |k: usize| T::c(coeff(coeffs, k));
    let cs = |j: usize| (c(2 * j), c(2 * j + 1));
    if p < 2 || b == 0 {
        write_linear(r, ldr, q, ld, b, cs(0), None);
        return;
    }
    let m = p / 2;
    let even = p.is_multiple_of(2);
    let (a, ks) = rest.split_at_mut(w);
    let qm = block(q, b, ld);
    gemm_uninit(T::one(), qm, qm, a, ld);
    // SAFETY: `gemm_uninit` wrote the `b × b` entries of `A`; `w = b·ld` with `ld = b` or, for
    // padded storage, padding rows written by the caller (`neumann_packed_into` zeroes them,
    // `neumann_with_tape` passes zeroed storage).
    let a = unsafe { assume_init_mut(a) };
    if !even {
        write_linear(&mut ks[(m - 1) * w..], ld, q, ld, b, cs(m), None);
    }
    // Kⱼ (block j − 1 of `ks`) = Bⱼ + A·Kⱼ₊₁ for j = m−1 … 1, then R = K₀ = B₀ + A·K₁.
    for j in (0..m).rev() {
        let (left, right) = ks.split_at_mut(j * w);
        let (dst, ldd) = if j == 0 {
            (&mut *r, ldr)
        } else {
            (&mut left[(j - 1) * w..], ld)
        };
        if j + 1 == m && even {
            // A·Kₘ with Kₘ = c_p·I.
            write_linear(dst, ldd, q, ld, b, cs(j), Some((a, c(p))));
            continue;
        }
        write_linear(dst, ldd, q, ld, b, cs(j), None);
        let len = (b - 1) * ldd + b;
        // SAFETY: `write_linear` wrote the `b × b` entries of `Bⱼ`, the first `len` elements of
        // `dst` but its padding rows, which the caller initialised as for `A`; block `j` of
        // `ks`, `Kⱼ₊₁`, was written in an earlier step (or before the loop, when `p` is odd).
        let (dst, kj1) = unsafe {
            (
                assume_init_mut(&mut dst[..len]),
                assume_init_mut(&mut right[..w]),
            )
        };
        gemm_acc(T::one(), block(a, b, ld), block(kj1, b, ld), dst, ldd);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::{n_elements, skew_from_slice};

    /// Writing into storage full of garbage (NaN), with padded strides, gives the bits of the
    /// evaluation on zeroed storage from the dense `Q`, and zero padding.
    #[test]
    fn packed_into_uninitialised_storage_matches_the_dense_evaluation() {
        for b in [1usize, 2, 5, 16, 17, 32, 33] {
            let v: Vec<f32> = (0..n_elements(b))
                .map(|k| ((k as f32 * 0.61).sin() - 0.2) * 0.05)
                .collect();
            let q = skew_from_slice(&v, b);
            for terms in 1..=7 {
                let coeffs: Vec<f64> = (0..terms).map(|k| 1.0 + k as f64 * 0.5).collect();
                let (r_want, t_want) = neumann_with_tape(q.as_ref(), &coeffs);
                let width = tape_width(b, &coeffs);
                let (ldt, ldr) = (b + 3, b + 2);
                let nan = MaybeUninit::new(f32::NAN);
                let mut t = vec![nan; ldt * width];
                let mut r = vec![nan; ldr * b];
                neumann_packed_into(&v, b, &coeffs, &mut t, ldt, &mut r, ldr);
                for (got, ld, want) in [(&t, ldt, t_want.as_ref()), (&r, ldr, r_want.as_ref())] {
                    for (k, x) in got.iter().enumerate() {
                        // SAFETY: every element was initialised (NaN, or by the evaluation).
                        let x = unsafe { x.assume_init() };
                        let (i, j) = (k % ld, k / ld);
                        let w = if i < b { want[(i, j)] } else { 0.0 };
                        assert_eq!(x.to_bits(), w.to_bits(), "b {b}, {terms} terms, ({i}, {j})");
                    }
                }
            }
        }
    }
}
