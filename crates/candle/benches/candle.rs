//! Criterion bench of oftq-candle: forward + backward (candle's `backward()`) of an AQLM 2x8
//! 4096×4096 layer with one OFT adapter (block 32, Cayley–Neumann 5 terms), 64 tokens — the work of
//! oftq-layer's `layer.fwd_bwd.2x8.4096.t64.b32`, its baseline in `cargo xtask bench`.
//!
//! Before the timings it prints the peak extra heap memory of one step of each (a counting global
//! allocator): `candle.fwd_bwd.2x8.4096.t64.b32 peak extra memory: … MiB (oftq-layer: … MiB)`.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // a bench is not a public API

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use oftq_candle::AqlmOftLinear;
use oftq_candle::candle_core::{Device, Module, Tensor, Var};
use oftq_candle::candle_nn::VarMap;
use oftq_candle::layer::aqlm::AqlmLayer;
use oftq_candle::layer::faer::Mat;
use oftq_candle::layer::{OftConfig, OftLinear};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only adds bookkeeping on atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap bytes above the level at the start of `f`.
fn peak_extra(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed) - base
}

const D: usize = 4096;
const T: usize = 64;

fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = lcg(seed);
    (0..n).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect()
}

/// The same layer as oftq-layer's bench.
fn aqlm_2x8() -> AqlmLayer {
    let mut r = lcg(1);
    let codes: Vec<u16> = (0..D * (D / 8) * 2).map(|_| (r() % 256) as u16).collect();
    let codebooks: Vec<f32> = (0..2 * 256 * 8)
        .map(|_| (r() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    AqlmLayer::new(
        D,
        D,
        "2x8".parse().unwrap(),
        codes,
        codebooks,
        vec![0.01; D],
        None,
    )
    .unwrap()
}

fn benches(c: &mut Criterion) {
    let config = OftConfig {
        oft_block_size: 32,
        init_weights: false,
        ..OftConfig::default()
    };
    let layer = OftLinear::with_adapter(aqlm_2x8(), "default", &config).unwrap();
    let varmap = VarMap::new();
    let module = AqlmOftLinear::from_layer(&layer, "proj", &varmap).unwrap();
    let x = Var::from_tensor(&Tensor::from_vec(random(T * D, 2), (T, D), &Device::Cpu).unwrap())
        .unwrap();
    let dy = Tensor::from_vec(random(T * D, 3), (T, D), &Device::Cpu).unwrap();
    let step = || {
        let y = module.forward(black_box(x.as_tensor())).unwrap();
        y.mul(&dy).unwrap().sum_all().unwrap().backward().unwrap()
    };
    let (xv, dyv) = (random(T * D, 2), random(T * D, 3));
    let xm = Mat::from_fn(T, D, |t, k| xv[t * D + k]);
    let dym = Mat::from_fn(T, D, |t, k| dyv[t * D + k]);
    let layer_step = || {
        let (_, cache) = layer.forward_cached(xm.as_ref(), None).unwrap();
        layer.backward(&cache, dym.as_ref()).unwrap()
    };
    step();
    layer_step();
    let ours = peak_extra(|| drop(step()));
    let theirs = peak_extra(|| drop(layer_step()));
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "candle.fwd_bwd.2x8.4096.t64.b32 peak extra memory: {:.1} MiB (oftq-layer: {:.1} MiB)",
        mib(ours),
        mib(theirs)
    );
    let mut g = c.benchmark_group("candle");
    g.bench_function("candle.fwd_bwd.2x8.4096.t64.b32", |b| b.iter(step));
    g.finish();
}

criterion_group! {
    name = candle;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(4));
    targets = benches
}
criterion_main!(candle);
