//! candle's autograd through oftq's custom ops, end to end: a two-layer model (AQLM+OFT, SiLU,
//! AQLM+OFT) against central finite differences, the rotation op alone in f64, and bit-identical
//! results across thread counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{aqlm, bits, tensor, uniform};
use oftq_candle::candle_core::{DType, Device, Module, Tensor, Var};
use oftq_candle::candle_nn::VarMap;
use oftq_candle::layer::OftConfig;
use oftq_candle::layer::ortho::{CayleyConvention, Parameterization, RotationSpec};
use oftq_candle::{AqlmOftLinear, rotate};

/// The two-layer model and its Vars (`x` included, to check the input gradient too).
struct Model {
    l1: AqlmOftLinear,
    l2: AqlmOftLinear,
    vars: Vec<Var>,
    x: Var,
    w: Tensor,
}

fn model(c1: &OftConfig, c2: &OftConfig) -> Model {
    let varmap = VarMap::new();
    let mut l1 = AqlmOftLinear::new(aqlm(64, 32, "2x8", 1), "l1");
    l1.add_adapter("a", c1, &varmap).unwrap();
    l1.add_adapter("b", c2, &varmap).unwrap();
    let mut l2 = AqlmOftLinear::new(aqlm(32, 16, "1x8", 2), "l2");
    l2.add_adapter("a", c2, &varmap).unwrap();
    let x = Var::from_tensor(&tensor(5, 64, 3)).unwrap();
    let vars = [("l1", "a"), ("l1", "b"), ("l2", "a")]
        .iter()
        .map(|(m, a)| {
            let l = if *m == "l1" { &l1 } else { &l2 };
            l.adapter(a).unwrap().var().clone()
        })
        .collect();
    Model {
        l1,
        l2,
        vars,
        x,
        w: tensor(5, 16, 4),
    }
}

impl Model {
    /// `L = Σ w ⊙ l2(silu(l1(x)))`, summed in f64.
    fn loss(&self) -> Tensor {
        let h = self.l1.forward(self.x.as_tensor()).unwrap().silu().unwrap();
        let y = self.l2.forward(&h).unwrap();
        y.mul(&self.w)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .sum_all()
            .unwrap()
    }

    fn value(&self) -> f64 {
        self.loss().to_scalar::<f64>().unwrap()
    }
}

fn configs() -> Vec<(&'static str, OftConfig, OftConfig)> {
    let base = OftConfig {
        oft_block_size: 8,
        init_weights: false,
        ..OftConfig::default()
    };
    let exact = OftConfig {
        use_cayley_neumann: false,
        ..base.clone()
    };
    let shared = OftConfig {
        block_share: true,
        oft_block_size: 16,
        ..base.clone()
    };
    vec![
        ("neumann", base.clone(), base.clone()),
        ("exact + neumann", exact.clone(), base.clone()),
        ("shared + exact", shared, exact),
    ]
}

/// Directional derivatives `∇L·v` from candle's backward against
/// `(L(θ + h·v) − L(θ − h·v)) / 2h` for random directions `v` over every Var (adapters and `x`).
///
/// The model computes in f32 (oftq's AQLM kernels are f32 only) and the loss is summed in f64, so
/// the derivative is estimated by Richardson extrapolation of central differences at `h = 1e-2`
/// and `h/2` (truncation `O(h⁴)`, rounding about `1e-5` relative). Documented tolerance: `1e-3`
/// relative to `max(|∇L·v|, ‖∇L‖·‖v‖/√n)` — the second term is the typical size of `∇L·v` for a
/// random direction, so a direction nearly orthogonal to the gradient is not judged on noise.
#[test]
fn two_layer_model_matches_finite_differences() {
    const H: f64 = 1e-2;
    const TOL: f64 = 1e-3;
    for (what, c1, c2) in configs() {
        let m = model(&c1, &c2);
        let grads = m.loss().backward().unwrap();
        let mut all = m.vars.clone();
        all.push(m.x.clone());
        for (k, var) in all.iter().enumerate() {
            let g = grads.get(var.as_tensor()).expect("a gradient");
            let dims = var.dims().to_vec();
            let v = Tensor::from_vec(
                uniform(var.elem_count(), 100 + k as u64),
                dims,
                &Device::Cpu,
            )
            .unwrap();
            let analytic = g
                .mul(&v)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let theta = var.as_tensor().copy().unwrap();
            let central = |h: f64| {
                var.set(&(&theta + (&v * h).unwrap()).unwrap()).unwrap();
                let plus = m.value();
                var.set(&(&theta - (&v * h).unwrap()).unwrap()).unwrap();
                let minus = m.value();
                var.set(&theta).unwrap();
                (plus - minus) / (2.0 * h)
            };
            // Richardson extrapolation of two central differences cancels the h² term.
            let numeric = (4.0 * central(H / 2.0) - central(H)) / 3.0;
            let norm = |t: &Tensor| {
                let t = t.to_dtype(DType::F64).unwrap();
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
                    .sqrt()
            };
            let typical = norm(g) * norm(&v) / (var.elem_count() as f64).sqrt();
            let err = (analytic - numeric).abs() / analytic.abs().max(typical);
            assert!(
                err < TOL,
                "{what}, var {k}: ∇L·v = {analytic}, finite difference {numeric}, relative error {err:.2e}"
            );
        }
    }
}

/// The rotation op alone in f64 (oftq-ortho is generic over f32/f64): every parameter's partial
/// derivative against central differences, to 1e-7 relative.
#[test]
fn rotation_op_matches_finite_differences_in_f64() {
    let params = [
        Parameterization::default(),
        Parameterization::peft(true, 5),
        Parameterization::Exact(CayleyConvention::Textbook),
    ];
    for p in params {
        for share in [false, true] {
            let spec = RotationSpec::new(12, 4, share, p).unwrap();
            let (rows, cols) = spec.param_shape();
            let q0: Vec<f64> = uniform(rows * cols, 7)
                .iter()
                .map(|v| f64::from(*v) * 0.2)
                .collect();
            let q = Var::from_vec(q0.clone(), (rows, cols), &Device::Cpu).unwrap();
            let x = Tensor::from_vec(
                uniform(3 * 12, 8)
                    .iter()
                    .map(|v| f64::from(*v))
                    .collect::<Vec<_>>(),
                (3, 12),
                &Device::Cpu,
            )
            .unwrap();
            let w = x.sin().unwrap();
            let loss = |q: &Tensor| {
                rotate(&x, q, &spec)
                    .unwrap()
                    .mul(&w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let grads = loss(q.as_tensor()).backward().unwrap();
            let g = grads
                .get(q.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let h = 1e-6;
            for k in 0..q0.len() {
                let at = |d: f64| {
                    let mut v = q0.clone();
                    v[k] += d;
                    let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
                    loss(&t).to_scalar::<f64>().unwrap()
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                let err = (g[k] - numeric).abs() / g[k].abs().max(1e-2);
                assert!(
                    err < 1e-7,
                    "{p:?} share {share}, param {k}: {} vs {numeric}",
                    g[k]
                );
            }
        }
    }
}

/// Forward and backward give the same bits on 1, 2 and 3 threads.
#[test]
fn bit_identical_across_thread_counts() {
    let (_, c1, c2) = configs().remove(1);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let m = model(&c1, &c2);
            let loss = m.loss();
            let grads = loss.backward().unwrap();
            let mut out = vec![bits(
                &loss.to_dtype(DType::F32).unwrap().reshape(1).unwrap(),
            )];
            for v in m.vars.iter().chain([&m.x]) {
                out.push(bits(grads.get(v.as_tensor()).unwrap()));
            }
            out
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
}
