//! `y = x·Wᵀ` for a frozen dense weight as a candle op computed by faer (AVX-512 when the CPU has
//! it; candle's matmul on this kind of CPU runs its AVX2 kernels and packs the whole weight even
//! for one row): the output head, 4.7 ms per token against candle's 11.2 ms for SmolLM2's
//! `[49152, 576]` head. The backward gives `∂L/∂x = ∂L/∂y·W` only (the weight is frozen).

use oftq_candle::candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use oftq_candle::layer::aqlm::kernels::clear_upper_simd_state;
use oftq_candle::layer::faer::linalg::matmul::matmul;
use oftq_candle::layer::faer::{Accum, MatMut, MatRef, Par};

use super::ops::slice;

/// Output columns per product: faer packs a right-hand side as large as its notion of the L3
/// cache (480 MiB on this kind of VM) per thread; slices keep that to a few MiB.
const COLUMN_SLICE: usize = 8192;

/// `y = x·Wᵀ` by slices of `W`'s rows, `x [n, k]`, `W [m, k]`, `y [n, m]` row-major (`y` may
/// be a block of rows of a longer buffer of the same width).
pub(crate) fn product_t(y: &mut [f32], x: &[f32], w: &[f32], (n, k, m): (usize, usize, usize)) {
    let xm = MatRef::from_row_major_slice(x, n, k);
    let wm = MatRef::from_row_major_slice(w, m, k);
    let mut ym = MatMut::from_row_major_slice_mut(y, n, m);
    for c0 in (0..m).step_by(COLUMN_SLICE) {
        let c = COLUMN_SLICE.min(m - c0);
        matmul(
            ym.as_mut().subcols_mut(c0, c),
            Accum::Replace,
            xm,
            wm.subrows(c0, c).transpose(),
            1.0,
            Par::rayon(0),
        );
    }
    after_parallel_product();
}

/// Clears the AVX upper state on every thread after a parallel faer product (see
/// [`clear_upper_simd_state`]), so the SSE code after it does not pay for faer's kernels.
pub(crate) fn after_parallel_product() {
    rayon::broadcast(|_| clear_upper_simd_state());
    clear_upper_simd_state();
}

struct Dense;

impl CustomOp2 for Dense {
    fn name(&self) -> &'static str {
        "oftq-dense-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = l1.shape().dims2()?;
        let (m, k2) = l2.shape().dims2()?;
        if k != k2 {
            bail!("dense product: x [{n}, {k}] and W [{m}, {k2}]");
        }
        let mut y = vec![0f32; n * m];
        product_t(&mut y, slice(s1, l1, "x")?, slice(s2, l2, "W")?, (n, k, m));
        Ok((CpuStorage::F32(y), Shape::from((n, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, k) = x.dims2()?;
        let m = w.dim(0)?;
        let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let wv = w.contiguous()?;
        let (ws, wl) = wv.storage_and_layout();
        let wsl = match &*ws {
            oftq_candle::candle_core::Storage::Cpu(c) => slice(c, wl, "W")?,
            _ => bail!("dense product: W must be on the CPU"),
        };
        let mut dx = vec![0f32; n * k];
        matmul(
            MatMut::from_row_major_slice_mut(&mut dx, n, k),
            Accum::Replace,
            MatRef::from_row_major_slice(&g, n, m),
            MatRef::from_row_major_slice(wsl, m, k),
            1.0,
            Par::rayon(0),
        );
        after_parallel_product();
        Ok((Some(Tensor::from_vec(dx, (n, k), x.device())?), None))
    }
}

/// `x·Wᵀ` for `x [n, k]` and a frozen `W [m, k]` (`f32`), differentiable in `x`.
///
/// # Errors
/// Shapes that do not fit, non-`f32` tensors.
pub fn dense_product(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Dense)
}
