//! AQLM additive-quantized linear layers.

pub mod error;
pub mod scheme;

pub use error::AqlmError;
pub use scheme::AqlmScheme;
