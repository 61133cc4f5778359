//! Per-call timings of the pieces of building and applying rotation blocks (`b = 32`, `f32`), for
//! profiling: `PROBE=<name> cargo test --release -p oftq-ortho --lib timing_probe -- --ignored
//! --nocapture --test-threads=1` (without `PROBE`, all of them; `PROBE_TRIALS` and `PROBE_REPS`
//! override the trials and the calls per trial). Speed targets are checked by the criterion
//! bench, not here.
//!
//! Probes that allocate megabytes (`rot_forward`, `rot_backward`, `stream_clone_8mb`) are slower
//! here than in the bench: on a test thread glibc's allocator (a non-main arena) gives such
//! blocks back to the kernel after each call, so every call page-faults them in again (one fault
//! per 4 KiB); on the bench's main thread it keeps them.

use faer::Mat;

use crate::matrix::zeroed_storage_with;
use crate::packing::{n_elements, skew_from_slice};

/// Minimum over trials of the mean time per call (µs): robust to bursts of noise. With
/// `PROBE=<name>` only that probe runs, long enough for `perf record`.
fn probe(name: &str, mut f: impl FnMut()) {
    let only = std::env::var("PROBE").ok();
    if only.as_deref().is_some_and(|o| o != name) {
        return;
    }
    let var = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let trials = var("PROBE_TRIALS", if only.is_some() { 400 } else { 40 });
    let reps = var("PROBE_REPS", 200);
    let t = (0..trials)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64 * 1e6
        })
        .fold(f64::INFINITY, f64::min);
    eprintln!("{name} {t:.3}");
}

#[test]
#[ignore]
fn timing_probe_pieces() {
    use std::hint::black_box;
    let b = 32;
    let v: Vec<f32> = (0..n_elements(b))
        .map(|k| (k as f32 * 0.37).sin() * 0.02)
        .collect();
    let q = skew_from_slice(&v, b);
    probe("skew_from_slice", || {
        black_box(skew_from_slice(black_box(&v), b));
    });
    let ld = crate::kernels::gauss_jordan::padded_stride(b);
    let mut buf = vec![0.0f32; b * ld];
    probe("fill_skew", || {
        crate::packing::fill_skew(black_box(&v), b, &mut buf, ld);
        black_box(&mut buf);
    });
    probe("alloc_only", || {
        black_box(Mat::<f32>::with_capacity(b, b));
    });
    let mut big = vec![0.0f32; b * ld];
    probe("memset_only", || {
        black_box(&mut big).fill(0.0);
    });
    probe("zeroed_with", || {
        black_box(zeroed_storage_with::<f32>(b, b, |_, _| {}));
    });
    probe("cayley_exact", || {
        black_box(crate::cayley_exact(black_box(q.as_ref()), Default::default()).unwrap());
    });
    let mut r = vec![0.0f32; b * b];
    probe("cayley_exact_packed_into", || {
        r.fill(0.0);
        crate::cayley::cayley_exact_packed_into(black_box(&v), b, Default::default(), &mut r, b)
            .unwrap();
    });
    let mut m0 = vec![0.0f32; b * ld];
    for i in 0..b {
        for j in 0..b {
            m0[i * ld + j] = q[(j, i)] + if i == j { 1.0 } else { 0.0 };
        }
    }
    let mut m = m0.clone();
    probe("gj", || {
        m.copy_from_slice(&m0);
        assert!(crate::kernels::gauss_jordan::invert_unpivoted(
            black_box(&mut m),
            b,
            0.5
        ));
    });
    let coeffs = [1.0, 2.0, 2.0, 2.0, 1.0];
    probe("neumann_with_tape", || {
        black_box(crate::cayley::neumann_with_tape(
            black_box(q.as_ref()),
            &coeffs,
        ));
    });
    let h = skew_from_slice(&v, b);
    let mut acc = vec![0.0f32; b * b];
    probe("gemm_acc_32", || {
        crate::kernels::block_gemm::gemm_acc(1.0, black_box(q.as_ref()), h.as_ref(), &mut acc, b);
    });
    let tape = crate::cayley::neumann_with_tape(q.as_ref(), &coeffs).1;
    probe("neumann_vjp_transposed", || {
        black_box(crate::cayley::neumann_vjp_transposed(
            black_box(tape.as_ref()),
            &coeffs,
            h.as_ref(),
        ));
    });
    let mut out = faer::Mat::<f32>::zeros(b, b);
    probe("faer_matmul_32", || {
        faer::linalg::matmul::matmul(
            out.as_mut(),
            faer::Accum::Replace,
            black_box(q.as_ref()),
            h.as_ref(),
            1.0,
            faer::Par::Seq,
        );
    });
    probe("zeroed_16k", || {
        black_box(zeroed_storage_with::<f32>(b, 4 * b, |_, _| {}));
    });
    let p = Mat::<f32>::from_fn(128, n_elements(b), |i, k| (i + k) as f32 * 1e-4);
    probe("transposed_x128", || {
        black_box(crate::packing::transposed(black_box(p.as_ref())));
    });
    for (name, parameterization) in [
        (
            "build_exact_x128",
            crate::Parameterization::Exact(Default::default()),
        ),
        (
            "build_neumann5_x128",
            crate::Parameterization::peft(true, 5),
        ),
    ] {
        let spec = crate::RotationSpec::new(128 * b, b, false, parameterization).unwrap();
        let p = p.map(|&x| x * 0.1);
        probe(name, || {
            black_box(crate::BlockRotation::build(&spec, black_box(p.as_ref())).unwrap());
        });
    }
}

#[test]
#[ignore]
fn timing_probe_rotation_sizes() {
    use std::hint::black_box;
    let (d, b) = (4096usize, 32usize);
    let spec =
        crate::RotationSpec::new(d, b, false, crate::Parameterization::peft(true, 5)).unwrap();
    let p = Mat::<f32>::from_fn(d / b, n_elements(b), |i, k| {
        ((i * 7 + k) as f32).sin() * 0.02
    });
    let rot = crate::BlockRotation::build(&spec, p.as_ref()).unwrap();
    for n in [32usize, 64, 128, 512] {
        let x = Mat::<f32>::from_fn(n, d, |i, j| ((i * 13 + j) as f32).cos());
        let flops = 2.0 * (n * d * b) as f64;
        let t0 = std::time::Instant::now();
        let reps = 4096 / n;
        let mut best = f64::INFINITY;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                black_box(rot.forward(black_box(x.as_ref())).unwrap());
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        let _ = t0;
        eprintln!("forward n={n}: {:.1} GFLOP/s", flops / best / 1e9);
        let mut best = f64::INFINITY;
        for _ in 0..20 {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                black_box(rot.backward(black_box(x.as_ref()), x.as_ref()).unwrap());
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        eprintln!("backward n={n}: {:.1} GFLOP/s", 2.0 * flops / best / 1e9);
    }
}

#[test]
#[ignore]
fn timing_probe_streams() {
    use std::hint::black_box;
    let (n, d) = (512usize, 4096usize);
    let x = Mat::<f32>::from_fn(n, d, |i, j| ((i * 13 + j) as f32).cos());
    let mut y = Mat::<f32>::zeros(n, d);
    probe("stream_clone_8mb", || {
        black_box(black_box(&x).clone());
    });
    probe("stream_copy_into_8mb", || {
        y.copy_from(black_box(&x));
        black_box(&mut y);
    });
    probe("stream_sum_8mb", || {
        let mut s = 0.0f32;
        for j in 0..d {
            s += x.col(j).sum();
        }
        black_box(s);
    });
    let spec =
        crate::RotationSpec::new(d, 32, false, crate::Parameterization::peft(true, 5)).unwrap();
    let p = Mat::<f32>::from_fn(d / 32, n_elements(32), |i, k| {
        ((i * 7 + k) as f32).sin() * 0.02
    });
    let rot = crate::BlockRotation::build(&spec, p.as_ref()).unwrap();
    let blocks: Vec<Mat<f32>> = (0..d / 32)
        .map(|j| Mat::from_fn(32, 32, |i, k| ((i * 3 + k + j) as f32).sin() * 0.1))
        .collect();
    let mut out = vec![std::mem::MaybeUninit::<f32>::uninit(); n * d];
    // Block j of the forward product, `y_j = x_j · R_j`, into its slice of `out`.
    let fwd_block = |(j, (r, yj)): (usize, (&Mat<f32>, &mut [std::mem::MaybeUninit<f32>]))| {
        let xj = black_box(x.as_ref()).subcols(j * 32, 32);
        crate::kernels::block_gemm::gemm_uninit(1.0, xj, r.as_ref(), yj, n);
    };
    probe("xb_fwd_blocks", || {
        blocks
            .iter()
            .zip(out.chunks_mut(n * 32))
            .enumerate()
            .for_each(fwd_block);
    });
    probe("xb_fwd_blocks_par", || {
        use rayon::prelude::*;
        blocks
            .par_iter()
            .zip(out.par_chunks_mut(n * 32))
            .enumerate()
            .for_each(fwd_block);
    });
    probe("rot_forward", || {
        black_box(rot.forward(black_box(x.as_ref())).unwrap());
    });
    probe("rot_backward", || {
        black_box(rot.backward(black_box(x.as_ref()), x.as_ref()).unwrap());
    });
}
