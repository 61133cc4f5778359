//! [`DenseLinear`]: a plain `f32` linear layer, the dense base for OFT.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::base::BaseLinear;
use crate::error::{LayerError, Result, shape};

/// A dense linear layer `y = x·Wᵀ + bias` with `W [out, in]` (or stored `[in, out]` when
/// `fan_in_fan_out`, as GPT-2's `Conv1D`).
#[derive(Debug, Clone, PartialEq)]
pub struct DenseLinear {
    weight: Mat<f32>,
    bias: Option<Vec<f32>>,
    fan_in_fan_out: bool,
}

impl DenseLinear {
    /// A layer with `nn.Linear`'s layout: `weight [out, in]`, optional bias `[out]`.
    ///
    /// ```
    /// use oftq_layer::{BaseLinear, DenseLinear};
    /// let layer = DenseLinear::linear(faer::Mat::<f32>::ones(3, 5), Some(vec![0.5; 3]))?;
    /// assert_eq!((layer.in_features(), layer.out_features()), (5, 3));
    /// # Ok::<(), oftq_layer::LayerError>(())
    /// ```
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn linear(weight: Mat<f32>, bias: Option<Vec<f32>>) -> Result<Self> {
        Self::new(weight, bias, false)
    }

    /// A layer with GPT-2 `Conv1D`'s layout (PEFT's `fan_in_fan_out = True`): `weight [in, out]`,
    /// optional bias `[out]`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn conv1d(weight: Mat<f32>, bias: Option<Vec<f32>>) -> Result<Self> {
        Self::new(weight, bias, true)
    }

    /// A layer from its weight (`[out, in]`, or `[in, out]` with `fan_in_fan_out`) and optional
    /// bias (see also [`linear`](Self::linear) and [`conv1d`](Self::conv1d), which name the layout).
    ///
    /// # Errors
    /// [`LayerError::Shape`] for a bias of the wrong length, [`LayerError::NonFinite`] for NaN/∞.
    pub fn new(weight: Mat<f32>, bias: Option<Vec<f32>>, fan_in_fan_out: bool) -> Result<Self> {
        let out = if fan_in_fan_out {
            weight.ncols()
        } else {
            weight.nrows()
        };
        if let Some(b) = &bias {
            if b.len() != out {
                return Err(shape("bias", format!("[{out}]"), format!("[{}]", b.len())));
            }
            if b.iter().any(|v| !v.is_finite()) {
                return Err(LayerError::NonFinite("dense bias".into()));
            }
        }
        if !weight.as_ref().is_all_finite() {
            return Err(LayerError::NonFinite("dense weight".into()));
        }
        Ok(Self {
            weight,
            bias,
            fan_in_fan_out,
        })
    }

    /// A `0 × 0` layer (a placeholder while a module is moved).
    pub(crate) fn empty() -> Self {
        Self {
            weight: Mat::zeros(0, 0),
            bias: None,
            fan_in_fan_out: false,
        }
    }

    /// `W` as `[out, in]` (a transposed view when stored `[in, out]`).
    pub fn weight(&self) -> MatRef<'_, f32> {
        if self.fan_in_fan_out {
            self.weight.transpose()
        } else {
            self.weight.as_ref()
        }
    }

    /// The stored weight, in its stored layout.
    pub fn stored_weight(&self) -> MatRef<'_, f32> {
        self.weight.as_ref()
    }

    /// The bias.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// Whether the weight is stored `[in, out]`.
    pub fn fan_in_fan_out(&self) -> bool {
        self.fan_in_fan_out
    }

    /// Replaces `W [out, in]` (kept in the stored layout).
    ///
    /// # Errors
    /// [`LayerError::Shape`] if the shape changes; [`LayerError::NonFinite`].
    pub fn set_weight(&mut self, w_out_in: Mat<f32>) -> Result<()> {
        let cur = self.weight();
        if w_out_in.nrows() != cur.nrows() || w_out_in.ncols() != cur.ncols() {
            return Err(shape(
                "dense weight",
                format!("[{}, {}]", cur.nrows(), cur.ncols()),
                format!("[{}, {}]", w_out_in.nrows(), w_out_in.ncols()),
            ));
        }
        if !w_out_in.as_ref().is_all_finite() {
            return Err(LayerError::NonFinite("dense weight".into()));
        }
        self.weight = if self.fan_in_fan_out {
            w_out_in.transpose().to_owned()
        } else {
            w_out_in
        };
        Ok(())
    }
}

/// Token rows per parallel task: fixed, so results never depend on the thread count.
const ROW_CHUNK: usize = 32;

/// `dst (+)= lhs · rhs`, split over fixed chunks of rows with rayon, each a sequential faer product.
fn rowwise_matmul(dst: MatMut<'_, f32>, acc: Accum, lhs: MatRef<'_, f32>, rhs: MatRef<'_, f32>) {
    dst.par_row_chunks_mut(ROW_CHUNK)
        .zip(lhs.par_row_chunks(ROW_CHUNK))
        .for_each(|(d, l)| {
            matmul(d, acc, l, rhs, 1.0, Par::Seq);
            oftq_aqlm::kernels::clear_upper_simd_state();
        });
}

impl BaseLinear for DenseLinear {
    fn in_features(&self) -> usize {
        self.weight().ncols()
    }
    fn out_features(&self) -> usize {
        self.weight().nrows()
    }
    fn forward(&self, x: MatRef<'_, f32>) -> Result<Mat<f32>> {
        if x.ncols() != self.in_features() {
            return Err(shape(
                "dense input",
                format!("[tokens, {}]", self.in_features()),
                format!("[{}, {}]", x.nrows(), x.ncols()),
            ));
        }
        let mut y = match &self.bias {
            Some(b) => Mat::from_fn(x.nrows(), b.len(), |_, o| b[o]),
            None => Mat::zeros(x.nrows(), self.out_features()),
        };
        let acc = if self.bias.is_some() {
            Accum::Add
        } else {
            Accum::Replace
        };
        rowwise_matmul(y.as_mut(), acc, x, self.weight().transpose());
        Ok(y)
    }
    fn backward_input(&self, dy: MatRef<'_, f32>) -> Result<Mat<f32>> {
        if dy.ncols() != self.out_features() {
            return Err(shape(
                "dense output gradient",
                format!("[tokens, {}]", self.out_features()),
                format!("[{}, {}]", dy.nrows(), dy.ncols()),
            ));
        }
        let mut dx = Mat::zeros(dy.nrows(), self.in_features());
        rowwise_matmul(dx.as_mut(), Accum::Replace, dy, self.weight());
        Ok(dx)
    }
    fn describe(&self) -> String {
        format!(
            "Linear(in_features={}, out_features={}, bias={})",
            self.in_features(),
            self.out_features(),
            self.bias.is_some()
        )
    }
}
