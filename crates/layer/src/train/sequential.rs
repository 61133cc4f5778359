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
    /// Per layer: the adapter's cache, and the pre-activation `z` unless the activation is the
    /// identity.
    layers: Vec<(Option<OftCache>, Option<Mat<f32>>)>,
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
        // The running activation: `None` until the first layer, which reads `x` in place.
        let mut cur: Option<Mat<f32>> = None;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (name, m, act) in &self.layers {
            let input = cur.as_ref().map_or(x, Mat::as_ref);
            let (z, cache) = module_forward(m, input, rng.as_deref_mut())
                .map_err(|e| LayerError::Config(format!("layer {name}: {e}")))?;
            // The identity keeps no pre-activation (its backward does not read it) and passes
            // `z` on without a copy.
            if *act == Activation::Identity {
                cur = Some(z);
                layers.push((cache, None));
            } else {
                cur = Some(act.forward(z.as_ref()));
                layers.push((cache, Some(z)));
            }
        }
        let cur = cur.unwrap_or_else(|| x.to_owned());
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
        // The running gradient: `None` until the last layer, which reads `dy` in place.
        let mut g: Option<Mat<f32>> = None;
        let mut params = BTreeMap::new();
        for ((name, m, act), (c, z)) in self.layers.iter().zip(&cache.layers).rev() {
            let missing =
                || LayerError::Config(format!("layer {name}: cache does not match the module"));
            let g_out = g.as_ref().map_or(dy, Mat::as_ref);
            let gz_owned = match (act, z) {
                (Activation::Identity, _) => None,
                (_, Some(z)) => Some(act.backward(z.as_ref(), g_out)),
                (_, None) => return Err(missing()),
            };
            let gz = gz_owned.as_ref().map_or(g_out, Mat::as_ref);
            g = Some(match (m, c) {
                (Module::Aqlm(b), _) => BaseLinear::backward_input(b, gz)?,
                (Module::Dense(b), _) => BaseLinear::backward_input(b, gz)?,
                (Module::OftAqlm(l), Some(c)) => collect(name, l.backward(c, gz)?, &mut params),
                (Module::OftDense(l), Some(c)) => collect(name, l.backward(c, gz)?, &mut params),
                _ => return Err(missing()),
            });
        }
        let g = g.unwrap_or_else(|| dy.to_owned());
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
