//! The crate's error type.

use std::path::PathBuf;

/// Why a golden folder could not be checked, or where it did not match.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GoldenError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file that exists but cannot be understood.
    #[error("{path}: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A value that does not match the reference within tolerance.
    #[error("{what}: max error {err:.3e} exceeds tolerance {tol:.1e}")]
    Mismatch {
        /// Which quantity (file and tensor).
        what: String,
        /// The measured error.
        err: f64,
        /// The tolerance.
        tol: f64,
    },
    /// The folder holds neither a case folder nor `rotations.safetensors`.
    #[error("{0}: no case folder and no rotations.safetensors found")]
    Empty(PathBuf),
    /// An error from oftq-ortho.
    #[error("{what}: {source}")]
    Ortho {
        /// Context.
        what: String,
        /// The error.
        source: oftq_ortho::OrthoError,
    },
}
