//! [`BaseLinear`]: what a frozen base layer must offer an OFT wrapper.

use faer::{Mat, MatMut, MatRef};
use oftq_aqlm::AqlmLayer;

use crate::error::{Result, shape};

/// Errors unless `y` is `[rows, cols]`.
fn check_output(y: &MatMut<'_, f32>, rows: usize, cols: usize) -> Result<()> {
    if y.nrows() != rows || y.ncols() != cols {
        return Err(shape(
            "layer output",
            format!("[{rows}, {cols}]"),
            format!("[{}, {}]", y.nrows(), y.ncols()),
        ));
    }
    Ok(())
}

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
    /// [`forward`](Self::forward) written into `y [tokens, out]` (any strides, every element
    /// overwritten), so that the caller picks the output's layout: oftq-candle fills row-major
    /// tensors this way. The default computes `forward` and copies; AQLM layers write their
    /// tiled product into `y` directly. Same values as `forward`.
    ///
    /// # Errors
    /// As `forward`, and a `y` that is not `[x.nrows(), out_features]`.
    fn forward_into(&self, x: MatRef<'_, f32>, mut y: MatMut<'_, f32>) -> Result<()> {
        check_output(&y, x.nrows(), self.out_features())?;
        y.copy_from(self.forward(x)?);
        Ok(())
    }
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
    fn forward_into(&self, x: MatRef<'_, f32>, y: MatMut<'_, f32>) -> Result<()> {
        Ok(AqlmLayer::forward_into(self, x, y)?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense::DenseLinear;

    /// The default `forward_into` (dense) and the AQLM one write `forward`'s values into a
    /// row-major output and reject an output of the wrong shape.
    #[test]
    fn forward_into_writes_forward_into_any_layout() {
        let dense = DenseLinear::new(
            Mat::from_fn(5, 7, |i, j| ((i * 7 + j) as f32 * 0.3).sin()),
            Some(vec![0.25; 5]),
            false,
        )
        .unwrap();
        let x = Mat::from_fn(3, 7, |i, j| ((i + 2 * j) as f32 * 0.7).cos());
        let want = dense.forward(x.as_ref()).unwrap();
        let mut rows = vec![f32::NAN; 15];
        let y = MatMut::from_row_major_slice_mut(&mut rows, 3, 5);
        BaseLinear::forward_into(&dense, x.as_ref(), y).unwrap();
        for i in 0..3 {
            for j in 0..5 {
                assert_eq!(rows[i * 5 + j].to_bits(), want[(i, j)].to_bits());
            }
        }
        let mut wrong = Mat::<f32>::zeros(3, 4);
        let err = BaseLinear::forward_into(&dense, x.as_ref(), wrong.as_mut()).unwrap_err();
        assert!(err.to_string().contains("[3, 5]"), "{err}");

        let scheme = oftq_aqlm::AqlmScheme::new(1, 4, 8, 1).unwrap();
        let aqlm = AqlmLayer::new(
            8,
            5,
            scheme,
            (0..5).map(|i| i as u16).collect(),
            (0..16 * 8).map(|i| (i as f32 * 0.1).sin()).collect(),
            vec![1.5; 5],
            None,
        )
        .unwrap();
        let x = Mat::from_fn(4, 8, |i, j| (i as f32 - j as f32) * 0.2);
        let want = BaseLinear::forward(&aqlm, x.as_ref()).unwrap();
        let mut rows = vec![f32::NAN; 20];
        let y = MatMut::from_row_major_slice_mut(&mut rows, 4, 5);
        BaseLinear::forward_into(&aqlm, x.as_ref(), y).unwrap();
        for i in 0..4 {
            for j in 0..5 {
                assert_eq!(rows[i * 5 + j].to_bits(), want[(i, j)].to_bits());
            }
        }
        let mut wrong = Mat::<f32>::zeros(4, 6);
        assert!(BaseLinear::forward_into(&aqlm, x.as_ref(), wrong.as_mut()).is_err());
    }
}
