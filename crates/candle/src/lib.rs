#![doc = include_str!("../README.md")]

mod adapter;
mod base_op;
mod fused_op;
mod linear;
mod rotation_op;
mod save;
mod tensor_io;

pub use candle_core;
pub use candle_nn;
pub use oftq_layer as layer;

pub use adapter::{OftAdapter, var_name};
pub use linear::{AqlmLinear, AqlmOftLinear, DenseOftLinear, FrozenLinear, OftLinear};
pub use rotation_op::rotate;
pub use save::save_adapter;
pub use tensor_io::contiguous_slice as storage_slice;
