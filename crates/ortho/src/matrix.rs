//! Allocation helpers: matrices without faer's per-element initialisation.

use std::mem::MaybeUninit;

use faer::{Mat, MatMut};

use crate::real::Real;

/// A `rows × cols` zero matrix, written with plain (vectorizable) stores, then handed to `fill`.
pub(crate) fn zeroed_with<T: Real>(
    rows: usize,
    cols: usize,
    fill: impl FnOnce(MatMut<'_, T>),
) -> Mat<T> {
    let mut m = Mat::<T>::with_capacity(rows, cols);
    let len = m.col_stride().unsigned_abs() * cols;
    if len > 0 {
        // SAFETY: the reserved capacity holds at least `col_stride · cols` elements (column stride
        // `row_capacity ≥ rows`); a `MaybeUninit` view of uninitialised memory is sound.
        let spare =
            unsafe { std::slice::from_raw_parts_mut(m.as_ptr_mut().cast::<MaybeUninit<T>>(), len) };
        spare.fill(MaybeUninit::new(T::zero()));
    }
    // SAFETY: every element of the new shape was just initialised.
    unsafe { m.set_dims(rows, cols) };
    fill(m.as_mut());
    m
}
