//! Skew block → rotation block maps: exact Cayley and Cayley–Neumann, forward and backward.

mod exact;
mod neumann;

pub(crate) use exact::cayley_exact_packed_into;
pub use exact::{cayley_exact, cayley_exact_vjp};
#[cfg(test)]
pub(crate) use neumann::neumann_with_tape;
pub(crate) use neumann::{neumann_packed_into, neumann_vjp_transposed, tape_width};
pub use neumann::{neumann_polynomial, neumann_vjp};

use faer::{Mat, MatRef};

use crate::error::Result;
use crate::parameterization::Parameterization;
use crate::real::Real;

/// The rotation block `R(Q)` for a parameterization (exact Cayley or a Neumann polynomial).
///
/// # Errors
/// Those of [`cayley_exact`] for the exact parameterization; too many Neumann terms
/// ([`Parameterization::validate`]).
pub fn rotation_block<T: Real>(
    q: MatRef<'_, T>,
    parameterization: Parameterization,
) -> Result<Mat<T>> {
    match parameterization {
        Parameterization::Exact(conv) => cayley_exact(q, conv),
        Parameterization::Neumann { .. } => {
            let coeffs = parameterization
                .neumann_coefficients()
                .unwrap_or_else(|| vec![1.0]);
            Ok(neumann_polynomial(q, &coeffs))
        }
    }
}
