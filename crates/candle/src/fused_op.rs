//! One adapter and the base in one op: `y = base(x·R̃_bd(params))`, the common case (a single
//! active adapter) recorded as a single node.
//!
//! Same values as the rotation op followed by the base op, but the graph keeps only the op's
//! input and output: the rotated activations (`[tokens, in]`, as large as the input) are a
//! temporary of the forward pass instead of a tensor held until `backward()` — for a decoder with
//! seven adapted projections per block, most of the activation memory of training.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use oftq_layer::BaseLinear;
use oftq_layer::faer::MatMut;

use crate::rotation_op::RotationOp;
use crate::tensor_io::{
    col_major, col_view, contiguous_slice, out_shape, rows_of, tensor_of, view, with_slice,
};

/// `y = base(x·R̃_bd)` for `x [..., in]` and the adapter's packed parameters, `f32`.
pub(crate) struct RotatedBase<B> {
    pub(crate) base: Arc<B>,
    pub(crate) rotation: RotationOp<f32>,
}

impl<B: BaseLinear + 'static> CustomOp2 for RotatedBase<B> {
    fn name(&self) -> &'static str {
        "oftq-rotated-base-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.base.in_features();
        let rows = rows_of(l1.shape(), d, "layer input")?;
        let x = contiguous_slice::<f32>(s1, l1, "layer input")?;
        let p = contiguous_slice::<f32>(s2, l2, "rotation parameters")?;
        let rot = self.rotation.rotation_of(p, l2)?;
        let xr = rot
            .forward_masked(view(x, rows, d), self.rotation.keep.as_deref())
            .map_err(candle_core::Error::wrap)?;
        // The base writes straight into the new tensor's row-major storage.
        let o = self.base.out_features();
        let mut y = vec![0f32; rows * o];
        self.base
            .forward_into(
                xr.as_ref(),
                MatMut::from_row_major_slice_mut(&mut y, rows, o),
            )
            .map_err(candle_core::Error::wrap)?;
        Ok((CpuStorage::F32(y), out_shape(l1, o)))
    }

    /// `g = ∂L/∂y·W` through the base, then the rotation's VJP at `x` gives `∂L/∂x` and the
    /// parameter gradient.
    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let rot = self.rotation.rotation_for(params)?;
        let (d, o) = (self.base.in_features(), self.base.out_features());
        let rows = rows_of(x.shape(), d, "layer input")?;
        let g = with_slice(grad, "layer output gradient", |gs: &[f32]| {
            let gc = col_major(gs, rows, o);
            self.base
                .backward_input(col_view(&gc, rows, o))
                .map_err(candle_core::Error::wrap)
        })?;
        let r = with_slice(x, "layer input", |xs: &[f32]| {
            let xc = col_major(xs, rows, d);
            rot.backward_masked(
                col_view(&xc, rows, d),
                g.as_ref(),
                self.rotation.keep.as_deref(),
            )
            .map_err(candle_core::Error::wrap)
        })?;
        let dx = tensor_of(r.input.as_ref(), x.shape())?;
        let dp = tensor_of(r.params.as_ref(), params.shape())?;
        Ok((Some(dx), Some(dp)))
    }
}
