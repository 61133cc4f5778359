//! Skew packing: PEFT's `[r, b(b−1)/2]` parameter rows ↔ skew-symmetric `b × b` blocks.
//!
//! The packed order is the strict upper triangle in row-major order, exactly
//! `torch.triu_indices(b, b, offset=1)`: `(0,1), (0,2), …, (0,b−1), (1,2), …, (b−2,b−1)`.
//! Entry `k` of a row holds `Q[i][j] = v[k]` and `Q[j][i] = −v[k]` for `i < j`, i.e. `Q = U − Uᵀ`
//! with `U` the strictly upper-triangular matrix holding `v`.

use std::mem::MaybeUninit;

use faer::{Mat, MatRef};

use crate::error::{OrthoError, Result, shape_err};
use crate::kernels::transpose::{self, Store as TileStore, TILE, transpose_tile};
use crate::matrix::{as_uninit_mut, col_blocks_uninit, zeroed_storage_with};
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

/// Rows of a packed `[rows, n]` parameter matrix per parallel task: up to
/// [`MAX_ROWS_PER_TASK`], fewer when there are few rows for the threads.
pub(crate) fn rows_per_task(rows: usize) -> usize {
    (rows / (4 * rayon::current_num_threads())).clamp(1, MAX_ROWS_PER_TASK)
}

/// Copies the rows of `block` (`m × n`, `m ≤` [`MAX_ROWS_PER_TASK`]) into the columns of `out`
/// (column stride `ld ≥ n`: row `l` to `out[l·ld .. l·ld + n]`) and returns them, now contiguous.
///
/// A column-major source (faer's default) is read down its columns, 16 rows at a time: reading
/// one of its rows directly would touch a new cache line for every element.
pub(crate) fn transpose_rows_into<'a, T: Real>(
    block: MatRef<'_, T>,
    out: &'a mut [MaybeUninit<T>],
    ld: usize,
) -> Vec<&'a [T]> {
    let (m, n) = (block.nrows(), block.ncols());
    write_transposed(block, out, ld);
    let out: &'a [MaybeUninit<T>] = out;
    (0..m)
        .map(|l| match out.get(l * ld..l * ld + n) {
            // SAFETY: `write_transposed` initialised entries `0..n` of every column `l < m`;
            // `MaybeUninit<T>` has the layout of `T`.
            Some(row) if n > 0 => unsafe { &*(std::ptr::from_ref(row) as *const [T]) },
            _ => &[],
        })
        .collect()
}

/// `mᵀ` as a new column-major matrix, built in parallel by groups of [`MAX_ROWS_PER_TASK`] rows
/// of `m` (read down their columns when `m` is column-major).
pub(crate) fn transposed<T: Real>(m: MatRef<'_, T>) -> Mat<T> {
    const G: usize = MAX_ROWS_PER_TASK;
    let fill = |j: usize, chunk: &mut [MaybeUninit<T>], ncols: usize, ld: usize| {
        write_transposed(m.subrows(j * G, ncols), chunk, ld);
    };
    let parallel = m.nrows() * m.ncols() >= TRANSPOSE_PAR_MIN_ELEMENTS;
    // SAFETY: `write_transposed` writes every entry of the chunk's `ncols` columns.
    unsafe { col_blocks_uninit(parallel, m.ncols(), m.nrows(), G, fill) }.0
}

/// From this many elements on, [`transposed`] runs in parallel. Moving an element costs well
/// under a nanosecond, while starting a parallel region from outside the pool costs 17–64 µs
/// here (an empty one): a rotation's parameter gradient (128 blocks of 32: 63 488 elements) is
/// transposed faster on the calling thread.
const TRANSPOSE_PAR_MIN_ELEMENTS: usize = 1 << 20;

/// Most rows per parallel task ([`rows_per_task`]): a cache line of a column-major `f32` matrix.
const MAX_ROWS_PER_TASK: usize = 16;

/// Writes `block` (`m × n`, `m ≤` [`MAX_ROWS_PER_TASK`]) transposed into `out`: entry `(l, k)` to
/// `out[k + l·ld]`. A column-major block is read column by column (whole groups of
/// [`MAX_ROWS_PER_TASK`] rows with a fixed-length inner loop), a row-major one row by row.
fn write_transposed<T: Real>(block: MatRef<'_, T>, out: &mut [MaybeUninit<T>], ld: usize) {
    const M: usize = MAX_ROWS_PER_TASK;
    let (m, n) = (block.nrows(), block.ncols());
    if n == 0 {
        return;
    }
    if block.col_stride() == 1 && n > 1 {
        for l in 0..m {
            for (o, &v) in out[l * ld..l * ld + n].iter_mut().zip(block.row(l).iter()) {
                o.write(v);
            }
        }
        return;
    }
    let mut k0 = 0;
    if m == M && block.row_stride() == 1 && block.col_stride() > 0 && transpose::available::<T>() {
        assert!(
            out.len() >= (M - 1) * ld + n,
            "transpose: storage too short"
        );
        while k0 + TILE <= n {
            // SAFETY: columns `k0 .. k0 + 16` of `block` hold 16 contiguous rows each (row
            // stride 1, `m = 16`); row `l < 16` of the output, entries `k0 .. k0 + 16 ≤ n`, lies
            // in `out` (asserted). The tile is written whole.
            unsafe {
                transpose_tile(
                    block.col(k0).as_ptr(),
                    block.col_stride().unsigned_abs(),
                    out.as_mut_ptr().add(k0).cast::<T>(),
                    ld,
                    TileStore::All,
                );
            }
            k0 += TILE;
        }
    }
    for k in k0..n {
        let col = block.col(k);
        match col
            .try_as_col_major()
            .and_then(|c| <&[T; M]>::try_from(c.as_slice()).ok())
        {
            Some(col) => {
                for l in 0..M {
                    out[l * ld + k].write(col[l]);
                }
            }
            None => {
                for (l, &v) in col.iter().enumerate() {
                    out[l * ld + k].write(v);
                }
            }
        }
    }
}

/// [`skew_from_packed`] without the length check (the caller guarantees `v.len() ≥ b(b−1)/2`).
pub(crate) fn skew_from_slice<T: Real>(v: &[T], b: usize) -> Mat<T> {
    zeroed_storage_with(b, b, |q, ld| fill_skew(v, b, q, ld))
}

/// Writes `Q = U − Uᵀ` (`U[i][j] = v[packed_index(b, i, j)]`, `i < j`) column-major with column
/// stride `ld` into `out` (column `j` is `out[j·ld .. j·ld + b]`; other entries are untouched).
/// Read as row-major with row stride `ld`, that is `Qᵀ = −Q`. See [`fill_skew_uninit`].
///
/// # Panics
/// If `out` is shorter than `(b − 1)·ld + b` or `v` than `b(b−1)/2`.
#[inline(always)]
pub(crate) fn fill_skew<T: Real>(v: &[T], b: usize, out: &mut [T], ld: usize) {
    // SAFETY: `fill_skew_uninit` writes initialised values only.
    fill_skew_uninit(v, b, unsafe { as_uninit_mut(out) }, ld);
}

/// [`fill_skew`] into storage that need not be initialised: on return the `b × b` entries
/// `out[i + j·ld]` are, and nothing else was written.
///
/// First every column's zero diagonal and, below it, its negated run of the packed row
/// (`Q[i][j] = −v[k(j, i)]` for `i > j`: contiguous on both sides); then the strict upper
/// triangle as the negated transpose of the lower one, `Q[i][j] = −Q[j][i]`, by 16 × 16 register
/// tiles where the machine has them ([`transpose_tile`]: `f32` with AVX-512) and element by
/// element for the rest. A diagonal tile's loads include its strict upper triangle, which it
/// does not store: those entries are zeroed first, so that nothing uninitialised is read. The
/// values are the same either way, bit for bit.
///
/// # Panics
/// If `out` is shorter than `(b − 1)·ld + b` or `v` than `b(b−1)/2`.
#[inline(always)]
pub(crate) fn fill_skew_uninit<T: Real>(v: &[T], b: usize, out: &mut [MaybeUninit<T>], ld: usize) {
    assert!(
        b == 0 || out.len() >= (b - 1) * ld + b,
        "fill_skew: storage too short"
    );
    let full = if transpose::available::<T>() {
        b / TILE * TILE
    } else {
        0
    };
    for j in 0..b {
        let col = &mut out[j * ld..j * ld + b];
        if j < full {
            // The strict upper part of the diagonal tile, which its transpose loads.
            col[j / TILE * TILE..j].fill(MaybeUninit::new(T::zero()));
        }
        col[j] = MaybeUninit::new(T::zero());
        if j + 1 < b {
            let k0 = packed_index(b, j, j + 1);
            for (x, &y) in col[j + 1..].iter_mut().zip(&v[k0..k0 + b - j - 1]) {
                *x = MaybeUninit::new(-y);
            }
        }
    }
    let p = out.as_mut_ptr().cast::<T>();
    for i0 in (0..full).step_by(TILE) {
        for j0 in (i0..full).step_by(TILE) {
            let store = if i0 == j0 {
                TileStore::StrictlyUpperNegated
            } else {
                TileStore::AllNegated
            };
            // SAFETY: the tile reads rows `j0 ..` of columns `i0 + r` and writes rows `i0 ..` of
            // columns `j0 + c` (`r, c < 16`, all indices below `b`), inside the first
            // `(b − 1)·ld + b` elements of `out` (asserted). What it reads is initialised: the
            // lower triangle and diagonal, written above, and for a diagonal tile (`j0 = i0`)
            // its strict upper triangle, zeroed above.
            unsafe { transpose_tile(p.add(i0 * ld + j0), ld, p.add(j0 * ld + i0), ld, store) };
        }
    }
    for j in full..b {
        for i in 0..j {
            // SAFETY: `i < j < b`: entry `(j, i)` of the lower triangle, written above.
            let lower = unsafe { out[i * ld + j].assume_init() };
            out[j * ld + i] = MaybeUninit::new(-lower);
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
/// `G = ∂L/∂Q` (an arbitrary, not necessarily skew, `b × b` matrix), written into `out`.
pub(crate) fn packed_grad_from_skew_grad<T: Real>(g: MatRef<'_, T>, out: &mut [T]) {
    let b = g.nrows();
    let mut k = 0;
    for i in 0..b {
        // Row i right of the diagonal minus column i below it (strided views, no index checks).
        let run = &mut out[k..k + b - i - 1];
        let (row, col) = (
            g.row(i).subcols(i + 1, b - i - 1),
            g.col(i).subrows(i + 1, b - i - 1),
        );
        for ((o, &u), &l) in run.iter_mut().zip(row.iter()).zip(col.iter()) {
            *o = u - l;
        }
        k += b - i - 1;
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
    fn transpose_rows_into_copies_every_row() {
        for (rows, cols) in [
            (1usize, 6usize),
            (5, 0),
            (16, 10),
            (3, 3),
            (16, 496),
            (3, 1),
        ] {
            let m = Mat::<f64>::from_fn(rows, cols, |i, k| (i * 1000 + k) as f64);
            let row_major = m.transpose().to_owned();
            for src in [m.as_ref(), row_major.transpose()] {
                let ld = cols + 3;
                let mut out = vec![MaybeUninit::<f64>::uninit(); rows * ld];
                let got = transpose_rows_into(src, &mut out, ld);
                assert_eq!(got.len(), rows);
                for (i, v) in got.into_iter().enumerate() {
                    assert!(
                        v.iter().copied().eq((0..cols).map(|k| m[(i, k)])),
                        "row {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn fill_skew_matches_the_definition() {
        // f32 at b ≥ 16 takes the register-tile path on AVX-512 machines; padding rows stay put.
        for b in [1usize, 5, 16, 17, 32, 40, 64] {
            let v: Vec<f32> = (0..n_elements(b)).map(|k| k as f32 * 0.25 - 3.0).collect();
            let ld = b + 3;
            let mut out = vec![f32::NAN; b * ld];
            fill_skew(&v, b, &mut out, ld);
            for j in 0..b {
                for i in 0..ld {
                    let got = out[j * ld + i];
                    let want = match i.cmp(&j) {
                        _ if i >= b => f32::NAN,
                        std::cmp::Ordering::Less => v[packed_index(b, i, j)],
                        std::cmp::Ordering::Equal => 0.0,
                        std::cmp::Ordering::Greater => -v[packed_index(b, j, i)],
                    };
                    assert_eq!(got.to_bits(), want.to_bits(), "b = {b}, ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn transposed_matches_faer() {
        for (rows, cols) in [
            (0usize, 3usize),
            (3, 0),
            (1, 1),
            (17, 5),
            (40, 33),
            (496, 128),
        ] {
            let m = Mat::<f32>::from_fn(rows, cols, |i, j| (i * 1000 + j) as f32);
            assert_eq!(transposed(m.as_ref()), m.transpose().to_owned());
            let rm = m.transpose().to_owned();
            assert_eq!(transposed(rm.transpose()), rm);
        }
    }

    #[test]
    fn shape_errors() {
        assert!(skew_from_packed(&[1.0f32; 5], 4).is_err());
        assert!(skew_blocks(Mat::<f32>::zeros(2, 5).as_ref(), 4).is_err());
    }
}
