//! Training OFT adapters through frozen (quantized) base layers.
//!
//! - [`Sequential`]: a stack of modules (AQLM or dense, with or without adapters) with elementwise
//!   [`Activation`]s; the forward caches what the backward needs.
//! - [`Loss`]: mean squared error and cross-entropy.
//! - [`AdamW`] over adapter parameters only, [`LrSchedule`], gradient clipping.
//! - [`Trainer`]: the loop, with a progress callback; deterministic for a seed; a step that
//!   produces NaN/∞ stops with an error and leaves the last good adapters in place.

mod activation;
mod loss;
mod optim;
mod sequential;
mod trainer;

pub use activation::Activation;
pub use loss::Loss;
pub use optim::{AdamW, LrSchedule, Moments, ParamKey, clip_grad_norm};
pub use sequential::{SeqCache, SeqGrad, Sequential};
pub use trainer::{StepStats, TrainReport, Trainer};
