#![doc = include_str!("../README.md")]

pub mod adapter;
pub mod base;
pub mod config;
pub mod dense;
pub mod dispatch;
pub mod error;
pub mod load;
pub mod merge;
pub mod oft_linear;
pub mod peft_io;
pub mod train;

/// The linear-algebra crate of every matrix in this API (`faer::Mat`, `MatRef`).
pub use faer;
/// `oftq-aqlm`, the quantized base layers (`AqlmLayer`, checkpoints, the encoder).
pub use oftq_aqlm as aqlm;
/// `oftq-ortho`, the rotations (`RotationSpec`, `BlockRotation`, parameterizations).
pub use oftq_ortho as ortho;
/// The random-number crate of the training API (`rand::rngs::StdRng` in
/// [`OftLinear::forward_cached`], [`OftAdapter::dropout_mask`]).
pub use rand;
/// The JSON crate of [`OftConfig`]'s pass-through fields (`serde_json::Value`).
pub use serde_json;

pub use adapter::OftAdapter;
pub use base::BaseLinear;
pub use config::{Bias, BlockAdjustment, BlockGeometry, OftConfig, OftqOptions, TargetModules};
pub use dense::DenseLinear;
pub use dispatch::{Module, OftModel, dispatch, dispatch_aqlm, dispatch_dense};
pub use error::{LayerError, Result};
pub use load::{
    LoadOptions, add_peft_adapter, add_peft_adapter_with, load_aqlm_oft, load_aqlm_oft_model,
    load_aqlm_oft_with,
};
pub use oft_linear::{AqlmOftLinear, DenseOftLinear, OftCache, OftGrad, OftLinear};
pub use peft_io::{PeftAdapter, adapter_dir, load_adapter, save_adapter};
