//! AQLM additive-quantized linear layers (aqlm 1.1.7 compatible).
//!
//! - [`AqlmLayer`]: codes, codebooks, scales and bias of one quantized linear, validated;
//!   [`AqlmLayer::decode`] reproduces aqlm's `_dequantize_weight` bit for bit in `f32`.
//! - Deterministic CPU kernels for `y = x·Wᵀ + bias` and the input gradient `dx = dy·W` that
//!   never materialize `W` ([`Kernel`]): Kx8 lookup tables, decode-and-dot, tiled decode + GEMM.
//! - [`AqlmCheckpoint`]: Hugging Face checkpoint folders (`config.json` + `model.safetensors`).
//!
//! Conventions: activations are `[tokens, features]`, `W` is `[out, in]`; codes are unsigned
//! values stored the aqlm way in signed integers.
//!
//! ```
//! use faer::Mat;
//! use oftq_aqlm::{AqlmLayer, AqlmScheme, Kernel};
//! // A 2x8 layer with 16 inputs and 4 outputs (in groups of 8).
//! let scheme: AqlmScheme = "2x8".parse().unwrap();
//! let codes: Vec<u16> = (0..4 * 2 * 2).map(|i| (i * 37 % 256) as u16).collect();
//! let codebooks: Vec<f32> = (0..2 * 256 * 8).map(|i| ((i % 13) as f32 - 6.0) / 8.0).collect();
//! let layer = AqlmLayer::new(16, 4, scheme, codes, codebooks, vec![0.5; 4], None).unwrap();
//! let x = Mat::<f32>::from_fn(3, 16, |t, k| (t + k) as f32 / 16.0);
//! let y = layer.forward(x.as_ref()).unwrap(); // [3, 4]
//! let dense = &x * layer.decode().transpose();
//! assert!((&y - &dense).norm_max() < 1e-5);
//! let y_lut = layer.forward_with(x.as_ref(), Kernel::Lut).unwrap();
//! assert!((&y_lut - &dense).norm_max() < 1e-5);
//! ```

pub mod checkpoint;
pub mod decode;
pub mod encode;
pub mod error;
pub mod kernels;
pub mod layer;
pub mod scheme;
pub mod storage;

pub use checkpoint::{AqlmCheckpoint, QuantizationConfig, RawTensor};
pub use encode::{Encoded, QuantizeOptions, quantize};
pub use error::AqlmError;
pub use kernels::Kernel;
pub use layer::AqlmLayer;
pub use scheme::AqlmScheme;
pub use storage::{CodeDtype, FloatDtype, Storage};
