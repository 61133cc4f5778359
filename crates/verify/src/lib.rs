#![doc = include_str!("../README.md")]

pub mod error;
pub mod golden;
pub mod reference;
pub mod tensors;

pub use error::GoldenError;
