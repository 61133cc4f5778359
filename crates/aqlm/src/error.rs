//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `oftq-aqlm`. Messages name the file, tensor or parameter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AqlmError {
    /// An invalid `MxB` scheme or group size.
    #[error("invalid AQLM scheme: {0}")]
    InvalidScheme(String),
    /// NaN or ±∞ in codebooks, scales or bias: it would silently spread to every output.
    #[error("non-finite value {value} in {what} at index {index}")]
    NonFinite {
        /// Which tensor.
        what: String,
        /// Flat index of the first offending value.
        index: usize,
        /// The value.
        value: f32,
    },

    /// A layer part (codes, codebooks, scales, bias, features) has the wrong size.
    #[error("AQLM layer: {what} has the wrong shape: expected {expected}, got {got}")]
    Shape {
        /// Which parameter or tensor.
        what: String,
        /// The expected size or shape.
        expected: String,
        /// What was given.
        got: String,
    },

    /// A code value is not a valid codebook index.
    #[error(
        "AQLM layer: {what}[{index}] = {value} is not a valid code (codebook size {codebook_size})"
    )]
    CodeOutOfRange {
        /// Which tensor or parameter holds the code.
        what: String,
        /// Flat index of the code.
        index: usize,
        /// The offending value (as stored).
        value: i64,
        /// `2^nbits`.
        codebook_size: usize,
    },

    /// An activation or gradient given to a kernel has the wrong number of features.
    #[error("AQLM {op}: {what} has {got} columns, expected {expected}")]
    InputShape {
        /// The operation (`forward`, `backward_input`).
        op: &'static str,
        /// The argument (`x`, `dy`).
        what: &'static str,
        /// Expected number of columns.
        expected: usize,
        /// Given number of columns.
        got: usize,
    },

    /// The requested storage dtype cannot hold this layer's values (e.g. int8 codes with 16 bits).
    #[error("AQLM storage: {0}")]
    Storage(String),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `config.json` is missing a field, has the wrong type or is not an AQLM config.
    #[error("{path}: invalid AQLM config: {msg}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },

    /// The safetensors container itself is malformed (header, offsets, truncation).
    #[error("{path}: malformed safetensors file: {msg}")]
    Safetensors {
        /// The safetensors file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },

    /// A tensor in a checkpoint has the wrong dtype or shape, or is missing.
    #[error("{path}: tensor {tensor:?}: {msg}")]
    Tensor {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// What is wrong.
        msg: String,
    },

    /// No AQLM layer with this prefix exists in the checkpoint.
    #[error(
        "no AQLM layer named {0:?} in the checkpoint (a layer is AQLM when <name>.codes exists)"
    )]
    UnknownLayer(String),
}
