#![doc = include_str!("../README.md")]

pub mod checkpoint;
mod codebook_buf;
pub mod decode;
pub mod encode;
pub mod error;
pub mod kernels;
pub mod layer;
pub mod scheme;
pub mod storage;

pub use checkpoint::{AqlmCheckpoint, QuantizationConfig, RawTensor};
pub use encode::{Encoded, QuantizeOptions, quantize};
pub use error::AqlmError;
pub use kernels::Kernel;
pub use layer::AqlmLayer;
pub use scheme::{AqlmScheme, AqlmSchemeBuilder};
pub use storage::{CodeDtype, FloatDtype, Storage};

/// The linear-algebra crate of every matrix in this API (`faer::Mat`, `MatRef`), re-exported so
/// that a user depends on oftq-aqlm alone and gets the version it was built with.
pub use faer;
/// The safetensors crate, whose `Dtype` the checkpoint API uses ([`checkpoint::Dtype`],
/// [`RawTensor`]); re-exported for the same reason.
pub use safetensors;
/// The JSON crate of `config.json` ([`AqlmCheckpoint::config_json`],
/// [`QuantizationConfig::from_json`]); re-exported for the same reason.
pub use serde_json;
