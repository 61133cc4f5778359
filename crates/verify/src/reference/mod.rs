//! An independent reference implementation of the OFT numerics, written with `nalgebra` in `f64`.
//!
//! It shares **no code** with `oftq-ortho`: the skew packing, the exact Cayley transform (via
//! nalgebra's LU), the Cayley–Neumann polynomials (explicit power sums, not Horner), their
//! vector–Jacobian products (from the differential, not reverse mode), COFT, the dense
//! block-diagonal rotation and the closed forms of oft-numerics §7 are all written again from the
//! formulas. The property tests (`tests/properties`) compare `oftq-ortho` against it.
//!
//! Conventions (oft-numerics §0, peft-oft §3):
//! - packed rows are the strict upper triangle in row-major order (`torch.triu_indices`),
//!   `Q[i][j] = v[k]`, `Q[j][i] = −v[k]`;
//! - PEFT's exact map is `R = (I − Q)(I + Q)⁻¹`, the textbook one `C = (I + Q)(I − Q)⁻¹`;
//! - Neumann polynomials approximate the textbook `C`;
//! - activations are rows and `y = x · R_bd`.
//!
//! ```
//! use oftq_verify::reference::{Convention, cayley_exact, skew_from_packed, orthogonality_error};
//! let q = skew_from_packed(&[0.1, -0.2, 0.3], 3).unwrap();
//! let r = cayley_exact(&q, Convention::Peft).unwrap();
//! assert!(orthogonality_error(&r) < 1e-14);
//! ```

mod cayley;
mod closed_form;
mod coft;
mod dense;
mod neumann;
mod norms;
mod param;
mod skew;

pub use cayley::{Convention, cayley_exact, cayley_exact_vjp};
pub use closed_form::{
    exact_eigen_angles, f5_distance, f5_orthogonality_error, polynomial_spectrum_errors,
};
pub use coft::{project_global, project_per_block};
pub use dense::{RefGrad, RefRotation, block_diag};
pub use neumann::{Flavor, neumann_coefficients, neumann_polynomial, neumann_vjp};
pub use norms::{
    co_orthogonality_error, eigen_angle_cosines, orthogonality_error, skew_spectrum, spectral_norm,
};
pub use param::{Param, rotation_block, rotation_block_vjp};
pub use skew::{
    orthogonal_from, packed_from_skew, packed_grad, packed_pairs, skew_from_packed,
    skew_with_angles,
};
