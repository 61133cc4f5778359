//! The OFT rotation `y = x·R_bd(params)` as a candle custom op over (input, packed parameters),
//! whose backward is oftq-ortho's vector–Jacobian product.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType};
use oftq_layer::ortho::{
    BlockRotation, CoftRadius, DivergencePolicy, Real, RotationSpec, project_coft,
};

use crate::tensor_io::{contiguous_slice, rows_of, storage_of, tensor_of, view, with_slice};

/// Builds rotations from packed parameters, with the adapter's COFT ball and divergence policy,
/// and remembers the last one: while the parameters do not change (inference, several forwards
/// between optimizer steps), the blocks are not rebuilt. The cache key is the parameters' values,
/// so it can never serve a stale rotation.
#[derive(Debug)]
pub(crate) struct RotationBuilder<T: Real> {
    spec: RotationSpec,
    coft: Option<CoftRadius>,
    divergence: DivergencePolicy,
    last: Mutex<Option<Built<T>>>,
}

/// A built rotation and the packed parameters it was built from.
type Built<T> = (Vec<T>, Arc<BlockRotation<T>>);

impl<T: Real> RotationBuilder<T> {
    pub(crate) fn new(
        spec: RotationSpec,
        coft: Option<CoftRadius>,
        divergence: DivergencePolicy,
    ) -> Self {
        Self {
            spec,
            coft,
            divergence,
            last: Mutex::new(None),
        }
    }

    pub(crate) fn spec(&self) -> &RotationSpec {
        &self.spec
    }

    /// The rotation of the packed parameters `packed` (`[rows, cols]` row-major): projected onto
    /// the COFT ball first when the adapter has one (PEFT projects at the start of its forward,
    /// without a gradient), then built, then checked for Neumann convergence.
    pub(crate) fn rotation(&self, packed: &[T]) -> Result<Arc<BlockRotation<T>>> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, rot)) = last.as_ref()
            && same_bits(key, packed)
        {
            return Ok(rot.clone());
        }
        let (rows, cols) = self.spec.param_shape();
        if packed.len() != rows * cols {
            candle_core::bail!(
                "oftq-candle: packed rotation parameters must have {rows}×{cols} elements, got {}",
                packed.len()
            );
        }
        let mut params = view(packed, rows, cols).to_owned();
        if let Some(radius) = self.coft {
            project_coft(params.as_mut(), radius).map_err(candle_core::Error::wrap)?;
        }
        let rot =
            BlockRotation::build(&self.spec, params.as_ref()).map_err(candle_core::Error::wrap)?;
        rot.check_convergence(self.divergence)
            .map_err(candle_core::Error::wrap)?;
        let rot = Arc::new(rot);
        *last = Some((packed.to_vec(), rot.clone()));
        Ok(rot)
    }
}

/// Whether two slices hold the same bits (so `NaN`s compare equal and `-0.0 != 0.0`): the
/// rotation cache's key test, in one pass without early exit so that it vectorizes.
fn same_bits<T: Real>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).fold(0u64, |d, (x, y)| {
            d | (x.f64().to_bits() ^ y.f64().to_bits())
        }) == 0
}

/// `y = x·R̃_bd` for `x [..., d]` and packed parameters `[stored blocks, b(b−1)/2]`, where `R̃`
/// replaces the dropped positions of `keep` by `I`.
pub(crate) struct RotationOp<T: Real> {
    pub(crate) builder: Arc<RotationBuilder<T>>,
    pub(crate) keep: Option<Vec<bool>>,
    /// The rotation the forward used, for the backward.
    pub(crate) built: OnceLock<Arc<BlockRotation<T>>>,
}

impl<T: Real> RotationOp<T> {
    pub(crate) fn new(builder: Arc<RotationBuilder<T>>, keep: Option<Vec<bool>>) -> Self {
        Self {
            builder,
            keep,
            built: OnceLock::new(),
        }
    }

    /// An op that uses `rotation` (already built from the parameters it will be given) instead
    /// of building or looking one up.
    pub(crate) fn prebuilt(
        builder: Arc<RotationBuilder<T>>,
        keep: Option<Vec<bool>>,
        rotation: Arc<BlockRotation<T>>,
    ) -> Self {
        let op = Self::new(builder, keep);
        let _ = op.built.set(rotation);
        op
    }

    /// The rotation of the parameters `p` (laid out by `l`), built (or taken from the builder's
    /// cache) and kept for the backward pass.
    pub(crate) fn rotation_of(&self, p: &[T], l: &Layout) -> Result<Arc<BlockRotation<T>>> {
        if let Some(r) = self.built.get() {
            return Ok(r.clone());
        }
        let (pr, pc) = self.builder.spec().param_shape();
        if l.dims() != [pr, pc] {
            candle_core::bail!(
                "oftq-candle: rotation parameters must have shape [{pr}, {pc}], got {:?}",
                l.dims()
            );
        }
        let rot = self.builder.rotation(p)?;
        let _ = self.built.set(rot.clone());
        Ok(rot)
    }

    /// The rotation the forward pass used (rebuilt from `params` if it is not kept).
    pub(crate) fn rotation_for(&self, params: &Tensor) -> Result<Arc<BlockRotation<T>>>
    where
        T: WithDType,
    {
        match self.built.get() {
            Some(r) => Ok(r.clone()),
            None => with_slice(params, "rotation parameters", |p: &[T]| {
                self.builder.rotation(p)
            }),
        }
    }
}

impl<T: Real + WithDType> CustomOp2 for RotationOp<T> {
    fn name(&self) -> &'static str {
        "oftq-block-rotation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.builder.spec().in_features();
        let rows = rows_of(l1.shape(), d, "rotation input")?;
        let x = contiguous_slice::<T>(s1, l1, "rotation input")?;
        let p = contiguous_slice::<T>(s2, l2, "rotation parameters")?;
        let rot = self.rotation_of(p, l2)?;
        let y = rot
            .forward_masked(view(x, rows, d), self.keep.as_deref())
            .map_err(candle_core::Error::wrap)?;
        Ok((storage_of(y.as_ref()), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let rot = self.rotation_for(params)?;
        let d = self.builder.spec().in_features();
        let rows = rows_of(x.shape(), d, "rotation input")?;
        let g = with_slice(x, "rotation input", |xs: &[T]| {
            with_slice(grad, "rotation output gradient", |gs: &[T]| {
                rot.backward_masked(view(xs, rows, d), view(gs, rows, d), self.keep.as_deref())
                    .map_err(candle_core::Error::wrap)
            })
        })?;
        let dx = tensor_of(g.input.as_ref(), x.shape())?;
        let dp = tensor_of(g.params.as_ref(), params.shape())?;
        Ok((Some(dx), Some(dp)))
    }
}

/// `x·R_bd`: the block-diagonal rotation built from `params` (`[stored blocks, b(b−1)/2]`, PEFT's
/// packing: strict upper triangle row-major, `Q = U − Uᵀ`) applied to `x [..., d]`, each
/// length-`b` slice of a row times its block, as PEFT's `OFTRotationModule` does.
///
/// Recorded for candle's autograd: `backward()` gives `∂L/∂x = ∂L/∂y·R_bdᵀ` and the packed
/// parameter gradient from oftq-ortho's vector–Jacobian product (through the exact Cayley solve or
/// the Neumann polynomial of `spec`'s parameterization; summed over positions with block sharing).
/// `x` and `params` must share a dtype, `f32` or `f64`, on the CPU. No COFT projection here (see
/// [`OftAdapter::project_coft`](crate::OftAdapter::project_coft)); no divergence check.
///
/// ```
/// use oftq_candle::candle_core::{Device, Tensor, Var};
/// use oftq_candle::{rotate, layer::ortho::RotationSpec};
/// let spec = RotationSpec::builder(8, 4).build()?;
/// let q = Var::from_tensor(&Tensor::full(0.1f64, (2, 6), &Device::Cpu)?)?;
/// let x = Tensor::ones((3, 8), candle_core::DType::F64, &Device::Cpu)?;
/// let y = rotate(&x, q.as_tensor(), &spec)?;
/// let grads = y.sum_all()?.backward()?;
/// assert_eq!(grads.get(q.as_tensor()).unwrap().dims(), &[2, 6]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// Shapes that do not fit `spec`, mixed or unsupported dtypes, non-finite parameters, a singular
/// exact solve.
pub fn rotate(x: &Tensor, params: &Tensor, spec: &RotationSpec) -> Result<Tensor> {
    fn op<T: Real>(spec: &RotationSpec) -> RotationOp<T> {
        let builder = RotationBuilder::new(*spec, None, DivergencePolicy::Ignore);
        RotationOp::new(Arc::new(builder), None)
    }
    let (x, params) = (x.contiguous()?, params.contiguous()?);
    match (x.dtype(), params.dtype()) {
        (DType::F32, DType::F32) => x.apply_op2(&params, op::<f32>(spec)),
        (DType::F64, DType::F64) => x.apply_op2(&params, op::<f64>(spec)),
        (a, b) => candle_core::bail!(
            "oftq-candle: rotate needs x and params both f32 or both f64, got {a:?} and {b:?}"
        ),
    }
}
