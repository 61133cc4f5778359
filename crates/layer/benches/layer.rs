//! Criterion benches of oftq-layer: AqlmOftLinear forward+backward and one training step, against
//! the two dense f32 GEMMs (forward and input gradient) of the same shape measured in the same run.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // a bench is not a public API

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use oftq_aqlm::AqlmLayer;
use oftq_layer::dispatch::{Module, dispatch};
use oftq_layer::train::{Activation, AdamW, Loss, LrSchedule, Sequential, Trainer};
use oftq_layer::{AqlmOftLinear, OftConfig};

const D: usize = 4096;
const T: usize = 64;

fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s >> 33
    }
}

fn random_mat(rows: usize, cols: usize, seed: u64) -> Mat<f32> {
    let mut r = lcg(seed);
    Mat::from_fn(rows, cols, |_, _| (r() % 2001) as f32 / 1000.0 - 1.0)
}

fn aqlm_2x8() -> AqlmLayer {
    let mut r = lcg(1);
    let codes: Vec<u16> = (0..D * (D / 8) * 2).map(|_| (r() % 256) as u16).collect();
    let codebooks: Vec<f32> = (0..2 * 256 * 8).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect();
    AqlmLayer::new(D, D, "2x8".parse().unwrap(), codes, codebooks, vec![0.01; D], None).unwrap()
}

fn config() -> OftConfig {
    OftConfig { oft_block_size: 32, init_weights: false, ..OftConfig::default() }
}

fn benches(c: &mut Criterion) {
    let x = random_mat(T, D, 2);
    let dy = random_mat(T, D, 3);
    let w = random_mat(D, D, 4);
    let mut g = c.benchmark_group("layer");
    let mut y = Mat::<f32>::zeros(T, D);
    let mut dx = Mat::<f32>::zeros(T, D);
    g.bench_function("layer.baseline.two_dense_gemms.4096.t64", |b| {
        b.iter(|| {
            matmul(y.as_mut(), Accum::Replace, x.as_ref(), w.transpose(), 1.0, Par::rayon(0));
            matmul(dx.as_mut(), Accum::Replace, dy.as_ref(), w.as_ref(), 1.0, Par::rayon(0));
        })
    });
    let layer = AqlmOftLinear::with_adapter(aqlm_2x8(), "default", &config()).unwrap();
    g.bench_function("layer.fwd_bwd.2x8.4096.t64.b32", |b| {
        b.iter(|| {
            let (_, cache) = layer.forward_cached(black_box(x.as_ref()), None).unwrap();
            layer.backward(&cache, dy.as_ref()).unwrap().adapters.len()
        })
    });
    let mut module = Module::Aqlm(aqlm_2x8());
    dispatch(&mut module, "default", &config()).unwrap();
    let model = Sequential::new().push("proj", module, Activation::Identity);
    let mut trainer = Trainer::new(model, AdamW::new(1e-3), LrSchedule::Constant, 0);
    let loss = Loss::Mse(dy.clone());
    let mut step = 0usize;
    g.bench_function("layer.train_step.2x8.4096.t64.b32", |b| {
        b.iter(|| {
            step += 1;
            trainer.step(black_box(x.as_ref()), &loss, step, usize::MAX).unwrap().loss
        })
    });
    g.finish();
}

criterion_group! {
    name = layer;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(4));
    targets = benches
}
criterion_main!(layer);
