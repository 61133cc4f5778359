//! The oracle: decode the whole weight, then one dense product (sequential faer GEMM).

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

use crate::layer::AqlmLayer;

/// `x·Wᵀ` (no bias) with `W` from [`AqlmLayer::decode`].
pub(crate) fn forward(layer: &AqlmLayer, x: MatRef<'_, f32>) -> Mat<f32> {
    let w = layer.decode();
    let mut y = Mat::<f32>::zeros(x.nrows(), layer.out_features);
    matmul(y.as_mut(), Accum::Replace, x, w.transpose(), 1.0, Par::Seq);
    super::simd::clear_upper_simd_state();
    y
}

/// `dy·W` with `W` from [`AqlmLayer::decode`].
pub(crate) fn backward(layer: &AqlmLayer, dy: MatRef<'_, f32>) -> Mat<f32> {
    let w = layer.decode();
    let mut dx = Mat::<f32>::zeros(dy.nrows(), layer.in_features);
    matmul(dx.as_mut(), Accum::Replace, dy, w.as_ref(), 1.0, Par::Seq);
    super::simd::clear_upper_simd_state();
    dx
}
