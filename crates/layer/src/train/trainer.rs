//! [`Trainer`]: the training loop over a [`Sequential`] model's adapters.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use faer::{Mat, MatRef};
use rand::{SeedableRng, rngs::StdRng};

use crate::error::{LayerError, Result};
use crate::train::loss::Loss;
use crate::train::optim::{AdamW, LrSchedule, ParamKey, clip_grad_norm};
use crate::train::sequential::Sequential;

/// What one training step did (passed to the progress callback).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// 0-based step.
    pub step: usize,
    /// Loss before the update.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Largest `‖RᵀR − I‖_F` (Frobenius norm, an upper bound on the spectral norm that costs one
    /// `b × b` product per block instead of an eigendecomposition) over all blocks of all
    /// adapters after the update.
    pub max_orthogonality_error: f64,
    /// Largest certified bound on `‖Q‖₂` over all blocks after the update.
    pub max_q_bound: f64,
}

/// Summary of [`Trainer::fit`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainReport {
    /// Per-step statistics.
    pub history: Vec<StepStats>,
    /// Whether the callback stopped training early.
    pub stopped_early: bool,
}

/// Trains the adapters of a [`Sequential`] model with [`AdamW`]; the base layers are never
/// modified. Deterministic for a given seed (dropout masks are the only randomness, and every
/// kernel is thread-count independent).
#[derive(Debug)]
pub struct Trainer {
    /// The model being trained.
    pub model: Sequential,
    /// The optimizer.
    pub optimizer: AdamW,
    /// The learning-rate schedule.
    pub schedule: LrSchedule,
    /// Clip the global gradient norm to this value ([`clip_grad_norm`]); `Some(1.0)` from
    /// [`Trainer::new`], `None` disables clipping.
    pub clip: Option<f64>,
    rng: StdRng,
}

fn finite(m: MatRef<'_, f32>) -> bool {
    m.is_all_finite()
}

impl Trainer {
    /// A trainer; `seed` drives module dropout. Gradients are clipped to a global L2 norm of
    /// `1.0` (the [`clip`](Self::clip) field; the usual value of Hugging Face's `Trainer`,
    /// `max_grad_norm = 1.0`). The optimizer's own defaults are [`AdamW::new`]'s (weight decay
    /// `0.01`, as `torch.optim.AdamW`).
    pub fn new(model: Sequential, optimizer: AdamW, schedule: LrSchedule, seed: u64) -> Self {
        Self {
            model,
            optimizer,
            schedule,
            clip: Some(1.0),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The loss of the model on `(x, loss)` without training (no dropout).
    ///
    /// # Errors
    /// Shape mismatches.
    pub fn evaluate(&self, x: MatRef<'_, f32>, loss: &Loss) -> Result<f64> {
        let y = self.model.forward(x)?;
        Ok(loss.value_and_grad(y.as_ref())?.0)
    }

    /// One step at `step` of `total`: forward (with dropout), loss, backward, clipping, AdamW, then
    /// the new parameters are applied to every adapter at once (COFT projection included).
    ///
    /// If the loss, a gradient or a new parameter is NaN/∞, or an adapter refuses its new
    /// parameters (e.g. Neumann divergence in strict mode), nothing is applied: the error is
    /// returned and the model keeps its last good adapters.
    ///
    /// # Errors
    /// [`LayerError::NonFinite`] and the errors above; shape mismatches.
    pub fn step(
        &mut self,
        x: MatRef<'_, f32>,
        loss: &Loss,
        step: usize,
        total: usize,
    ) -> Result<StepStats> {
        let (y, cache) = self.model.forward_cached(x, Some(&mut self.rng))?;
        let (value, dy) = loss.value_and_grad(y.as_ref())?;
        if !value.is_finite() {
            return Err(LayerError::NonFinite(format!(
                "loss at step {step} ({value})"
            )));
        }
        let mut grads = self.model.backward(&cache, dy.as_ref())?.params;
        if let Some((k, _)) = grads.iter().find(|(_, g)| !finite(g.as_ref())) {
            return Err(LayerError::NonFinite(format!(
                "gradient of {k} at step {step}"
            )));
        }
        let grad_norm = clip_grad_norm(&mut grads, self.clip);
        let lr = self.schedule.at(self.optimizer.lr, step, total);
        let params: BTreeMap<ParamKey, Mat<f32>> = self
            .model
            .adapters()
            .into_iter()
            .map(|(k, a)| (k, a.weight().to_owned()))
            .collect();
        let (new_params, state) = self.optimizer.propose(&params, &grads, lr);
        if let Some((k, _)) = new_params.iter().find(|(_, p)| !finite(p.as_ref())) {
            return Err(LayerError::NonFinite(format!(
                "parameters of {k} after step {step}"
            )));
        }
        // Build every updated adapter before touching the model: all or nothing.
        let mut updated = Vec::with_capacity(new_params.len());
        for (k, p) in new_params {
            let a = self
                .model
                .adapters()
                .into_iter()
                .find(|(key, _)| *key == k)
                .map(|(_, a)| a)
                .ok_or_else(|| LayerError::Adapter {
                    name: k.to_string(),
                    why: "disappeared during the step".into(),
                })?
                .updated(p)
                .map_err(|e| LayerError::Config(format!("step {step}, adapter {k}: {e}")))?;
            updated.push((k, a));
        }
        for (k, a) in updated {
            if let Some(slot) = self.model.adapter_mut(&k) {
                *slot = a;
            }
        }
        self.optimizer.commit(state);
        let (mut orth, mut qb) = (0.0f64, 0.0f64);
        for (_, a) in self.model.adapters() {
            orth = a
                .rotation()
                .orthogonality_errors_frobenius()
                .into_iter()
                .map(f64::from)
                .fold(orth, f64::max);
            qb = a
                .rotation()
                .skew_norm_bounds()
                .into_iter()
                .map(f64::from)
                .fold(qb, f64::max);
        }
        Ok(StepStats {
            step,
            loss: value,
            lr,
            grad_norm,
            max_orthogonality_error: orth,
            max_q_bound: qb,
        })
    }

    /// Runs `steps` steps; `batch(step)` supplies the input and loss of each step, `callback` sees
    /// every step's statistics and may stop training with `ControlFlow::Break`.
    ///
    /// # Errors
    /// The first failing step (the model keeps the adapters of the last good step).
    pub fn fit<F, C>(&mut self, steps: usize, mut batch: F, mut callback: C) -> Result<TrainReport>
    where
        F: FnMut(usize) -> Result<(Mat<f32>, Loss)>,
        C: FnMut(&StepStats) -> ControlFlow<()>,
    {
        let mut report = TrainReport::default();
        for step in 0..steps {
            let (x, loss) = batch(step)?;
            let stats = self.step(x.as_ref(), &loss, step, steps)?;
            report.history.push(stats);
            if callback(&stats).is_break() {
                report.stopped_early = true;
                break;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OftConfig;
    use crate::dense::DenseLinear;
    use crate::dispatch::{Module, dispatch};
    use crate::train::activation::Activation;

    fn model() -> Sequential {
        let c = OftConfig {
            oft_block_size: 4,
            ..OftConfig::default()
        };
        let mut l1 = Module::Dense(
            DenseLinear::new(
                Mat::from_fn(8, 8, |i, j| ((i * 8 + j) as f32 * 0.7).sin()),
                None,
                false,
            )
            .unwrap(),
        );
        let mut l2 = Module::Dense(
            DenseLinear::new(
                Mat::from_fn(3, 8, |i, j| ((i * 8 + j) as f32 * 1.3).cos()),
                Some(vec![0.1; 3]),
                false,
            )
            .unwrap(),
        );
        dispatch(&mut l1, "default", &c).unwrap();
        dispatch(&mut l2, "default", &c).unwrap();
        Sequential::new()
            .push("l1", l1, Activation::Gelu)
            .push("l2", l2, Activation::Identity)
    }

    #[test]
    fn sequential_gradients_match_finite_differences() {
        let mut m = model();
        let key = ParamKey::new("l1", "default");
        let mut w = m.adapters()[0].1.weight().to_owned();
        for (k, v) in [(0usize, 0.05f32), (3, -0.08), (7, 0.1)] {
            w[(k % 2, k % 6)] = v;
        }
        m.adapter_mut(&key).unwrap().set_weight(w.clone()).unwrap();
        let x = Mat::<f32>::from_fn(4, 8, |t, f| ((t * 8 + f) as f32 * 0.3).sin());
        let loss = Loss::CrossEntropy(vec![0, 1, 2, 1]);
        let (y, cache) = m.forward_cached(x.as_ref(), None).unwrap();
        let g = m
            .backward(&cache, loss.value_and_grad(y.as_ref()).unwrap().1.as_ref())
            .unwrap();
        let h = 1e-2f32;
        for (i, k) in [(0usize, 0usize), (1, 5)] {
            let f = |d: f32| {
                let mut mm = m.clone();
                let mut w2 = w.clone();
                w2[(i, k)] += d;
                mm.adapter_mut(&key).unwrap().set_weight(w2).unwrap();
                loss.value_and_grad(mm.forward(x.as_ref()).unwrap().as_ref())
                    .unwrap()
                    .0
            };
            let fd = (f(h) - f(-h)) / (2.0 * f64::from(h));
            let an = f64::from(g.params[&key][(i, k)]);
            assert!(
                (fd - an).abs() < 2e-3 * (1.0 + an.abs()),
                "({i},{k}): fd {fd} vs {an}"
            );
        }
    }

    #[test]
    fn training_reduces_loss_deterministically_and_keeps_base() {
        let target = Mat::<f32>::from_fn(6, 3, |t, o| ((t + 2 * o) as f32 * 0.4).sin());
        let x = Mat::<f32>::from_fn(6, 8, |t, f| ((t * 8 + f) as f32 * 0.2).cos());
        let run = || {
            let mut tr = Trainer::new(
                model(),
                AdamW::new(0.02),
                LrSchedule::Cosine {
                    warmup: 2,
                    min_ratio: 0.1,
                },
                7,
            );
            let before = tr.evaluate(x.as_ref(), &Loss::Mse(target.clone())).unwrap();
            let rep = tr
                .fit(
                    40,
                    |_| Ok((x.clone(), Loss::Mse(target.clone()))),
                    |_| ControlFlow::Continue(()),
                )
                .unwrap();
            (before, rep, tr)
        };
        let (before, rep, tr) = run();
        let after = tr.evaluate(x.as_ref(), &Loss::Mse(target.clone())).unwrap();
        assert!(after < 0.9 * before, "{before} -> {after}");
        assert!(rep.history.iter().all(|s| s.max_orthogonality_error < 0.1));
        let (_, rep2, _) = run();
        assert_eq!(rep, rep2);
        let Module::OftDense(l) = &tr.model.layers[0].1 else {
            panic!()
        };
        let Module::OftDense(l0) = &model().layers[0].1 else {
            panic!()
        };
        assert_eq!(l.base(), l0.base());
    }

    #[test]
    fn non_finite_step_keeps_last_good_adapters() {
        let mut tr = Trainer::new(model(), AdamW::new(0.01), LrSchedule::Constant, 1);
        let x = Mat::<f32>::from_fn(2, 8, |_, _| 1.0);
        let bad = Loss::Mse(Mat::from_fn(2, 3, |_, _| f32::NAN));
        let w0: Vec<Mat<f32>> = tr
            .model
            .adapters()
            .iter()
            .map(|(_, a)| a.weight().to_owned())
            .collect();
        assert!(matches!(
            tr.step(x.as_ref(), &bad, 0, 1),
            Err(LayerError::NonFinite(_))
        ));
        let w1: Vec<Mat<f32>> = tr
            .model
            .adapters()
            .iter()
            .map(|(_, a)| a.weight().to_owned())
            .collect();
        assert_eq!(w0, w1);
        assert_eq!(tr.optimizer.steps(), 0);
    }
}
