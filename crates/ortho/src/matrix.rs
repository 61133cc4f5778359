//! Allocation helpers: matrices without faer's per-element initialisation.

use std::mem::MaybeUninit;

use faer::Mat;
use rayon::prelude::*;

use crate::real::Real;

/// Whether every entry of `s` is finite: a boolean AND, which is associative and so vectorizes
/// (a float sum used as a NaN check would be a serial chain).
pub(crate) fn slice_finite<T: Real>(s: &[T]) -> bool {
    s.iter().fold(true, |ok, v| ok & v.is_finite())
}

/// A `rows × cols` zero matrix whose whole column-major storage is handed to `fill(storage, ld)`
/// as one slice: entry `(i, j)` is `storage[i + j·ld]` (`ld ≥ rows`; the padding rows are zero
/// too and may be written, they are never read as entries).
pub(crate) fn zeroed_storage_with<T: Real>(
    rows: usize,
    cols: usize,
    fill: impl FnOnce(&mut [T], usize),
) -> Mat<T> {
    zeroed_storage_padded(rows, cols, rows, fill).0
}

/// [`zeroed_storage_with`] with the column stride `ld` at least `row_capacity` (faer rounds it up
/// to its alignment), so `fill(storage, ld)` sees at least `row_capacity − rows` zero padding
/// rows; returns `fill`'s result too.
pub(crate) fn zeroed_storage_padded<T: Real, U>(
    rows: usize,
    cols: usize,
    row_capacity: usize,
    fill: impl FnOnce(&mut [T], usize) -> U,
) -> (Mat<T>, U) {
    let mut m = UninitMat::new(rows, cols, row_capacity);
    let ld = m.ld();
    let storage = m.chunks(cols, 1).pop().unwrap_or_default();
    let out = fill(init_zeroed(storage), ld);
    // SAFETY: the one chunk holds every column, all of it zeroed by `init_zeroed`.
    (unsafe { m.assume_init() }, out)
}

/// Writes zeros into `s` and returns it initialised.
pub(crate) fn init_zeroed<T: Real>(s: &mut [MaybeUninit<T>]) -> &mut [T] {
    s.fill(MaybeUninit::new(T::zero()));
    // SAFETY: every element was just written.
    unsafe { assume_init_mut(s) }
}

/// Writes zeros into rows `rows .. ld` of every column of the column-major storage `s` (column
/// stride `ld`, `s.len()` a multiple of it): the padding between columns, so that `s` is
/// initialised once its `rows × s.len()/ld` entries are written. Nothing when `ld == rows`.
pub(crate) fn zero_padding<T: Real>(s: &mut [MaybeUninit<T>], rows: usize, ld: usize) {
    if ld > rows {
        for col in s.chunks_mut(ld) {
            col.get_mut(rows..)
                .unwrap_or_default()
                .fill(MaybeUninit::new(T::zero()));
        }
    }
}

/// `s` as initialised storage.
///
/// # Safety
/// Every element of `s` is initialised.
pub(crate) unsafe fn assume_init_mut<T: Real>(s: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: the caller's contract; `MaybeUninit<T>` has the layout of `T`.
    unsafe { &mut *(std::ptr::from_mut(s) as *mut [T]) }
}

/// Initialised storage as `MaybeUninit`, for the writers of uninitialised storage.
///
/// # Safety
/// Only initialised values may be written through the result (it aliases `s`, which stays
/// initialised).
pub(crate) unsafe fn as_uninit_mut<T: Real>(s: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: `MaybeUninit<T>` has the layout of `T`; the caller writes initialised values only.
    unsafe { &mut *(std::ptr::from_mut(s) as *mut [MaybeUninit<T>]) }
}

/// The storage of a `rows × cols` matrix (column stride [`ld`](Self::ld) `≥ rows`) before it is
/// initialised: handed out as disjoint ranges of columns (to fill in parallel), then turned into
/// the matrix once every entry has been written.
pub(crate) struct UninitMat<T: Real> {
    /// Allocated, dimensions `0 × 0` until [`assume_init`](Self::assume_init).
    mat: Mat<T>,
    rows: usize,
    cols: usize,
}

impl<T: Real> UninitMat<T> {
    /// Storage with column stride at least `row_capacity` (faer rounds it up to its alignment).
    pub(crate) fn new(rows: usize, cols: usize, row_capacity: usize) -> Self {
        Self {
            mat: Mat::with_capacity(row_capacity.max(rows), cols),
            rows,
            cols,
        }
    }

    /// The column stride.
    pub(crate) fn ld(&self) -> usize {
        self.mat.col_stride().unsigned_abs()
    }

    /// `count` consecutive ranges of `width` columns: entry `(i, c)` of range `j` (column
    /// `j·width + c`) is `chunk[i + c·ld]`. The range holding the last column is cut there, and
    /// ranges past it are empty.
    pub(crate) fn chunks(&mut self, width: usize, count: usize) -> Vec<&mut [MaybeUninit<T>]> {
        let ld = self.ld();
        let len = ld * self.cols;
        let mut rest: &mut [MaybeUninit<T>] = if len == 0 {
            &mut []
        } else {
            // SAFETY: the reserved capacity holds `col_stride · cols` elements (column stride
            // `row_capacity ≥ rows`, at least `cols` columns); a `MaybeUninit` view of
            // uninitialised memory is sound, and `&mut self` makes it the only access.
            unsafe { std::slice::from_raw_parts_mut(self.mat.as_ptr_mut().cast(), len) }
        };
        (0..count)
            .map(|_| {
                let take = (ld * width).min(rest.len());
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(take);
                rest = tail;
                head
            })
            .collect()
    }

    /// The matrix.
    ///
    /// # Safety
    /// Every entry `(i, c)`, `i < rows`, `c < cols`, must have been written (padding rows past
    /// `rows` may stay uninitialised).
    pub(crate) unsafe fn assume_init(mut self) -> Mat<T> {
        // SAFETY: the caller's contract; the capacity holds the new dimensions.
        unsafe { self.mat.set_dims(self.rows, self.cols) };
        self.mat
    }
}

/// `f(i, item)` for every item, in parallel on rayon's pool, or in order on the calling thread
/// when the pool has a single thread: handing the work to that one worker and waiting for it
/// cost 5–8% of building 128 exact `32 × 32` blocks with `RAYON_NUM_THREADS=1`. Results come in
/// item order either way, and each item is computed the same way, so the thread count never
/// changes them.
pub(crate) fn map_items<I: Send, U: Send>(
    items: Vec<I>,
    f: impl Fn(usize, I) -> U + Sync + Send,
) -> Vec<U> {
    map_items_if(true, items, f)
}

/// Below this many matrix elements, [`par_col_blocks_uninit`] and the rotation backward run
/// their blocks on the calling thread: one token's rotation (576 features, 18 blocks of 32) is
/// about a microsecond of work per block, less than waking a worker. Measured on SmolLM2's
/// generation (210 rotations per token): the parallel dispatch was 7% of the time per token.
pub(crate) const PAR_MIN_ELEMENTS: usize = 1 << 14;

/// [`map_items`], on the calling thread unless `parallel`.
pub(crate) fn map_items_if<I: Send, U: Send>(
    parallel: bool,
    items: Vec<I>,
    f: impl Fn(usize, I) -> U + Sync + Send,
) -> Vec<U> {
    if parallel && rayon::current_num_threads() > 1 {
        items
            .into_par_iter()
            .enumerate()
            .map(|(i, x)| f(i, x))
            .collect()
    } else {
        items
            .into_iter()
            .enumerate()
            .map(|(i, x)| f(i, x))
            .collect()
    }
}

/// A `rows × cols` matrix built block of columns by block of columns in parallel, without a
/// zero-fill: the task of column block `j` (columns `j·width ..`, `ncols` of them, the last block
/// possibly narrower) gets its storage uninitialised as `fill(j, storage, ncols, col_stride)`,
/// element `(i, c)` of the block at `storage[i + c·col_stride]`. Returns the matrix and `fill`'s
/// results in block order.
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
    // SAFETY: forwarded contract.
    unsafe { col_blocks_uninit(rows * cols >= PAR_MIN_ELEMENTS, rows, cols, width, fill) }
}

/// [`par_col_blocks_uninit`], in parallel only if `parallel` (else on the calling thread).
///
/// # Safety
/// As [`par_col_blocks_uninit`].
pub(crate) unsafe fn col_blocks_uninit<T: Real, U: Send>(
    parallel: bool,
    rows: usize,
    cols: usize,
    width: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>], usize, usize) -> U + Sync + Send,
) -> (Mat<T>, Vec<U>) {
    let width = width.max(1);
    let mut m = UninitMat::new(rows, cols, rows);
    let ld = m.ld();
    let out = map_items_if(
        parallel,
        m.chunks(width, cols.div_ceil(width)),
        |j, chunk| fill(j, chunk, width.min(cols - j * width), ld),
    );
    // SAFETY: the chunks cover all `cols` columns, each initialised by `fill` (the contract).
    (unsafe { m.assume_init() }, out)
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
