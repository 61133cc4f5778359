//! OFT adapters on AQLM-quantized and dense linear layers, matched to Hugging Face PEFT.
//!
//! - [`OftConfig`]: PEFT's `OFTConfig` (field names, defaults, validation, block-size adjustment).
//! - [`OftAdapter`]: one adapter's parameters, COFT ball and rotation.
//! - [`OftLinear`]: named adapters on a frozen base; [`AqlmOftLinear`] (PEFT's `AqlmOFTLinear`) and
//!   [`DenseOftLinear`] with forward, backward, merge.
//!
//! ```
//! use faer::Mat;
//! use oftq_aqlm::AqlmLayer;
//! use oftq_layer::{AqlmOftLinear, OftConfig};
//!
//! let scheme = "1x8".parse()?;
//! let codes: Vec<u16> = (0..8 * 4).map(|i| (i * 29 % 256) as u16).collect();
//! let codebooks: Vec<f32> = (0..256 * 8).map(|i| ((i % 17) as f32 - 8.0) / 16.0).collect();
//! let base = AqlmLayer::new(32, 8, scheme, codes, codebooks, vec![1.0; 8], None)?;
//! let config = OftConfig { oft_block_size: 8, init_weights: false, ..OftConfig::default() };
//! let layer = AqlmOftLinear::with_adapter(base, "default", &config)?;
//! let x = Mat::<f32>::from_fn(2, 32, |t, f| (t * 32 + f) as f32 / 64.0);
//! let (y, cache) = layer.forward_cached(x.as_ref(), None)?;
//! let grads = layer.backward(&cache, Mat::<f32>::ones(2, 8).as_ref())?;
//! assert_eq!(grads.adapters[0].1.nrows(), 4); // 32 / 8 blocks
//! assert_eq!(layer.to_string(), "oft.QuantizedLinear(in_features=32, out_features=8, scheme=1x8, bias=false)");
//! # let _ = y;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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

pub use adapter::OftAdapter;
pub use base::BaseLinear;
pub use config::{Bias, OftConfig, OftqOptions, TargetModules};
pub use dense::DenseLinear;
pub use dispatch::{Module, OftModel, dispatch, dispatch_aqlm, dispatch_dense};
pub use error::{LayerError, Result};
pub use load::{
    LoadOptions, add_peft_adapter, add_peft_adapter_with, load_aqlm_oft, load_aqlm_oft_model,
    load_aqlm_oft_with,
};
pub use oft_linear::{AqlmOftLinear, DenseOftLinear, OftCache, OftGrad, OftLinear};
pub use peft_io::{PeftAdapter, adapter_dir, load_adapter, save_adapter};
