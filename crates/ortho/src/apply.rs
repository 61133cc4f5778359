//! Input-centric application of block-diagonal rotations to activations `[tokens, d]`.
//!
//! Block `j` acts on features `[j·b, (j+1)·b)`: `y_j = x_j · R_j` (row vector times matrix), so
//! `y = x · R_bd` without ever forming the `d × d` matrix. Work is split over blocks with rayon
//! (one task per column block, [`par_col_blocks_uninit`]); each block is one sequential product
//! of the hand-written kernels ([`gemm_uninit`] for `x_j·R_j`, `dy_j·R_jᵀ`; for `x_jᵀ·dy_j`
//! [`gemm_tn_uninit`] up to [`TN_MAX_BLOCK`], above it [`gemm_tn_panel_uninit`] for `f32` with
//! AVX-512 and faer's sequential product otherwise), so results do not depend on the thread
//! count. The kernels write straight into the uninitialised outputs: no zero-fill of `y` and `dx`
//! (it cost ~10% of a 512 × 4096 forward + backward).

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};

use crate::block_stack::BlockStack;
use crate::kernels::block_gemm::{copy_uninit, gemm_tn_panel_uninit, gemm_tn_uninit, gemm_uninit};
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

/// Rows up to which [`apply_blocks`] (`Side::Plain`) uses dot products on the calling thread: the
/// block kernel computes whole tiles of rows and hands blocks to the pool, which for one token
/// (about a thousand multiply-adds per block) costs more than the work — measured while
/// generating with SmolLM2 (210 rotations per token), 8% of the time per token.
pub(crate) const FEW_ROWS: usize = 2;

/// [`apply_blocks`] for at most [`FEW_ROWS`] rows, `Side::Plain`: `y_j[c] = Σ_k x_j[k]·R_j[k, c]`,
/// each dot product summed in eight interleaved partial sums (added pairwise at the end), so that
/// it vectorizes.
fn apply_blocks_few_rows<T: Real>(
    x: MatRef<'_, T>,
    blocks: &BlockStack<T>,
    b: usize,
    shared: bool,
    keep: Option<&[bool]>,
) -> Mat<T> {
    let (rows, d) = (x.nrows(), x.ncols());
    let mut y = Mat::<T>::zeros(rows, d);
    let mut xb = vec![T::zero(); d];
    let mut col = vec![T::zero(); b];
    for row in 0..rows {
        for (k, v) in xb.iter_mut().enumerate() {
            *v = x[(row, k)];
        }
        for j in 0..d / b.max(1) {
            let xj = &xb[j * b..(j + 1) * b];
            if dropped(keep, j) {
                for (k, v) in xj.iter().enumerate() {
                    y[(row, j * b + k)] = *v;
                }
                continue;
            }
            let r = blocks.block(if shared { 0 } else { j });
            for c in 0..b {
                let rc = r.col(c);
                let rc = match rc.try_as_col_major() {
                    Some(s) => s.as_slice(),
                    None => {
                        for (k, v) in col.iter_mut().enumerate() {
                            *v = rc[k];
                        }
                        &col[..]
                    }
                };
                y[(row, j * b + c)] = dot8(xj, rc);
            }
        }
    }
    y
}

/// `Σ a_k·b_k` in eight interleaved partial sums, combined pairwise.
fn dot8<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[i] += *x * *y;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Backward of [`apply_blocks`] with `Side::Plain`: returns `dx = dy · R_bdᵀ` and, per position
/// `j`, `∂L/∂R_j = x_jᵀ · dy_j` (zero for dropped positions), all of them in one allocation.
///
/// # Panics
/// Unless `dy` has the shape of `x`, `block_size ≥ 1` divides `x.ncols()`, and `blocks` holds
/// `block_size × block_size` items, one per position (or at least one if `shared`). The callers
/// check these and return typed errors first; the assertions keep the uninitialised outputs
/// from ever being read when a caller does not.
pub(crate) fn apply_blocks_backward<T: Real>(
    x: MatRef<'_, T>,
    dy: MatRef<'_, T>,
    blocks: &BlockStack<T>,
    block_size: usize,
    shared: bool,
    keep: Option<&[bool]>,
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
    let chunks: Vec<_> = dx
        .chunks(b, positions)
        .into_iter()
        .zip(dr.chunks(b, positions))
        .collect();
    map_items_if(
        x.nrows() * x.ncols() >= PAR_MIN_ELEMENTS,
        chunks,
        |j, (dxj, drj)| {
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
        },
    );
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
