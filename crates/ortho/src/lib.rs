//! Orthogonal parameterizations for orthogonal fine-tuning (OFT), matched to Hugging Face PEFT.
//!
//! OFT adapts a frozen linear layer by rotating its *input*: `y = base(x · R_bd)` with
//! `R_bd = diag(R₁, …, R_r)` block-diagonal and (nearly) orthogonal. Each block `R_i` is a function
//! of a skew-symmetric `Q_i = U_i − U_iᵀ` whose strict upper triangle is the trainable vector
//! (PEFT's `oft_R.weight`, shape `[r, b(b−1)/2]`, `torch.triu_indices` order).
//!
//! This crate provides, generic over `f32`/`f64`:
//! - skew packing ([`skew_from_packed`], [`packed_from_skew`], [`n_elements`]);
//! - the exact Cayley transform, PEFT's `R = (I − Q)(I + Q)⁻¹` or the textbook `(I + Q)(I − Q)⁻¹`
//!   ([`cayley_exact`]), and truncated Cayley–Neumann series with PEFT's term rule or an odd
//!   highest power ([`Parameterization`], [`neumann_polynomial`]);
//! - COFT projections onto norm balls ([`project_coft`], [`CoftRadius`]);
//! - the block-diagonal rotation with block sharing, applied to activations `[tokens, d]`
//!   input-centrically, forward and backward ([`BlockRotation`]);
//! - diagnostics: orthogonality error, certified `‖Q‖₂` bounds, Neumann divergence checks.
//!
//! Conventions: activations are rows, `y_blk = x_blk · R_blk`; a dense weight `W [out, in]` merged
//! with the rotation is `W · R_bdᵀ`. Math and error bounds: `docs/math.md` in the repository.
//!
//! ```
//! use faer::Mat;
//! use oftq_ortho::{BlockRotation, Parameterization, RotationSpec};
//!
//! // 64 input features in blocks of 16, PEFT's default Cayley–Neumann (5 terms).
//! let spec = RotationSpec::new(64, 16, false, Parameterization::default())?;
//! let params = Mat::<f32>::from_fn(4, 120, |i, k| 1e-3 * ((i * 120 + k) as f32).sin());
//! let rot = BlockRotation::build(&spec, params.as_ref())?;
//! let x = Mat::<f32>::from_fn(5, 64, |t, f| (t + f) as f32 / 64.0);
//! let y = rot.forward(x.as_ref())?;                       // y = x · R_bd
//! let g = rot.backward(x.as_ref(), y.as_ref())?;          // gradients for L = ½‖y‖²
//! assert_eq!(g.params.nrows(), 4);
//! assert!(rot.orthogonality_errors().iter().all(|&e| e < 1e-5));
//! # Ok::<(), oftq_ortho::OrthoError>(())
//! ```

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
pub use spec::RotationSpec;
