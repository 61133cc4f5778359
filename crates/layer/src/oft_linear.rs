//! [`OftLinear`]: named OFT adapters on one frozen base layer (PEFT's `OFTLayer` + `Linear`).

use std::fmt;

use faer::{Mat, MatRef};
use rand::rngs::StdRng;

use oftq_aqlm::AqlmLayer;

use crate::adapter::OftAdapter;
use crate::base::BaseLinear;
use crate::config::OftConfig;
use crate::dense::DenseLinear;
use crate::error::{LayerError, Result, shape};

/// OFT on an AQLM-quantized base layer: PEFT's `AqlmOFTLinear`.
pub type AqlmOftLinear = OftLinear<AqlmLayer>;
/// OFT on a dense `f32` base layer: PEFT's `oft.Linear`.
pub type DenseOftLinear = OftLinear<DenseLinear>;

/// A frozen base layer with a set of named OFT adapters.
///
/// Forward: each *active* adapter, in order, rotates the input (`x ← x·R_bd`; the first adapter
/// rotates `x` first), then the base layer runs: `y = base(x·R₁·R₂⋯)`. With adapters disabled the
/// base output is returned unchanged. Activations are `f32`, the adapters' dtype, so PEFT's casts
/// (input to the adapter dtype, result back to the input dtype) are identities here.
///
/// Module dropout applies only in training forwards ([`forward_cached`](Self::forward_cached) with
/// an RNG): a fraction `p` of blocks is replaced by `I`, no rescaling, nothing with block sharing
/// — the paper's semantics. PEFT ≥ 0.16 builds this dropout layer but never calls it, so with
/// `module_dropout > 0` PEFT trains without dropout; oftq applies it as documented.
#[derive(Debug, Clone)]
pub struct OftLinear<B: BaseLinear> {
    base: B,
    adapters: Vec<(String, OftAdapter)>,
    active: Vec<String>,
    disabled: bool,
    /// Adapters folded into the base weights, in merge order (each call's names as given).
    pub(crate) merged: Vec<String>,
    /// The same adapters in the order their rotations multiplied the base weight
    /// (`W = W₀·R_{f₁}ᵀ·R_{f₂}ᵀ⋯`): unmerging undoes the last factor first.
    pub(crate) factors: Vec<String>,
}

/// What [`OftLinear::backward`] needs from a forward pass.
#[derive(Debug, Clone)]
pub struct OftCache {
    /// Input of each applied adapter, with its name and dropout mask.
    steps: Vec<(String, Mat<f32>, Option<Vec<bool>>)>,
    /// Input of the base layer.
    base_input: Mat<f32>,
}

impl OftCache {
    /// The (rotated) input the base layer saw.
    pub fn base_input(&self) -> MatRef<'_, f32> {
        self.base_input.as_ref()
    }
}

/// Gradients of [`OftLinear::backward`].
#[derive(Debug, Clone)]
pub struct OftGrad {
    /// `∂L/∂x`.
    pub input: Mat<f32>,
    /// `∂L/∂(oft_R.weight)` per applied adapter, in application order.
    pub adapters: Vec<(String, Mat<f32>)>,
}

/// Seed of an adapter's random initialisation (`init_weights = false`), derived from its name
/// (64-bit FNV-1a of the UTF-8 bytes): [`OftLinear::add_adapter`] uses it, so an adapter created
/// elsewhere with `OftAdapter::new(config, in_features, name_seed(name))` starts from the same values.
pub fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl<B: BaseLinear> OftLinear<B> {
    /// A wrapper with no adapters yet.
    pub fn new(base: B) -> Self {
        Self {
            base,
            adapters: Vec::new(),
            active: Vec::new(),
            disabled: false,
            merged: Vec::new(),
            factors: Vec::new(),
        }
    }

    /// A wrapper with one adapter, initialised from `config` (PEFT's constructor + `update_layer`).
    ///
    /// # Errors
    /// Invalid config.
    pub fn with_adapter(base: B, name: &str, config: &OftConfig) -> Result<Self> {
        let mut layer = Self::new(base);
        layer.add_adapter(name, config)?;
        Ok(layer)
    }

    /// The frozen base layer.
    pub fn base(&self) -> &B {
        &self.base
    }

    /// Unwraps the base layer.
    pub fn into_base(self) -> B {
        self.base
    }

    /// Adds an adapter initialised from `config` (seed derived from the name for `N(0, 0.1)` init)
    /// and makes it active after the ones already active.
    ///
    /// # Errors
    /// An existing name; invalid config.
    pub fn add_adapter(&mut self, name: &str, config: &OftConfig) -> Result<()> {
        let adapter = OftAdapter::new(config, self.base.in_features(), name_seed(name))?;
        self.insert_adapter(name, adapter)
    }

    /// Adds a ready adapter and makes it active after the ones already active.
    ///
    /// # Errors
    /// An existing name, or an adapter built for another `in_features`.
    pub fn insert_adapter(&mut self, name: &str, adapter: OftAdapter) -> Result<()> {
        if self.adapter(name).is_some() {
            return Err(LayerError::Adapter {
                name: name.into(),
                why: "already exists".into(),
            });
        }
        if adapter.spec().in_features() != self.base.in_features() {
            return Err(shape(
                format!("adapter {name:?}"),
                format!("in_features {}", self.base.in_features()),
                format!("in_features {}", adapter.spec().in_features()),
            ));
        }
        self.adapters.push((name.into(), adapter));
        self.active.push(name.into());
        Ok(())
    }

    /// Removes an adapter (and deactivates it).
    ///
    /// # Errors
    /// Unknown name.
    pub fn delete_adapter(&mut self, name: &str) -> Result<OftAdapter> {
        let pos = self.position(name)?;
        if self.merged.iter().any(|m| m == name) {
            return Err(LayerError::Adapter {
                name: name.into(),
                why: "is merged; unmerge it first".into(),
            });
        }
        self.active.retain(|a| a != name);
        Ok(self.adapters.remove(pos).1)
    }

    fn position(&self, name: &str) -> Result<usize> {
        self.adapters
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| LayerError::Adapter {
                name: name.into(),
                why: format!("unknown (have {:?})", self.adapter_names()),
            })
    }

    /// Names of all adapters, in insertion order.
    pub fn adapter_names(&self) -> Vec<&str> {
        self.adapters.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The adapter `name`.
    pub fn adapter(&self, name: &str) -> Option<&OftAdapter> {
        self.adapters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// The adapter `name`, mutable (to set its parameters).
    pub fn adapter_mut(&mut self, name: &str) -> Option<&mut OftAdapter> {
        self.adapters
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// Sets the active adapters, applied in the given order.
    ///
    /// # Errors
    /// An unknown name (nothing changes then).
    pub fn set_adapters(&mut self, names: &[&str]) -> Result<()> {
        for n in names {
            self.position(n)?;
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
        self.disabled = !enabled;
    }

    /// Whether adapters are enabled.
    pub fn adapters_enabled(&self) -> bool {
        !self.disabled
    }

    fn applied(&self) -> impl Iterator<Item = (&String, &OftAdapter)> {
        let on = !self.disabled;
        self.active
            .iter()
            .filter(move |n| on && !self.merged.contains(n))
            .filter_map(|n| self.adapter(n).map(|a| (n, a)))
    }

    /// Adapters currently folded into the base weights, in merge order.
    pub fn merged_adapters(&self) -> &[String] {
        &self.merged
    }

    pub(crate) fn base_mut(&mut self) -> &mut B {
        &mut self.base
    }

    /// Inference forward: `y = base(x·R₁·R₂⋯)` over the active adapters (no dropout).
    ///
    /// # Errors
    /// Shape mismatch of `x`.
    pub fn forward(&self, x: MatRef<'_, f32>) -> Result<Mat<f32>> {
        Ok(self.forward_cached(x, None)?.0)
    }

    /// Forward that also returns what [`backward`](Self::backward) needs. With `Some(rng)` this is a
    /// training forward: module dropout masks are drawn from `rng`.
    ///
    /// # Errors
    /// Shape mismatch of `x`.
    pub fn forward_cached(
        &self,
        x: MatRef<'_, f32>,
        mut rng: Option<&mut StdRng>,
    ) -> Result<(Mat<f32>, OftCache)> {
        if x.ncols() != self.base.in_features() {
            return Err(shape(
                "layer input",
                format!("[tokens, {}]", self.base.in_features()),
                format!("[{}, {}]", x.nrows(), x.ncols()),
            ));
        }
        let mut steps = Vec::new();
        let mut cur = x.to_owned();
        for (name, a) in self.applied() {
            let mask = rng.as_deref_mut().and_then(|r| a.dropout_mask(r));
            let next = a.rotation().forward_masked(cur.as_ref(), mask.as_deref())?;
            steps.push((name.clone(), cur, mask));
            cur = next;
        }
        let y = self.base.forward(cur.as_ref())?;
        Ok((
            y,
            OftCache {
                steps,
                base_input: cur,
            },
        ))
    }

    /// Backward: from `dy = ∂L/∂y`, the input gradient and every applied adapter's parameter
    /// gradient, through the frozen base layer's input gradient (no gradient for the base).
    ///
    /// # Errors
    /// Shape mismatch of `dy`, or a cache from another layer state.
    pub fn backward(&self, cache: &OftCache, dy: MatRef<'_, f32>) -> Result<OftGrad> {
        if dy.nrows() != cache.base_input.nrows() || dy.ncols() != self.base.out_features() {
            return Err(shape(
                "output gradient",
                format!(
                    "[{}, {}]",
                    cache.base_input.nrows(),
                    self.base.out_features()
                ),
                format!("[{}, {}]", dy.nrows(), dy.ncols()),
            ));
        }
        let mut g = self.base.backward_input(dy)?;
        let mut grads = Vec::with_capacity(cache.steps.len());
        for (name, input, mask) in cache.steps.iter().rev() {
            let a = self.adapter(name).ok_or_else(|| LayerError::Adapter {
                name: name.clone(),
                why: "removed since the forward pass".into(),
            })?;
            let r = a
                .rotation()
                .backward_masked(input.as_ref(), g.as_ref(), mask.as_deref())?;
            g = r.input;
            grads.push((name.clone(), r.params));
        }
        grads.reverse();
        Ok(OftGrad {
            input: g,
            adapters: grads,
        })
    }
}

impl OftLinear<AqlmLayer> {
    /// The quantized weight's codes (PEFT sets `qweight = codes`): unsigned, `[Og, Ig, M]` row-major.
    pub fn qweight(&self) -> &[u16] {
        self.base.codes()
    }
}

impl<B: BaseLinear> fmt::Display for OftLinear<B> {
    /// PEFT's repr: `"oft." + repr(base)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oft.{}", self.base.describe())
    }
}
