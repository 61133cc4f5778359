//! Skew packing: PEFT's `[r, b(b−1)/2]` parameter rows ↔ skew-symmetric `b × b` blocks.
//!
//! The packed order is the strict upper triangle in row-major order, exactly
//! `torch.triu_indices(b, b, offset=1)`: `(0,1), (0,2), …, (0,b−1), (1,2), …, (b−2,b−1)`.
//! Entry `k` of a row holds `Q[i][j] = v[k]` and `Q[j][i] = −v[k]` for `i < j`, i.e. `Q = U − Uᵀ`
//! with `U` the strictly upper-triangular matrix holding `v`.

use faer::{Mat, MatRef};
use rayon::prelude::*;

use crate::error::{OrthoError, Result, shape_err};
use crate::matrix::zeroed_storage_with;
use crate::real::Real;

/// Number of packed parameters of one `b × b` skew block: `b(b−1)/2`.
///
/// ```
/// assert_eq!(oftq_ortho::n_elements(32), 496);
/// ```
pub const fn n_elements(block_size: usize) -> usize {
    block_size * block_size.saturating_sub(1) / 2
}

/// Inverts [`n_elements`]: the block size `b` with `b(b−1)/2 = n`.
///
/// `n = 0` gives `b = 1` (a 1 × 1 block, `R = I`; PEFT's prime-`in_features` case).
///
/// # Errors
/// [`OrthoError::NotTriangular`] when `n` is not a triangular number.
pub fn block_size_from_n_elements(n: usize) -> Result<usize> {
    // b = (1 + sqrt(1 + 8n)) / 2, verified exactly in integers.
    let disc = 1u128 + 8 * n as u128;
    let mut s = (disc as f64).sqrt() as u128;
    while s * s > disc {
        s -= 1;
    }
    while (s + 1) * (s + 1) <= disc {
        s += 1;
    }
    if s * s != disc {
        return Err(OrthoError::NotTriangular(n));
    }
    let b = usize::try_from(s.div_ceil(2)).map_err(|_| OrthoError::NotTriangular(n))?;
    if n_elements(b) == n {
        Ok(b)
    } else {
        Err(OrthoError::NotTriangular(n))
    }
}

/// Flat index of `(i, j)`, `i < j`, in the packed row: `k = i·b − i(i+1)/2 + (j − i − 1)`.
#[inline]
pub const fn packed_index(block_size: usize, i: usize, j: usize) -> usize {
    i * block_size - i * (i + 1) / 2 + (j - i - 1)
}

/// Builds the skew-symmetric block `Q = U − Uᵀ` from one packed row `v` of length `b(b−1)/2`.
///
/// # Errors
/// [`OrthoError::ShapeMismatch`] if `v.len() != b(b−1)/2`.
///
/// ```
/// use oftq_ortho::skew_from_packed;
/// let q = skew_from_packed(&[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0], 4).unwrap();
/// assert_eq!((q[(0, 1)], q[(1, 0)], q[(2, 3)], q[(3, 2)]), (1.0, -1.0, 6.0, -6.0));
/// ```
pub fn skew_from_packed<T: Real>(v: &[T], block_size: usize) -> Result<Mat<T>> {
    let b = block_size;
    if v.len() != n_elements(b) {
        return Err(shape_err(
            "packed skew row",
            format!("{} = b(b-1)/2 for b = {b}", n_elements(b)),
            v.len().to_string(),
        ));
    }
    Ok(skew_from_slice(v, b))
}

/// Rows of a packed `[r, n]` parameter matrix handed to `f(scratch, i, row_i)` as contiguous
/// slices, in parallel over groups of up to [`MAX_ROWS_PER_TASK`] rows (fewer when there are few
/// rows for the threads), with one `scratch = init()` per group; the results in row order,
/// independent of the grouping.
///
/// Rows of a row-major matrix are used in place; a column-major matrix (faer's default) is
/// transposed group by group first, reading down its columns: reading one of its rows directly
/// would touch a new cache line for every element.
pub(crate) fn par_map_rows<T: Real, S, U: Send>(
    packed: MatRef<'_, T>,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &[T]) -> U + Sync + Send,
) -> Vec<U> {
    let rows = packed.nrows();
    let per_task = (rows / (4 * rayon::current_num_threads())).clamp(1, MAX_ROWS_PER_TASK);
    let groups: Vec<Vec<U>> = (0..rows.div_ceil(per_task))
        .into_par_iter()
        .map(|g| {
            let (i0, m) = (g * per_task, per_task.min(rows - g * per_task));
            let block = packed.subrows(i0, m);
            let mut scratch = init();
            if let Some(rows) = (0..m)
                .map(|l| block.row(l).try_as_row_major().map(|r| r.as_slice()))
                .collect::<Option<Vec<_>>>()
            {
                return rows
                    .into_iter()
                    .enumerate()
                    .map(|(l, v)| f(&mut scratch, i0 + l, v))
                    .collect();
            }
            let n = block.ncols();
            let buf = transposed_rows(block);
            (0..m)
                .map(|l| f(&mut scratch, i0 + l, &buf[l * n..(l + 1) * n]))
                .collect()
        })
        .collect();
    groups.into_iter().flatten().collect()
}

/// Most rows per rayon task in [`par_map_rows`]: a cache line of a column-major `f32` matrix.
const MAX_ROWS_PER_TASK: usize = 16;

/// The rows of `block` (`m × n`) concatenated: row `l` is `buf[l·n ..]`. Filled column by column
/// (contiguous reads of a column-major matrix), whole groups of [`MAX_ROWS_PER_TASK`] rows with a
/// fixed-length inner loop.
fn transposed_rows<T: Real>(block: MatRef<'_, T>) -> Vec<T> {
    const M: usize = MAX_ROWS_PER_TASK;
    let (m, n) = (block.nrows(), block.ncols());
    let mut buf = vec![T::zero(); m * n];
    for k in 0..n {
        let col = block.col(k);
        match col
            .try_as_col_major()
            .and_then(|c| <&[T; M]>::try_from(c.as_slice()).ok())
        {
            Some(col) => {
                for l in 0..M {
                    buf[l * n + k] = col[l];
                }
            }
            None => {
                for (l, &v) in col.iter().enumerate() {
                    buf[l * n + k] = v;
                }
            }
        }
    }
    buf
}

/// [`skew_from_packed`] without the length check (the caller guarantees `v.len() ≥ b(b−1)/2`).
pub(crate) fn skew_from_slice<T: Real>(v: &[T], b: usize) -> Mat<T> {
    zeroed_storage_with(b, b, |q, ld| fill_skew(v, b, q, ld))
}

/// Writes `Q = U − Uᵀ` (`U[i][j] = v[packed_index(b, i, j)]`, `i < j`) column-major with column
/// stride `ld` into `out` (column `j` is `out[j·ld .. j·ld + b]`; other entries are untouched).
/// Read as row-major with row stride `ld`, that is `Qᵀ = −Q`.
///
/// One pass over the packed row: its run `k(j, j + 1) …` holds row `j` right of the diagonal,
/// `Q[j][i] = v[k(j, i)]` (one entry in each later column), and, negated, column `j` below the
/// diagonal (contiguous).
pub(crate) fn fill_skew<T: Real>(v: &[T], b: usize, out: &mut [T], ld: usize) {
    for j in 0..b {
        let (left, right) = out.split_at_mut((j + 1) * ld);
        let col = &mut left[j * ld..j * ld + b];
        col[j] = T::zero();
        if j + 1 < b {
            let k0 = packed_index(b, j, j + 1);
            let run = &v[k0..k0 + b - j - 1];
            for (x, &y) in col[j + 1..].iter_mut().zip(run) {
                *x = -y;
            }
            for (later, &y) in right.chunks_exact_mut(ld).zip(run) {
                later[j] = y;
            }
        }
    }
}

/// Reads the packed row of a (skew) block: `v[k] = Q[i][j]` for `i < j` in `triu_indices` order.
///
/// The lower triangle and diagonal are ignored, as in PEFT's `_pytorch_skew_symmetric_inv`.
///
/// # Errors
/// [`OrthoError::ShapeMismatch`] if `q` is not square.
pub fn packed_from_skew<T: Real>(q: MatRef<'_, T>) -> Result<Vec<T>> {
    let b = q.nrows();
    if q.ncols() != b {
        return Err(shape_err(
            "skew block",
            "square".into(),
            format!("{}x{}", q.nrows(), q.ncols()),
        ));
    }
    let mut v = Vec::with_capacity(n_elements(b));
    for i in 0..b {
        for j in i + 1..b {
            v.push(q[(i, j)]);
        }
    }
    Ok(v)
}

/// Pulls a gradient with respect to `Q` back to the packed parameters.
///
/// With `Q = U − Uᵀ`, `∂L/∂v_k = G[i][j] − G[j][i]` for the `k`-th pair `i < j` of
/// `G = ∂L/∂Q` (an arbitrary, not necessarily skew, `b × b` matrix). The result is appended to `out`.
pub(crate) fn packed_grad_from_skew_grad<T: Real>(g: MatRef<'_, T>, out: &mut [T]) {
    let b = g.nrows();
    let mut k = 0;
    for i in 0..b {
        for j in i + 1..b {
            out[k] = g[(i, j)] - g[(j, i)];
            k += 1;
        }
    }
}

/// Unpacks a whole `[r, b(b−1)/2]` parameter matrix into `r` skew blocks.
///
/// # Errors
/// [`OrthoError::ShapeMismatch`] if `packed.ncols() != b(b−1)/2`.
pub fn skew_blocks<T: Real>(packed: MatRef<'_, T>, block_size: usize) -> Result<Vec<Mat<T>>> {
    if packed.ncols() != n_elements(block_size) {
        return Err(shape_err(
            "packed parameters",
            format!(
                "[r, {}] for block size {block_size}",
                n_elements(block_size)
            ),
            format!("[{}, {}]", packed.nrows(), packed.ncols()),
        ));
    }
    let mut row = vec![T::zero(); packed.ncols()];
    (0..packed.nrows())
        .map(|r| {
            for (slot, v) in row.iter_mut().zip(packed.row(r).iter()) {
                *slot = *v;
            }
            skew_from_packed(&row, block_size)
        })
        .collect()
}

/// Packs `r` skew blocks into a `[r, b(b−1)/2]` parameter matrix (upper triangles, row-major).
///
/// # Errors
/// [`OrthoError::ShapeMismatch`] if the blocks are not square of one size.
pub fn pack_blocks<T: Real>(blocks: &[Mat<T>]) -> Result<Mat<T>> {
    let b = blocks.first().map_or(0, |q| q.nrows());
    let mut out = Mat::<T>::zeros(blocks.len(), n_elements(b));
    for (i, q) in blocks.iter().enumerate() {
        if q.nrows() != b || q.ncols() != b {
            return Err(shape_err(
                "skew blocks",
                format!("{b}x{b}"),
                format!("{}x{} at block {i}", q.nrows(), q.ncols()),
            ));
        }
        for (k, v) in packed_from_skew(q.as_ref())?.into_iter().enumerate() {
            out[(i, k)] = v;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_order_b4() {
        let v: Vec<f64> = (1..=6).map(f64::from).collect();
        let q = skew_from_packed(&v, 4).unwrap();
        let want = [
            [0.0, 1.0, 2.0, 3.0],
            [-1.0, 0.0, 4.0, 5.0],
            [-2.0, -4.0, 0.0, 6.0],
            [-3.0, -5.0, -6.0, 0.0],
        ];
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(q[(i, j)], want[i][j]);
            }
        }
        assert_eq!(packed_from_skew(q.as_ref()).unwrap(), v);
        assert_eq!(packed_index(4, 1, 3), 4);
    }

    #[test]
    fn inverse_of_n_elements() {
        for b in 1..300 {
            assert_eq!(block_size_from_n_elements(n_elements(b)).unwrap(), b.max(1));
        }
        assert!(block_size_from_n_elements(5).is_err());
        assert!(block_size_from_n_elements(usize::MAX).is_err());
    }

    #[test]
    fn par_map_rows_sees_every_row_in_order() {
        for (rows, cols) in [(1usize, 6usize), (5, 0), (17, 10), (40, 3), (16, 496)] {
            let m = Mat::<f64>::from_fn(rows, cols, |i, k| (i * 1000 + k) as f64);
            let want: Vec<Vec<f64>> = (0..rows)
                .map(|i| (0..cols).map(|k| m[(i, k)]).collect())
                .collect();
            let got = par_map_rows(m.as_ref(), || 0usize, |_, i, v| (i, v.to_vec()));
            let row_major = m.transpose().to_owned();
            let got_rm = par_map_rows(row_major.transpose(), || (), |_, i, v| (i, v.to_vec()));
            for g in [got, got_rm] {
                assert_eq!(g.len(), rows);
                for (i, (gi, v)) in g.into_iter().enumerate() {
                    assert_eq!((gi, &v), (i, &want[i]));
                }
            }
        }
    }

    #[test]
    fn shape_errors() {
        assert!(skew_from_packed(&[1.0f32; 5], 4).is_err());
        assert!(skew_blocks(Mat::<f32>::zeros(2, 5).as_ref(), 4).is_err());
    }
}
