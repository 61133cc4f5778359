//! Criterion benches of oftq-ortho with an in-run baseline (faer's own f32 GEMM).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // a bench is not a public API
//!
//! Throughput is reported in FLOP (criterion's "elements"), so `elem/s` reads as FLOP/s.
//! Bench ids are the keys of `docs/bench/results.json` (see `shared/DESIGN.md`).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use oftq_ortho::{BlockRotation, CayleyConvention, Parameterization, RotationSpec};

fn pseudo_random(rows: usize, cols: usize, scale: f32, seed: u64) -> Mat<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    Mat::from_fn(rows, cols, |_, _| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        scale * (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
    })
}

fn baseline(c: &mut Criterion) {
    let n = 1024;
    let (a, b) = (pseudo_random(n, n, 1.0, 1), pseudo_random(n, n, 1.0, 2));
    let mut out = Mat::<f32>::zeros(n, n);
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Elements(2 * (n * n * n) as u64));
    g.bench_function("baseline.faer_gemm.f32.1024", |bench| {
        bench.iter(|| {
            matmul(
                out.as_mut(),
                Accum::Replace,
                a.as_ref(),
                b.as_ref(),
                1.0,
                Par::rayon(0),
            )
        })
    });
    g.finish();
}

fn build_r(c: &mut Criterion) {
    let (r, b) = (128usize, 32usize);
    let params = pseudo_random(r, b * (b - 1) / 2, 0.02, 3);
    let mut g = c.benchmark_group("ortho");
    for (name, p, flops_per_block) in [
        (
            "ortho.build_r.neumann5.r128.b32",
            Parameterization::peft(true, 5),
            3 * 2 * b * b * b,
        ),
        (
            "ortho.build_r.exact.r128.b32",
            Parameterization::Exact(CayleyConvention::Peft),
            2 * b * b * b + 2 * b * b * b / 3,
        ),
    ] {
        let spec = RotationSpec::new(r * b, b, false, p).unwrap_or_else(|e| panic!("{e}"));
        g.throughput(Throughput::Elements((r * flops_per_block) as u64));
        g.bench_function(name, |bench| {
            bench.iter(|| {
                BlockRotation::build(&spec, black_box(params.as_ref()))
                    .map(|rot| rot.blocks().len())
            })
        });
    }
    g.finish();
}

fn rotate(c: &mut Criterion) {
    let (n, d, b) = (512usize, 4096usize, 32usize);
    let spec = RotationSpec::new(d, b, false, Parameterization::peft(true, 5))
        .unwrap_or_else(|e| panic!("{e}"));
    let rot = BlockRotation::build(
        &spec,
        pseudo_random(d / b, b * (b - 1) / 2, 0.02, 4).as_ref(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let x = pseudo_random(n, d, 1.0, 5);
    let dy = pseudo_random(n, d, 1.0, 6);
    let mut g = c.benchmark_group("ortho");
    // forward x·R, backward dy·Rᵀ and xᵀ·dy per block: 3 products of 2·n·b·b FLOP per block.
    g.throughput(Throughput::Elements((3 * 2 * n * d * b) as u64));
    g.bench_function("ortho.rotate_fwd_bwd.neumann5.n512.d4096.b32", |bench| {
        bench.iter(|| {
            let y = rot.forward(black_box(x.as_ref())).map(|y| y.nrows());
            let gr = rot
                .backward(x.as_ref(), black_box(dy.as_ref()))
                .map(|g| g.params.nrows());
            (y, gr)
        })
    });
    // The two halves apart (one and two products per block), to see where the time goes.
    g.throughput(Throughput::Elements((2 * n * d * b) as u64));
    g.bench_function("ortho.rotate_fwd.neumann5.n512.d4096.b32", |bench| {
        bench.iter(|| rot.forward(black_box(x.as_ref())).map(|y| y.nrows()))
    });
    g.throughput(Throughput::Elements((2 * 2 * n * d * b) as u64));
    g.bench_function("ortho.rotate_bwd.neumann5.n512.d4096.b32", |bench| {
        bench.iter(|| {
            rot.backward(x.as_ref(), black_box(dy.as_ref()))
                .map(|g| g.params.nrows())
        })
    });
    g.finish();
}

/// Rotation fwd+bwd at other block sizes (b = 32 is `rotate`): the time-vs-block-size plot.
fn rotate_block_sweep(c: &mut Criterion) {
    let (n, d) = (512usize, 4096usize);
    let (x, dy) = (pseudo_random(n, d, 1.0, 5), pseudo_random(n, d, 1.0, 6));
    let mut g = c.benchmark_group("ortho");
    for b in [8usize, 16, 64, 128] {
        let spec = RotationSpec::new(d, b, false, Parameterization::peft(true, 5))
            .unwrap_or_else(|e| panic!("{e}"));
        let rot = BlockRotation::build(
            &spec,
            pseudo_random(d / b, b * (b - 1) / 2, 0.02, 4).as_ref(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        g.throughput(Throughput::Elements((3 * 2 * n * d * b) as u64));
        g.bench_function(
            format!("ortho.rotate_fwd_bwd.neumann5.n512.d4096.b{b}"),
            |bench| {
                bench.iter(|| {
                    let y = rot.forward(black_box(x.as_ref())).map(|y| y.nrows());
                    let gr = rot
                        .backward(x.as_ref(), black_box(dy.as_ref()))
                        .map(|g| g.params.nrows());
                    (y, gr)
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = baseline, build_r, rotate, rotate_block_sweep
}
criterion_main!(benches);
