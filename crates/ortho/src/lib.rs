#![doc = include_str!("../README.md")]

mod apply;
pub mod block_stack;
pub mod cayley;
pub mod coft;
pub mod diagnostics;
pub mod error;
mod kernels;
mod matrix;
pub mod packing;
pub mod parameterization;
pub mod real;
pub mod rotation;
pub mod spec;
#[cfg(test)]
mod timing_probe;

pub use block_stack::{BlockStack, Blocks};
pub use cayley::{cayley_exact, cayley_exact_vjp, neumann_polynomial, neumann_vjp, rotation_block};
pub use coft::{CoftRadius, project_coft};
pub use diagnostics::{
    DivergencePolicy, check_neumann_convergence, neumann_terms_for, orthogonality_error,
    orthogonality_error_frobenius, skew_norm_bound,
};
pub use error::{OrthoError, Result};
pub use packing::{
    block_size_from_n_elements, n_elements, pack_blocks, packed_from_skew, packed_index,
    skew_blocks, skew_from_packed,
};
pub use parameterization::{CayleyConvention, MAX_NEUMANN_TERMS, NeumannFlavor, Parameterization};
pub use real::Real;
pub use rotation::{BlockRotation, RotationGrad};
pub use spec::{RotationSpec, RotationSpecBuilder};

/// The linear-algebra crate of every matrix in this API (`faer::Mat`, `MatRef`, …), re-exported so
/// that a user pins one version: the one this crate was built with.
pub use faer;
/// The numeric-traits crate of [`Real`]'s bounds (`num_traits::Float`), re-exported for the same
/// reason (generic code over `T: Real` calls its methods).
pub use num_traits;
