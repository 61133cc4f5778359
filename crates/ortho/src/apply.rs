//! Input-centric application of block-diagonal rotations to activations `[tokens, d]`.
//!
//! Block `j` acts on features `[j·b, (j+1)·b)`: `y_j = x_j · R_j` (row vector times matrix), so
//! `y = x · R_bd` without ever forming the `d × d` matrix. Work is split over blocks with rayon
//! (one task per column block, [`par_col_blocks_uninit`]); each block is one sequential product
//! of the hand-written kernels ([`gemm_uninit`] for `x_j·R_j`, `dy_j·R_jᵀ`; for `x_jᵀ·dy_j`
//! [`gemm_tn_uninit`] up to [`TN_MAX_BLOCK`], above it [`gemm_tn_panel_uninit`] for `f32` with
//! AVX-512 and faer's sequential product otherwise), so results do not depend on the thread
//! count. The kernels write straight into the uninitialised outputs: no zero-fill of `y` and `dx`
//! (it cost ~10% of a 512 × 4096 forward + backward). One or two rows (a generated token) are
//! multiplied row by row on the calling thread ([`row_times_rows`]), in the same rounding.

use std::mem::MaybeUninit;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};

use crate::block_stack::BlockStack;
use crate::kernels::block_gemm::{copy_uninit, gemm_tn_panel_uninit, gemm_tn_uninit, gemm_uninit};
use crate::kernels::prefetch;
use crate::kernels::row_product::row_times_rows;
use crate::kernels::transpose::transpose_into;
use crate::matrix::{
    PAR_MIN_ELEMENTS, UninitMat, init_zeroed, map_items_if, par_col_blocks_uninit,
};
use crate::real::Real;

/// Largest block size for which `x_jᵀ·dy_j` uses [`gemm_tn_uninit`]; above it faer's packed
/// product is faster (single core, `x_j` and `dy_j` of 512 rows: 31 vs 15 GFLOP/s at b = 8, 43
/// vs 36 at 16, par at 32, 61 vs 74 at 64, 65 vs 94 at 128), and the transposed-panel kernel
/// faster still where it runs.
const TN_MAX_BLOCK: usize = 16;

/// Which matrix each block multiplies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// `y_j = x_j · R_j`.
    Plain,
    /// `y_j = x_j · R_jᵀ`.
    Transposed,
}

/// Whether position `j` is the identity (`keep[j] == false`).
fn dropped(keep: Option<&[bool]>, j: usize) -> bool {
    keep.is_some_and(|k| !k.get(j).copied().unwrap_or(true))
}

/// `y = x · diag(blocks[map(j)])` (or with each block transposed), `map(j) = 0` if `shared`, else
/// `j`. `keep[j] = false` makes position `j` the identity (module dropout). Shapes are checked by
/// the caller (`x.ncols()` a multiple of `block_size`, one block per position unless `shared`).
pub(crate) fn apply_blocks<T: Real>(
    x: MatRef<'_, T>,
    blocks: &BlockStack<T>,
    block_size: usize,
    shared: bool,
    side: Side,
    keep: Option<&[bool]>,
) -> Mat<T> {
    if x.nrows() <= FEW_ROWS && side == Side::Plain {
        return apply_blocks_few_rows(x, blocks, block_size, shared, keep);
    }
    let fill = |j: usize, yj: &mut [_], ncols: usize, ld: usize| {
        let xj = x.subcols(j * block_size, ncols);
        if dropped(keep, j) {
            copy_uninit(xj, yj, ld);
            return;
        }
        let r = blocks.block(if shared { 0 } else { j });
        let r = match side {
            Side::Plain => r,
            Side::Transposed => r.transpose(),
        };
        gemm_uninit(T::one(), xj, r, yj, ld);
    };
    // SAFETY: `copy_uninit` and `gemm_uninit` initialise every element of the `rows × ncols`
    // block (`R_j` is `b × b` and the block `b` columns wide).
    unsafe { par_col_blocks_uninit(x.nrows(), x.ncols(), block_size, fill) }.0
}

/// Rows up to which [`apply_blocks`] (`Side::Plain`) multiplies row by row on the calling
/// thread: the block kernel computes whole tiles of rows and hands blocks to the pool, which for
/// one token (about a thousand multiply-adds per block) costs more than the work — measured
/// while generating with SmolLM2 (210 rotations per token), 8% of the time per token.
pub(crate) const FEW_ROWS: usize = 2;

/// [`apply_blocks`] for at most [`FEW_ROWS`] rows, `Side::Plain`: per position, `R_j` transposed
/// once into row-major storage, then each row `y_j = x_j·R_j` by [`row_times_rows`] — the
/// rounding of the block kernel, so a row gets the same bits alone or among many. The next
/// position's block is prefetched meanwhile: while generating, the blocks (19 MB for adapters on
/// all of SmolLM2's projections) come from memory once per token and bound this loop. SmolLM2
/// 2x8 with OFT adapters, 64 greedy tokens, 3 alternating runs: 44.9–47.4 → 48.8–50.0 tokens/s
/// against dot products of `x_j` with the columns of `R_j`, as this was before (those took 18%
/// of the time per generated token).
fn apply_blocks_few_rows<T: Real>(
    x: MatRef<'_, T>,
    blocks: &BlockStack<T>,
    b: usize,
    shared: bool,
    keep: Option<&[bool]>,
) -> Mat<T> {
    let (rows, d) = (x.nrows(), x.ncols());
    let mut y = Mat::<T>::zeros(rows, d);
    if b == 0 {
        return y;
    }
    debug_assert_eq!((blocks.nrows(), blocks.ncols()), (b, b), "blocks of b × b");
    let (mut xb, mut yb) = (vec![T::zero(); b], vec![T::zero(); b]);
    let mut r_rows = vec![T::zero(); b * b];
    let mut transposed = None;
    for j in 0..d / b {
        let cols = j * b..(j + 1) * b;
        if !shared && j + 1 < blocks.len() {
            // The next block, while this one is transposed and used: the blocks of a model's
            // adapters come from memory once per generated token.
            let next = blocks.block(j + 1);
            let bytes = next.ncols() * next.col_stride().unsigned_abs() * size_of::<T>();
            let base = next.as_ptr().cast::<u8>();
            for off in (0..bytes).step_by(64) {
                prefetch(base.wrapping_add(off));
            }
        }
        if dropped(keep, j) {
            for row in 0..rows {
                for c in cols.clone() {
                    y[(row, c)] = x[(row, c)];
                }
            }
            continue;
        }
        let i = if shared { 0 } else { j };
        if transposed != Some(i) {
            // `r_rows[k·b + c] = R_i[k, c]`.
            transpose_into(blocks.block(i), &mut r_rows, b);
            transposed = Some(i);
        }
        for row in 0..rows {
            for (v, c) in xb.iter_mut().zip(cols.clone()) {
                *v = x[(row, c)];
            }
            row_times_rows(&xb, &r_rows, b, &mut yb);
            for (&v, c) in yb.iter().zip(cols.clone()) {
                y[(row, c)] = v;
            }
        }
    }
    y
}

/// Backward of [`apply_blocks`] with `Side::Plain`: returns `dx = dy · R_bdᵀ` and, per position
/// `j`, `∂L/∂R_j = x_jᵀ · dy_j` (zero for dropped positions), all of them in one allocation.
///
/// `per_block(j, ∂L/∂R_j, e_j)` then runs in the same task, while `∂L/∂R_j` is in cache, with the
/// `j`-th item of `extra` (`None` past its end): the rotation's backward derives each block's
/// parameter gradient there, so the whole backward is one parallel region (each costs tens of
/// microseconds to start from outside the pool: 17–64 µs measured here for an empty one).
///
/// # Panics
/// Unless `dy` has the shape of `x`, `block_size ≥ 1` divides `x.ncols()`, and `blocks` holds
/// `block_size × block_size` items, one per position (or at least one if `shared`). The callers
/// check these and return typed errors first; the assertions keep the uninitialised outputs
/// from ever being read when a caller does not.
pub(crate) fn apply_blocks_backward<T: Real, E: Send>(
    x: MatRef<'_, T>,
    dy: MatRef<'_, T>,
    blocks: &BlockStack<T>,
    block_size: usize,
    shared: bool,
    keep: Option<&[bool]>,
    extra: Vec<E>,
    per_block: impl Fn(usize, MatRef<'_, T>, Option<E>) + Sync + Send,
) -> (Mat<T>, BlockStack<T>) {
    assert!(
        block_size >= 1 && x.ncols().is_multiple_of(block_size),
        "block size {block_size} does not divide {} features",
        x.ncols()
    );
    assert!(
        dy.nrows() == x.nrows() && dy.ncols() == x.ncols(),
        "dy is {}×{}, x is {}×{}",
        dy.nrows(),
        dy.ncols(),
        x.nrows(),
        x.ncols()
    );
    let (b, positions) = (block_size, x.ncols() / block_size);
    assert!(
        blocks.nrows() == b
            && blocks.ncols() == b
            && blocks.len() >= if shared { positions.min(1) } else { positions },
        "{} blocks of {}×{} for {positions} positions of size {b} (shared: {shared})",
        blocks.len(),
        blocks.nrows(),
        blocks.ncols()
    );
    let mut dx = UninitMat::new(x.nrows(), x.ncols(), x.nrows());
    let mut dr = UninitMat::new(b, positions * b, b);
    let (ldx, ldr) = (dx.ld(), dr.ld());
    // Position `j`: `dy_j` and zeros for a dropped position, else `dy_j·R_jᵀ` and `x_jᵀ·dy_j`.
    let write = |j: usize, dxj: &mut [MaybeUninit<T>], drj: &mut [MaybeUninit<T>]| {
        let dyj = dy.subcols(j * b, b);
        if dropped(keep, j) {
            copy_uninit(dyj, dxj, ldx);
            init_zeroed(drj);
            return;
        }
        let r = blocks.block(if shared { 0 } else { j });
        gemm_uninit(T::one(), dyj, r.transpose(), dxj, ldx);
        let xj = x.subcols(j * b, b);
        if b <= TN_MAX_BLOCK {
            gemm_tn_uninit(xj, dyj, drj, ldr);
        } else if gemm_tn_panel_uninit(xj, dyj, drj, ldr) {
            // Written by the transposed-panel kernel (AVX-512, f32).
        } else {
            let drj = init_zeroed(drj);
            let c = MatMut::from_column_major_slice_with_stride_mut(drj, b, b, ldr);
            matmul(c, Accum::Replace, xj.transpose(), dyj, T::one(), Par::Seq);
            crate::kernels::isa::clear_upper_simd_state();
        }
    };
    // In parallel when the products are large enough, or when the per-block steps are (about
    // `b²/2` outputs each, a packed gradient): with a few tokens they are most of the work.
    let steps = if extra.is_empty() {
        0
    } else {
        positions * b * b / 2
    };
    let parallel = x.nrows() * x.ncols() >= PAR_MIN_ELEMENTS || steps >= PAR_MIN_ELEMENTS;
    let mut extra = extra.into_iter();
    let chunks: Vec<_> = dx
        .chunks(b, positions)
        .into_iter()
        .zip(dr.chunks(b, positions))
        .map(|(dxj, drj)| (dxj, drj, extra.next()))
        .collect();
    map_items_if(parallel, chunks, |j, (dxj, drj, e)| {
        write(j, dxj, drj);
        // SAFETY: `write` initialised the `b × b` entries of `drj` (column stride `ldr ≥ b`,
        // `b` columns); the view reads only those (never the padding rows), while `drj` is
        // borrowed and no longer written.
        let g = unsafe { MatRef::from_raw_parts(drj.as_ptr().cast::<T>(), b, b, 1, ldr as isize) };
        per_block(j, g, e);
    });
    // SAFETY: the chunks cover all `positions·b = x.ncols()` columns of `dx` and `dr` (asserted
    // above); every position's task wrote its `rows × b` columns of `dx` (`copy_uninit`, or
    // `gemm_uninit` of `dy_j` with `dy.nrows() = rows` rows, asserted) and its `b × b` block of
    // `dr` (zeros, `gemm_tn_uninit` or the product; `R_j` is `b × b`, asserted).
    unsafe {
        (
            dx.assume_init(),
            BlockStack::from_parts(dr.assume_init(), positions, b),
        )
    }
}
