#![doc = include_str!("../README.md")]

mod adapters;
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
pub use tokenizer::Tokenizer;
pub use weights::ModelWeights;
