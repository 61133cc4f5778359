//! AQLM kernels at 4096×4096 against faer's dense f32 product of the same shape, in one run.
//!
//! Bench ids are the `docs/bench/results.json` keys (`aqlm.forward.2x8.4096.t1`, …) plus
//! per-kernel variants (`….lut`, `….decode_dot`, `….tiled_gemm`). Before the benches, the
//! workspace of every path is printed (`workspace_bytes`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a bench harness

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use oftq_aqlm::{AqlmLayer, AqlmScheme, Kernel};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const N: usize = 4096;

fn layer(m: usize, nbits: u32, seed: u64) -> AqlmLayer {
    let mut rng = StdRng::seed_from_u64(seed);
    let s = AqlmScheme::new(m, nbits, 8, 1).unwrap();
    let k = s.codebook_size();
    let codes = (0..N * (N / 8) * m)
        .map(|_| rng.random_range(0..k) as u16)
        .collect();
    let cb = (0..m * k * 8)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let scales = (0..N).map(|_| rng.random_range(0.01f32..0.1)).collect();
    AqlmLayer::new(N, N, s, codes, cb, scales, None).unwrap()
}

fn mat(rows: usize, cols: usize, seed: u64) -> Mat<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Mat::from_fn(rows, cols, |_, _| rng.random_range(-1.0f32..1.0))
}

fn kernel_name(k: Kernel) -> &'static str {
    match k {
        Kernel::Reference => "reference",
        Kernel::Lut => "lut",
        Kernel::DecodeDot => "decode_dot",
        Kernel::TiledGemm => "tiled_gemm",
    }
}

fn benches(c: &mut Criterion) {
    let threads = rayon::current_num_threads();
    let w = mat(N, N, 1);
    let layers = [
        ("2x8", layer(2, 8, 2)),
        ("1x8", layer(1, 8, 3)),
        ("1x16", layer(1, 16, 4)),
    ];
    for (name, l) in &layers {
        for t in [1usize, 16, 64] {
            for k in [Kernel::Lut, Kernel::DecodeDot, Kernel::TiledGemm] {
                println!(
                    "workspace {name} t{t} {:>10}: {:>10} bytes ({threads} threads; auto = {:?} / {:?})",
                    kernel_name(k),
                    l.workspace_bytes(k, t, threads),
                    l.auto_kernel(t),
                    l.auto_backward_kernel(t)
                );
            }
        }
    }

    let mut g = c.benchmark_group("aqlm");
    g.sample_size(20);
    for t in [1usize, 16, 64] {
        let x = mat(t, N, 10 + t as u64);
        let id = if t == 1 {
            "baseline.dense_f32.gemv.4096".to_string()
        } else {
            format!("baseline.dense_f32.gemm.4096.t{t}")
        };
        g.bench_function(id, |b| {
            let mut y = Mat::<f32>::zeros(t, N);
            b.iter(|| {
                matmul(
                    y.as_mut(),
                    Accum::Replace,
                    x.as_ref(),
                    w.transpose(),
                    1.0,
                    Par::rayon(0),
                );
                black_box(&y);
            })
        });
    }
    let cases: [(&str, usize, &[usize]); 3] = [
        ("2x8", 0, &[1, 16, 64]),
        ("1x8", 1, &[1]),
        ("1x16", 2, &[1]),
    ];
    for (name, li, tokens) in cases {
        let l = &layers[li].1;
        for &t in tokens {
            let x = mat(t, N, 20 + t as u64);
            g.bench_function(format!("aqlm.forward.{name}.4096.t{t}"), |b| {
                b.iter(|| black_box(l.forward(x.as_ref()).unwrap()))
            });
            for k in [Kernel::Lut, Kernel::DecodeDot, Kernel::TiledGemm] {
                if k == l.auto_kernel(t) {
                    continue;
                }
                g.bench_function(
                    format!("aqlm.forward.{name}.4096.t{t}.{}", kernel_name(k)),
                    |b| b.iter(|| black_box(l.forward_with(x.as_ref(), k).unwrap())),
                );
            }
        }
    }
    let l = &layers[0].1;
    for t in [16usize, 64] {
        let dy = mat(t, N, 30 + t as u64);
        g.bench_function(format!("aqlm.backward.2x8.4096.t{t}"), |b| {
            b.iter(|| black_box(l.backward_input(dy.as_ref()).unwrap()))
        });
        for k in [Kernel::Lut, Kernel::DecodeDot, Kernel::TiledGemm] {
            if k == l.auto_backward_kernel(t) {
                continue;
            }
            g.bench_function(
                format!("aqlm.backward.2x8.4096.t{t}.{}", kernel_name(k)),
                |b| b.iter(|| black_box(l.backward_input_with(dy.as_ref(), k).unwrap())),
            );
        }
    }
    g.finish();
}

criterion_group!(aqlm, benches);
criterion_main!(aqlm);
