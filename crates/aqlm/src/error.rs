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

    /// No AQLM layer with this prefix exists in the checkpoint. The message lists the layers the
    /// checkpoint has (the first [`UNKNOWN_LAYER_LISTED`] of them).
    #[error(
        "no AQLM layer named {name:?} in the checkpoint (AQLM layers: {}; a layer is AQLM when <name>.codes exists)",
        list_layers(available)
    )]
    UnknownLayer {
        /// The name asked for.
        name: String,
        /// Every AQLM layer of the checkpoint, sorted.
        available: Vec<String>,
    },
}

/// How many layer names an [`AqlmError::UnknownLayer`] message lists (the field holds them all).
pub const UNKNOWN_LAYER_LISTED: usize = 16;

/// `["a", "b", …]`, at most [`UNKNOWN_LAYER_LISTED`] names, then how many more.
fn list_layers(names: &[String]) -> String {
    let shown: Vec<&String> = names.iter().take(UNKNOWN_LAYER_LISTED).collect();
    let more = names.len().saturating_sub(UNKNOWN_LAYER_LISTED);
    if more == 0 {
        format!("{shown:?}")
    } else {
        format!("{shown:?} and {more} more")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_layer_lists_the_layers() {
        let few = AqlmError::UnknownLayer {
            name: "nope".into(),
            available: vec!["a".into(), "b".into()],
        };
        assert!(
            few.to_string().contains(r#"(AQLM layers: ["a", "b"]; "#),
            "{few}"
        );
        let many = AqlmError::UnknownLayer {
            name: "nope".into(),
            available: (0..20).map(|i| format!("l{i:02}")).collect(),
        };
        let text = many.to_string();
        assert!(
            text.contains(r#""l15"] and 4 more"#) && !text.contains("l16"),
            "{text}"
        );
    }
}
