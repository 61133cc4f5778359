//! Many tokens: decode a cache-sized block of `W` at a time (bit-identical to
//! [`AqlmLayer::decode`]) and multiply it with faer's sequential GEMM, one rayon task per
//! block of outputs. Memory is `O(block)` per thread; compute matches a dense GEMM.
//!
//! A block covers a chunk of the contraction, not all of it: the forward's block is
//! `rows × (~512 inputs)`, the input gradient's `(~1024 rows) × columns`, and a task adds the
//! chunks' products in ascending order into its part of the output (the order depends on the
//! shape only, so the bits are the same for every thread count). faer packs the left operand
//! (the tokens) again in every call; with the whole contraction in one call that was a 1 MiB
//! pack per block, and the block, the tokens and their packed copy (3 MiB) did not fit a core's
//! 2 MiB L2. Measured on 4096² 2x8, 64 tokens, 2 threads, alternating runs (best of 30–40
//! calls): forward 8.64–8.71 ms with whole-contraction blocks of 1 MiB → 7.95–8.06 with
//! 512-input chunks in blocks of 512 KiB (8.05–8.27 with 1 MiB blocks, 8.8 with 256-input
//! chunks); input gradient 9.51–9.76 → 9.12–9.27 with 1024-row chunks (9.85–10.3 with 512 KiB
//! blocks of the whole contraction).
//!
//! Measured alternatives before the chunking (same shape), none kept:
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
use crate::decode::CodeOrder::{ByInput, ByRow};
use crate::layer::AqlmLayer;

thread_local! {
    /// A decoded block of `W` and the forward's column-major scratch, kept between tasks and
    /// calls on this thread. (With rayon's `for_each_init` they were allocated and zero-filled
    /// once per split of the work, several MiB per product: `memset` took 2.8% of the samples of
    /// `layer.train_step`.) A task takes them out and puts them back, so a task nested on the
    /// same thread (rayon may run another while one waits) allocates its own.
    static TILE_SCRATCH: Cell<(Vec<f32>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// Target number of `f32` in one decoded block (512 KiB).
const TILE_FLOATS: usize = 1 << 17;

/// Target length of the forward's contraction chunk, in input features.
const FORWARD_CHUNK: usize = 512;

/// Target length of the input gradient's contraction chunk, in output features.
const BACKWARD_CHUNK: usize = 1024;

/// The fewest blocks a product is split into (fewer only when it has fewer groups). With one
/// block per 1 MiB alone, a layer of one or two blocks' worth (SmolLM2's 576 × 576 projections:
/// 1.3 MiB) ran as a full block and a sliver, or as one block, on one of two threads.
const MIN_BLOCKS: usize = 4;

/// `groups` split into blocks of about `per_group` floats each: the group count per block of
/// the fewest blocks of at most [`TILE_FLOATS`], at least [`MIN_BLOCKS`] and a multiple of it
/// (so that 2 or 4 threads get equal shares), in equal sizes (the last one possibly smaller).
/// Depends on the shape only, never on the thread count.
fn groups_per_block(groups: usize, per_group: usize) -> usize {
    let blocks = (groups * per_group)
        .div_ceil(TILE_FLOATS)
        .next_multiple_of(MIN_BLOCKS)
        .clamp(1, groups.max(1));
    groups.div_ceil(blocks).max(1)
}

/// `groups` groups of `group_len` features split into the fewest chunks of at most `target`
/// features (at least one group each), in equal sizes (the last one possibly smaller): the
/// group count per chunk.
fn groups_per_chunk(groups: usize, group_len: usize, target: usize) -> usize {
    let chunks = (groups * group_len).div_ceil(target).max(1);
    groups.div_ceil(chunks).max(1)
}

/// The forward's blocks: `(output groups per block, input groups per contraction chunk)`.
fn forward_blocks(layer: &AqlmLayer) -> (usize, usize) {
    let s = &layer.scheme;
    let chunk = groups_per_chunk(layer.in_groups(), s.in_group_size, FORWARD_CHUNK);
    let per_group = s.out_group_size * chunk * s.in_group_size;
    (groups_per_block(layer.out_groups(), per_group), chunk)
}

/// The input gradient's blocks: `(input groups per block, output groups per contraction
/// chunk)`.
fn backward_blocks(layer: &AqlmLayer) -> (usize, usize) {
    let s = &layer.scheme;
    let chunk = groups_per_chunk(layer.out_groups(), s.out_group_size, BACKWARD_CHUNK);
    let per_group = s.in_group_size * chunk * s.out_group_size;
    (groups_per_block(layer.in_groups(), per_group), chunk)
}

/// Floats in one forward block.
pub(crate) fn tile_floats(layer: &AqlmLayer) -> usize {
    let (rows, chunk) = forward_blocks(layer);
    rows * layer.scheme.out_group_size * chunk * layer.scheme.in_group_size
}

/// Floats in one input-gradient block.
pub(crate) fn col_tile_floats(layer: &AqlmLayer) -> usize {
    let (cols, chunk) = backward_blocks(layer);
    cols * layer.scheme.in_group_size * chunk * layer.scheme.out_group_size
}

/// Tokens from which [`forward_into`] multiplies straight into an output whose rows are not
/// contiguous (a row-major `y`, as candle's tensors are); below, each block's product goes to a
/// column-major scratch first and is then copied. faer's product into a row-major block is the
/// slower one for few tokens and the faster one for many, copy included (oftq-candle's
/// `candle.fwd_bwd…t64` bench: 5% slower direct, on par through the scratch; a 512-token
/// forward of SmolLM2-135M's 2x8 folder: about 2% faster direct).
const DIRECT_MIN_TOKENS: usize = 256;

/// `y = x·Wᵀ` (no bias) for `y [tokens, out]` of any strides, blocks of output rows, each task
/// writing its columns of `y`: `Σ_c x[:, chunk c]·W[rows, chunk c]ᵀ` over the contraction
/// chunks in ascending order (see [`DIRECT_MIN_TOKENS`] for `y` with non-contiguous columns).
/// The same bits for every layout of `y`.
pub(crate) fn forward_into(layer: &AqlmLayer, x: MatRef<'_, f32>, y: MatMut<'_, f32>) {
    let (og, ig, n_ig) = (
        layer.scheme.out_group_size,
        layer.scheme.in_group_size,
        layer.in_groups(),
    );
    let (groups, chunk) = forward_blocks(layer);
    let through_scratch = y.row_stride() != 1 && x.nrows() < DIRECT_MIN_TOKENS;
    y.par_col_chunks_mut(groups * og)
        .enumerate()
        .for_each(|(ci, mut dst)| {
            let (mut w, mut scratch) = TILE_SCRATCH.take();
            let (o0, rows) = (ci * groups, dst.ncols());
            let mut products = |mut acc: MatMut<'_, f32>| {
                for j0 in (0..n_ig).step_by(chunk) {
                    let j1 = (j0 + chunk).min(n_ig);
                    let len = rows * (j1 - j0) * ig;
                    // Every element is overwritten by the decode: no zeroing beyond the first
                    // growth.
                    w.resize(len, 0.0);
                    layer.decode_block_into(ByRow, o0, o0 + rows / og, j0, j1, &mut w[..len]);
                    let wm = MatRef::from_row_major_slice(&w[..len], rows, (j1 - j0) * ig);
                    let xs = x.subcols(j0 * ig, (j1 - j0) * ig);
                    matmul(acc.as_mut(), accum(j0), xs, wm.transpose(), 1.0, Par::Seq);
                }
            };
            if through_scratch {
                scratch.resize(dst.nrows() * rows, 0.0);
                let mut t = MatMut::from_column_major_slice_mut(&mut scratch, dst.nrows(), rows);
                products(t.as_mut());
                dst.copy_from(t);
            } else {
                products(dst);
            }
            clear_upper_simd_state();
            TILE_SCRATCH.set((w, scratch));
        });
}

/// `dy·W`, blocks of input columns, each task writing its columns of the result:
/// `Σ_c dy[:, chunk c]·W[chunk c, cols]` over the contraction chunks in ascending order.
pub(crate) fn backward(layer: &AqlmLayer, dy: MatRef<'_, f32>) -> Mat<f32> {
    let (og, ig, n_og) = (
        layer.scheme.out_group_size,
        layer.scheme.in_group_size,
        layer.out_groups(),
    );
    let (groups, chunk) = backward_blocks(layer);
    let mut dx = Mat::<f32>::zeros(dy.nrows(), layer.in_features);
    dx.as_mut()
        .par_col_chunks_mut(groups * ig)
        .enumerate()
        .for_each(|(ci, mut dst)| {
            let (mut w, scratch) = TILE_SCRATCH.take();
            let (j0, cols) = (ci * groups, dst.ncols());
            for g0 in (0..n_og).step_by(chunk) {
                let g1 = (g0 + chunk).min(n_og);
                let len = (g1 - g0) * og * cols;
                w.resize(len, 0.0);
                layer.decode_block_into(ByInput, g0, g1, j0, j0 + cols / ig, &mut w[..len]);
                let wm = MatRef::from_row_major_slice(&w[..len], (g1 - g0) * og, cols);
                let dys = dy.subcols(g0 * og, (g1 - g0) * og);
                matmul(dst.as_mut(), accum(g0), dys, wm, 1.0, Par::Seq);
            }
            clear_upper_simd_state();
            TILE_SCRATCH.set((w, scratch));
        });
    dx
}

/// The first contraction chunk replaces the output, the others add to it.
fn accum(chunk_start: usize) -> Accum {
    if chunk_start == 0 {
        Accum::Replace
    } else {
        Accum::Add
    }
}

#[cfg(test)]
mod tests {
    use super::{groups_per_block, groups_per_chunk};

    /// Blocks of at most 512 KiB, at least four of them when there are four groups, equal sizes.
    #[test]
    fn blocks_are_bounded_balanced_and_at_least_four() {
        // SmolLM2's q projection by rows, one chunk of 288 inputs: 576 groups of 288 floats,
        // 648 KiB: 4 blocks of 144.
        assert_eq!(groups_per_block(576, 288), 144);
        // 4096 × 4096 in chunks of 512 inputs: 16 blocks of 256 rows (512 KiB each).
        assert_eq!(groups_per_block(4096, 512), 256);
        // Fewer groups than blocks: one group per block.
        assert_eq!(groups_per_block(3, 10), 1);
        assert_eq!(groups_per_block(1, 1 << 30), 1);
        // Large groups: never above the target unless one group already is.
        let g = groups_per_block(1000, 5000);
        assert!(g * 5000 <= 1 << 17 && 1000usize.div_ceil(g) >= 4);
        // A multiple of four blocks: SmolLM2's down projection by columns (192 groups of
        // 4608 floats, 6.75 blocks' worth) in 8 blocks of 24, not 7 (4 + 3 on two threads).
        assert_eq!(groups_per_block(192, 4608), 24);
    }

    /// Contraction chunks: the fewest of at most the target, in equal sizes, at least one group.
    #[test]
    fn chunks_are_bounded_and_balanced() {
        // 4096 inputs in groups of 8: 8 chunks of 64 groups (512 inputs).
        assert_eq!(groups_per_chunk(512, 8, 512), 64);
        // 576 inputs: 2 chunks of 36 groups (288 inputs), not 512 + 64.
        assert_eq!(groups_per_chunk(72, 8, 512), 36);
        // 1536 output rows: 2 chunks of 768; no more than one chunk below the target.
        assert_eq!(groups_per_chunk(1536, 1, 1024), 768);
        assert_eq!(groups_per_chunk(300, 1, 1024), 300);
        // A group longer than the target is a chunk on its own.
        assert_eq!(groups_per_chunk(3, 2048, 1024), 1);
    }
}
