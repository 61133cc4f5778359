//! Allocation helpers: matrices without faer's per-element initialisation.

use std::mem::MaybeUninit;

use faer::{Mat, MatMut, MatRef};
use rayon::prelude::*;

use crate::real::Real;

/// Whether every entry of `m` is finite: a boolean AND down contiguous columns (vectorized;
/// faer's `is_all_finite` visits entries one by one through a closure), with a fallback for other
/// layouts.
pub(crate) fn all_finite<T: Real>(m: MatRef<'_, T>) -> bool {
    let by_rows = m.transpose();
    let (m, cols) = if m.row_stride() == 1 || m.ncols() == 0 {
        (m, m.ncols())
    } else if by_rows.row_stride() == 1 {
        (by_rows, by_rows.ncols())
    } else {
        return m.is_all_finite();
    };
    (0..cols).all(|j| match m.col(j).try_as_col_major() {
        Some(col) => col.as_slice().iter().fold(true, |ok, v| ok & v.is_finite()),
        None => m.col(j).is_all_finite(),
    })
}

/// A `rows × cols` zero matrix, written with plain (vectorizable) stores, then handed to `fill`.
pub(crate) fn zeroed_with<T: Real>(
    rows: usize,
    cols: usize,
    fill: impl FnOnce(MatMut<'_, T>),
) -> Mat<T> {
    let mut m = zeroed_storage_with(rows, cols, |_, _| {});
    fill(m.as_mut());
    m
}

/// A `rows × cols` zero matrix whose whole column-major storage is handed to `fill(storage, ld)`
/// as one slice: entry `(i, j)` is `storage[i + j·ld]` (`ld ≥ rows`; the padding rows are zero
/// too and may be written, they are never read as entries).
pub(crate) fn zeroed_storage_with<T: Real>(
    rows: usize,
    cols: usize,
    fill: impl FnOnce(&mut [T], usize),
) -> Mat<T> {
    let mut m = Mat::<T>::with_capacity(rows, cols);
    let ld = m.col_stride().unsigned_abs();
    let len = ld * cols;
    if len > 0 {
        // SAFETY: the reserved capacity holds at least `col_stride · cols` elements (column stride
        // `row_capacity ≥ rows`); a `MaybeUninit` view of uninitialised memory is sound.
        let spare =
            unsafe { std::slice::from_raw_parts_mut(m.as_ptr_mut().cast::<MaybeUninit<T>>(), len) };
        spare.fill(MaybeUninit::new(T::zero()));
        // SAFETY: the same `len` elements, all initialised just above; `MaybeUninit<T>` has the
        // layout of `T`, and the slice is the only access to them while `fill` runs.
        let storage = unsafe { std::slice::from_raw_parts_mut(m.as_ptr_mut(), len) };
        fill(storage, ld);
    }
    // SAFETY: every element of the new shape was initialised above.
    unsafe { m.set_dims(rows, cols) };
    m
}

/// A `rows × cols` matrix built block of columns by block of columns in parallel, without a
/// zero-fill: the task of column block `j` (columns
/// `j·width ..`, `ncols` of them, the last block possibly narrower) gets its storage
/// uninitialised as `fill(j, storage, ncols, col_stride)`, element `(i, c)` of the block at
/// `storage[i + c·col_stride]`. Returns the matrix and `fill`'s results in block order.
///
/// # Safety
/// `fill` must initialise every `storage[i + c·col_stride]`, `i < rows`, `c < ncols`, of the
/// block it is given (the padding rows past `rows` may stay uninitialised).
pub(crate) unsafe fn par_col_blocks_uninit<T: Real, U: Send>(
    rows: usize,
    cols: usize,
    width: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>], usize, usize) -> U + Sync + Send,
) -> (Mat<T>, Vec<U>) {
    let width = width.max(1);
    let mut m = Mat::<T>::with_capacity(rows, cols);
    let stride = m.col_stride().unsigned_abs();
    if rows == 0 || cols == 0 || stride == 0 {
        let out = (0..cols.div_ceil(width))
            .into_par_iter()
            .map(|j| fill(j, &mut [], width.min(cols - j * width), 0))
            .collect();
        return (Mat::zeros(rows, cols), out);
    }
    // SAFETY: the reserved capacity holds `col_stride · cols` elements (column stride
    // `row_capacity ≥ rows`, at least `cols` columns); a `MaybeUninit` view of uninitialised
    // memory is sound, and the slice is the only access to it until `set_dims`.
    let spare = unsafe {
        std::slice::from_raw_parts_mut(m.as_ptr_mut().cast::<MaybeUninit<T>>(), stride * cols)
    };
    let out = spare
        .par_chunks_mut(stride * width)
        .enumerate()
        .map(|(j, chunk)| {
            let ncols = chunk.len() / stride;
            fill(j, chunk, ncols, stride)
        })
        .collect();
    // SAFETY: the chunks cover all `cols` columns, each initialised by `fill` (the contract).
    unsafe { m.set_dims(rows, cols) };
    (m, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_col_blocks_covers_every_column_once() {
        for (rows, cols, width) in [(5, 12, 4), (3, 10, 4), (0, 8, 4), (4, 0, 2), (7, 7, 7)] {
            let fill = |j: usize, b: &mut [MaybeUninit<f64>], ncols: usize, ld: usize| {
                assert_eq!(ncols, width.min(cols - j * width));
                for c in 0..ncols {
                    for r in 0..rows {
                        b[r + c * ld].write((j * 100 + c * 10 + r) as f64);
                    }
                }
                j
            };
            // SAFETY: `fill` writes every element of its block.
            let (m, tags) = unsafe { par_col_blocks_uninit::<f64, usize>(rows, cols, width, fill) };
            assert_eq!((m.nrows(), m.ncols()), (rows, cols));
            assert_eq!(tags, (0..cols.div_ceil(width)).collect::<Vec<_>>());
            for c in 0..cols {
                for r in 0..rows {
                    let want = ((c / width) * 100 + (c % width) * 10 + r) as f64;
                    assert_eq!(m[(r, c)], want);
                }
            }
        }
    }
}
