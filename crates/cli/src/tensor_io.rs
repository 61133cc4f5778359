//! Reading and writing safetensors tensors as `f32` with shape bookkeeping.
//!
//! A tensor of shape `[d0, …, dk−1, f]` is seen by the layers as a `[tokens, f]` matrix with
//! `tokens = d0·…·dk−1` (row-major flattening of the leading dims); [`Tensor::to_tokens`] and
//! [`Tensor::from_tokens`] convert both ways and keep the leading dims so that outputs get the
//! input's batch shape back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use faer::{Mat, MatRef};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A dense row-major `f32` tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tensor {
    /// The shape (row-major, C order).
    pub(crate) shape: Vec<usize>,
    /// `shape.product()` values.
    pub(crate) data: Vec<f32>,
}

impl Tensor {
    /// Views the tensor as `[tokens, features]`, `features` being the last dim (a 0-d tensor is
    /// refused; a 1-d tensor is one token).
    pub(crate) fn to_tokens(&self) -> Result<Mat<f32>> {
        let Some((&features, _)) = self.shape.split_last() else {
            bail!("a scalar (0-d tensor) has no feature dimension");
        };
        let tokens = self.data.len().checked_div(features).unwrap_or(0);
        Ok(Mat::from_fn(tokens, features, |t, f| {
            self.data[t * features + f]
        }))
    }

    /// The leading (batch) dims: the shape without its last entry.
    pub(crate) fn leading(&self) -> &[usize] {
        self.shape.split_last().map_or(&[], |(_, l)| l)
    }

    /// Builds a tensor of shape `[leading…, m.ncols()]` from a `[tokens, features]` matrix whose
    /// token count is `leading.product()`.
    pub(crate) fn from_tokens(m: MatRef<'_, f32>, leading: &[usize]) -> Self {
        let mut shape = leading.to_vec();
        shape.push(m.ncols());
        Self::from_matrix(m, shape)
    }

    /// Builds a tensor of the given shape from a matrix read row by row.
    pub(crate) fn from_matrix(m: MatRef<'_, f32>, shape: Vec<usize>) -> Self {
        let mut data = Vec::with_capacity(m.nrows() * m.ncols());
        for i in 0..m.nrows() {
            for j in 0..m.ncols() {
                data.push(m[(i, j)]);
            }
        }
        Self { shape, data }
    }
}

/// The name of a safetensors dtype as torch users know it.
pub(crate) fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

pub(crate) use oftq_aqlm::checkpoint::floats_as_f32 as floats_to_f32;

/// A safetensors file read into memory and checked to be well formed.
pub(crate) struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl SafetensorsFile {
    /// Reads `path` and validates its header (the error names the file).
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let file = Self {
            path: path.to_path_buf(),
            bytes,
        };
        file.parse()?;
        Ok(file)
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed container (already validated in [`open`](Self::open)).
    pub(crate) fn parse(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes)
            .with_context(|| format!("{}: not a valid safetensors file", self.path.display()))
    }

    /// The header's `__metadata__` map, if any.
    pub(crate) fn metadata(&self) -> Result<Option<HashMap<String, String>>> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes)
            .with_context(|| format!("{}: not a valid safetensors file", self.path.display()))?;
        Ok(meta.metadata().clone())
    }

    /// Reads float tensor `name` as `f32`; `Ok(None)` if the file has no such tensor.
    pub(crate) fn float(&self, name: &str) -> Result<Option<Tensor>> {
        let st = self.parse()?;
        let Ok(view) = st.tensor(name) else {
            return Ok(None);
        };
        let data = floats_to_f32(view.dtype(), view.data()).with_context(|| {
            format!(
                "{}: tensor {name:?} has dtype {}, expected a float dtype (F32, F16, BF16, F64)",
                self.path.display(),
                dtype_name(view.dtype())
            )
        })?;
        Ok(Some(Tensor {
            shape: view.shape().to_vec(),
            data,
        }))
    }

    /// The tensor names, sorted.
    pub(crate) fn names(&self) -> Result<Vec<String>> {
        let st = self.parse()?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        Ok(names)
    }
}

/// Serializes `tensors` as F32 with metadata `{"format": "pt"}` and writes them atomically to
/// `path`.
pub(crate) fn write_f32(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            let b = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n.clone(), b, t.shape.clone())
        })
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (name, b, shape) in &bytes {
        let view = TensorView::new(Dtype::F32, shape.clone(), b)
            .with_context(|| format!("{}: tensor {name:?}", path.display()))?;
        views.push((name.clone(), view));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let out = safetensors::tensor::serialize(views, Some(meta))
        .with_context(|| format!("{}: cannot serialize", path.display()))?;
    oftq_aqlm::checkpoint::write_atomic(path, &out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_keeps_leading_dims() {
        let t = Tensor {
            shape: vec![2, 3, 4],
            data: (0..24).map(|v| v as f32).collect(),
        };
        let m = t.to_tokens().unwrap();
        assert_eq!((m.nrows(), m.ncols()), (6, 4));
        assert_eq!(m[(1, 2)], 6.0);
        assert_eq!(Tensor::from_tokens(m.as_ref(), t.leading()), t);
        let v = Tensor {
            shape: vec![5],
            data: vec![1.0; 5],
        };
        assert_eq!(v.to_tokens().unwrap().nrows(), 1);
        assert_eq!(
            Tensor::from_tokens(v.to_tokens().unwrap().as_ref(), v.leading()),
            v
        );
        let s = Tensor {
            shape: vec![],
            data: vec![1.0],
        };
        assert!(s.to_tokens().is_err());
    }

    #[test]
    fn write_then_read_all_float_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let t = Tensor {
            shape: vec![2, 2],
            data: vec![1.0, -2.5, 0.125, 3.0],
        };
        write_f32(&p, &[("a".into(), t.clone())]).unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        assert_eq!(f.float("a").unwrap(), Some(t));
        assert_eq!(f.float("b").unwrap(), None);
        assert_eq!(
            f.metadata()
                .unwrap()
                .unwrap()
                .get("format")
                .map(String::as_str),
            Some("pt")
        );
        let h: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(floats_to_f32(Dtype::F16, &h).unwrap(), [1.5, -2.0]);
        let d: Vec<u8> = [0.5f64].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(floats_to_f32(Dtype::F64, &d).unwrap(), [0.5]);
        assert!(floats_to_f32(Dtype::I32, &[0; 4]).is_none());
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, b"not safetensors at all").unwrap();
        let e = SafetensorsFile::open(&p).err().unwrap();
        assert!(format!("{e:#}").contains("bad.safetensors"));
    }
}
