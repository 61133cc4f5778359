//! Many tokens: decode a cache-sized block of `W` at a time (bit-identical to
//! [`AqlmLayer::decode`]) and multiply it with faer's sequential GEMM, one rayon task per
//! block. Memory is `O(block)` per thread; compute matches a dense GEMM.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::layout::from_feature_major;
use super::simd::clear_upper_simd_state;
use crate::layer::AqlmLayer;

/// Target number of `f32` in one decoded block (1 MiB).
const TILE_FLOATS: usize = 1 << 18;

/// Output groups per forward block: `≈ TILE_FLOATS / (og·in)`, at least 1.
fn row_groups(layer: &AqlmLayer) -> usize {
    let per_group = layer.scheme.out_group_size * layer.in_features;
    (TILE_FLOATS / per_group).clamp(1, layer.out_groups())
}

/// Input groups per input-gradient block: `≈ TILE_FLOATS / (out·ig)`, at least 1.
fn col_groups(layer: &AqlmLayer) -> usize {
    let per_group = layer.scheme.in_group_size * layer.out_features;
    (TILE_FLOATS / per_group).clamp(1, layer.in_groups())
}

/// Floats in one forward block.
pub(crate) fn tile_floats(layer: &AqlmLayer) -> usize {
    row_groups(layer) * layer.scheme.out_group_size * layer.in_features
}

/// Floats in one input-gradient block.
pub(crate) fn col_tile_floats(layer: &AqlmLayer) -> usize {
    col_groups(layer) * layer.scheme.in_group_size * layer.out_features
}

/// `x·Wᵀ` (no bias), blocks of output rows.
pub(crate) fn forward(layer: &AqlmLayer, x: MatRef<'_, f32>) -> Mat<f32> {
    let t = x.nrows();
    let (og, n_in) = (layer.scheme.out_group_size, layer.in_features);
    let groups = row_groups(layer);
    let mut out = vec![0f32; layer.out_features * t];
    out.par_chunks_mut(groups * og * t)
        .enumerate()
        .for_each_init(Vec::new, |w, (ci, chunk)| {
            let o0 = ci * groups;
            let rows = chunk.len() / t;
            let o1 = o0 + rows / og;
            // Every element is overwritten by the decode: no zeroing beyond the first growth.
            w.resize(rows * n_in, 0.0);
            layer.decode_rows_into(o0, o1, w);
            let w = MatRef::from_row_major_slice(w, rows, n_in);
            let dst = MatMut::from_column_major_slice_mut(chunk, t, rows);
            matmul(dst, Accum::Replace, x, w.transpose(), 1.0, Par::Seq);
            clear_upper_simd_state();
        });
    from_feature_major(&out, t, layer.out_features)
}

/// `dy·W`, blocks of input columns.
pub(crate) fn backward(layer: &AqlmLayer, dy: MatRef<'_, f32>) -> Mat<f32> {
    let t = dy.nrows();
    let (ig, n_out) = (layer.scheme.in_group_size, layer.out_features);
    let groups = col_groups(layer);
    let mut out = vec![0f32; layer.in_features * t];
    out.par_chunks_mut(groups * ig * t)
        .enumerate()
        .for_each_init(Vec::new, |w, (ci, chunk)| {
            let j0 = ci * groups;
            let cols = chunk.len() / t;
            let j1 = j0 + cols / ig;
            w.resize(n_out * cols, 0.0);
            layer.decode_cols_into(j0, j1, w);
            let w = MatRef::from_row_major_slice(w, n_out, cols);
            let dst = MatMut::from_column_major_slice_mut(chunk, t, cols);
            matmul(dst, Accum::Replace, dy, w, 1.0, Par::Seq);
            clear_upper_simd_state();
        });
    from_feature_major(&out, t, layer.in_features)
}
