//! Identical output bits for 1, 2 and 5 rayon threads, and across repeated runs: every AQLM
//! kernel (forward and input gradient), `BlockRotation` forward/backward (f32 and f64, Neumann
//! and exact), `AqlmOftLinear` forward/backward, and a few `Trainer` steps with module dropout.

use faer::Mat;
use oftq_aqlm::{AqlmScheme, Kernel};
use oftq_layer::train::{Activation, AdamW, Loss, LrSchedule, Sequential, Trainer};
use oftq_layer::{AqlmOftLinear, DenseLinear, Module, OftConfig, OftLinear, dispatch};
use oftq_ortho::{BlockRotation, CayleyConvention, NeumannFlavor, Parameterization, RotationSpec};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::{aqlm_layer, aqlm_layer_scheme};

const THREADS: [usize; 3] = [1, 2, 5];

/// Runs `f` in pools of 1, 2 and 5 threads (twice in the first), and checks every result has the
/// same bits as the first. Returns 1 (one configuration checked).
fn same_bits<F>(what: &str, f: F) -> usize
where
    F: Fn() -> Vec<u64> + Sync,
{
    let pools: Vec<rayon::ThreadPool> = THREADS
        .iter()
        .map(|&n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        })
        .collect();
    let first = pools[0].install(&f);
    assert!(!first.is_empty(), "{what}: nothing computed");
    let again = pools[0].install(&f);
    assert!(first == again, "{what}: two runs on 1 thread differ");
    for (pool, n) in pools.iter().zip(THREADS).skip(1) {
        let got = pool.install(&f);
        let diff = first.iter().zip(&got).filter(|(a, b)| a != b).count();
        assert!(
            first.len() == got.len() && diff == 0,
            "{what}: {n} threads differ from 1 thread in {diff} of {} values",
            first.len()
        );
    }
    1
}

fn bits32(m: &Mat<f32>) -> Vec<u64> {
    let mut v = Vec::with_capacity(m.nrows() * m.ncols() + 2);
    v.push(m.nrows() as u64);
    v.push(m.ncols() as u64);
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            v.push(u64::from(m[(i, j)].to_bits()));
        }
    }
    v
}

fn bits64(m: &Mat<f64>) -> Vec<u64> {
    let mut v = vec![m.nrows() as u64, m.ncols() as u64];
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            v.push(m[(i, j)].to_bits());
        }
    }
    v
}

fn rand_mat(rng: &mut StdRng, r: usize, c: usize, scale: f32) -> Mat<f32> {
    Mat::from_fn(r, c, |_, _| (rng.random::<f32>() - 0.5) * scale)
}

#[test]
fn aqlm_kernels_are_thread_count_independent() {
    let mut checks = 0;
    let layers = [
        aqlm_layer("2x8", 512, 256, true, 1),
        aqlm_layer_scheme(AqlmScheme::new(1, 8, 4, 2).unwrap(), 256, 128, false, 2),
        aqlm_layer_scheme(AqlmScheme::new(2, 6, 8, 1).unwrap(), 256, 96, true, 3),
    ];
    let mut rng = StdRng::seed_from_u64(4);
    for (li, layer) in layers.iter().enumerate() {
        // 7 tokens (small-batch kernels) and 70 (enough for the tiled path's multi-tile case).
        for tokens in [7, 70] {
            let x = rand_mat(&mut rng, tokens, layer.in_features(), 2.0);
            let dy = rand_mat(&mut rng, tokens, layer.out_features(), 2.0);
            for k in [
                Kernel::Lut,
                Kernel::DecodeDot,
                Kernel::TiledGemm,
                Kernel::Reference,
            ] {
                checks += same_bits(
                    &format!("layer {li} {k:?} forward, {tokens} tokens"),
                    || bits32(&layer.forward_with(x.as_ref(), k).unwrap()),
                );
                checks += same_bits(
                    &format!("layer {li} {k:?} backward, {tokens} tokens"),
                    || bits32(&layer.backward_input_with(dy.as_ref(), k).unwrap()),
                );
            }
        }
    }
    println!(
        "determinism: AQLM kernels, {checks} configurations bit-identical on 1 (twice), 2 and 5 threads"
    );
}

#[test]
fn block_rotation_is_thread_count_independent() {
    let mut checks = 0;
    let params = [
        Parameterization::Neumann {
            terms: 5,
            flavor: NeumannFlavor::Peft,
        },
        Parameterization::Exact(CayleyConvention::Peft),
    ];
    let mut rng = StdRng::seed_from_u64(5);
    for p in params {
        for share in [false, true] {
            let spec = RotationSpec::new(256, 16, share, p).unwrap();
            let (r, c) = spec.param_shape();
            let w32 = rand_mat(&mut rng, r, c, 0.2);
            let w64 = Mat::<f64>::from_fn(r, c, |i, j| f64::from(w32[(i, j)]));
            let x32 = rand_mat(&mut rng, 37, 256, 2.0);
            let dy32 = rand_mat(&mut rng, 37, 256, 2.0);
            let x64 = Mat::<f64>::from_fn(37, 256, |i, j| f64::from(x32[(i, j)]));
            let dy64 = Mat::<f64>::from_fn(37, 256, |i, j| f64::from(dy32[(i, j)]));
            checks += same_bits(&format!("rotation f32 {p:?} share {share}"), || {
                let rot = BlockRotation::build(&spec, w32.as_ref()).unwrap();
                let g = rot.backward(x32.as_ref(), dy32.as_ref()).unwrap();
                let mut v = bits32(&rot.forward(x32.as_ref()).unwrap());
                v.extend(bits32(&g.input));
                v.extend(bits32(&g.params));
                v
            });
            checks += same_bits(&format!("rotation f64 {p:?} share {share}"), || {
                let rot = BlockRotation::build(&spec, w64.as_ref()).unwrap();
                let g = rot.backward(x64.as_ref(), dy64.as_ref()).unwrap();
                let mut v = bits64(&rot.forward(x64.as_ref()).unwrap());
                v.extend(bits64(&g.input));
                v.extend(bits64(&g.params));
                v
            });
        }
    }
    println!(
        "determinism: BlockRotation, {checks} configurations bit-identical on 1 (twice), 2 and 5 threads"
    );
}

fn oft_layer(seed: u64, coft: bool) -> AqlmOftLinear {
    let base = aqlm_layer("2x8", 256, 128, true, seed);
    let config = OftConfig {
        oft_block_size: 32,
        init_weights: false,
        coft,
        eps: 1e-1,
        ..OftConfig::default()
    };
    let mut l = OftLinear::with_adapter(base, "a", &config).unwrap();
    l.add_adapter(
        "b",
        &OftConfig {
            oft_block_size: 16,
            ..config
        },
    )
    .unwrap();
    l.set_adapters(&["a", "b"]).unwrap();
    l
}

#[test]
fn aqlm_oft_linear_is_thread_count_independent() {
    let mut checks = 0;
    let mut rng = StdRng::seed_from_u64(6);
    for coft in [false, true] {
        let layer = oft_layer(7, coft);
        for tokens in [5, 70] {
            let x = rand_mat(&mut rng, tokens, 256, 2.0);
            let dy = rand_mat(&mut rng, tokens, 128, 2.0);
            checks += same_bits(
                &format!("AqlmOftLinear coft {coft}, {tokens} tokens"),
                || {
                    let (y, cache) = layer.forward_cached(x.as_ref(), None).unwrap();
                    let g = layer.backward(&cache, dy.as_ref()).unwrap();
                    let mut v = bits32(&y);
                    v.extend(bits32(&g.input));
                    for (_, a) in &g.adapters {
                        v.extend(bits32(a));
                    }
                    v
                },
            );
        }
    }
    println!(
        "determinism: AqlmOftLinear, {checks} configurations bit-identical on 1 (twice), 2 and 5 threads"
    );
}

fn trainer() -> Trainer {
    let config = OftConfig {
        oft_block_size: 16,
        init_weights: false,
        module_dropout: 0.25,
        ..OftConfig::default()
    };
    let mut l1 = Module::Aqlm(aqlm_layer("2x8", 128, 64, true, 8));
    let mut rng = StdRng::seed_from_u64(9);
    let mut l2 = Module::Dense(
        DenseLinear::new(rand_mat(&mut rng, 10, 64, 0.5), Some(vec![0.1; 10]), false).unwrap(),
    );
    dispatch(&mut l1, "default", &config).unwrap();
    dispatch(
        &mut l2,
        "default",
        &OftConfig {
            coft: true,
            eps: 0.5,
            ..config.clone()
        },
    )
    .unwrap();
    let model =
        Sequential::new()
            .push("l1", l1, Activation::Gelu)
            .push("l2", l2, Activation::Identity);
    Trainer::new(
        model,
        AdamW::new(1e-2),
        LrSchedule::Cosine {
            warmup: 1,
            min_ratio: 0.1,
        },
        11,
    )
}

#[test]
fn trainer_steps_are_thread_count_independent() {
    let mut rng = StdRng::seed_from_u64(10);
    let batches: Vec<(Mat<f32>, Loss)> = (0..4)
        .map(|s| {
            let x = rand_mat(&mut rng, 40, 128, 2.0);
            let loss = if s % 2 == 0 {
                Loss::CrossEntropy((0..40).map(|t| t % 10).collect())
            } else {
                Loss::Mse(rand_mat(&mut rng, 40, 10, 1.0))
            };
            (x, loss)
        })
        .collect();
    let checks = same_bits("Trainer, 4 steps", || {
        let mut t = trainer();
        let mut v = Vec::new();
        for (s, (x, loss)) in batches.iter().enumerate() {
            let st = t.step(x.as_ref(), loss, s, batches.len()).unwrap();
            v.extend([
                st.loss.to_bits(),
                st.grad_norm.to_bits(),
                st.max_q_bound.to_bits(),
            ]);
        }
        for (_, a) in t.model.adapters() {
            v.extend(bits32(&a.weight().to_owned()));
        }
        v
    });
    println!(
        "determinism: Trainer, {checks} configurations bit-identical on 1 (twice), 2 and 5 threads"
    );
}

/// FNV-1a over the bits of a trainer run and an AQLM-OFT forward/backward (all kernels).
fn fingerprint() -> u64 {
    let mut v = Vec::new();
    let layer = oft_layer(7, true);
    let mut rng = StdRng::seed_from_u64(12);
    let x = rand_mat(&mut rng, 40, 256, 2.0);
    let (y, cache) = layer.forward_cached(x.as_ref(), None).unwrap();
    v.extend(bits32(&y));
    v.extend(bits32(&layer.backward(&cache, y.as_ref()).unwrap().input));
    for k in [
        Kernel::Lut,
        Kernel::DecodeDot,
        Kernel::TiledGemm,
        Kernel::Reference,
    ] {
        v.extend(bits32(&layer.base().forward_with(x.as_ref(), k).unwrap()));
    }
    let mut t = trainer();
    let x = rand_mat(&mut rng, 40, 128, 2.0);
    let loss = Loss::CrossEntropy((0..40).map(|t| t % 10).collect());
    for s in 0..2 {
        v.push(t.step(x.as_ref(), &loss, s, 2).unwrap().loss.to_bits());
    }
    v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b).wrapping_mul(0x100_0000_01b3)
    })
}

/// Child helper for the cross-process check: prints the fingerprint.
#[test]
#[ignore = "helper process for determinism::same_bits_across_processes"]
fn fingerprint_child() {
    if std::env::var_os("OFTQ_FINGERPRINT_CHILD").is_some() {
        println!("fingerprint {:016x}", fingerprint());
    }
}

/// The same computation in fresh processes with `RAYON_NUM_THREADS` = 1 and 3 gives the bits of
/// this process.
#[test]
fn same_bits_across_processes() {
    let here = format!("{:016x}", fingerprint());
    let exe = std::env::current_exe().unwrap();
    for threads in ["1", "3"] {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "determinism::fingerprint_child",
                "--include-ignored",
                "--nocapture",
            ])
            .env("OFTQ_FINGERPRINT_CHILD", "1")
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let got = text
            .lines()
            .find_map(|l| l.strip_prefix("fingerprint "))
            .unwrap_or_else(|| panic!("child printed no fingerprint: {text}"));
        assert_eq!(
            got.trim(),
            here,
            "process with RAYON_NUM_THREADS={threads} differs"
        );
    }
    println!(
        "determinism: 2 child processes (RAYON_NUM_THREADS 1, 3) match this process bit for bit"
    );
}
