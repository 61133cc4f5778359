//! Moving activations between candle's row-major storage and faer matrix views.
//!
//! candle stores a contiguous tensor `[..., n]` row-major; oftq's kernels take `faer` views of
//! `[tokens, n]` with any strides. A contiguous slice is viewed in place (no copy). The base
//! layers' forward writes straight into a row-major `Vec` that becomes the new tensor's storage
//! (`BaseLinear::forward_into`); other results, which oftq returns column-major, are copied once
//! into one ([`row_major`]).

use candle_core::{CpuStorage, DType, Device, Layout, Result, Shape, Storage, Tensor, WithDType};
use oftq_layer::faer::{Mat, MatMut, MatRef};
use oftq_layer::ortho::Real;
use rayon::prelude::*;

/// The contiguous elements of a CPU storage under `layout`, or an error naming `what`: what a
/// custom op's `cpu_fwd` reads its inputs with (no copy).
///
/// # Errors
/// A storage of another element type than `T`, or a layout that is not contiguous.
///
/// ```
/// use oftq_candle::candle_core::{Device, Storage, Tensor};
///
/// let t = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
/// let (storage, layout) = t.storage_and_layout();
/// let Storage::Cpu(cpu) = &*storage else { unreachable!() };
/// assert_eq!(oftq_candle::storage_slice::<f32>(cpu, layout, "t")?, &[1.0, 2.0, 3.0, 4.0]);
/// // A transposed view is not contiguous: an error, not a copy.
/// let tt = t.t()?;
/// let (storage, layout) = tt.storage_and_layout();
/// let Storage::Cpu(cpu) = &*storage else { unreachable!() };
/// assert!(oftq_candle::storage_slice::<f32>(cpu, layout, "tᵀ").is_err());
/// # Ok::<(), oftq_candle::candle_core::Error>(())
/// ```
pub fn contiguous_slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let all = T::cpu_storage_as_slice(storage)?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&all[start..end]),
        None => candle_core::bail!(
            "oftq-candle: {what} must be contiguous (call .contiguous() first), got strides {:?}",
            layout.stride()
        ),
    }
}

/// `[..., n]` seen as `(tokens, n)`: the product of the leading dimensions and the last one.
///
/// # Errors
/// A rank-0 shape, or a last dimension other than `n`.
pub(crate) fn rows_of(shape: &Shape, n: usize, what: &str) -> Result<usize> {
    match shape.dims().split_last() {
        Some((&last, lead)) if last == n => Ok(lead.iter().product()),
        _ => candle_core::bail!(
            "oftq-candle: {what} must have shape [..., {n}], got {:?}",
            shape.dims()
        ),
    }
}

/// `layout`'s shape with its last dimension replaced by `n`: the shape of a linear layer's output
/// `[..., n]` for an input `[..., in]`.
pub(crate) fn out_shape(layout: &Layout, n: usize) -> Shape {
    let mut dims = layout.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = n;
    }
    Shape::from(dims)
}

/// A row-major `[rows, cols]` view of a contiguous slice.
pub(crate) fn view<T>(data: &[T], rows: usize, cols: usize) -> MatRef<'_, T> {
    MatRef::from_row_major_slice(data, rows, cols)
}

/// Rows and columns of one tile of [`row_major`]'s transpose (a 32×32 `f32` tile is 4 KiB: source
/// and destination tiles stay in L1).
const TILE: usize = 32;

/// `m` copied into a row-major `Vec`. A column-major `m` (what oftq's kernels return) is
/// transposed tile by tile, row blocks in parallel: faer's generic `copy_from` between layouts
/// took 4–6 ms for a 512×1536 `f32` matrix here, the tiles 0.2–0.4 ms.
pub(crate) fn row_major<T: WithDType + Real>(m: MatRef<'_, T>) -> Vec<T> {
    let (rows, cols) = (m.nrows(), m.ncols());
    let mut out = vec![<T as WithDType>::from_f64(0.0); rows * cols];
    let columns: Option<Vec<&[T]>> = (0..cols)
        .map(|j| m.col(j).try_as_col_major().map(|c| c.as_slice()))
        .collect();
    match columns {
        Some(columns) if rows > 0 && cols > 0 => {
            out.par_chunks_mut(TILE * cols)
                .enumerate()
                .for_each(|(ib, block)| {
                    let i0 = ib * TILE;
                    let n = block.len() / cols;
                    // Through a tile buffer: the destination rows of one tile, written directly,
                    // are `cols` apart, which for a power-of-two width maps them all to the same
                    // L1 set.
                    let mut tile = [<T as WithDType>::from_f64(0.0); TILE * TILE];
                    for j0 in (0..cols).step_by(TILE) {
                        let m = TILE.min(cols - j0);
                        for (j, col) in columns[j0..j0 + m].iter().enumerate() {
                            for (i, v) in col[i0..i0 + n].iter().enumerate() {
                                tile[i * TILE + j] = *v;
                            }
                        }
                        for i in 0..n {
                            block[i * cols + j0..i * cols + j0 + m]
                                .copy_from_slice(&tile[i * TILE..i * TILE + m]);
                        }
                    }
                });
        }
        _ => MatMut::from_row_major_slice_mut(&mut out, rows, cols).copy_from(m),
    }
    out
}

/// A row-major `[rows, cols]` slice copied into a column-major `Vec` (through a tile buffer,
/// column blocks in parallel), viewed with [`col_view`]: for the products that read an operand
/// faster by columns (faer's GEMM packs a row-major left operand on every call: 6.5% of the
/// samples of an AQLM 2x8 4096² fwd+bwd at 64 tokens went to that packing, gone with a
/// column-major copy).
pub(crate) fn col_major<T: WithDType>(data: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::from_f64(0.0); rows * cols];
    if rows == 0 || cols == 0 {
        return out;
    }
    out.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(jb, block)| {
            let (j0, n) = (jb * TILE, block.len() / rows);
            // Through a tile buffer, as in `row_major`: written directly, the destination
            // columns of one tile are `rows` apart (a power of two for 512 tokens: one L1 set).
            let mut tile = [T::from_f64(0.0); TILE * TILE];
            for i0 in (0..rows).step_by(TILE) {
                let m = TILE.min(rows - i0);
                for (i, src) in data.chunks_exact(cols).skip(i0).take(m).enumerate() {
                    for (j, v) in src[j0..j0 + n].iter().enumerate() {
                        tile[j * TILE + i] = *v;
                    }
                }
                for j in 0..n {
                    block[j * rows + i0..j * rows + i0 + m]
                        .copy_from_slice(&tile[j * TILE..j * TILE + m]);
                }
            }
        });
    out
}

/// A column-major `[rows, cols]` view of a contiguous slice (what [`col_major`] returns).
pub(crate) fn col_view<T>(data: &[T], rows: usize, cols: usize) -> MatRef<'_, T> {
    MatRef::from_column_major_slice(data, rows, cols)
}

/// `m` as a CPU storage, row-major.
pub(crate) fn storage_of<T: WithDType + Real>(m: MatRef<'_, T>) -> CpuStorage {
    T::to_cpu_storage_owned(row_major(m))
}

/// `m` as a (non-tracked) tensor of shape `shape` on the CPU.
pub(crate) fn tensor_of<T: WithDType + Real>(m: MatRef<'_, T>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(row_major(m), shape, &Device::Cpu)
}

/// Runs `f` on the contiguous row-major elements of a CPU tensor of element type `T`
/// (made contiguous first when it is not).
pub(crate) fn with_slice<T: WithDType, R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(contiguous_slice(cpu, layout, what)?),
        _ => candle_core::bail!("oftq-candle: {what} must be on the CPU device"),
    }
}

/// A `[rows, cols]` CPU tensor of `f32` (or any `T`) copied into a faer matrix.
pub(crate) fn to_mat<T: WithDType + Real>(t: &Tensor, what: &str) -> Result<Mat<T>> {
    let (rows, cols) = t.dims2()?;
    with_slice(t, what, |v: &[T]| Ok(view(v, rows, cols).to_owned()))
}

/// The compute dtype of the modules: `f32` passes, `f16`/`bf16` are converted to `f32` (returned
/// with the original dtype, to convert the output back), anything else is an error.
pub(crate) fn to_compute_dtype(x: &Tensor) -> Result<(Tensor, DType)> {
    match x.dtype() {
        DType::F32 => Ok((x.clone(), DType::F32)),
        d @ (DType::F16 | DType::BF16) => Ok((x.to_dtype(DType::F32)?, d)),
        d => candle_core::bail!(
            "oftq-candle: layer input must be f32, f16 or bf16 (computed in f32), got {d:?}"
        ),
    }
}

/// `x` on the CPU, or an error: oftq's kernels are CPU kernels.
pub(crate) fn ensure_cpu(x: &Tensor, what: &str) -> Result<()> {
    if x.device().is_cpu() {
        Ok(())
    } else {
        candle_core::bail!(
            "oftq-candle: {what} must be on the CPU device, got {:?}",
            x.device().location()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_round_trip() {
        let m = Mat::<f32>::from_fn(3, 5, |i, j| (i * 5 + j) as f32);
        let v = row_major(m.as_ref());
        assert_eq!(v, (0..15).map(|k| k as f32).collect::<Vec<_>>());
        assert_eq!(view(&v, 3, 5), m.as_ref());
        let t = tensor_of(m.as_ref(), &Shape::from((3, 5))).unwrap();
        assert_eq!(to_mat::<f32>(&t.t().unwrap(), "t").unwrap(), m.transpose());
    }

    #[test]
    fn transposes_across_whole_and_partial_tiles() {
        for (rows, cols) in [(1, 5), (5, 1), (33, 97), (64, 128), (70, 45)] {
            let m = Mat::<f32>::from_fn(rows, cols, |i, j| (i * cols + j) as f32);
            let r = row_major(m.as_ref());
            assert_eq!(view(&r, rows, cols), m.as_ref(), "{rows}×{cols}");
            let c = col_major(&r, rows, cols);
            assert_eq!(col_view(&c, rows, cols), m.as_ref(), "{rows}×{cols}");
        }
        assert!(col_major::<f32>(&[], 0, 4).is_empty());
    }

    #[test]
    fn shapes_and_dtypes() {
        assert_eq!(rows_of(&Shape::from((2, 3, 4)), 4, "x").unwrap(), 6);
        let e = rows_of(&Shape::from((2, 3)), 4, "x").unwrap_err();
        assert!(e.to_string().contains("[..., 4]"), "{e}");
        assert!(rows_of(&Shape::from(()), 4, "x").is_err());
        let x = Tensor::zeros((2, 2), DType::F64, &Device::Cpu).unwrap();
        let e = to_compute_dtype(&x).unwrap_err();
        assert!(e.to_string().contains("F64"), "{e}");
        let h = Tensor::zeros((2, 2), DType::BF16, &Device::Cpu).unwrap();
        let (c, d) = to_compute_dtype(&h).unwrap();
        assert_eq!((c.dtype(), d), (DType::F32, DType::BF16));
    }
}
