//! Encoder speed: quantizing a 1024×1024 Gaussian matrix to AQLM 2x8 (in_group 8) with the
//! default options (key `aqlm.encode.2x8.1024` of `docs/bench/results.json`), beside a dense
//! f32 1024×1024×1024 GEMM measured in the same run as the baseline.

// A bench is not a public API: failing loudly on a broken setup is what we want.
#![allow(clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use oftq_aqlm::AqlmScheme;
use oftq_aqlm::encode::{QuantizeOptions, quantize};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use std::hint::black_box;
use std::time::Duration;

fn gaussian(n: usize, seed: u64) -> Mat<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Mat::from_fn(n, n, |_, _| StandardNormal.sample(&mut rng))
}

fn bench_encode(c: &mut Criterion) {
    let w = gaussian(1024, 20261126);
    let scheme = AqlmScheme::new(2, 8, 8, 1).expect("valid scheme");
    let opts = QuantizeOptions::default();

    let mut g = c.benchmark_group("aqlm.encode");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(60));
    g.bench_function("2x8.1024", |b| {
        b.iter(|| {
            let e = quantize(black_box(w.as_ref()), scheme, &opts).expect("encode");
            black_box(e.relative_error)
        })
    });
    g.finish();

    let x = gaussian(1024, 1);
    let mut dst = Mat::<f32>::zeros(1024, 1024);
    let mut g = c.benchmark_group("baseline.dense_f32");
    g.sample_size(20);
    g.bench_function("gemm.1024.1024.1024", |b| {
        b.iter(|| {
            matmul(
                dst.as_mut(),
                Accum::Replace,
                w.as_ref(),
                x.as_ref(),
                1.0,
                Par::rayon(0),
            );
            black_box(dst[(0, 0)])
        })
    });
    g.finish();
}

criterion_group!(benches, bench_encode);
criterion_main!(benches);
