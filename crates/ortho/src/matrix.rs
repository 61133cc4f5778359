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

/// A `rows × cols` matrix built block of columns by block of columns in parallel: the task of
/// column block `j` (columns `j·width ..`, the last one possibly narrower) zero-fills its block
/// and hands it to `fill(j, block)`. Zeroing inside the task that then writes the block keeps
/// it in that core's cache and spreads it over the threads (one serial 8 MiB fill cost about a
/// quarter of a 512 × 4096 rotation). Returns the matrix and `fill`'s results in block order.
pub(crate) fn par_col_blocks<T: Real, U: Send>(
    rows: usize,
    cols: usize,
    width: usize,
    fill: impl Fn(usize, MatMut<'_, T>) -> U + Sync + Send,
) -> (Mat<T>, Vec<U>) {
    let mut m = Mat::<T>::with_capacity(rows, cols);
    let stride = m.col_stride().unsigned_abs();
    if rows == 0 || cols == 0 || width == 0 || stride == 0 {
        let mut m = Mat::<T>::zeros(rows, cols);
        let out = m
            .as_mut()
            .par_col_chunks_mut(width.max(1))
            .enumerate()
            .map(|(j, block)| fill(j, block))
            .collect();
        return (m, out);
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
            chunk.fill(MaybeUninit::new(T::zero()));
            let len = chunk.len();
            // SAFETY: every element of `chunk` was just initialised; `MaybeUninit<T>` has the
            // layout of `T`.
            let chunk =
                unsafe { std::slice::from_raw_parts_mut(chunk.as_mut_ptr().cast::<T>(), len) };
            let block =
                MatMut::from_column_major_slice_with_stride_mut(chunk, rows, len / stride, stride);
            fill(j, block)
        })
        .collect();
    // SAFETY: the chunks cover all `cols` columns, each fully initialised above.
    unsafe { m.set_dims(rows, cols) };
    (m, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_col_blocks_covers_every_column_once() {
        for (rows, cols, width) in [(5, 12, 4), (3, 10, 4), (0, 8, 4), (4, 0, 2), (7, 7, 7)] {
            let (m, tags) = par_col_blocks::<f64, usize>(rows, cols, width, |j, mut b| {
                for c in 0..b.ncols() {
                    for r in 0..b.nrows() {
                        b[(r, c)] += (j * 100 + c * 10 + r) as f64;
                    }
                }
                j
            });
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
