//! The crate's error type.

/// Everything that can go wrong in `oftq-aqlm`. Messages name the file, tensor or parameter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AqlmError {
    /// An invalid `MxB` scheme or group size.
    #[error("invalid AQLM scheme: {0}")]
    InvalidScheme(String),
}
