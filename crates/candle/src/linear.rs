//! [`FrozenLinear`] (a frozen base layer) and [`OftLinear`] (OFT adapters on it) as candle modules.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarMap;
use oftq_layer::adapter::dropout_mask;
use oftq_layer::aqlm::AqlmLayer;
use oftq_layer::oft_linear::name_seed;
use oftq_layer::rand::SeedableRng;
use oftq_layer::rand::rngs::StdRng;
use oftq_layer::{BaseLinear, DenseLinear, OftConfig};

use crate::adapter::OftAdapter;
use crate::base_op::BaseForward;
use crate::tensor_io::{ensure_cpu, to_compute_dtype};

/// A frozen linear layer `y = x·Wᵀ + bias` as a candle [`Module`]: the product runs in the base
/// layer's own kernels as a custom op whose backward gives `∂L/∂x = ∂L/∂y·W` (for AQLM, straight
/// from the codes: the dense `W` is never built). No parameters.
///
/// Inputs `[..., in_features]`: `f32`, or `f16`/`bf16` (computed in `f32`, the output converted
/// back to the input's dtype, as PEFT casts); any other dtype is an error. CPU only.
#[derive(Debug)]
pub struct FrozenLinear<B> {
    base: Arc<B>,
}

impl<B> Clone for FrozenLinear<B> {
    fn clone(&self) -> Self {
        Self {
            base: self.base.clone(),
        }
    }
}

/// A frozen AQLM-quantized linear layer (aqlm's `QuantizedLinear`) as a candle module.
pub type AqlmLinear = FrozenLinear<AqlmLayer>;

impl<B: BaseLinear + 'static> FrozenLinear<B> {
    /// Wraps a base layer.
    pub fn new(base: B) -> Self {
        Self {
            base: Arc::new(base),
        }
    }

    /// The base layer.
    pub fn base(&self) -> &B {
        &self.base
    }

    /// The base product of a contiguous `f32` tensor.
    fn forward_f32(&self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1(BaseForward(self.base.clone()))
    }
}

impl<B: BaseLinear + 'static> Module for FrozenLinear<B> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ensure_cpu(x, "layer input")?;
        let (x, dtype) = to_compute_dtype(x)?;
        let y = self.forward_f32(&x.contiguous()?)?;
        restore_dtype(y, dtype)
    }
}

fn restore_dtype(y: Tensor, dtype: DType) -> Result<Tensor> {
    if dtype == DType::F32 {
        Ok(y)
    } else {
        y.to_dtype(dtype)
    }
}

/// OFT on an AQLM-quantized base layer (PEFT's `AqlmOFTLinear`) as a candle module.
pub type AqlmOftLinear = OftLinear<AqlmLayer>;
/// OFT on a dense frozen `f32` base layer (PEFT's `oft.Linear`) as a candle module.
pub type DenseOftLinear = OftLinear<DenseLinear>;

/// A frozen base layer with named OFT adapters whose parameters are candle [`Var`](candle_core::Var)s:
/// `y = base(x·R₁·R₂⋯)` over the active adapters in order (the first rotates `x` first), the base
/// output unchanged when adapters are disabled — oftq-layer's [`oftq_layer::OftLinear`] semantics,
/// recorded for candle's autograd (each rotation a custom op over the input and the adapter's
/// `Var`, the base a custom op with its input gradient).
///
/// **Training mode.** Module dropout (a fraction `p` of the blocks replaced by `I`, none with
/// block sharing) is applied in training forwards only: [`forward_t`](Self::forward_t) with
/// `train = true`, or [`Module::forward`] after [`set_training(true)`](Self::set_training). candle's
/// blanket `ModuleT` impl ignores its flag for `Module` types, so use either of these.
/// Masks come from the module's own RNG ([`seed`](Self::seed)).
///
/// Inputs as for [`FrozenLinear`].
#[derive(Debug)]
pub struct OftLinear<B> {
    base: FrozenLinear<B>,
    module: String,
    adapters: Vec<OftAdapter>,
    active: Vec<String>,
    enabled: bool,
    training: AtomicBool,
    rng: Mutex<StdRng>,
}

impl<B: BaseLinear + 'static> OftLinear<B> {
    /// A module with no adapters, named `module` (its path in the model, used in parameter names
    /// and adapter files; e.g. `model.layers.0.self_attn.q_proj`).
    pub fn new(base: B, module: &str) -> Self {
        Self {
            base: FrozenLinear::new(base),
            module: module.into(),
            adapters: Vec::new(),
            active: Vec::new(),
            enabled: true,
            training: AtomicBool::new(false),
            rng: Mutex::new(StdRng::seed_from_u64(name_seed(module))),
        }
    }

    /// The candle module of an oftq-layer module — e.g. one loaded by
    /// [`oftq_layer::load_aqlm_oft`] from an HF AQLM checkpoint and PEFT adapter folders: the same
    /// base, every adapter (its current parameters registered as a `Var` in `varmap`), the same
    /// active adapters in the same order, enabled or not.
    ///
    /// # Errors
    /// Adapters merged into the base (unmerge them first), or a `Var` name already in `varmap`.
    pub fn from_layer(
        layer: &oftq_layer::OftLinear<B>,
        module: &str,
        varmap: &VarMap,
    ) -> Result<Self>
    where
        B: Clone,
    {
        if !layer.merged_adapters().is_empty() {
            candle_core::bail!(
                "oftq-candle: {module} has adapters merged into its base ({:?}); unmerge them first",
                layer.merged_adapters()
            );
        }
        let mut m = Self::new(layer.base().clone(), module);
        for name in layer.adapter_names() {
            if let Some(a) = layer.adapter(name) {
                m.push_adapter(name, a, varmap)?;
            }
        }
        let active: Vec<&str> = layer.active_adapters().iter().map(String::as_str).collect();
        m.set_adapters(&active)?;
        m.enable_adapters(layer.adapters_enabled());
        Ok(m)
    }

    /// Adds adapter `name` initialised from `config` exactly as
    /// [`oftq_layer::OftLinear::add_adapter`] does (`R = I`, or seeded `N(0, 0.1)` entries), its
    /// parameters registered in `varmap`, active after the ones already active.
    ///
    /// # Errors
    /// An invalid config, an existing adapter name, a `Var` name already in `varmap`.
    pub fn add_adapter(&mut self, name: &str, config: &OftConfig, varmap: &VarMap) -> Result<()> {
        let adapter =
            oftq_layer::OftAdapter::new(config, self.base.base().in_features(), name_seed(name))
                .map_err(candle_core::Error::wrap)?;
        self.insert_adapter(name, &adapter, varmap)
    }

    /// Adds a ready oftq-layer adapter (its current parameters registered in `varmap`), active
    /// after the ones already active.
    ///
    /// # Errors
    /// An existing adapter name, an adapter for another `in_features`, a `Var` name already in
    /// `varmap`.
    pub fn insert_adapter(
        &mut self,
        name: &str,
        adapter: &oftq_layer::OftAdapter,
        varmap: &VarMap,
    ) -> Result<()> {
        self.push_adapter(name, adapter, varmap)?;
        self.active.push(name.into());
        Ok(())
    }

    fn push_adapter(
        &mut self,
        name: &str,
        adapter: &oftq_layer::OftAdapter,
        varmap: &VarMap,
    ) -> Result<()> {
        if self.adapter(name).is_some() {
            candle_core::bail!(
                "oftq-candle: {} already has an adapter {name:?}",
                self.module
            );
        }
        let (want, got) = (self.base.base().in_features(), adapter.spec().in_features());
        if want != got {
            candle_core::bail!(
                "oftq-candle: adapter {name:?} is for in_features {got}, {} has {want}",
                self.module
            );
        }
        self.adapters
            .push(OftAdapter::new(name, &self.module, adapter, varmap)?);
        Ok(())
    }

    /// The module path.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// The frozen base layer.
    pub fn base(&self) -> &B {
        self.base.base()
    }

    /// All adapters, in insertion order.
    pub fn adapters(&self) -> &[OftAdapter] {
        &self.adapters
    }

    /// The adapter `name`.
    pub fn adapter(&self, name: &str) -> Option<&OftAdapter> {
        self.adapters.iter().find(|a| a.name() == name)
    }

    /// Sets the active adapters, applied in the given order.
    ///
    /// # Errors
    /// An unknown name (nothing changes then).
    pub fn set_adapters(&mut self, names: &[&str]) -> Result<()> {
        if let Some(n) = names.iter().find(|n| self.adapter(n).is_none()) {
            candle_core::bail!(
                "oftq-candle: {} has no adapter {n:?} (has {:?})",
                self.module,
                self.adapters
                    .iter()
                    .map(OftAdapter::name)
                    .collect::<Vec<_>>()
            );
        }
        self.active = names.iter().map(|n| (*n).to_string()).collect();
        Ok(())
    }

    /// The active adapters, in application order.
    pub fn active_adapters(&self) -> &[String] {
        &self.active
    }

    /// Enables or disables all adapters (disabled: the base output, unchanged).
    pub fn enable_adapters(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// Whether adapters are enabled.
    pub fn adapters_enabled(&self) -> bool {
        self.enabled
    }

    /// Switches [`Module::forward`] between training (module dropout on) and inference.
    pub fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }

    /// Whether [`Module::forward`] runs in training mode.
    pub fn is_training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }

    /// Reseeds the RNG that draws module-dropout masks (seeded from the module path by default).
    pub fn seed(&self, seed: u64) {
        *self.rng.lock().unwrap_or_else(|p| p.into_inner()) = StdRng::seed_from_u64(seed);
    }

    /// Projects every adapter's parameters onto its COFT ball in place (see
    /// [`OftAdapter::project_coft`]); call after each optimizer step.
    ///
    /// # Errors
    /// Non-finite parameters.
    pub fn project_coft(&self) -> Result<()> {
        self.adapters.iter().try_for_each(OftAdapter::project_coft)
    }

    /// Forward in training (`train = true`: module dropout drawn from the module's RNG) or
    /// inference mode.
    ///
    /// # Errors
    /// A non-CPU input, an unsupported dtype, a last dimension other than `in_features`, invalid
    /// adapter parameters (non-finite; Neumann divergence under an `Error` policy).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        ensure_cpu(x, "layer input")?;
        let (x, dtype) = to_compute_dtype(x)?;
        let applied: Vec<&OftAdapter> = if self.enabled {
            self.active.iter().filter_map(|n| self.adapter(n)).collect()
        } else {
            Vec::new()
        };
        let mask = |a: &OftAdapter| {
            train
                .then(|| {
                    let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                    dropout_mask(a.spec(), a.module_dropout(), &mut rng)
                })
                .flatten()
        };
        let x = x.contiguous()?;
        let y = match applied.as_slice() {
            // One adapter (the common case): rotation and base as one op, which keeps the
            // rotated input out of the graph.
            [a] => a.rotate_into(&x, mask(a), self.base.base.clone())?,
            _ => {
                let mut h = x;
                for a in applied {
                    h = a.rotate(&h, mask(a))?;
                }
                self.base.forward_f32(&h)?
            }
        };
        restore_dtype(y, dtype)
    }

    /// Freezes (`false`) or unfreezes every adapter (see [`OftAdapter::set_trainable`]): frozen,
    /// forward passes record no graph and rebuild no rotation, for inference.
    ///
    /// # Errors
    /// Freezing invalid parameters.
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        self.adapters
            .iter_mut()
            .try_for_each(|a| a.set_trainable(trainable))
    }

    /// The oftq-layer module with the adapters' current parameters (same base, adapters, active
    /// order and enabled state): for oftq-layer's merge, its own trainer, or comparison.
    ///
    /// # Errors
    /// Invalid current parameters (see [`OftAdapter::to_layer`]).
    pub fn to_layer(&self) -> Result<oftq_layer::OftLinear<B>>
    where
        B: Clone,
    {
        let mut layer = oftq_layer::OftLinear::new(self.base().clone());
        let wrap = candle_core::Error::wrap;
        for a in &self.adapters {
            layer
                .insert_adapter(a.name(), a.to_layer()?)
                .map_err(wrap)?;
        }
        let active: Vec<&str> = self.active.iter().map(String::as_str).collect();
        layer.set_adapters(&active).map_err(wrap)?;
        layer.enable_adapters(self.enabled);
        Ok(layer)
    }
}

impl<B: BaseLinear + 'static> Module for OftLinear<B> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, self.is_training())
    }
}
