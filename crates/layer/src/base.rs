//! [`BaseLinear`]: what a frozen base layer must offer an OFT wrapper.

use faer::{Mat, MatRef};
use oftq_aqlm::AqlmLayer;

use crate::error::Result;

/// A frozen linear layer `y = x·Wᵀ + bias` with its input gradient `dx = dy·W`.
pub trait BaseLinear: Send + Sync {
    /// Number of inputs.
    fn in_features(&self) -> usize;
    /// Number of outputs.
    fn out_features(&self) -> usize;
    /// `y = x·Wᵀ + bias` for `x [tokens, in]`.
    ///
    /// # Errors
    /// Shape mismatches and kernel errors.
    fn forward(&self, x: MatRef<'_, f32>) -> Result<Mat<f32>>;
    /// `dx = dy·W` for `dy [tokens, out]`.
    ///
    /// # Errors
    /// Shape mismatches and kernel errors.
    fn backward_input(&self, dy: MatRef<'_, f32>) -> Result<Mat<f32>>;
    /// A one-line description (used by `Display` of the wrapper).
    fn describe(&self) -> String;
}

impl BaseLinear for AqlmLayer {
    fn in_features(&self) -> usize {
        AqlmLayer::in_features(self)
    }
    fn out_features(&self) -> usize {
        AqlmLayer::out_features(self)
    }
    fn forward(&self, x: MatRef<'_, f32>) -> Result<Mat<f32>> {
        Ok(AqlmLayer::forward(self, x)?)
    }
    fn backward_input(&self, dy: MatRef<'_, f32>) -> Result<Mat<f32>> {
        Ok(AqlmLayer::backward_input(self, dy)?)
    }
    fn describe(&self) -> String {
        format!(
            "QuantizedLinear(in_features={}, out_features={}, scheme={}, bias={})",
            self.in_features(),
            self.out_features(),
            self.scheme(),
            self.bias().is_some()
        )
    }
}
