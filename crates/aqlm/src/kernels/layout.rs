//! Copies between faer matrices (any strides) and the contiguous layouts the kernels use.

use faer::{Mat, MatRef};

/// `x [T, n]` → `v[k·T + t] = x[t, k]` (feature-major: the tokens of one feature contiguous).
pub(crate) fn feature_major(x: MatRef<'_, f32>) -> Vec<f32> {
    let mut v = Vec::with_capacity(x.nrows() * x.ncols());
    for k in 0..x.ncols() {
        v.extend(x.col(k).iter().copied());
    }
    v
}

/// `dy [T, n]` → `v[r·T + t] = dy[t, r] · scales[r / group]`.
pub(crate) fn feature_major_scaled(dy: MatRef<'_, f32>, scales: &[f32], group: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(dy.nrows() * dy.ncols());
    for r in 0..dy.ncols() {
        let s = scales[r / group];
        v.extend(dy.col(r).iter().map(|&d| d * s));
    }
    v
}

/// `x [T, n]` → `v[t·n + k] = x[t, k]` (token-major: one token's features contiguous).
pub(crate) fn token_major(x: MatRef<'_, f32>) -> Vec<f32> {
    let mut v = Vec::with_capacity(x.nrows() * x.ncols());
    for t in 0..x.nrows() {
        v.extend(x.row(t).iter().copied());
    }
    v
}

/// Feature-major `v [n][T]` → `Mat [T, n]` (which is `v` read column-major).
pub(crate) fn from_feature_major(v: &[f32], tokens: usize, n: usize) -> Mat<f32> {
    MatRef::from_column_major_slice(v, tokens, n).to_owned()
}
