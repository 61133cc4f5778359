#![doc = include_str!("../README.md")]

pub mod error;
pub mod golden;
pub mod reference;
pub mod tensors;

pub use error::GoldenError;

/// The library's matrix crate (`faer::Mat` in the golden harness and the tensor helpers),
/// re-exported so that tests pin the version this crate was built with.
pub use faer;
/// The independent reference's matrix crate (`nalgebra::DMatrix` in
/// [`reference`](mod@reference)), re-exported for the same reason.
pub use nalgebra;
/// The file format crate of [`tensors::Tensor`]'s `dtype`, re-exported for the same reason.
pub use safetensors;
