//! The reference's own parameterization enum (independent of `oftq-ortho`'s).

use nalgebra::DMatrix;

use super::cayley::{Convention, cayley_exact, cayley_exact_vjp};
use super::neumann::{Flavor, neumann_coefficients, neumann_polynomial, neumann_vjp};

/// How a skew block becomes a rotation block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// Exact Cayley transform with a sign convention.
    Exact(Convention),
    /// Truncated Cayley–Neumann series with `terms` terms.
    Neumann {
        /// Number of terms `t` (PEFT's `num_cayley_neumann_terms`).
        terms: usize,
        /// Truncation rule.
        flavor: Flavor,
    },
}

/// `R(Q)` for a parameterization; `None` if an exact solve fails.
pub fn rotation_block(q: &DMatrix<f64>, param: Param) -> Option<DMatrix<f64>> {
    match param {
        Param::Exact(c) => cayley_exact(q, c),
        Param::Neumann { terms, flavor } => {
            Some(neumann_polynomial(q, &neumann_coefficients(terms, flavor)))
        }
    }
}

/// `∂L/∂Q` for `G = ∂L/∂R(Q)`; `None` if an exact solve fails.
pub fn rotation_block_vjp(
    q: &DMatrix<f64>,
    param: Param,
    g: &DMatrix<f64>,
) -> Option<DMatrix<f64>> {
    match param {
        Param::Exact(c) => cayley_exact_vjp(q, c, g),
        Param::Neumann { terms, flavor } => {
            Some(neumann_vjp(q, &neumann_coefficients(terms, flavor), g))
        }
    }
}
