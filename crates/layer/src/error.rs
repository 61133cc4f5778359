//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `oftq-layer`. Messages name the file, tensor, adapter or
/// parameter and the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// An invalid configuration (PEFT's `ValueError`s and ours).
    #[error("invalid OFT config: {0}")]
    Config(String),
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file that exists but is not what it should be.
    #[error("{path}: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Shapes that do not fit together.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    Shape {
        /// Which tensor.
        what: String,
        /// The expected shape.
        expected: String,
        /// The shape found.
        got: String,
    },
    /// An adapter name that is unknown, or already taken.
    #[error("adapter {name:?}: {why}")]
    Adapter {
        /// The adapter.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A merge or unmerge that is not possible for this layer.
    #[error("cannot merge: {0}")]
    Merge(String),
    /// NaN or ±∞ where it would silently spread.
    #[error("non-finite values in {0}")]
    NonFinite(String),
    /// Model injection matched no module.
    #[error("no module matched target_modules {targets} (modules: {available})")]
    NoTarget {
        /// The pattern.
        targets: String,
        /// A few module names that exist.
        available: String,
    },
    /// From the rotation crate.
    #[error(transparent)]
    Ortho(#[from] oftq_ortho::OrthoError),
    /// From the AQLM crate.
    #[error(transparent)]
    Aqlm(#[from] oftq_aqlm::AqlmError),
    /// From the AQLM encoder (quantizing a dense weight).
    #[error(transparent)]
    Encode(#[from] oftq_aqlm::encode::EncodeError),
}

/// Shorthand for `Result<T, LayerError>`.
pub type Result<T, E = LayerError> = std::result::Result<T, E>;

pub(crate) fn shape(
    what: impl Into<String>,
    expected: impl Into<String>,
    got: impl Into<String>,
) -> LayerError {
    LayerError::Shape {
        what: what.into(),
        expected: expected.into(),
        got: got.into(),
    }
}
