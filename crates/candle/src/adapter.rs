//! [`OftAdapter`]: one adapter's packed parameters as a candle [`Var`], named as PEFT names them.

use std::sync::Arc;

use candle_core::{Device, Result, Tensor, Var};
use candle_nn::VarMap;
use oftq_layer::faer::Mat;
use oftq_layer::ortho::{BlockRotation, RotationSpec, project_coft};

use crate::fused_op::RotatedBase;
use crate::rotation_op::{RotationBuilder, RotationOp};
use crate::tensor_io::{row_major, to_mat, with_slice};

/// The name of adapter `adapter`'s parameters on module `module` in a [`VarMap`]: PEFT's
/// in-memory parameter name, `base_model.model.<module>.oft_R.<adapter>.weight` (what
/// `named_parameters()` of a `PeftModel` lists; its saved file drops the adapter name).
pub fn var_name(module: &str, adapter: &str) -> String {
    format!("base_model.model.{module}.oft_R.{adapter}.weight")
}

/// One OFT adapter of one module, trainable by candle: the packed skew parameters (PEFT's
/// `oft_R.weight`, `[stored blocks, b(b−1)/2]`, `f32`) are a [`Var`] registered in a [`VarMap`]
/// under [`var_name`], so any candle optimizer built from `varmap.all_vars()` trains them.
///
/// Geometry, parameterization, COFT ball, module dropout and divergence policy come from the
/// oftq-layer adapter it was created from. Every forward builds the rotation from the `Var`'s
/// current values (unless they are unchanged since the last build): projected onto the COFT ball
/// first when there is one, exactly as PEFT's forward does, without a gradient through the
/// projection.
///
/// **COFT and optimizers.** PEFT writes the projected values back into its parameter at the start
/// of every forward. Here the forward leaves the `Var` alone (so a `forward` has no side effects);
/// call [`project_coft`](Self::project_coft) (or
/// [`OftLinear::project_coft`](crate::OftLinear::project_coft)) after each optimizer step so that
/// the `Var`s, and the adapter files saved from them, hold the projected values PEFT would hold.
/// The projection is idempotent, so the outputs and gradients are the same either way.
#[derive(Debug, Clone)]
pub struct OftAdapter {
    name: String,
    module: String,
    var: Var,
    /// The oftq-layer adapter this one was created from: its geometry and options (its parameters
    /// are the initial values, not kept in sync; see [`OftAdapter::to_layer`]).
    template: oftq_layer::OftAdapter,
    builder: Arc<RotationBuilder<f32>>,
    /// While frozen: the parameters' detached values and their rotation, built at freezing.
    frozen: Option<(Tensor, Arc<BlockRotation<f32>>)>,
}

impl OftAdapter {
    /// Registers `adapter`'s parameters (their current values) as a new `Var` named
    /// [`var_name`]`(module, name)` in `varmap`, on the CPU.
    ///
    /// # Errors
    /// A `Var` of that name already in `varmap`.
    pub fn new(
        name: &str,
        module: &str,
        adapter: &oftq_layer::OftAdapter,
        varmap: &VarMap,
    ) -> Result<Self> {
        let key = var_name(module, name);
        let w = adapter.weight();
        let values = Tensor::from_vec(row_major(w), (w.nrows(), w.ncols()), &Device::Cpu)?;
        let var = Var::from_tensor(&values)?;
        {
            let mut vars = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
            if vars.contains_key(&key) {
                candle_core::bail!("oftq-candle: the VarMap already has a variable named {key}");
            }
            vars.insert(key, var.clone());
        }
        let builder = RotationBuilder::new(*adapter.spec(), adapter.coft(), adapter.divergence());
        Ok(Self {
            name: name.into(),
            module: module.into(),
            var,
            template: adapter.clone(),
            builder: Arc::new(builder),
            frozen: None,
        })
    }

    /// The adapter name (e.g. `"default"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The module path this adapter belongs to (e.g. `model.layers.0.self_attn.q_proj`).
    pub fn module(&self) -> &str {
        &self.module
    }

    /// The trainable parameters.
    pub fn var(&self) -> &Var {
        &self.var
    }

    /// The geometry and parameterization.
    pub fn spec(&self) -> &RotationSpec {
        self.template.spec()
    }

    /// Module dropout probability (applied in training forwards).
    pub fn module_dropout(&self) -> f64 {
        self.template.module_dropout()
    }

    /// The current parameters, `[stored blocks, b(b−1)/2]`.
    ///
    /// # Errors
    /// The `Var` no longer has the adapter's shape (it was replaced by a tensor of another shape).
    pub fn weight(&self) -> Result<Mat<f32>> {
        to_mat(self.var.as_tensor(), "adapter parameters")
    }

    /// Projects the parameters onto the COFT ball in place (PEFT's per-block Frobenius radius);
    /// nothing without COFT. Call after each optimizer step (see the type's docs).
    ///
    /// # Errors
    /// Non-finite parameters.
    pub fn project_coft(&self) -> Result<()> {
        let Some(radius) = self.template.coft() else {
            return Ok(());
        };
        let mut w = self.weight()?;
        project_coft(w.as_mut(), radius).map_err(candle_core::Error::wrap)?;
        let projected = Tensor::from_vec(row_major(w.as_ref()), w.shape(), &Device::Cpu)?;
        self.var.set(&projected)
    }

    /// The oftq-layer adapter with the current parameters (projected if COFT is on), e.g. to run
    /// it through oftq-layer's own forward or to merge it.
    ///
    /// # Errors
    /// Those of [`oftq_layer::OftAdapter::updated`] (non-finite values, divergence under an
    /// `Error` policy).
    pub fn to_layer(&self) -> Result<oftq_layer::OftAdapter> {
        self.template
            .updated(self.weight()?)
            .map_err(candle_core::Error::wrap)
    }

    /// The op for one forward: over the `Var` (recorded for backward), or, frozen, over the
    /// detached values with their rotation built once.
    fn op(&self, keep: Option<Vec<bool>>) -> (Tensor, RotationOp<f32>) {
        match &self.frozen {
            Some((values, rot)) => (
                values.clone(),
                RotationOp::prebuilt(self.builder.clone(), keep, rot.clone()),
            ),
            None => (
                self.var.as_tensor().clone(),
                RotationOp::new(self.builder.clone(), keep),
            ),
        }
    }

    /// `x·R̃_bd` for a contiguous `f32` `x [..., d]`, recorded for backward.
    pub(crate) fn rotate(&self, x: &Tensor, keep: Option<Vec<bool>>) -> Result<Tensor> {
        let (params, op) = self.op(keep);
        x.apply_op2(&params, op)
    }

    /// `base(x·R̃_bd)` in one op (see [`crate::fused_op`]).
    pub(crate) fn rotate_into<B: oftq_layer::BaseLinear + 'static>(
        &self,
        x: &Tensor,
        keep: Option<Vec<bool>>,
        base: Arc<B>,
    ) -> Result<Tensor> {
        let (params, rotation) = self.op(keep);
        x.apply_op2(&params, RotatedBase { base, rotation })
    }

    /// Freezes (`false`) or unfreezes (`true`) the adapter. Frozen, forward passes use the
    /// parameters' values at the time of freezing and their rotation, built once then: no graph
    /// is recorded, nothing is kept for a backward pass, and no step checks whether the
    /// parameters changed (inference). Changes to the `Var` take effect when it is unfrozen, or
    /// frozen again. Adapters start trainable.
    ///
    /// # Errors
    /// Freezing invalid parameters (non-finite; divergence under an `Error` policy).
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        self.frozen = if trainable {
            None
        } else {
            let values = self.var.as_tensor().detach().copy()?;
            let rot = with_slice(&values, "adapter parameters", |p: &[f32]| {
                self.builder.rotation(p)
            })?;
            Some((values, rot))
        };
        Ok(())
    }

    /// Whether the forward passes record gradients for the parameters.
    pub fn is_trainable(&self) -> bool {
        self.frozen.is_none()
    }
}
