//! The encoder's error type.

use crate::error::AqlmError;

/// Everything that can go wrong while quantizing a dense weight into AQLM.
///
/// Messages name the offending input (`weight`, `xtx`, `calibration inputs`, an option) and say
/// what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The scheme itself is invalid (zero codebooks, `nbits` out of range, …).
    #[error(transparent)]
    Scheme(#[from] AqlmError),
    /// A matrix has the wrong shape (empty, not divisible by the group size, mismatched sizes).
    #[error("{what}: {problem}")]
    Shape {
        /// Which input (`weight`, `xtx`, `calibration inputs`).
        what: &'static str,
        /// What is wrong with its shape.
        problem: String,
    },
    /// An input holds NaN or infinite values.
    #[error("{what}: non-finite value at ({row}, {col})")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Row of the first offending entry.
        row: usize,
        /// Column of the first offending entry.
        col: usize,
    },
    /// An option is out of range.
    #[error("invalid encoder option {name}: {problem}")]
    Option {
        /// The option's field name in `QuantizeOptions`.
        name: &'static str,
        /// Why it is rejected.
        problem: String,
    },
    /// The objective is degenerate (e.g. `tr(W·XᵀX·Wᵀ) = 0`), so a relative error is undefined.
    #[error("degenerate objective: {0}")]
    Degenerate(String),
}
