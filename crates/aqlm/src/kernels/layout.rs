//! Copies between faer matrices (any strides) and the contiguous layouts the kernels use.

use faer::{Mat, MatRef};
use rayon::prelude::*;

use crate::layer::AqlmLayer;

/// `x [T, n]` → `v[k·T + t] = x[t, k]` (feature-major: the tokens of one feature contiguous).
pub(crate) fn feature_major(x: MatRef<'_, f32>) -> Vec<f32> {
    // One contiguous token (generation): a plain copy.
    if x.nrows() == 1
        && let Some(row) = x.row(0).try_as_row_major()
    {
        return row.as_slice().to_vec();
    }
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

/// The input-gradient driver of the kernels that work per input group: `dy` scaled and laid out
/// feature-major, the codes by input group, and `dx` split into tasks of `groups` input groups,
/// `task(layer, sdy, codes_t, tokens, j0, chunk)` filling `chunk` (`[j][b][t]`, groups `j0..`).
pub(crate) fn by_input_groups(
    layer: &AqlmLayer,
    dy: MatRef<'_, f32>,
    groups: usize,
    task: impl Fn(&AqlmLayer, &[f32], &[u16], usize, usize, &mut [f32]) + Sync,
) -> Mat<f32> {
    let t = dy.nrows();
    let (og, ig) = (layer.scheme.out_group_size, layer.scheme.in_group_size);
    let sdy = feature_major_scaled(dy, &layer.scales, og);
    let codes_t = layer.codes_by_input();
    let mut out = vec![0f32; layer.in_features * t];
    out.par_chunks_mut(groups * ig * t)
        .enumerate()
        .for_each(|(ci, chunk)| task(layer, &sdy, codes_t, t, ci * groups, chunk));
    from_feature_major(&out, t, layer.in_features)
}
