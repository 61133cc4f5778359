//! The frozen base product `y = x·Wᵀ + bias` as a candle custom op whose backward is the input
//! gradient `dx = dy·W` from the base layer's own kernels (for AQLM: oftq-aqlm's, never decoding
//! `W`). The base has no trainable parameters, so nothing else flows back.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use oftq_layer::BaseLinear;
use oftq_layer::faer::{Mat, MatMut, MatRef};

use crate::tensor_io::{contiguous_slice, out_shape, rows_of, storage_of, view};

/// `y = base(x)` for `x [..., in]` (contiguous `f32`) → `y [..., out]`.
pub(crate) struct BaseForward<B>(pub(crate) Arc<B>);

/// `dx = dy·W` for `dy [..., out]` → `dx [..., in]`: the backward of [`BaseForward`] (recorded
/// without a backward of its own).
struct BaseInputGrad<B>(Arc<B>);

/// Applies `f` (a product of the base layer) to a contiguous `f32` tensor `[..., n_in]`, giving
/// `[..., n_out]`.
fn apply_rows(
    storage: &CpuStorage,
    layout: &Layout,
    n_in: usize,
    n_out: usize,
    what: &str,
    f: impl FnOnce(MatRef<'_, f32>) -> oftq_layer::Result<Mat<f32>>,
) -> Result<(CpuStorage, Shape)> {
    let rows = rows_of(layout.shape(), n_in, what)?;
    let x = contiguous_slice::<f32>(storage, layout, what)?;
    let y = f(view(x, rows, n_in)).map_err(candle_core::Error::wrap)?;
    Ok((storage_of(y.as_ref()), out_shape(layout, n_out)))
}

impl<B: BaseLinear + 'static> CustomOp1 for BaseForward<B> {
    fn name(&self) -> &'static str {
        "oftq-base-linear"
    }

    /// Writes straight into the row-major storage of the new tensor ([`BaseLinear::forward_into`]):
    /// no column-major result and no transposing copy.
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let b = &self.0;
        let (n_in, n_out) = (b.in_features(), b.out_features());
        let what = "base layer input";
        let rows = rows_of(layout.shape(), n_in, what)?;
        let x = contiguous_slice::<f32>(storage, layout, what)?;
        let mut y = vec![0f32; rows * n_out];
        b.forward_into(
            view(x, rows, n_in),
            MatMut::from_row_major_slice_mut(&mut y, rows, n_out),
        )
        .map_err(candle_core::Error::wrap)?;
        Ok((CpuStorage::F32(y), out_shape(layout, n_out)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dy = grad_res.contiguous()?;
        Ok(Some(dy.apply_op1_no_bwd(&BaseInputGrad(self.0.clone()))?))
    }
}

impl<B: BaseLinear + 'static> CustomOp1 for BaseInputGrad<B> {
    fn name(&self) -> &'static str {
        "oftq-base-linear-input-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let b = &self.0;
        let (i, o) = (b.in_features(), b.out_features());
        apply_rows(storage, layout, o, i, "base layer output gradient", |dy| {
            b.backward_input(dy)
        })
    }
}
