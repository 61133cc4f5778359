//! Cayley–Neumann polynomials as explicit power sums, their coefficients and VJP.

use nalgebra::DMatrix;

/// Truncation rule of the Cayley–Neumann series (both approximate the textbook `C`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// PEFT ≥ 0.18 with `t` terms (peft-oft §3.4): `t ≤ 1 → I`, `t = 2 → I + 2Q`,
    /// `t = 3` as `t = 4`, else `I + 2Σ_{k=1}^{t−2} Qᵏ + Q^{t−1}`.
    Peft,
    /// Highest power `p = t − 1` rounded up to odd, `R_p = I + 2Σ_{k=1}^{p−1} Qᵏ + Qᵖ`; `t ≤ 1 → I`.
    OddPower,
}

/// Coefficients `c₀ … c_p` of `R = Σ cₖ Qᵏ`, written from the rules in [`Flavor`].
pub fn neumann_coefficients(terms: usize, flavor: Flavor) -> Vec<f64> {
    if terms <= 1 {
        return vec![1.0];
    }
    let p = match flavor {
        Flavor::Peft if terms == 2 => return vec![1.0, 2.0],
        Flavor::Peft => terms.max(4) - 1,
        Flavor::OddPower => {
            let p = terms - 1;
            if p.is_multiple_of(2) { p + 1 } else { p }
        }
    };
    (0..=p)
        .map(|k| if k == 0 || k == p { 1.0 } else { 2.0 })
        .collect()
}

/// `R = Σₖ cₖ Qᵏ` by accumulating explicit powers `Qᵏ = Qᵏ⁻¹·Q` (no Horner).
pub fn neumann_polynomial(q: &DMatrix<f64>, coeffs: &[f64]) -> DMatrix<f64> {
    let b = q.nrows();
    let mut power = DMatrix::<f64>::identity(b, b);
    let mut out = DMatrix::<f64>::zeros(b, b);
    for (k, &c) in coeffs.iter().enumerate() {
        if k > 0 {
            power = &power * q;
        }
        out += &power * c;
    }
    out
}

/// VJP of [`neumann_polynomial`] for any square `Q`: from `d(Qᵏ) = Σ_{i=0}^{k−1} Qⁱ dQ Q^{k−1−i}`,
/// `∂L/∂Q = Σₖ cₖ Σ_{i=0}^{k−1} (Qⁱ)ᵀ G (Q^{k−1−i})ᵀ`.
pub fn neumann_vjp(q: &DMatrix<f64>, coeffs: &[f64], g: &DMatrix<f64>) -> DMatrix<f64> {
    let b = q.nrows();
    let mut powers_t = vec![DMatrix::<f64>::identity(b, b)];
    for k in 1..coeffs.len() {
        let next = &powers_t[k - 1] * q.transpose();
        powers_t.push(next);
    }
    let mut out = DMatrix::<f64>::zeros(b, b);
    for (k, &c) in coeffs.iter().enumerate().skip(1) {
        for i in 0..k {
            out += &powers_t[i] * g * &powers_t[k - 1 - i] * c;
        }
    }
    out
}
