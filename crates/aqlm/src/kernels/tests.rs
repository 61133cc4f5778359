//! Every kernel against decode-then-matmul, on random shapes; determinism across thread pools.

use faer::Mat;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::{AqlmLayer, AqlmScheme, Kernel};

pub(crate) fn random_layer(
    rng: &mut StdRng,
    m: usize,
    nbits: u32,
    ig: usize,
    og: usize,
    n_ig: usize,
    n_og: usize,
    bias: bool,
) -> AqlmLayer {
    let s = AqlmScheme::new(m, nbits, ig, og).unwrap();
    let k = s.codebook_size();
    let codes = (0..n_og * n_ig * m)
        .map(|_| rng.random_range(0..k) as u16)
        .collect();
    let cb = (0..m * k * og * ig)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let scales = (0..n_og).map(|_| rng.random_range(0.1f32..2.0)).collect();
    let bias = bias.then(|| {
        (0..n_og * og)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect()
    });
    AqlmLayer::new(n_ig * ig, n_og * og, s, codes, cb, scales, bias).unwrap()
}

pub(crate) fn random_mat(rng: &mut StdRng, r: usize, c: usize) -> Mat<f32> {
    Mat::from_fn(r, c, |_, _| rng.random_range(-1.0f32..1.0))
}

pub(crate) fn rel_err(a: &Mat<f32>, b: &Mat<f32>) -> f32 {
    assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()));
    (a - b).norm_l2() / b.norm_l2().max(1e-30)
}

/// One rayon pool per thread count.
fn pools(threads: &[usize]) -> Vec<rayon::ThreadPool> {
    threads
        .iter()
        .map(|&n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        })
        .collect()
}

fn same_bits(a: &Mat<f32>, b: &Mat<f32>) -> bool {
    a.nrows() == b.nrows()
        && a.ncols() == b.ncols()
        && (0..a.ncols())
            .all(|j| (0..a.nrows()).all(|i| a[(i, j)].to_bits() == b[(i, j)].to_bits()))
}

/// (M, B, ig, og) schemes covering Kx8, 1x16, odd widths and out_group > 1.
const SCHEMES: [(usize, u32, usize, usize); 8] = [
    (2, 8, 8, 1),
    (1, 8, 8, 1),
    (1, 16, 8, 1),
    (4, 6, 4, 2),
    (3, 5, 3, 1),
    (1, 1, 1, 1),
    (2, 12, 2, 3),
    (8, 8, 32, 1),
];

#[test]
fn every_kernel_matches_decode_then_matmul() {
    let mut rng = StdRng::seed_from_u64(7);
    for (case, &(m, nbits, ig, og)) in SCHEMES.iter().enumerate() {
        for &tokens in &[1usize, 2, 5, 17, 40] {
            let n_ig = rng.random_range(1..6usize);
            let n_og = rng.random_range(1..40usize);
            let layer = random_layer(&mut rng, m, nbits, ig, og, n_ig, n_og, case % 2 == 0);
            let x = random_mat(&mut rng, tokens, layer.in_features());
            let dy = random_mat(&mut rng, tokens, layer.out_features());
            let w = layer.decode();
            let mut want = &x * w.transpose();
            if let Some(b) = layer.bias() {
                for r in 0..layer.out_features() {
                    for t in 0..tokens {
                        want[(t, r)] += b[r];
                    }
                }
            }
            let want_dx = &dy * &w;
            for kernel in Kernel::ALL {
                let y = layer.forward_with(x.as_ref(), kernel).unwrap();
                let e = rel_err(&y, &want);
                assert!(
                    e < 2e-6,
                    "{kernel:?} forward {m}x{nbits} ig{ig} og{og} t{tokens}: {e}"
                );
                let dx = layer.backward_input_with(dy.as_ref(), kernel).unwrap();
                let e = rel_err(&dx, &want_dx);
                assert!(
                    e < 2e-6,
                    "{kernel:?} backward {m}x{nbits} ig{ig} og{og} t{tokens}: {e}"
                );
            }
            let y = layer.forward(x.as_ref()).unwrap();
            assert!(rel_err(&y, &want) < 2e-6);
            let dx = layer.backward_input(dy.as_ref()).unwrap();
            assert!(rel_err(&dx, &want_dx) < 2e-6);
        }
    }
}

#[test]
fn strided_inputs_and_shape_errors() {
    let mut rng = StdRng::seed_from_u64(3);
    let layer = random_layer(&mut rng, 2, 8, 8, 1, 4, 20, true);
    let xt = random_mat(&mut rng, 32, 3); // x = xtᵀ has row stride 1, column stride 32
    let x = xt.transpose();
    let dense = x.to_owned();
    for kernel in Kernel::ALL {
        let a = layer.forward_with(x, kernel).unwrap();
        let b = layer.forward_with(dense.as_ref(), kernel).unwrap();
        assert!(same_bits(&a, &b), "{kernel:?}");
    }
    let bad = Mat::<f32>::zeros(2, 31);
    for kernel in Kernel::ALL {
        assert!(matches!(
            layer.forward_with(bad.as_ref(), kernel),
            Err(crate::AqlmError::InputShape {
                expected: 32,
                got: 31,
                ..
            })
        ));
        assert!(matches!(
            layer.backward_input_with(bad.as_ref(), kernel),
            Err(crate::AqlmError::InputShape {
                expected: 20,
                got: 31,
                ..
            })
        ));
    }
    let empty = Mat::<f32>::zeros(0, 32);
    assert_eq!(layer.forward(empty.as_ref()).unwrap().shape(), (0, 20));
    let empty = Mat::<f32>::zeros(0, 20);
    assert_eq!(
        layer.backward_input(empty.as_ref()).unwrap().shape(),
        (0, 32)
    );
}

/// `forward_into` gives `forward`'s bits into column-major, row-major and strided outputs, for
/// every kernel, with and without a bias; it checks the output's shape.
#[test]
fn forward_into_any_layout_matches_forward() {
    let mut rng = StdRng::seed_from_u64(11);
    // 300 tokens: the tiled product writes a row-major `y` directly; 40 and 33: through its
    // column-major scratch.
    for (bias, tokens) in [(true, 300), (true, 40), (false, 33), (true, 1), (false, 0)] {
        let layer = random_layer(&mut rng, 2, 8, 8, 1, 6, 24, bias);
        let x = random_mat(&mut rng, tokens, 48);
        for kernel in Kernel::ALL {
            let want = layer.forward_with(x.as_ref(), kernel).unwrap();
            let mut col = Mat::<f32>::from_fn(tokens, 24, |_, _| f32::NAN);
            layer
                .forward_into_with(x.as_ref(), col.as_mut(), kernel)
                .unwrap();
            assert!(same_bits(&col, &want), "{kernel:?}, column-major");
            let mut rows = vec![f32::NAN; tokens * 24];
            let y = faer::MatMut::from_row_major_slice_mut(&mut rows, tokens, 24);
            layer.forward_into_with(x.as_ref(), y, kernel).unwrap();
            let got = Mat::from_fn(tokens, 24, |i, j| rows[i * 24 + j]);
            assert!(same_bits(&got, &want), "{kernel:?}, row-major");
            // A window of a larger matrix (column stride ≠ rows), the rest untouched.
            let mut big = Mat::<f32>::from_fn(tokens + 3, 30, |_, _| f32::NAN);
            let y = big.as_mut().submatrix_mut(1, 2, tokens, 24);
            layer.forward_into_with(x.as_ref(), y, kernel).unwrap();
            let got = Mat::from_fn(tokens, 24, |i, j| big[(i + 1, j + 2)]);
            assert!(same_bits(&got, &want), "{kernel:?}, window");
            assert!(big.col(0).iter().all(|v| v.is_nan()) && big.row(0).iter().all(|v| v.is_nan()));
        }
        let mut wrong = Mat::<f32>::zeros(tokens + 1, 24);
        assert!(matches!(
            layer.forward_into(x.as_ref(), wrong.as_mut()),
            Err(crate::AqlmError::Shape { .. })
        ));
    }
}

#[test]
fn identical_bits_for_1_2_4_threads() {
    let mut rng = StdRng::seed_from_u64(11);
    let pools = pools(&[1, 2, 4]);
    for &(m, nbits, ig, og) in &[(2usize, 8u32, 8usize, 1usize), (1, 16, 8, 1), (4, 6, 4, 2)] {
        // Big enough for several tasks per kernel and several table blocks.
        let layer = random_layer(&mut rng, m, nbits, ig, og, 96, 300 / og, true);
        for &tokens in &[1usize, 3, 16, 33] {
            let x = random_mat(&mut rng, tokens, layer.in_features());
            let dy = random_mat(&mut rng, tokens, layer.out_features());
            for kernel in Kernel::ALL {
                let run = |p: &rayon::ThreadPool| {
                    p.install(|| {
                        (
                            layer.forward_with(x.as_ref(), kernel).unwrap(),
                            layer.backward_input_with(dy.as_ref(), kernel).unwrap(),
                        )
                    })
                };
                let (y1, dx1) = run(&pools[0]);
                for p in &pools[1..] {
                    for _ in 0..2 {
                        let (y, dx) = run(p);
                        assert!(
                            same_bits(&y, &y1),
                            "{kernel:?} forward {m}x{nbits} t{tokens}"
                        );
                        assert!(
                            same_bits(&dx, &dx1),
                            "{kernel:?} backward {m}x{nbits} t{tokens}"
                        );
                    }
                }
            }
        }
    }
}

/// The tiled product over several contraction chunks in both directions (1 040 inputs: three
/// forward chunks, the last one shorter; 2 100 outputs: three input-gradient chunks; `og = 2`
/// as well): the decode-then-matmul result to rounding, the same bits on 1, 2 and 3 threads,
/// and the same bits into a row-major output (the scratch path) as into a column-major one.
#[test]
fn tiled_gemm_sums_contraction_chunks_deterministically() {
    let mut rng = StdRng::seed_from_u64(23);
    let pools = pools(&[1, 2, 3]);
    for &(m, nbits, ig, og) in &[(2usize, 8u32, 8usize, 1usize), (2, 4, 4, 2)] {
        let layer = random_layer(&mut rng, m, nbits, ig, og, 1040 / ig, 2100 / og, false);
        let x = random_mat(&mut rng, 40, layer.in_features());
        let dy = random_mat(&mut rng, 40, layer.out_features());
        let run = |p: &rayon::ThreadPool| {
            p.install(|| {
                (
                    layer.forward_with(x.as_ref(), Kernel::TiledGemm).unwrap(),
                    layer
                        .backward_input_with(dy.as_ref(), Kernel::TiledGemm)
                        .unwrap(),
                )
            })
        };
        let (y1, dx1) = run(&pools[0]);
        let w = layer.decode();
        assert!(
            rel_err(&y1, &(&x * w.transpose())) < 1e-5,
            "{m}x{nbits} forward"
        );
        assert!(rel_err(&dx1, &(&dy * &w)) < 1e-5, "{m}x{nbits} backward");
        for p in &pools[1..] {
            let (y, dx) = run(p);
            assert!(same_bits(&y, &y1) && same_bits(&dx, &dx1), "{m}x{nbits}");
        }
        let mut row_major = Mat::<f32>::zeros(layer.out_features(), x.nrows());
        layer
            .forward_into_with(
                x.as_ref(),
                row_major.as_mut().transpose_mut(),
                Kernel::TiledGemm,
            )
            .unwrap();
        assert!(
            same_bits(&row_major.transpose().to_owned(), &y1),
            "{m}x{nbits}"
        );
    }
}

#[test]
fn workspace_is_small_on_fast_paths() {
    let mut rng = StdRng::seed_from_u64(5);
    let layer = random_layer(&mut rng, 2, 8, 8, 1, 256, 2048, false);
    let full = layer.workspace_bytes(Kernel::Reference, 1, 2);
    assert_eq!(full, 2048 * 2048 * 4);
    for k in [Kernel::Lut, Kernel::DecodeDot, Kernel::TiledGemm] {
        assert!(layer.workspace_bytes(k, 1, 2) < full / 4, "{k:?}");
    }
}

#[test]
#[ignore]
fn timing_probe() {
    // Min over interleaved runs: robust to other processes on a shared machine.
    let mut rng = StdRng::seed_from_u64(1);
    let (m, nbits): (usize, u32) = match std::env::var("PROBE_SCHEME").as_deref() {
        Ok("1x16") => (1, 16),
        Ok("1x8") => (1, 8),
        _ => (2, 8),
    };
    let fast = match std::env::var("PROBE_KERNEL").as_deref() {
        Ok("decode_dot") => Kernel::DecodeDot,
        Ok("lut") => Kernel::Lut,
        _ if m == 1 && nbits == 16 => Kernel::DecodeDot,
        _ => Kernel::Lut,
    };
    let layer = random_layer(&mut rng, m, nbits, 8, 1, 512, 4096, false);
    let w = random_mat(&mut rng, 4096, 4096);
    let ts: Vec<usize> = std::env::var("PROBE_T")
        .map(|v| vec![v.parse().unwrap()])
        .unwrap_or(vec![1, 4, 8, 16, 64]);
    for t in ts {
        let x = random_mat(&mut rng, t, 4096);
        let mut y = Mat::<f32>::zeros(t, 4096);
        let mut best = [f64::MAX; 5];
        for _ in 0..10 {
            let mut time = |i: usize, f: &mut dyn FnMut()| {
                let st = std::time::Instant::now();
                f();
                best[i] = best[i].min(st.elapsed().as_secs_f64() * 1e3);
            };
            time(0, &mut || {
                faer::linalg::matmul::matmul(
                    y.as_mut(),
                    faer::Accum::Replace,
                    x.as_ref(),
                    w.transpose(),
                    1.0,
                    faer::Par::rayon(0),
                )
            });
            time(1, &mut || {
                drop(layer.forward_with(x.as_ref(), fast).unwrap())
            });
            time(2, &mut || {
                drop(layer.forward_with(x.as_ref(), Kernel::TiledGemm).unwrap())
            });
            time(3, &mut || {
                drop(layer.backward_input_with(x.as_ref(), fast).unwrap())
            });
            time(4, &mut || {
                drop(
                    layer
                        .backward_input_with(x.as_ref(), Kernel::TiledGemm)
                        .unwrap(),
                )
            });
        }
        println!(
            "{m}x{nbits} t{t} dense {:.2} ms | fwd {fast:?} {:.2} tiled {:.2} | bwd {fast:?} {:.2} tiled {:.2}",
            best[0], best[1], best[2], best[3], best[4]
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Random M, B, groups and tokens: every kernel agrees with decode-then-matmul, forward
    /// and input gradient, and the automatic choice is one of them.
    #[test]
    fn prop_kernels_agree(
        m in 1usize..4,
        nbits in 1u32..=12,
        ig in 1usize..10,
        og in 1usize..4,
        n_ig in 1usize..5,
        n_og in 1usize..12,
        tokens in 1usize..20,
        seed in 0u64..1000,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let layer = random_layer(&mut rng, m, nbits, ig, og, n_ig, n_og, seed % 2 == 0);
        let x = random_mat(&mut rng, tokens, layer.in_features());
        let dy = random_mat(&mut rng, tokens, layer.out_features());
        let want = layer.forward_with(x.as_ref(), Kernel::Reference).unwrap();
        let want_dx = layer.backward_input_with(dy.as_ref(), Kernel::Reference).unwrap();
        for kernel in Kernel::ALL {
            let y = layer.forward_with(x.as_ref(), kernel).unwrap();
            // Relative error, or (under cancellation) error relative to ‖x‖·‖W‖.
            let ok = |a: &Mat<f32>, b: &Mat<f32>, scale: f32| {
                rel_err(a, b) < 2e-6 || (a - b).norm_l2() < 1e-7 * scale
            };
            let w = layer.decode();
            proptest::prop_assert!(ok(&y, &want, x.norm_l2() * w.norm_l2()), "{:?} forward", kernel);
            let dx = layer.backward_input_with(dy.as_ref(), kernel).unwrap();
            proptest::prop_assert!(
                ok(&dx, &want_dx, dy.norm_l2() * w.norm_l2()),
                "{:?} backward",
                kernel
            );
        }
    }
}

/// The 2^B = 256 lookup fast paths (one token; multiples of 8 tokens) on a layer large enough
/// for several table passes, several row tasks and a partial block of eight rows.
#[test]
fn k256_lookup_paths_on_many_tables_and_rows() {
    let mut rng = StdRng::seed_from_u64(21);
    let layer = random_layer(&mut rng, 2, 8, 8, 1, 40, 1030, true);
    for tokens in [1usize, 8] {
        let x = random_mat(&mut rng, tokens, layer.in_features());
        let want = layer.forward_with(x.as_ref(), Kernel::Reference).unwrap();
        let y = layer.forward_with(x.as_ref(), Kernel::Lut).unwrap();
        assert!(
            rel_err(&y, &want) < 2e-6,
            "t{tokens}: {}",
            rel_err(&y, &want)
        );
    }
}
