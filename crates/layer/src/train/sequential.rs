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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense::DenseLinear;

    fn dense(rows: usize, cols: usize, seed: f32) -> DenseLinear {
        DenseLinear::new(
            Mat::from_fn(rows, cols, |i, j| ((i * cols + j) as f32 * seed).sin()),
            Some(vec![0.1; rows]),
            false,
        )
        .unwrap()
    }

    /// No layers: the output is the input and the input gradient is `dy` (the in-place reads of
    /// `x` and `dy` fall back to copies).
    #[test]
    fn an_empty_model_passes_input_and_gradient_through() {
        let m = Sequential::new();
        let x = Mat::<f32>::from_fn(3, 5, |t, f| (t * 5 + f) as f32);
        let (y, cache) = m.forward_cached(x.as_ref(), None).unwrap();
        assert_eq!(y, x);
        let g = m.backward(&cache, x.as_ref()).unwrap();
        assert_eq!(g.input, x);
        assert!(g.params.is_empty());
    }

    /// Identity layers pass `z` and its gradient on by move, ReLU layers keep `z`: the output
    /// and the input gradient are the chain computed layer by layer, bit for bit.
    #[test]
    fn identity_and_relu_chains_match_the_layer_by_layer_chain() {
        let (a, b, c) = (dense(6, 4, 0.7), dense(5, 6, 1.3), dense(3, 5, 0.4));
        for acts in [
            [Activation::Identity, Activation::Relu, Activation::Identity],
            [Activation::Relu, Activation::Identity, Activation::Relu],
        ] {
            let m = Sequential::new()
                .push("a", Module::Dense(a.clone()), acts[0])
                .push("b", Module::Dense(b.clone()), acts[1])
                .push("c", Module::Dense(c.clone()), acts[2]);
            let x = Mat::<f32>::from_fn(7, 4, |t, f| ((t * 4 + f) as f32 * 0.9).cos());
            let dy = Mat::<f32>::from_fn(7, 3, |t, o| ((t * 3 + o) as f32 * 0.5).sin());
            let (y, cache) = m.forward_cached(x.as_ref(), None).unwrap();
            let g = m.backward(&cache, dy.as_ref()).unwrap();

            let layers = [&a, &b, &c];
            let mut zs = Vec::new();
            let mut cur = x.clone();
            for (l, act) in layers.iter().zip(acts) {
                let z = BaseLinear::forward(*l, cur.as_ref()).unwrap();
                cur = act.forward(z.as_ref());
                zs.push(z);
            }
            assert_eq!(y, cur, "{acts:?}");
            let mut grad = dy.clone();
            for ((l, act), z) in layers.iter().zip(acts).zip(&zs).rev() {
                let gz = act.backward(z.as_ref(), grad.as_ref());
                grad = BaseLinear::backward_input(*l, gz.as_ref()).unwrap();
            }
            assert_eq!(g.input, grad, "{acts:?}");
        }
    }
}
