//! AQLM additive-quantized linear layers.

pub mod encode;
pub mod error;
pub mod scheme;

pub use encode::{Encoded, QuantizeOptions, quantize};
pub use error::AqlmError;
pub use scheme::AqlmScheme;
