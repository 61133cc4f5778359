//! The exact Cayley transform by an LU solve, and its vector–Jacobian product from the differential.

use nalgebra::DMatrix;

/// Sign convention of the exact Cayley transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// PEFT's exact branch: `R = (I − Q)(I + Q)⁻¹`.
    Peft,
    /// The OFT paper's `C = (I + Q)(I − Q)⁻¹`.
    Textbook,
}

/// `(I + sQ)⁻¹`-style solve helper: returns `A⁻¹` for `A = I + s·Q` by LU, `None` if singular.
fn inverse_of_i_plus(q: &DMatrix<f64>, s: f64) -> Option<DMatrix<f64>> {
    let b = q.nrows();
    let a = DMatrix::<f64>::identity(b, b) + q * s;
    a.lu().solve(&DMatrix::<f64>::identity(b, b))
}

/// Exact Cayley transform of a skew `Q`:
/// - [`Convention::Textbook`]: `C = (I + Q)(I − Q)⁻¹`, computed as `(I + Q)·X` with `X = (I − Q)⁻¹`
///   from an LU solve;
/// - [`Convention::Peft`]: `R = (I − Q)(I + Q)⁻¹`, computed as `(I − Q)·(I + Q)⁻¹`.
///
/// Returns `None` if the LU solve fails (never for a finite skew `Q`).
pub fn cayley_exact(q: &DMatrix<f64>, convention: Convention) -> Option<DMatrix<f64>> {
    let b = q.nrows();
    let id = DMatrix::<f64>::identity(b, b);
    match convention {
        Convention::Textbook => Some((&id + q) * inverse_of_i_plus(q, -1.0)?),
        Convention::Peft => Some((&id - q) * inverse_of_i_plus(q, 1.0)?),
    }
}

/// Vector–Jacobian product of [`cayley_exact`] at `Q` for `G = ∂L/∂R`, valid for any square `Q`
/// where the inverse exists (not only skew):
/// - textbook: `dC = 2(I − Q)⁻¹ dQ (I − Q)⁻¹`, so `∂L/∂Q = 2 (I − Q)⁻ᵀ G (I − Q)⁻ᵀ`;
/// - PEFT: `dR = −2(I + Q)⁻¹ dQ (I + Q)⁻¹`, so `∂L/∂Q = −2 (I + Q)⁻ᵀ G (I + Q)⁻ᵀ`.
pub fn cayley_exact_vjp(
    q: &DMatrix<f64>,
    convention: Convention,
    g: &DMatrix<f64>,
) -> Option<DMatrix<f64>> {
    let (s, scale) = match convention {
        Convention::Textbook => (-1.0, 2.0),
        Convention::Peft => (1.0, -2.0),
    };
    let inv_t = inverse_of_i_plus(q, s)?.transpose();
    Some(&inv_t * g * &inv_t * scale)
}
