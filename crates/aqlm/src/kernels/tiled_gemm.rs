//! Many tokens: decode a cache-sized block of `W` at a time (bit-identical to
//! [`AqlmLayer::decode`]) and multiply it with faer's sequential GEMM, one rayon task per
//! block. Memory is `O(block)` per thread; compute matches a dense GEMM.
//!
//! Measured alternatives (4096² 2x8, 64 tokens, 2 threads, alternating runs), none kept:
//! - a hand-written AVX-512 product (tokens packed once per call in panels of 64, `W` broadcast
//!   from the decoded block in place, 4 × 6 accumulators, contraction in slices of 64–256):
//!   forward 9.4–9.8 ms against 11.0, input gradient 10.2–10.3 against 11.3–11.4. In isolation,
//!   with everything in L1, its micro-kernel ran at 60–85 G multiply-adds/s on one thread, where
//!   faer's (`m64_n4`) runs at about 65 in this kernel; the machine's FMA probe gives 108 with no
//!   loads at all;
//! - blocks of 256 KiB, 512 KiB or 2 MiB instead of 1 MiB: forward 9.3–9.7 ms at 1 MiB against
//!   10.8–10.9, 9.5–9.8 and 9.7–9.9; input gradient 10.1–10.6 against 12.2–12.6, 10.4–10.8 and
//!   11.3–11.4.

use std::cell::Cell;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::simd::clear_upper_simd_state;
use crate::layer::AqlmLayer;

thread_local! {
    /// A decoded block of `W` and the forward's column-major scratch, kept between tasks and
    /// calls on this thread. (With rayon's `for_each_init` they were allocated and zero-filled
    /// once per split of the work, several MiB per product: `memset` took 2.8% of the samples of
    /// `layer.train_step`.) A task takes them out and puts them back, so a task nested on the
    /// same thread (rayon may run another while one waits) allocates its own.
    static TILE_SCRATCH: Cell<(Vec<f32>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// Target number of `f32` in one decoded block (1 MiB).
const TILE_FLOATS: usize = 1 << 18;

/// The fewest blocks a product is split into (fewer only when it has fewer groups). With one
/// block per 1 MiB alone, a layer of one or two blocks' worth (SmolLM2's 576 × 576 projections:
/// 1.3 MiB) ran as a full block and a sliver, or as one block, on one of two threads.
const MIN_BLOCKS: usize = 4;

/// `groups` split into blocks of about `per_group` floats each: the group count per block of
/// the fewest blocks of at most [`TILE_FLOATS`] and at least [`MIN_BLOCKS`], in equal sizes (the
/// last one possibly smaller). Depends on the shape only, never on the thread count.
fn groups_per_block(groups: usize, per_group: usize) -> usize {
    let blocks = (groups * per_group)
        .div_ceil(TILE_FLOATS)
        .max(MIN_BLOCKS)
        .clamp(1, groups.max(1));
    groups.div_ceil(blocks).max(1)
}

/// Output groups per forward block (see [`groups_per_block`]).
fn row_groups(layer: &AqlmLayer) -> usize {
    let per_group = layer.scheme.out_group_size * layer.in_features;
    groups_per_block(layer.out_groups(), per_group)
}

/// Input groups per input-gradient block (see [`groups_per_block`]).
fn col_groups(layer: &AqlmLayer) -> usize {
    let per_group = layer.scheme.in_group_size * layer.out_features;
    groups_per_block(layer.in_groups(), per_group)
}

/// Floats in one forward block.
pub(crate) fn tile_floats(layer: &AqlmLayer) -> usize {
    row_groups(layer) * layer.scheme.out_group_size * layer.in_features
}

/// Floats in one input-gradient block.
pub(crate) fn col_tile_floats(layer: &AqlmLayer) -> usize {
    col_groups(layer) * layer.scheme.in_group_size * layer.out_features
}

/// Tokens from which [`forward_into`] multiplies straight into an output whose rows are not
/// contiguous (a row-major `y`, as candle's tensors are); below, each block's product goes to a
/// column-major scratch first and is then copied. faer's product into a row-major block is the
/// slower one for few tokens and the faster one for many, copy included (oftq-candle's
/// `candle.fwd_bwd…t64` bench: 5% slower direct, on par through the scratch; a 512-token
/// forward of SmolLM2-135M's 2x8 folder: about 2% faster direct).
const DIRECT_MIN_TOKENS: usize = 256;

/// `y = x·Wᵀ` (no bias) for `y [tokens, out]` of any strides, blocks of output rows, each task
/// writing its columns of `y` (see [`DIRECT_MIN_TOKENS`] for `y` with non-contiguous columns).
/// The same bits for every layout of `y`.
pub(crate) fn forward_into(layer: &AqlmLayer, x: MatRef<'_, f32>, y: MatMut<'_, f32>) {
    let (og, n_in) = (layer.scheme.out_group_size, layer.in_features);
    let groups = row_groups(layer);
    let through_scratch = y.row_stride() != 1 && x.nrows() < DIRECT_MIN_TOKENS;
    y.par_col_chunks_mut(groups * og)
        .enumerate()
        .for_each(|(ci, mut dst)| {
            let (mut w, mut scratch) = TILE_SCRATCH.take();
            let o0 = ci * groups;
            let rows = dst.ncols();
            // Every element is overwritten by the decode: no zeroing beyond the first growth.
            w.resize(rows * n_in, 0.0);
            layer.decode_rows_into(o0, o0 + rows / og, &mut w);
            let wm = MatRef::from_row_major_slice(&w, rows, n_in);
            if through_scratch {
                scratch.resize(dst.nrows() * rows, 0.0);
                let mut t = MatMut::from_column_major_slice_mut(&mut scratch, dst.nrows(), rows);
                matmul(t.as_mut(), Accum::Replace, x, wm.transpose(), 1.0, Par::Seq);
                dst.copy_from(t);
            } else {
                matmul(dst, Accum::Replace, x, wm.transpose(), 1.0, Par::Seq);
            }
            clear_upper_simd_state();
            TILE_SCRATCH.set((w, scratch));
        });
}

/// `dy·W`, blocks of input columns, each task writing its columns of the result.
pub(crate) fn backward(layer: &AqlmLayer, dy: MatRef<'_, f32>) -> Mat<f32> {
    let (ig, n_out) = (layer.scheme.in_group_size, layer.out_features);
    let groups = col_groups(layer);
    let mut dx = Mat::<f32>::zeros(dy.nrows(), layer.in_features);
    dx.as_mut()
        .par_col_chunks_mut(groups * ig)
        .enumerate()
        .for_each(|(ci, dst)| {
            let (mut w, scratch) = TILE_SCRATCH.take();
            let j0 = ci * groups;
            let cols = dst.ncols();
            w.resize(n_out * cols, 0.0);
            layer.decode_cols_into(j0, j0 + cols / ig, &mut w);
            let wm = MatRef::from_row_major_slice(&w, n_out, cols);
            matmul(dst, Accum::Replace, dy, wm, 1.0, Par::Seq);
            clear_upper_simd_state();
            TILE_SCRATCH.set((w, scratch));
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::groups_per_block;

    /// Blocks of at most 1 MiB, at least four of them when there are four groups, equal sizes.
    #[test]
    fn blocks_are_bounded_balanced_and_at_least_four() {
        // SmolLM2's q projection by rows: 576 groups of 576 floats, 1.27 MiB: 4 blocks of 144.
        assert_eq!(groups_per_block(576, 576), 144);
        // 4096 × 4096: 64 blocks of 64 rows (1 MiB each), as before.
        assert_eq!(groups_per_block(4096, 4096), 64);
        // Fewer groups than blocks: one group per block.
        assert_eq!(groups_per_block(3, 10), 1);
        assert_eq!(groups_per_block(1, 1 << 30), 1);
        // Large groups: never above the target unless one group already is.
        let g = groups_per_block(1000, 5000);
        assert!(g * 5000 <= 1 << 18 && 1000usize.div_ceil(g) >= 4);
    }
}
