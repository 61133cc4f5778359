#![doc = include_str!("../README.md")]

mod adapters;
mod atomic;
pub mod config;
pub mod distill;
pub mod error;
pub mod eval;
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod kl_head;
pub mod memory;
pub mod model;
pub mod quantize;
pub mod save;
pub mod tiny;
pub mod tokenizer;
pub mod weights;

pub use config::LlamaConfig;
pub use error::{LlmError, Result};
pub use model::{KvCache, Llama, Projection};
pub use oftq_candle;
/// The JSON crate of [`LlamaConfig::from_hf_json`]'s input, re-exported so users pin nothing else.
pub use serde_json;
pub use tokenizer::Tokenizer;
/// The tokenizer crate behind [`Tokenizer::inner`], re-exported for the same reason.
pub use tokenizers;
pub use weights::ModelWeights;
