//! The crate's error type.

/// Everything that can go wrong in `oftq-ortho`.
///
/// Messages name the parameter and the problem; no public function panics on user input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OrthoError {
    /// A block size of zero, or a block size that does not divide the feature count.
    #[error("invalid block geometry: {0}")]
    InvalidGeometry(String),
    /// A tensor whose shape does not match what the operation needs.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Which argument.
        what: &'static str,
        /// The expected shape, human readable.
        expected: String,
        /// The shape that was passed.
        got: String,
    },
    /// A packed parameter count that is not `b(b−1)/2` for any block size `b`.
    #[error("{0} packed parameters per block is not b(b-1)/2 for any block size b")]
    NotTriangular(usize),
    /// NaN or ±∞ where finite numbers are required.
    #[error("non-finite value in {what} (block {block})")]
    NonFinite {
        /// Which tensor.
        what: &'static str,
        /// The first offending block (or row).
        block: usize,
    },
    /// The exact Cayley solve failed (the matrix `I − Q` was numerically singular).
    #[error("exact Cayley transform failed for block {block}: I - Q is numerically singular")]
    Singular {
        /// The offending block.
        block: usize,
    },
    /// The certified bound on `‖Q‖₂` reached 1: the Cayley–Neumann series no longer converges.
    #[error(
        "Cayley-Neumann series does not converge for block {block}: certified bound on ||Q||_2 is {bound:.4} >= 1; \
         use the exact Cayley transform or COFT with a radius below 1"
    )]
    NeumannDivergence {
        /// The first offending block.
        block: usize,
        /// Its certified upper bound on `‖Q‖₂`.
        bound: f64,
    },
    /// An invalid option value (negative radius, …).
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

/// Shorthand for `Result<T, OrthoError>`.
pub type Result<T, E = OrthoError> = std::result::Result<T, E>;

pub(crate) fn shape_err(what: &'static str, expected: String, got: String) -> OrthoError {
    OrthoError::ShapeMismatch {
        what,
        expected,
        got,
    }
}
