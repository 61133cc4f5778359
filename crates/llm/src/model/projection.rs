//! [`Projection`]: one linear projection of a block, dense or AQLM (+ OFT adapters).

use oftq_candle::AqlmOftLinear;
use oftq_candle::candle_core::{Module, Tensor};
use oftq_candle::layer::aqlm::AqlmLayer;

use crate::error::Result;

/// A bias-free linear projection `y = x·Wᵀ` of `x [tokens, in]`.
#[derive(Debug)]
pub enum Projection {
    /// A dense frozen weight `[out, in]` (the source model), multiplied by faer.
    Dense(Tensor),
    /// An AQLM-quantized weight with zero or more OFT adapters (oftq-candle's module).
    Quantized(Box<AqlmOftLinear>),
}

impl Projection {
    /// An AQLM projection without adapters, named by its module path.
    pub fn aqlm(layer: AqlmLayer, module: &str) -> Self {
        Self::Quantized(Box::new(AqlmOftLinear::new(layer, module)))
    }

    /// `x·Wᵀ` (OFT adapters first; module dropout when `train`).
    ///
    /// # Errors
    /// Shape errors, invalid adapter parameters.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(match self {
            Self::Dense(w) => super::dense_product(x, w)?,
            Self::Quantized(m) if train => m.forward_t(x, true)?,
            Self::Quantized(m) => m.forward(x)?,
        })
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Self::Dense(w) => {
                let d = w.dims();
                (d[0], d[1])
            }
            Self::Quantized(m) => (m.base().out_features(), m.base().in_features()),
        }
    }

    /// Bytes of the weight held in memory.
    pub fn weight_bytes(&self) -> usize {
        match self {
            Self::Dense(w) => w.elem_count() * 4,
            Self::Quantized(m) => {
                let b = m.base();
                b.codes().len() * 2 + (b.codebooks().len() + b.scales().len()) * 4
            }
        }
    }
}
