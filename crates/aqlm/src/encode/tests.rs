//! End-to-end tests of the encoder on small shapes.

use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

fn gaussian(o: usize, i: usize, seed: u64) -> Mat<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Mat::from_fn(o, i, |_, _| StandardNormal.sample(&mut rng))
}

/// The AQLM decode written independently of the encoder.
fn decode(e: &Encoded) -> Mat<f32> {
    let s = e.scheme;
    let (og, ig, m, k) = (
        s.out_group_size,
        s.in_group_size,
        s.num_codebooks,
        s.codebook_size(),
    );
    let n_in = e.in_features / ig;
    Mat::from_fn(e.out_features, e.in_features, |r, c| {
        let (o, a, j, b) = (r / og, r % og, c / ig, c % ig);
        let mut acc = 0.0f32;
        for mm in 0..m {
            let code = e.codes[(o * n_in + j) * m + mm] as usize;
            acc += e.codebooks[((mm * k + code) * og + a) * ig + b];
        }
        acc * e.scales[o]
    })
}

fn rel_err(w: &Mat<f32>, e: &Encoded) -> f64 {
    let d = decode(e);
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for r in 0..w.nrows() {
        for c in 0..w.ncols() {
            let x = f64::from(w[(r, c)]);
            num += (x - f64::from(d[(r, c)])).powi(2);
            den += x * x;
        }
    }
    num / den
}

fn check_history(e: &Encoded) {
    for pair in e.history.windows(2) {
        assert!(
            pair[1].relative_error <= pair[0].relative_error,
            "{:?}",
            e.history
        );
    }
    assert_eq!(e.history.last().unwrap().relative_error, e.relative_error);
}

#[test]
fn round_trip_2x8_joint_search() {
    let w = gaussian(64, 128, 1);
    let scheme = AqlmScheme::new(2, 8, 8, 1).unwrap();
    let e = quantize(w.as_ref(), scheme, &QuantizeOptions::default()).unwrap();
    assert_eq!(e.codes.len(), 64 * 16 * 2);
    assert_eq!(e.codebooks.len(), 2 * 256 * 8);
    assert_eq!(e.scales.len(), 64);
    assert!((rel_err(&w, &e) - e.relative_error).abs() < 1e-9);
    check_history(&e);
    // 1024 groups of 8 dims with 2x256 codewords: the codebooks almost memorise the data.
    assert!(e.relative_error < 0.05, "{}", e.relative_error);
    assert!(e.relative_error < e.history[0].relative_error);
}

#[test]
fn round_trip_general_shapes() {
    // (M, B, ig, og, beam, bound)
    let cases = [
        (1, 4, 4, 1, 1, 0.35),
        (3, 3, 4, 2, 1, 0.25),
        (2, 5, 8, 1, 3, 0.25),
        (2, 4, 2, 2, 1, 0.1),
    ];
    for (m, b, ig, og, beam, bound) in cases {
        let w = gaussian(32, 48, 7);
        let scheme = AqlmScheme::new(m, b, ig, og).unwrap();
        let opts = QuantizeOptions {
            beam_size: beam,
            max_rounds: 15,
            ..QuantizeOptions::default()
        };
        let e = quantize(w.as_ref(), scheme, &opts).unwrap();
        assert!(
            e.codes
                .iter()
                .all(|&c| (c as usize) < scheme.codebook_size())
        );
        assert_eq!(e.codes.len(), (32 / og) * (48 / ig) * m);
        assert_eq!(e.codebooks.len(), m * scheme.codebook_size() * og * ig);
        let direct = rel_err(&w, &e);
        assert!(
            (direct - e.relative_error).abs() < 1e-9,
            "{scheme}: {direct} vs {}",
            e.relative_error
        );
        assert!(
            e.relative_error < bound,
            "{scheme} beam {beam}: {}",
            e.relative_error
        );
        check_history(&e);
    }
}

#[test]
fn beam_search_path_matches_quality_of_pairs() {
    let w = gaussian(32, 64, 3);
    let scheme = AqlmScheme::new(2, 6, 8, 1).unwrap();
    let joint = quantize(w.as_ref(), scheme, &QuantizeOptions::default()).unwrap();
    let opts = QuantizeOptions {
        joint_pair_search: false,
        beam_size: 4,
        ..QuantizeOptions::default()
    };
    let beam = quantize(w.as_ref(), scheme, &opts).unwrap();
    check_history(&beam);
    assert!(joint.relative_error <= beam.relative_error * 1.05);
}

#[test]
fn deterministic_across_thread_counts() {
    let w = gaussian(48, 64, 5);
    let h = {
        let x = gaussian(80, 64, 6);
        xtx_from_inputs(x.as_ref()).unwrap()
    };
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let o = QuantizeOptions {
                max_rounds: 4,
                seed: 11,
                ..QuantizeOptions::default()
            };
            let a = quantize(w.as_ref(), AqlmScheme::new(2, 8, 8, 1).unwrap(), &o).unwrap();
            let o2 = QuantizeOptions {
                beam_size: 2,
                ..o.clone()
            };
            let b = quantize(w.as_ref(), AqlmScheme::new(3, 4, 4, 2).unwrap(), &o2).unwrap();
            let c = quantize_with(
                w.as_ref(),
                Some(h.as_ref()),
                AqlmScheme::new(2, 5, 8, 1).unwrap(),
                &o,
                |_| ControlFlow::Continue(()),
            )
            .unwrap();
            (a, b, c)
        })
    };
    let (a1, b1, c1) = run(1);
    let (a2, b2, c2) = run(2);
    let bits = |e: &Encoded| {
        (
            e.codes.clone(),
            e.codebooks.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            e.scales.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(bits(&a1), bits(&a2));
    assert_eq!(bits(&b1), bits(&b2));
    assert_eq!(bits(&c1), bits(&c2));
    assert_eq!(a1.relative_error.to_bits(), a2.relative_error.to_bits());
    let o = QuantizeOptions {
        max_rounds: 4,
        seed: 12,
        ..QuantizeOptions::default()
    };
    let a3 = quantize(w.as_ref(), AqlmScheme::new(2, 8, 8, 1).unwrap(), &o).unwrap();
    assert_ne!(bits(&a1), bits(&a3), "the seed must matter");
}

#[test]
fn calibrated_objective_beats_plain_on_its_own_metric() {
    let w = gaussian(32, 64, 9);
    // Strongly anisotropic inputs: a few features dominate.
    let mut rng = StdRng::seed_from_u64(10);
    let x = Mat::<f32>::from_fn(256, 64, |_, c| {
        let v: f32 = StandardNormal.sample(&mut rng);
        v * if c % 8 == 0 { 6.0 } else { 0.5 }
    });
    let h = xtx_from_inputs(x.as_ref()).unwrap();
    let scheme = AqlmScheme::new(2, 4, 8, 1).unwrap();
    let opts = QuantizeOptions {
        max_rounds: 10,
        relative_tolerance: 0.0,
        ..QuantizeOptions::default()
    };
    let cal = quantize_with(w.as_ref(), Some(h.as_ref()), scheme, &opts, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    check_history(&cal);
    for beam in [1, 3] {
        let o = QuantizeOptions {
            beam_size: beam,
            ..opts.clone()
        };
        let c = quantize_with(w.as_ref(), Some(h.as_ref()), scheme, &o, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        check_history(&c);
    }
    let plain = quantize(w.as_ref(), scheme, &opts).unwrap();
    // Output-aware error of the plain encoding.
    let d = decode(&plain);
    let delta = Mat::<f64>::from_fn(32, 64, |r, c| f64::from(w[(r, c)]) - f64::from(d[(r, c)]));
    let wd = Mat::<f64>::from_fn(32, 64, |r, c| f64::from(w[(r, c)]));
    let tr = |a: &Mat<f64>| {
        let ah = a * &h;
        (0..32)
            .map(|r| (0..64).map(|c| ah[(r, c)] * a[(r, c)]).sum::<f64>())
            .sum::<f64>()
    };
    let plain_out = tr(&delta) / tr(&wd);
    assert!(
        cal.relative_error < plain_out * 0.9,
        "calibrated {} vs plain {}",
        cal.relative_error,
        plain_out
    );
    assert!(cal.history.len() > 2);
}

#[test]
fn progress_and_cancellation() {
    let w = gaussian(16, 32, 2);
    let scheme = AqlmScheme::new(2, 4, 8, 1).unwrap();
    let mut seen = Vec::new();
    let opts = QuantizeOptions {
        max_rounds: 10,
        relative_tolerance: 0.0,
        ..QuantizeOptions::default()
    };
    let e = quantize_with(w.as_ref(), None, scheme, &opts, |s| {
        seen.push(s.round);
        if s.round == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(seen, vec![0, 1, 2]);
    assert_eq!(e.history.len(), 3);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let scheme = AqlmScheme::new(2, 8, 8, 1).unwrap();
    let o = QuantizeOptions::default();
    let w = gaussian(4, 12, 1);
    assert!(matches!(
        quantize(w.as_ref(), scheme, &o),
        Err(EncodeError::Shape { what: "weight", .. })
    ));
    let mut w = gaussian(4, 16, 1);
    w[(2, 3)] = f32::NAN;
    assert!(matches!(
        quantize(w.as_ref(), scheme, &o),
        Err(EncodeError::NonFinite { row: 2, col: 3, .. })
    ));
    let w = gaussian(4, 16, 1);
    let bad = QuantizeOptions {
        beam_size: 0,
        ..o.clone()
    };
    assert!(matches!(
        quantize(w.as_ref(), scheme, &bad),
        Err(EncodeError::Option {
            name: "beam_size",
            ..
        })
    ));
    let h = Mat::<f64>::identity(8, 8);
    let r = quantize_with(w.as_ref(), Some(h.as_ref()), scheme, &o, |_| {
        ControlFlow::Continue(())
    });
    assert!(matches!(r, Err(EncodeError::Shape { what: "xtx", .. })));
    let z = Mat::<f32>::zeros(4, 16);
    let h = Mat::<f64>::identity(16, 16);
    let r = quantize_with(z.as_ref(), Some(h.as_ref()), scheme, &o, |_| {
        ControlFlow::Continue(())
    });
    assert!(matches!(r, Err(EncodeError::Degenerate(_))));
    let bad_scheme = AqlmScheme {
        num_codebooks: 0,
        nbits: 8,
        in_group_size: 8,
        out_group_size: 1,
    };
    assert!(matches!(
        quantize(w.as_ref(), bad_scheme, &o),
        Err(EncodeError::Scheme(_))
    ));
    // Zero weight with the plain objective is fine: error 0.
    let e = quantize(z.as_ref(), scheme, &o).unwrap();
    assert_eq!(e.relative_error, 0.0);
}

/// The quality table of the encoder brief: 1024×1024 Gaussian and Student-t(4) weights, 2x8,
/// in_group 8, plain objective. Run with
/// `cargo test --release -p oftq-aqlm quality_table -- --ignored --nocapture`.
#[test]
#[ignore = "heavy (≈ 1 min): prints the encoder quality table"]
fn quality_table() {
    use rand_distr::StudentT;
    let n = 1024;
    let mut rng = StdRng::seed_from_u64(20261126);
    let gauss = Mat::<f32>::from_fn(n, n, |_, _| StandardNormal.sample(&mut rng));
    let t4 = StudentT::new(4.0f32).unwrap();
    let student = Mat::<f32>::from_fn(n, n, |_, _| t4.sample(&mut rng));
    let scheme = AqlmScheme::new(2, 8, 8, 1).unwrap();
    let max_rounds: usize = std::env::var("OFTQ_ENCODE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut opts = QuantizeOptions {
        max_rounds,
        ..QuantizeOptions::default()
    };
    if let Some(k) = std::env::var("OFTQ_ENCODE_KMEANS_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.kmeans_iters = k;
    }
    println!("| weights | residual k-means | time | final | time | rounds | gap to 0.0625 (dB) |");
    println!("|---|---|---|---|---|---|---|");
    for (name, w) in [("Gaussian", &gauss), ("Student-t(4)", &student)] {
        let e = quantize_with(w.as_ref(), None, scheme, &opts, |s| {
            eprintln!(
                "{name} round {:>2}: rel err {:.5} ({:.2} s, total {:.2} s)",
                s.round, s.relative_error, s.seconds, s.elapsed
            );
            ControlFlow::Continue(())
        })
        .unwrap();
        let init = e.history[0];
        let last = e.history[e.history.len() - 1];
        println!(
            "| {name} 1024x1024 | {:.4} | {:.1} s | {:.4} | {:.1} s | {} | {:.2} |",
            init.relative_error,
            init.elapsed,
            e.relative_error,
            last.elapsed,
            last.round,
            10.0 * (e.relative_error / 0.0625).log10()
        );
    }
}

#[test]
fn accepts_any_strides_and_f64() {
    let w = gaussian(16, 32, 4);
    let scheme = AqlmScheme::new(2, 4, 8, 1).unwrap();
    let o = QuantizeOptions {
        max_rounds: 3,
        ..QuantizeOptions::default()
    };
    let a = quantize(w.as_ref(), scheme, &o).unwrap();
    // The same matrix stored transposed (column stride 1 ↔ row stride 1) and as f64.
    let wt = Mat::<f64>::from_fn(32, 16, |i, j| f64::from(w[(j, i)]));
    let b = quantize(wt.as_ref().transpose(), scheme, &o).unwrap();
    assert_eq!(
        (&a.codes, &a.codebooks, &a.scales),
        (&b.codes, &b.codebooks, &b.scales)
    );
    assert_eq!(a.relative_error, b.relative_error);
}

/// Output-aware encoding of a 1024×1024 Gaussian weight with anisotropic calibration inputs
/// (2x8, in_group 8): prints the time and both objectives for the plain and calibrated encoders.
/// `cargo test --release -p oftq-aqlm calibrated_table -- --ignored --nocapture`.
#[test]
#[ignore = "heavy (≈ 1 min): prints the calibrated-encoder figures"]
fn calibrated_table() {
    let n = 1024;
    let mut rng = StdRng::seed_from_u64(20261127);
    let w = Mat::<f32>::from_fn(n, n, |_, _| StandardNormal.sample(&mut rng));
    let x = Mat::<f32>::from_fn(2048, n, |_, c| {
        let v: f32 = StandardNormal.sample(&mut rng);
        v * (1.0 + 4.0 * ((c % 97) as f32 / 97.0).powi(4))
    });
    let h = xtx_from_inputs(x.as_ref()).unwrap();
    let scheme = AqlmScheme::new(2, 8, 8, 1).unwrap();
    let max_rounds = std::env::var("OFTQ_ENCODE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let opts = QuantizeOptions {
        max_rounds,
        ..QuantizeOptions::default()
    };
    let t = std::time::Instant::now();
    let cal = quantize_with(w.as_ref(), Some(h.as_ref()), scheme, &opts, |s| {
        eprintln!(
            "calibrated round {:>2}: output rel err {:.5} ({:.2} s)",
            s.round, s.relative_error, s.seconds
        );
        ControlFlow::Continue(())
    })
    .unwrap();
    let t_cal = t.elapsed().as_secs_f64();
    let plain = quantize(w.as_ref(), scheme, &opts).unwrap();
    // Output-aware error of the plain encoding, through the crate's own objective.
    let out_err_plain = {
        let l = layout(n, n, scheme).unwrap();
        let st = State {
            codes: plain.codes.clone(),
            codebooks: plain.codebooks.clone(),
            scales: plain.scales.clone(),
        };
        let dense: Vec<f32> = (0..n * n).map(|i| w[(i / n, i % n)]).collect();
        let hv: Vec<f64> = (0..n * n).map(|i| h[(i / n, i % n)]).collect();
        Calib::new(dense, hv, &l).relative_error(&st, &l)
    };
    println!("| encoder | output-aware rel err | plain rel err | time |");
    println!("|---|---|---|---|");
    println!(
        "| plain | {out_err_plain:.4} | {:.4} | - |",
        plain.relative_error
    );
    println!(
        "| calibrated (XᵀX) | {:.4} | {:.4} | {t_cal:.1} s |",
        cal.relative_error,
        rel_err(&w, &cal)
    );
}

#[test]
fn saved_checkpoint_reloads_bit_identically_and_decodes_as_the_encoder_said() {
    let w = gaussian(32, 64, 11);
    let opts = QuantizeOptions {
        max_rounds: 3,
        ..QuantizeOptions::default()
    };
    for scheme in [
        AqlmScheme::new(2, 8, 8, 1).unwrap(),
        AqlmScheme::new(3, 5, 4, 2).unwrap(),
    ] {
        let e = quantize(w.as_ref(), scheme, &opts).unwrap();
        let ours = decode(&e);
        // f16 rounding as convert_to_hf stores it, then an HF folder round trip.
        let layer = e
            .clone()
            .rounded_to(crate::FloatDtype::F16)
            .into_layer(None)
            .unwrap();
        let mut ckpt = crate::AqlmCheckpoint::new(crate::QuantizationConfig::new(scheme));
        ckpt.insert_layer("enc.proj", layer.clone()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        ckpt.save(dir.path()).unwrap();
        let back = crate::AqlmCheckpoint::load(dir.path()).unwrap();
        let l2 = back.layer("enc.proj").unwrap();
        assert_eq!(l2.codes(), layer.codes());
        assert_eq!(l2.codebooks(), layer.codebooks());
        assert_eq!(l2.scales(), layer.scales());
        assert_eq!(l2.decode(), layer.decode());
        // Without rounding, the crate's decoder reproduces the encoder's own decoding exactly.
        let exact = e.into_layer(None).unwrap();
        assert_eq!(exact.decode(), ours, "{scheme}");
    }
}
