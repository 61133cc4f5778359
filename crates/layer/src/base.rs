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

    /// `forward_into` of `layer` into a row-major output has `forward`'s bits; an output of the
    /// wrong width is a shape error naming the expected shape.
    fn check_forward_into(layer: &dyn BaseLinear, x: MatRef<'_, f32>) {
        let (t, o) = (x.nrows(), layer.out_features());
        let want = layer.forward(x).unwrap();
        let mut rows = vec![f32::NAN; t * o];
        let y = MatMut::from_row_major_slice_mut(&mut rows, t, o);
        layer.forward_into(x, y).unwrap();
        for i in 0..t {
            for j in 0..o {
                assert_eq!(rows[i * o + j].to_bits(), want[(i, j)].to_bits());
            }
        }
        let mut wrong = Mat::<f32>::zeros(t, o + 1);
        let err = layer.forward_into(x, wrong.as_mut()).unwrap_err();
        assert!(err.to_string().contains(&format!("[{t}, {o}]")), "{err}");
    }

    /// The default `forward_into` (dense) and the AQLM one.
    #[test]
    fn forward_into_writes_forward_into_any_layout() {
        let dense = DenseLinear::new(
            Mat::from_fn(5, 7, |i, j| ((i * 7 + j) as f32 * 0.3).sin()),
            Some(vec![0.25; 5]),
            false,
        )
        .unwrap();
        let x = Mat::from_fn(3, 7, |i, j| ((i + 2 * j) as f32 * 0.7).cos());
        check_forward_into(&dense, x.as_ref());

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
        check_forward_into(&aqlm, x.as_ref());
    }
}
