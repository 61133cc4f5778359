//! [`Sequential`]: a stack of (OFT-wrapped) linear modules with elementwise activations.

use std::collections::BTreeMap;

use faer::{Mat, MatRef};
use rand::rngs::StdRng;

use crate::adapter::OftAdapter;
use crate::base::BaseLinear;
use crate::dispatch::Module;
use crate::error::{LayerError, Result, shape};
use crate::oft_linear::OftCache;
use crate::train::activation::Activation;
use crate::train::optim::ParamKey;

/// A model `y = f_k(L_k(⋯ f_1(L_1(x))))`: each layer a [`Module`] (AQLM or dense, wrapped with
/// adapters or frozen as is) followed by an [`Activation`].
#[derive(Debug, Clone, Default)]
pub struct Sequential {
    /// `(name, module, activation)` in order.
    pub layers: Vec<(String, Module, Activation)>,
}

/// Per-layer state kept by [`Sequential::forward_cached`].
#[derive(Debug, Clone)]
pub struct SeqCache {
    layers: Vec<(Option<OftCache>, Mat<f32>)>,
}

/// Gradients of [`Sequential::backward`].
#[derive(Debug, Clone)]
pub struct SeqGrad {
    /// `∂L/∂x`.
    pub input: Mat<f32>,
    /// `∂L/∂(oft_R.weight)` of every applied adapter.
    pub params: BTreeMap<ParamKey, Mat<f32>>,
}

fn module_forward(
    m: &Module,
    x: MatRef<'_, f32>,
    rng: Option<&mut StdRng>,
) -> Result<(Mat<f32>, Option<OftCache>)> {
    Ok(match m {
        Module::Aqlm(b) => (BaseLinear::forward(b, x)?, None),
        Module::Dense(b) => (BaseLinear::forward(b, x)?, None),
        Module::OftAqlm(l) => {
            let (y, c) = l.forward_cached(x, rng)?;
            (y, Some(c))
        }
        Module::OftDense(l) => {
            let (y, c) = l.forward_cached(x, rng)?;
            (y, Some(c))
        }
    })
}

impl Sequential {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer.
    #[must_use]
    pub fn push(mut self, name: &str, module: Module, activation: Activation) -> Self {
        self.layers.push((name.into(), module, activation));
        self
    }

    /// Inference forward (no dropout).
    ///
    /// # Errors
    /// Shape mismatches.
    pub fn forward(&self, x: MatRef<'_, f32>) -> Result<Mat<f32>> {
        Ok(self.forward_cached(x, None)?.0)
    }

    /// Forward keeping what [`backward`](Self::backward) needs; `Some(rng)` makes it a training
    /// forward (module dropout).
    ///
    /// # Errors
    /// Shape mismatches.
    pub fn forward_cached(
        &self,
        x: MatRef<'_, f32>,
        mut rng: Option<&mut StdRng>,
    ) -> Result<(Mat<f32>, SeqCache)> {
        let mut cur = x.to_owned();
        let mut layers = Vec::with_capacity(self.layers.len());
        for (name, m, act) in &self.layers {
            let (z, cache) = module_forward(m, cur.as_ref(), rng.as_deref_mut())
                .map_err(|e| LayerError::Config(format!("layer {name}: {e}")))?;
            cur = act.forward(z.as_ref());
            layers.push((cache, z));
        }
        Ok((cur, SeqCache { layers }))
    }

    /// Backward from `dy = ∂L/∂y`: the input gradient and every applied adapter's gradient.
    /// Base layers stay frozen (only their input gradients are used).
    ///
    /// # Errors
    /// Shape mismatches or a cache from another model.
    pub fn backward(&self, cache: &SeqCache, dy: MatRef<'_, f32>) -> Result<SeqGrad> {
        if cache.layers.len() != self.layers.len() {
            return Err(shape(
                "training cache",
                format!("{} layers", self.layers.len()),
                format!("{} layers", cache.layers.len()),
            ));
        }
        let mut g = dy.to_owned();
        let mut params = BTreeMap::new();
        for ((name, m, act), (c, z)) in self.layers.iter().zip(&cache.layers).rev() {
            let gz = act.backward(z.as_ref(), g.as_ref());
            let missing =
                || LayerError::Config(format!("layer {name}: cache does not match the module"));
            g = match (m, c) {
                (Module::Aqlm(b), _) => BaseLinear::backward_input(b, gz.as_ref())?,
                (Module::Dense(b), _) => BaseLinear::backward_input(b, gz.as_ref())?,
                (Module::OftAqlm(l), Some(c)) => {
                    collect(name, l.backward(c, gz.as_ref())?, &mut params)
                }
                (Module::OftDense(l), Some(c)) => {
                    collect(name, l.backward(c, gz.as_ref())?, &mut params)
                }
                _ => return Err(missing()),
            };
        }
        Ok(SeqGrad { input: g, params })
    }

    /// Every adapter of the model with its key, in layer order.
    pub fn adapters(&self) -> Vec<(ParamKey, &OftAdapter)> {
        let mut out = Vec::new();
        for (name, m, _) in &self.layers {
            let list: Vec<(&str, &OftAdapter)> = match m {
                Module::OftAqlm(l) => l
                    .adapter_names()
                    .into_iter()
                    .filter_map(|a| l.adapter(a).map(|ad| (a, ad)))
                    .collect(),
                Module::OftDense(l) => l
                    .adapter_names()
                    .into_iter()
                    .filter_map(|a| l.adapter(a).map(|ad| (a, ad)))
                    .collect(),
                _ => Vec::new(),
            };
            out.extend(list.into_iter().map(|(a, ad)| (ParamKey::new(name, a), ad)));
        }
        out
    }

    /// The adapter with this key, mutable.
    pub fn adapter_mut(&mut self, key: &ParamKey) -> Option<&mut OftAdapter> {
        let (_, m, _) = self.layers.iter_mut().find(|(n, ..)| *n == key.layer)?;
        match m {
            Module::OftAqlm(l) => l.adapter_mut(&key.adapter),
            Module::OftDense(l) => l.adapter_mut(&key.adapter),
            _ => None,
        }
    }
}

fn collect(
    layer: &str,
    g: crate::oft_linear::OftGrad,
    params: &mut BTreeMap<ParamKey, Mat<f32>>,
) -> Mat<f32> {
    for (a, p) in g.adapters {
        params.insert(ParamKey::new(layer, &a), p);
    }
    g.input
}
