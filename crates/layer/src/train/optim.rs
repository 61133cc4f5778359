//! AdamW over adapter parameters, learning-rate schedules and gradient clipping.

use std::collections::BTreeMap;

use faer::Mat;
use multiversion::multiversion;

/// Identifies one adapter's parameters in a model: layer name and adapter name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParamKey {
    /// The layer (module) name.
    pub layer: String,
    /// The adapter name.
    pub adapter: String,
}

impl ParamKey {
    /// A key.
    pub fn new(layer: &str, adapter: &str) -> Self {
        Self {
            layer: layer.into(),
            adapter: adapter.into(),
        }
    }
}

impl std::fmt::Display for ParamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.layer, self.adapter)
    }
}

/// Learning rate as a function of the step (0-based) for `total` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// The base rate at every step.
    Constant,
    /// Linear warm-up over `warmup` steps, then cosine decay from the base rate to
    /// `min_ratio ×` the base rate at the last step.
    Cosine {
        /// Warm-up steps.
        warmup: usize,
        /// Final rate as a fraction of the base rate.
        min_ratio: f64,
    },
}

impl LrSchedule {
    /// The rate at `step` of `total` for base rate `lr`.
    pub fn at(&self, lr: f64, step: usize, total: usize) -> f64 {
        match *self {
            Self::Constant => lr,
            Self::Cosine { warmup, min_ratio } => {
                if step < warmup {
                    return lr * (step + 1) as f64 / warmup as f64;
                }
                let span = total.saturating_sub(warmup).max(2) - 1;
                let t = ((step - warmup) as f64 / span as f64).min(1.0);
                lr * (min_ratio
                    + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
            }
        }
    }
}

/// Scales all gradients so that their global L2 norm is at most `max_norm`; returns the norm
/// before clipping (computed in `f64`, in key order: deterministic).
pub fn clip_grad_norm(grads: &mut BTreeMap<ParamKey, Mat<f32>>, max_norm: Option<f64>) -> f64 {
    let norm = grads
        .values()
        .map(|g| {
            (0..g.ncols())
                .flat_map(|j| (0..g.nrows()).map(move |i| f64::from(g[(i, j)]).powi(2)))
                .sum::<f64>()
        })
        .sum::<f64>()
        .sqrt();
    if let Some(max) = max_norm
        && norm > max
        && norm.is_finite()
    {
        let s = (max / norm) as f32;
        for g in grads.values_mut() {
            *g *= faer::Scale(s);
        }
    }
    norm
}

/// First and second moments of every parameter, `(m, v)`, in `f64`.
pub type Moments = BTreeMap<ParamKey, (Mat<f64>, Mat<f64>)>;

/// AdamW (decoupled weight decay, Loshchilov & Hutter) with bias correction, as `torch.optim.AdamW`:
/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `p ← p − lr·(wd·p + m̂/(√v̂ + ε))` with
/// `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`. [`AdamW::new`] sets PyTorch's defaults: `β = (0.9, 0.999)`,
/// `ε = 1e-8`, weight decay `0.01` (applied to the adapters' skew parameters, i.e. pulling `Q`
/// towards 0 and `R` towards `I`).
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Base learning rate.
    pub lr: f64,
    /// `(β₁, β₂)`.
    pub betas: (f64, f64),
    /// `ε` added to `√v̂`.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    state: Moments,
    t: u64,
}

impl AdamW {
    /// AdamW with PyTorch's defaults for everything but the rate (`β = (0.9, 0.999)`, `ε = 1e-8`,
    /// weight decay `0.01`).
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
            state: BTreeMap::new(),
            t: 0,
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// Computes the updated parameters for one step at rate `lr` without touching anything:
    /// `p ← p − lr·(wd·p + m̂/(√v̂ + ε))`. The caller applies them (all or none) and then
    /// [`commit`](Self::commit)s the new moments.
    ///
    /// A parameter without a gradient of its shape is left out of the result (not updated);
    /// moments of another shape than their parameter (a [`restore`](Self::restore) of another
    /// model's) are not used: that parameter starts from zero moments.
    pub fn propose(
        &self,
        params: &BTreeMap<ParamKey, Mat<f32>>,
        grads: &BTreeMap<ParamKey, Mat<f32>>,
        lr: f64,
    ) -> (BTreeMap<ParamKey, Mat<f32>>, Moments) {
        let t = self.t + 1;
        let (b1, b2) = self.betas;
        let (c1, c2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        let mut new_params = BTreeMap::new();
        let mut new_state = BTreeMap::new();
        for (key, p) in params {
            let (r, c) = (p.nrows(), p.ncols());
            let same_shape = |a: usize, b: usize| (a, b) == (r, c);
            let Some(g) = grads.get(key).filter(|g| same_shape(g.nrows(), g.ncols())) else {
                continue;
            };
            // The moments are read in place (cloning them was a copy of 16 bytes per parameter).
            let fresh;
            let (m0, v0) = match self.state.get(key) {
                Some((m0, v0))
                    if same_shape(m0.nrows(), m0.ncols()) && same_shape(v0.nrows(), v0.ncols()) =>
                {
                    (m0, v0)
                }
                _ => {
                    fresh = Mat::<f64>::zeros(r, c);
                    (&fresh, &fresh)
                }
            };
            let mut m = Mat::<f64>::zeros(r, c);
            let mut v = Mat::<f64>::zeros(r, c);
            let mut np = Mat::<f32>::zeros(r, c);
            let rule = AdamRule {
                betas: self.betas,
                inv_c1: 1.0 / c1,
                inv_sqrt_c2: 1.0 / c2.sqrt(),
                eps: self.eps,
                lr,
                weight_decay: self.weight_decay,
            };
            for j in 0..c {
                adamw_column(
                    &rule,
                    [p.col_as_slice(j), g.col_as_slice(j)],
                    [m0.col_as_slice(j), v0.col_as_slice(j)],
                    m.col_as_slice_mut(j),
                    v.col_as_slice_mut(j),
                    np.col_as_slice_mut(j),
                );
            }
            new_params.insert(key.clone(), np);
            new_state.insert(key.clone(), (m, v));
        }
        (new_params, new_state)
    }

    /// The first and second moments per parameter and the number of steps taken, e.g. to write a
    /// checkpoint a run can resume from with [`restore`](Self::restore).
    pub fn moments(&self) -> (&Moments, u64) {
        (&self.state, self.t)
    }

    /// Restores moments and the step count saved from [`moments`](Self::moments), so the next
    /// step continues the interrupted run exactly.
    pub fn restore(&mut self, moments: Moments, steps: u64) {
        self.state = moments;
        self.t = steps;
    }

    /// Keeps the moments of a step whose parameters were applied.
    pub fn commit(&mut self, state: Moments) {
        self.state.extend(state);
        self.t += 1;
    }
}

/// The scalars of one AdamW update (see [`AdamW`]): `(β₁, β₂)`, the reciprocals of the bias
/// correction `1/(1−β₁ᵗ)` and of its square root `1/√(1−β₂ᵗ)`, `ε`, the rate and the weight decay.
struct AdamRule {
    betas: (f64, f64),
    inv_c1: f64,
    inv_sqrt_c2: f64,
    eps: f64,
    lr: f64,
    weight_decay: f64,
}

/// One column of [`AdamW::propose`]: from the parameters and gradients `[p, g]` and the old
/// moments `[m₀, v₀]`, writes the new moments `m`, `v` and parameters `out`, element by element
/// in `f64`: `m̂/(√v̂ + ε)` as `(m·(1/c₁)) / (√v·(1/√c₂) + ε)`, one division and one square root
/// per element (the three divisions of the textbook form were 70% of a 63 488-parameter
/// update). The bits do not depend on the instruction set the dispatch picks: division and
/// square root are correctly rounded everywhere and no multiply-add is fused.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn adamw_column(
    rule: &AdamRule,
    [p, g]: [&[f32]; 2],
    [m0, v0]: [&[f64]; 2],
    m: &mut [f64],
    v: &mut [f64],
    out: &mut [f32],
) {
    let (b1, b2) = rule.betas;
    let olds = p.iter().zip(g).zip(m0.iter().zip(v0));
    let news = m.iter_mut().zip(v.iter_mut()).zip(out.iter_mut());
    for (((&w, &gv), (&m0v, &v0v)), ((mo, vo), no)) in olds.zip(news) {
        let (w, gv) = (f64::from(w), f64::from(gv));
        *mo = b1 * m0v + (1.0 - b1) * gv;
        *vo = b2 * v0v + (1.0 - b2) * gv.powi(2);
        let step = (*mo * rule.inv_c1) / (vo.sqrt() * rule.inv_sqrt_c2 + rule.eps);
        *no = (w - rule.lr * (rule.weight_decay * w + step)) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_first_step_is_lr_times_sign() {
        let key = ParamKey::new("l", "a");
        let p = BTreeMap::from([(key.clone(), faer::mat![[1.0f32, -1.0]])]);
        let g = BTreeMap::from([(key.clone(), faer::mat![[0.5f32, -2.0]])]);
        let mut opt = AdamW::new(0.1);
        opt.weight_decay = 0.0;
        let (np, st) = opt.propose(&p, &g, 0.1);
        assert!((np[&key][(0, 0)] - 0.9).abs() < 1e-6 && (np[&key][(0, 1)] + 0.9).abs() < 1e-6);
        opt.commit(st);
        assert_eq!(opt.steps(), 1);
    }

    /// Three steps on a 37 × 11 parameter (columns of odd length, vector bodies and tails)
    /// against the textbook formula `p − lr·(wd·p + (m/c₁)/(√(v/c₂) + ε))` in `f64`: the
    /// reciprocal form agrees to `f64` rounding, so the `f32` parameters to one unit in the last
    /// place (almost always exactly), and the moments to `f64` rounding.
    #[test]
    fn adamw_matches_the_textbook_formula() {
        let key = ParamKey::new("l", "a");
        let (r, c) = (37, 11);
        let mut opt = AdamW::new(0.05);
        let mut p = Mat::<f32>::from_fn(r, c, |i, j| ((i * 7 + j * 3) % 13) as f32 * 0.1 - 0.6);
        let (mut m, mut v) = (Mat::<f64>::zeros(r, c), Mat::<f64>::zeros(r, c));
        for t in 1..=3i32 {
            let g = Mat::<f32>::from_fn(r, c, |i, j| {
                ((i * 5 + j * 11 + t as usize) % 17) as f32 * 0.03 - 0.25
            });
            let (np, st) = opt.propose(
                &BTreeMap::from([(key.clone(), p.clone())]),
                &BTreeMap::from([(key.clone(), g.clone())]),
                opt.lr,
            );
            let (b1, b2) = opt.betas;
            let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            for j in 0..c {
                for i in 0..r {
                    let gv = f64::from(g[(i, j)]);
                    m[(i, j)] = b1 * m[(i, j)] + (1.0 - b1) * gv;
                    v[(i, j)] = b2 * v[(i, j)] + (1.0 - b2) * gv * gv;
                    let w = f64::from(p[(i, j)]);
                    let step = (m[(i, j)] / c1) / ((v[(i, j)] / c2).sqrt() + opt.eps);
                    let want = (w - opt.lr * (opt.weight_decay * w + step)) as f32;
                    let got = np[&key][(i, j)];
                    assert!(
                        (got - want).abs() <= f32::EPSILON * want.abs(),
                        "{got} {want}"
                    );
                    let (gm, gv2) = (&st[&key].0, &st[&key].1);
                    assert!((gm[(i, j)] - m[(i, j)]).abs() <= 1e-15 * m[(i, j)].abs());
                    assert!((gv2[(i, j)] - v[(i, j)]).abs() <= 1e-15 * v[(i, j)].abs());
                }
            }
            p = np[&key].clone();
            opt.commit(st);
        }
    }

    /// A gradient of another shape leaves its parameter out; moments of another shape (restored
    /// from another model) are replaced by zeros: no panic, no partial update.
    #[test]
    fn adamw_skips_mismatched_shapes() {
        let key = ParamKey::new("l", "a");
        let p = BTreeMap::from([(key.clone(), faer::mat![[1.0f32, -1.0]])]);
        let g = BTreeMap::from([(key.clone(), faer::mat![[0.5f32, -2.0]])]);
        let wrong = BTreeMap::from([(key.clone(), faer::mat![[0.5f32]])]);
        let opt = AdamW::new(0.1);
        assert!(opt.propose(&p, &wrong, 0.1).0.is_empty());
        let mut restored = AdamW::new(0.1);
        let tiny = Mat::<f64>::zeros(1, 1);
        restored.restore(BTreeMap::from([(key.clone(), (tiny.clone(), tiny))]), 0);
        assert_eq!(restored.propose(&p, &g, 0.1).0, opt.propose(&p, &g, 0.1).0);
    }

    #[test]
    fn schedules_and_clipping() {
        let s = LrSchedule::Cosine {
            warmup: 2,
            min_ratio: 0.1,
        };
        assert!((s.at(1.0, 0, 12) - 0.5).abs() < 1e-12 && (s.at(1.0, 2, 12) - 1.0).abs() < 1e-12);
        assert!((s.at(1.0, 11, 12) - 0.1).abs() < 1e-12);
        let mut g = BTreeMap::from([(ParamKey::new("l", "a"), faer::mat![[3.0f32, 4.0]])]);
        assert!((clip_grad_norm(&mut g, Some(1.0)) - 5.0).abs() < 1e-12);
        assert!((clip_grad_norm(&mut g, None) - 1.0).abs() < 1e-6);
    }
}
