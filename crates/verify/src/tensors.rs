//! Reading reference tensors from safetensors files as `f64`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use faer::Mat;
use safetensors::{Dtype, SafeTensors};

use crate::error::GoldenError;

/// One tensor widened to `f64`, with its shape and original dtype.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Values in row-major order, exactly widened to `f64`.
    pub data: Vec<f64>,
    /// The dtype in the file.
    pub dtype: Dtype,
}

impl Tensor {
    /// The tensor as a matrix `[rows, cols]`, folding every leading dimension into rows
    /// (a 1-D tensor is one row).
    pub fn to_mat(&self) -> Mat<f64> {
        let cols = self.shape.last().copied().unwrap_or(1).max(1);
        let rows = self.data.len() / cols;
        Mat::from_fn(rows, cols, |i, j| self.data[i * cols + j])
    }

    /// Slice `k` of the leading dimension of a 3-D tensor, as a matrix.
    pub fn block(&self, k: usize) -> Option<Mat<f64>> {
        let [_, r, c] = self.shape[..] else {
            return None;
        };
        let base = k * r * c;
        (base + r * c <= self.data.len())
            .then(|| Mat::from_fn(r, c, |i, j| self.data[base + i * c + j]))
    }
}

/// All tensors of a safetensors file, by name, plus its metadata.
#[derive(Debug, Clone)]
pub struct TensorFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// The `__metadata__` map.
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// Reads every tensor of `path` (float and integer dtypes are widened exactly to `f64`).
    ///
    /// # Errors
    /// [`GoldenError::Io`] or [`GoldenError::Malformed`] (bad header, unsupported dtype).
    pub fn read(path: &Path) -> Result<Self, GoldenError> {
        let bytes = std::fs::read(path).map_err(|source| GoldenError::Io {
            path: path.into(),
            source,
        })?;
        let malformed = |why: String| GoldenError::Malformed {
            path: path.into(),
            why,
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| malformed(e.to_string()))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| malformed(e.to_string()))?;
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = widen(view.dtype(), view.data()).ok_or_else(|| {
                malformed(format!(
                    "tensor {name}: unsupported dtype {:?}",
                    view.dtype()
                ))
            })?;
            tensors.insert(
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                    dtype: view.dtype(),
                },
            );
        }
        Ok(Self {
            path: path.into(),
            tensors,
            metadata,
        })
    }

    /// The tensor `name`.
    ///
    /// # Errors
    /// [`GoldenError::Malformed`] if it is missing.
    pub fn get(&self, name: &str) -> Result<&Tensor, GoldenError> {
        self.tensors
            .get(name)
            .ok_or_else(|| GoldenError::Malformed {
                path: self.path.clone(),
                why: format!("missing tensor {name}"),
            })
    }
}

fn widen(dtype: Dtype, b: &[u8]) -> Option<Vec<f64>> {
    fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        b.chunks_exact(N).map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
    }
    Some(match dtype {
        Dtype::F64 => chunks::<8>(b).map(f64::from_le_bytes).collect(),
        Dtype::F32 => chunks::<4>(b)
            .map(|a| f64::from(f32::from_le_bytes(a)))
            .collect(),
        Dtype::F16 => chunks::<2>(b)
            .map(|a| half::f16::from_le_bytes(a).to_f64())
            .collect(),
        Dtype::BF16 => chunks::<2>(b)
            .map(|a| half::bf16::from_le_bytes(a).to_f64())
            .collect(),
        Dtype::I8 => b.iter().map(|&v| f64::from(v as i8)).collect(),
        Dtype::U8 => b.iter().map(|&v| f64::from(v)).collect(),
        Dtype::I16 => chunks::<2>(b)
            .map(|a| f64::from(i16::from_le_bytes(a)))
            .collect(),
        Dtype::I32 => chunks::<4>(b)
            .map(|a| f64::from(i32::from_le_bytes(a)))
            .collect(),
        Dtype::I64 => chunks::<8>(b)
            .map(|a| i64::from_le_bytes(a) as f64)
            .collect(),
        _ => return None,
    })
}

/// Largest absolute elementwise difference of two matrices (∞ if the shapes differ).
pub fn max_abs_diff(a: faer::MatRef<'_, f64>, b: faer::MatRef<'_, f64>) -> f64 {
    if a.nrows() != b.nrows() || a.ncols() != b.ncols() {
        return f64::INFINITY;
    }
    let mut m = 0.0f64;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            let d = (a[(i, j)] - b[(i, j)]).abs();
            m = if d.is_nan() { f64::INFINITY } else { m.max(d) };
        }
    }
    m
}

/// Relative Frobenius error `‖a − b‖_F / ‖b‖_F` (∞ if the shapes differ; absolute if `b = 0`).
pub fn rel_fro_err(a: faer::MatRef<'_, f64>, b: faer::MatRef<'_, f64>) -> f64 {
    if a.nrows() != b.nrows() || a.ncols() != b.ncols() {
        return f64::INFINITY;
    }
    let diff = (a - b).norm_l2();
    let nb = b.norm_l2();
    let e = if nb > 0.0 { diff / nb } else { diff };
    if e.is_nan() { f64::INFINITY } else { e }
}
