//! The roofline column of the report: for each target row, a lower bound on its time on this
//! machine from the bytes it must move, the multiply-adds it must do and the table look-ups it
//! must make, with the machine's rates measured by small probes in the same run.
//!
//! A row's limit is `max(bytes / bandwidth, multiply-adds / FMA rate, look-ups / look-up rate)`
//! ([`limit`]); its "% of limit" is that bound over the measured time. The counts ([`work_of`])
//! are those of the algorithm oftq runs for the shape, at the smallest operation count known for
//! it; each is justified beside it and printed in the report. The probes ([`probe`]):
//!
//! - **bandwidth**: all threads summing a buffer of the row's size (each thread its share), so a
//!   footprint that stays in cache between a bench's iterations reads at the cache's speed, as
//!   the kernel does;
//! - **FMA rate**: twelve independent chains of vector fused multiply-adds per thread (AVX-512
//!   when the CPU has it, else AVX2 + FMA);
//! - **look-up rate**: hardware gathers (`vgatherdps`, AVX2 and AVX-512, the faster counts) of f32
//!   from a 256-entry table in L1, indexed by bytes, as the AQLM look-up kernel makes them (a
//!   kernel that looked up by other means could beat it: it would show above 100%).
//!
//! Each probe keeps its best of [`TRIALS`] trials (noise only slows a probe down), and a bench
//! run probes twice (before the passes and after the rounds) and keeps the better reading.

use std::sync::Barrier;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::keys;

/// Trials per probe; the fastest counts.
pub(crate) const TRIALS: usize = 5;

/// What a row must do, at least: bytes moved, multiply-adds, table look-ups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Work {
    /// Bytes read or written at least once (inputs, outputs, the quantized weight).
    pub(crate) bytes: f64,
    /// Multiply-adds (one per lane of an FMA instruction; a lone add counts as one).
    pub(crate) fmas: f64,
    /// Table look-ups (one gathered f32 each).
    pub(crate) lookups: f64,
    /// Where the counts come from, for the report.
    pub(crate) why: &'static str,
}

/// Features of a 4096×4096 layer.
const D: f64 = 4096.0;
/// Bytes of an f32.
const F32: f64 = 4.0;
/// Codes of a 4096² layer with in-group 8, one byte per code and codebook: 2x8 (two 8-bit codes)
/// and 1x16 (one 16-bit code) both store 2 bytes per 8 weights, 4 MiB.
const CODES: f64 = 2.0 * D * D / 8.0;
/// The two 2x8 codebooks (256 code words of 8 f32 each) and the per-row scales.
const CODEBOOKS_2X8: f64 = 2.0 * 256.0 * 8.0 * F32 + D * F32;
/// The 1x16 codebook (65536 code words of 8 f32) and the scales.
const CODEBOOK_1X16: f64 = 65536.0 * 8.0 * F32 + D * F32;
/// Rotation blocks of the `r128` / `d4096.b32` rows.
const R: f64 = 128.0;
/// Block size of the `b32` rows.
const B: f64 = 32.0;

/// The work of a target row, if it has a model (the encoder has none).
pub(crate) fn work_of(key: &str) -> Option<Work> {
    let t = keys::tokens_of(key).map(|t| t as f64);
    // An R block build reads the packed parameters and writes R.
    let build_bytes = R * (B * (B - 1.0) / 2.0 + B * B) * F32;
    Some(match key {
        // R = I + 2Q + 2Q² + 2Q³ + Q⁴ = I + 2Q + Q²·(2I + 2Q + Q²): two b×b products per block
        // (oftq's Paterson–Stockmeyer evaluation).
        "ortho.build_r.neumann5.r128.b32" => Work {
            bytes: build_bytes,
            fmas: 2.0 * R * B * B * B,
            lookups: 0.0,
            why: "two b×b products per block: Q², then Q²·(2I + 2Q + Q²)",
        },
        // (I − Q)(I + Q)⁻¹ = 2(I + Q)⁻¹ − I: one b×b inversion (b³ multiply-adds) per block.
        "ortho.build_r.exact.r128.b32" => Work {
            bytes: build_bytes,
            fmas: R * B * B * B,
            lookups: 0.0,
            why: "one b×b inversion per block (b³), since (I − Q)(I + Q)⁻¹ = 2(I + Q)⁻¹ − I",
        },
        // x·R, dy·Rᵀ and xᵀ·dy, each N·d·b; reads x and dy, writes y and dx (N×d f32 each).
        "ortho.rotate_fwd_bwd.neumann5.n512.d4096.b32" => {
            let n = 512.0;
            Work {
                bytes: 4.0 * n * D * F32,
                fmas: 3.0 * n * D * B,
                lookups: 0.0,
                why: "x·R, dy·Rᵀ and xᵀ·dy: 3·N·d·b; reads x and dy, writes y and dx",
            }
        }
        // The look-up kernel: per token, a table of every code word · its 8 inputs (2·256·8 per
        // group of 8 inputs), then one look-up per code; reads every code once.
        "aqlm.forward.2x8.4096.t1" => Work {
            bytes: CODES + CODEBOOKS_2X8 + 2.0 * D * F32,
            fmas: 2.0 * 256.0 * D,
            lookups: 2.0 * D * D / 8.0,
            why: "look-up kernel: tables 2·256·d, then 2·d²/8 look-ups (4.2 M); reads the codes",
        },
        // The tiled kernel (64 tokens) and the decode-and-FMA kernel (16): decode the weight (one
        // add per weight: two code words summed; the lower bound counts it once), then a t-row
        // product (t·d²); reads the codes, x (or dy) and writes y (or dx).
        "aqlm.forward.2x8.4096.t16"
        | "aqlm.forward.2x8.4096.t64"
        | "aqlm.backward.2x8.4096.t64" => {
            let t = t?;
            Work {
                bytes: CODES + CODEBOOKS_2X8 + 2.0 * t * D * F32,
                fmas: D * D + t * D * D,
                lookups: 0.0,
                why: "decode (d² adds) and multiply (t·d²); reads the codes",
            }
        }
        // Decode-dot: every code word times its 8 inputs, d² multiply-adds; reads the codes and
        // the 2 MiB codebook once.
        "aqlm.forward.1x16.4096.t1" => Work {
            bytes: CODES + CODEBOOK_1X16 + 2.0 * D * F32,
            fmas: D * D,
            lookups: 0.0,
            why: "decode-dot kernel: d²; reads the codes and the 2 MiB codebook",
        },
        // A training step of AqlmOftLinear: the forward and input-gradient products (t·d² each)
        // with the weight decoded for each (d² each), the rotation's x·R, g·Rᵀ and xᵀ·g
        // (3·t·d·b), R and its gradient (two products to build, four for the gradient: 6·b³ per
        // block); reads the codes, x and the target, writes y and dx.
        "layer.train_step.2x8.4096.t64.b32"
        | "layer.fwd_bwd.2x8.4096.t64.b32"
        | "candle.fwd_bwd.2x8.4096.t64.b32" => {
            let t = t?;
            Work {
                bytes: CODES + CODEBOOKS_2X8 + 4.0 * t * D * F32,
                fmas: 2.0 * (t * D * D + D * D) + 3.0 * t * D * B + 6.0 * R * B * B * B,
                lookups: 0.0,
                why: "two products 2·t·d² with two decodes 2·d², rotation 3·t·d·b, R and its \
                      gradient 6·b³ per block",
            }
        }
        _ => return None,
    })
}

/// The machine's rates at one thread setting, as the probes measured them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Rates {
    /// Threads the probes ran on.
    pub(crate) threads: usize,
    /// Multiply-adds per second (`None`: no probe for this CPU).
    pub(crate) fma_per_s: Option<f64>,
    /// Table look-ups per second.
    pub(crate) lookups_per_s: Option<f64>,
    /// Read bandwidth (bytes per second) by footprint (bytes), ascending footprints.
    pub(crate) bandwidth: Vec<(u64, f64)>,
}

impl Rates {
    /// The bandwidth measured at the smallest probed footprint of at least `bytes` (else the
    /// largest).
    pub(crate) fn bandwidth_at(&self, bytes: f64) -> Option<f64> {
        self.bandwidth
            .iter()
            .find(|(size, _)| *size as f64 >= bytes)
            .or(self.bandwidth.last())
            .map(|(_, bw)| *bw)
    }

    /// The better of two readings of each rate (noise only slows a probe down).
    pub(crate) fn best(&self, other: &Rates) -> Rates {
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let mut bandwidth = self.bandwidth.clone();
        for &(size, bw) in &other.bandwidth {
            match bandwidth.iter_mut().find(|(s, _)| *s == size) {
                Some(entry) => entry.1 = entry.1.max(bw),
                None => bandwidth.push((size, bw)),
            }
        }
        bandwidth.sort_by_key(|(s, _)| *s);
        Rates {
            threads: self.threads,
            fma_per_s: max(self.fma_per_s, other.fma_per_s),
            lookups_per_s: max(self.lookups_per_s, other.lookups_per_s),
            bandwidth,
        }
    }
}

/// The probes' readings at all threads and at one thread.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Probes {
    /// The instruction sets the probes used (`avx512f`, `avx2+fma`, or `none`).
    pub(crate) isa: String,
    /// With every thread of the machine.
    pub(crate) all: Rates,
    /// With one thread.
    pub(crate) one: Rates,
}

impl Probes {
    /// Probes the machine at all threads and at one, for the footprints of every modelled row.
    pub(crate) fn measure(threads: usize) -> Probes {
        let sizes = footprints(threads);
        Probes {
            isa: simd::isa().to_string(),
            all: probe(threads, &sizes),
            one: probe(1, &sizes),
        }
    }

    /// The better reading of each rate of two probe runs.
    pub(crate) fn best(&self, other: &Probes) -> Probes {
        Probes {
            isa: self.isa.clone(),
            all: self.all.best(&other.all),
            one: self.one.best(&other.one),
        }
    }
}

/// Which resource bounds a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// Bytes over bandwidth.
    Memory,
    /// Multiply-adds over the FMA rate.
    Fma,
    /// Look-ups over the look-up rate.
    Lookups,
}

impl Bound {
    /// For the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Bound::Memory => "memory",
            Bound::Fma => "FMA",
            Bound::Lookups => "look-ups",
        }
    }
}

/// A row's lower bound at the given rates: seconds and the binding resource. `None` if a rate
/// the row needs was not measured.
pub(crate) fn limit(work: &Work, rates: &Rates) -> Option<(f64, Bound)> {
    let per = |count: f64, rate: Option<f64>| {
        if count == 0.0 {
            Some(0.0)
        } else {
            rate.filter(|r| *r > 0.0).map(|r| count / r)
        }
    };
    let candidates = [
        (
            per(work.bytes, rates.bandwidth_at(work.bytes))?,
            Bound::Memory,
        ),
        (per(work.fmas, rates.fma_per_s)?, Bound::Fma),
        (per(work.lookups, rates.lookups_per_s)?, Bound::Lookups),
    ];
    candidates.into_iter().max_by(|a, b| a.0.total_cmp(&b.0))
}

/// The probe footprints: the byte count of every modelled row, rounded up to whole 4 KiB pages
/// per thread, deduplicated, ascending.
pub(crate) fn footprints(threads: usize) -> Vec<u64> {
    let unit = 4096 * threads.max(1) as u64;
    let mut sizes: Vec<u64> = keys::RESULT_KEYS
        .iter()
        .filter_map(|k| work_of(k))
        .map(|w| (w.bytes as u64).div_ceil(unit) * unit)
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Runs every probe on `threads` threads.
pub(crate) fn probe(threads: usize, footprints: &[u64]) -> Rates {
    let threads = threads.max(1);
    // A few milliseconds of calls per trial.
    let repeat = |k: &simd::Kernel, calls: usize| {
        rate(threads, k.per_call * (calls * threads) as f64, |_| {
            for _ in 0..calls {
                (k.run)();
            }
        })
    };
    let fma_per_s = simd::fma_kernel().map(|k| repeat(&k, 512));
    let lookups_per_s = simd::gather_kernels()
        .iter()
        .map(|k| repeat(k, 256))
        .reduce(f64::max);
    let bandwidth = match simd::read_kernel() {
        Some(read) => footprints
            .iter()
            .map(|&size| (size, read_bandwidth(threads, size, read)))
            .collect(),
        None => Vec::new(),
    };
    Rates {
        threads,
        fma_per_s,
        lookups_per_s,
        bandwidth,
    }
}

/// Bytes per second of `threads` threads reading, in turn, their share of a `size`-byte buffer.
fn read_bandwidth(threads: usize, size: u64, read: fn(&[f32])) -> f64 {
    let floats = (size / 4) as usize;
    let buffer = vec![1.0f32; floats];
    let share = floats.div_ceil(threads);
    let slices: Vec<&[f32]> = buffer.chunks(share.max(1)).collect();
    // About 512 MiB read per trial: tens of milliseconds.
    let passes = (512u64 << 20).div_ceil(size.max(1)).max(2);
    let per_trial = (share * 4) as f64 * passes as f64 * threads as f64;
    rate(threads, per_trial, |i| {
        if let Some(s) = slices.get(i) {
            for _ in 0..passes {
                read(s);
            }
        }
    })
}

/// The best rate over [`TRIALS`] of `count` units of work done by `job(i)` on each thread `i`
/// (after one untimed warm-up trial). A trial lasts from the first thread's start to the last
/// thread's end, each thread reading the clock itself: a coordinating thread that the OS
/// delays would otherwise time nothing.
fn rate(threads: usize, count: f64, job: impl Fn(usize) + Sync) -> f64 {
    let mut best = f64::INFINITY;
    for trial in 0..=TRIALS {
        let start = Barrier::new(threads);
        let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|i| {
                    let (start, job) = (&start, &job);
                    s.spawn(move || {
                        start.wait();
                        let t0 = Instant::now();
                        job(i);
                        (t0, Instant::now())
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let first = spans.iter().map(|s| s.0).min();
        let last = spans.iter().map(|s| s.1).max();
        if let (Some(first), Some(last), true) = (first, last, trial > 0) {
            best = best.min((last - first).as_secs_f64());
        }
    }
    count / best
}

/// The probe kernels, with the instruction sets chosen at run time.
mod simd {
    /// The instruction sets the probes use on this CPU.
    pub(super) fn isa() -> &'static str {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return "avx512f";
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return "avx2+fma";
            }
        }
        "none"
    }

    /// A probe kernel: one call does `per_call` units of work (multiply-adds, look-ups).
    pub(super) struct Kernel {
        /// Work per call.
        pub(super) per_call: f64,
        /// The kernel.
        pub(super) run: fn(),
    }

    /// The FMA kernel of the widest vectors the CPU has, if any.
    pub(super) fn fma_kernel() -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        {
            let (lanes, run): (f64, fn()) = match isa() {
                "avx512f" => (16.0, x86::fma_avx512_safe),
                "avx2+fma" => (8.0, x86::fma_avx2_safe),
                _ => return None,
            };
            Some(Kernel {
                per_call: x86::FMA_ITERS * 12.0 * lanes,
                run,
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    }

    /// The gather kernels the CPU can run (8-wide AVX2, 16-wide AVX-512); the faster counts.
    pub(super) fn gather_kernels() -> Vec<Kernel> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let per_call = x86::GATHER_CODES as f64;
            if isa() != "none" {
                out.push(Kernel {
                    per_call,
                    run: x86::gather_avx2_safe,
                });
            }
            if isa() == "avx512f" {
                out.push(Kernel {
                    per_call,
                    run: x86::gather_avx512_safe,
                });
            }
        }
        out
    }

    /// The read kernel (sums a slice with the widest vector loads the CPU has), if any.
    pub(super) fn read_kernel() -> Option<fn(&[f32])> {
        #[cfg(target_arch = "x86_64")]
        match isa() {
            "avx512f" => return Some(x86::read_avx512_safe),
            "avx2+fma" => return Some(x86::read_avx2_safe),
            _ => {}
        }
        None
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::asm;
        use std::arch::x86_64::{
            __m128i, __m256, __m512, _mm_loadl_epi64, _mm_loadu_si128, _mm256_add_ps,
            _mm256_cvtepu8_epi32, _mm256_fmadd_ps, _mm256_i32gather_ps, _mm256_set1_ps,
            _mm256_storeu_ps, _mm512_add_ps, _mm512_cvtepu8_epi32, _mm512_fmadd_ps,
            _mm512_i32gather_ps, _mm512_reduce_add_ps, _mm512_set1_ps,
        };
        use std::hint::black_box;
        use std::sync::OnceLock;

        /// Loop iterations of one FMA call (12 chains each).
        pub(super) const FMA_ITERS: f64 = 4096.0;
        /// Codes (look-ups) per gather call: 16 KiB, L1-resident with the 1 KiB table.
        pub(super) const GATHER_CODES: usize = 16 * 1024;

        /// Twelve independent chains `a ← a·m + c`, written out so that they stay in registers at
        /// any optimization level (xtask builds at opt-level 1).
        macro_rules! fma_chains {
            ($fma:ident, $set1:ident, $add:ident, $reduce:expr) => {{
                let (m, c) = ($set1(black_box(0.999_999)), $set1(black_box(1e-7)));
                let [mut a0, mut a1, mut a2, mut a3, mut a4, mut a5] = [$set1(1.0); 6];
                let [mut a6, mut a7, mut a8, mut a9, mut a10, mut a11] = [$set1(1.0); 6];
                for _ in 0..FMA_ITERS as usize {
                    a0 = $fma(a0, m, c);
                    a1 = $fma(a1, m, c);
                    a2 = $fma(a2, m, c);
                    a3 = $fma(a3, m, c);
                    a4 = $fma(a4, m, c);
                    a5 = $fma(a5, m, c);
                    a6 = $fma(a6, m, c);
                    a7 = $fma(a7, m, c);
                    a8 = $fma(a8, m, c);
                    a9 = $fma(a9, m, c);
                    a10 = $fma(a10, m, c);
                    a11 = $fma(a11, m, c);
                }
                let s = $add($add($add(a0, a1), $add(a2, a3)), $add($add(a4, a5), a6));
                let s = $add($add(s, $add(a7, a8)), $add($add(a9, a10), a11));
                black_box($reduce(s));
            }};
        }

        #[target_feature(enable = "avx512f")]
        fn fma_avx512() {
            fma_chains!(
                _mm512_fmadd_ps,
                _mm512_set1_ps,
                _mm512_add_ps,
                |s: __m512| { _mm512_reduce_add_ps(s) }
            );
        }

        #[target_feature(enable = "avx2,fma")]
        fn fma_avx2() {
            fma_chains!(
                _mm256_fmadd_ps,
                _mm256_set1_ps,
                _mm256_add_ps,
                |s: __m256| {
                    let mut out = [0f32; 8];
                    // SAFETY: `out` holds 8 f32.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
                    out.iter().sum::<f32>()
                }
            );
        }

        pub(super) fn fma_avx512_safe() {
            // SAFETY: chosen only when `isa()` detected AVX-512F.
            unsafe { fma_avx512() }
        }

        pub(super) fn fma_avx2_safe() {
            // SAFETY: chosen only when `isa()` detected AVX2 and FMA.
            unsafe { fma_avx2() }
        }

        /// Reads `data` with eight 32-byte loads per step (the tail of less than 256 bytes is
        /// skipped). Inline assembly: xtask builds at opt-level 1 with debug assertions, where
        /// the intrinsics' loads go through the stack and every pointer step is checked.
        #[target_feature(enable = "avx2")]
        fn read_avx2(data: &[f32]) {
            let (chunks, _) = data.as_chunks::<64>();
            let range = chunks.as_ptr_range();
            if range.is_empty() {
                return;
            }
            // SAFETY: reads 256 bytes per step from `range.start` up to `range.end`, all inside
            // `chunks`; writes only the declared ymm registers.
            unsafe {
                asm!(
                    "2:",
                    "vaddps ymm0, ymm0, ymmword ptr [{p}]",
                    "vaddps ymm1, ymm1, ymmword ptr [{p} + 32]",
                    "vaddps ymm2, ymm2, ymmword ptr [{p} + 64]",
                    "vaddps ymm3, ymm3, ymmword ptr [{p} + 96]",
                    "vaddps ymm4, ymm4, ymmword ptr [{p} + 128]",
                    "vaddps ymm5, ymm5, ymmword ptr [{p} + 160]",
                    "vaddps ymm6, ymm6, ymmword ptr [{p} + 192]",
                    "vaddps ymm7, ymm7, ymmword ptr [{p} + 224]",
                    "add {p}, 256",
                    "cmp {p}, {end}",
                    "jb 2b",
                    p = inout(reg) range.start => _,
                    end = in(reg) range.end,
                    out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                    out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                    options(nostack, readonly),
                );
            }
        }

        /// Reads `data` with eight 64-byte loads per step (the tail of less than 512 bytes is
        /// skipped); inline assembly as [`read_avx2`].
        #[target_feature(enable = "avx512f")]
        fn read_avx512(data: &[f32]) {
            let (chunks, _) = data.as_chunks::<128>();
            let range = chunks.as_ptr_range();
            if range.is_empty() {
                return;
            }
            // SAFETY: reads 512 bytes per step from `range.start` up to `range.end`, all inside
            // `chunks`; writes only the declared zmm registers.
            unsafe {
                asm!(
                    "2:",
                    "vaddps zmm0, zmm0, zmmword ptr [{p}]",
                    "vaddps zmm1, zmm1, zmmword ptr [{p} + 64]",
                    "vaddps zmm2, zmm2, zmmword ptr [{p} + 128]",
                    "vaddps zmm3, zmm3, zmmword ptr [{p} + 192]",
                    "vaddps zmm4, zmm4, zmmword ptr [{p} + 256]",
                    "vaddps zmm5, zmm5, zmmword ptr [{p} + 320]",
                    "vaddps zmm6, zmm6, zmmword ptr [{p} + 384]",
                    "vaddps zmm7, zmm7, zmmword ptr [{p} + 448]",
                    "add {p}, 512",
                    "cmp {p}, {end}",
                    "jb 2b",
                    p = inout(reg) range.start => _,
                    end = in(reg) range.end,
                    out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                    out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                    options(nostack, readonly),
                );
            }
        }

        pub(super) fn read_avx2_safe(data: &[f32]) {
            // SAFETY: chosen only when `isa()` detected AVX2 (and FMA).
            unsafe { read_avx2(data) }
        }

        pub(super) fn read_avx512_safe(data: &[f32]) {
            // SAFETY: chosen only when `isa()` detected AVX-512F.
            unsafe { read_avx512(data) }
        }

        /// A 256-entry table and pseudo-random byte codes, shared by every probe thread.
        fn gather_data() -> &'static ([f32; 256], Vec<u8>) {
            static DATA: OnceLock<([f32; 256], Vec<u8>)> = OnceLock::new();
            DATA.get_or_init(|| {
                let table = std::array::from_fn(|i| i as f32 * 1e-3);
                let mut s = 0x9E37_79B9_7F4A_7C15u64;
                let codes = (0..GATHER_CODES)
                    .map(|_| {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                        (s >> 56) as u8
                    })
                    .collect();
                (table, codes)
            })
        }

        /// Looks every code up in the table with 8-wide gathers, four chains of adds.
        #[target_feature(enable = "avx2")]
        fn gather_avx2(table: &[f32; 256], codes: &[u8]) -> f32 {
            let (chunks, _) = codes.as_chunks::<32>();
            let z = _mm256_set1_ps(0.0);
            let [mut s0, mut s1, mut s2, mut s3] = [z; 4];
            let t = table.as_ptr();
            for c in chunks {
                // SAFETY: each chunk holds 32 bytes (four loads of 8); every index is a byte,
                // `< 256 = table.len()`.
                unsafe {
                    let p = c.as_ptr();
                    let i0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast::<__m128i>()));
                    let i1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8).cast::<__m128i>()));
                    let i2 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(16).cast::<__m128i>()));
                    let i3 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(24).cast::<__m128i>()));
                    s0 = _mm256_add_ps(s0, _mm256_i32gather_ps::<4>(t, i0));
                    s1 = _mm256_add_ps(s1, _mm256_i32gather_ps::<4>(t, i1));
                    s2 = _mm256_add_ps(s2, _mm256_i32gather_ps::<4>(t, i2));
                    s3 = _mm256_add_ps(s3, _mm256_i32gather_ps::<4>(t, i3));
                }
            }
            let s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
            let mut out = [0f32; 8];
            // SAFETY: `out` holds 8 f32.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
            out.iter().sum()
        }

        /// Looks every code up in the table with 16-wide gathers, four chains of adds.
        #[target_feature(enable = "avx512f")]
        fn gather_avx512(table: &[f32; 256], codes: &[u8]) -> f32 {
            let (chunks, _) = codes.as_chunks::<64>();
            let z = _mm512_set1_ps(0.0);
            let [mut s0, mut s1, mut s2, mut s3] = [z; 4];
            let t = table.as_ptr();
            for c in chunks {
                // SAFETY: each chunk holds 64 bytes (four loads of 16); every index is a byte,
                // `< 256 = table.len()`.
                unsafe {
                    let p = c.as_ptr();
                    let i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast::<__m128i>()));
                    let i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(16).cast::<__m128i>()));
                    let i2 = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(32).cast::<__m128i>()));
                    let i3 = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(48).cast::<__m128i>()));
                    s0 = _mm512_add_ps(s0, _mm512_i32gather_ps::<4>(i0, t));
                    s1 = _mm512_add_ps(s1, _mm512_i32gather_ps::<4>(i1, t));
                    s2 = _mm512_add_ps(s2, _mm512_i32gather_ps::<4>(i2, t));
                    s3 = _mm512_add_ps(s3, _mm512_i32gather_ps::<4>(i3, t));
                }
            }
            _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)))
        }

        pub(super) fn gather_avx2_safe() {
            let (table, codes) = gather_data();
            // SAFETY: chosen only when `isa()` detected AVX2.
            black_box(unsafe { gather_avx2(table, codes) });
        }

        pub(super) fn gather_avx512_safe() {
            let (table, codes) = gather_data();
            // SAFETY: chosen only when `isa()` detected AVX-512F.
            black_box(unsafe { gather_avx512(table, codes) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_row_but_the_encoder_has_a_model() {
        for key in keys::RESULT_KEYS {
            let modelled = work_of(key).is_some();
            let target = crate::targets::target_of(key).is_some();
            let expected = target && key != "aqlm.encode.2x8.1024";
            assert_eq!(modelled, expected, "{key}");
        }
    }

    #[test]
    fn counts_match_the_issue() {
        // 2x8 GEMV: 4 MiB of codes and 4.2 M look-ups per token.
        let w = work_of("aqlm.forward.2x8.4096.t1").unwrap();
        assert_eq!(CODES, 4.0 * 1024.0 * 1024.0);
        assert_eq!(w.lookups, 4_194_304.0);
        // Rotation forward + backward: 3·N·d·b = 201 M multiply-adds.
        let w = work_of("ortho.rotate_fwd_bwd.neumann5.n512.d4096.b32").unwrap();
        assert_eq!(w.fmas, 201_326_592.0);
        // Training step: about two 64×4096×4096 products.
        let w = work_of("layer.train_step.2x8.4096.t64.b32").unwrap();
        let two = 2.0 * 64.0 * D * D;
        assert!(w.fmas > two && w.fmas < 1.05 * two, "{}", w.fmas);
    }

    #[test]
    fn limit_takes_the_binding_resource() {
        let rates = Rates {
            threads: 2,
            fma_per_s: Some(1e11),
            lookups_per_s: Some(1e10),
            bandwidth: vec![(1 << 20, 1e11), (1 << 30, 1e10)],
        };
        assert_eq!(rates.bandwidth_at(1000.0), Some(1e11));
        assert_eq!(rates.bandwidth_at(2e6), Some(1e10));
        assert_eq!(rates.bandwidth_at(1e12), Some(1e10));
        let w = Work {
            bytes: 1e9,
            fmas: 1e9,
            lookups: 0.0,
            why: "",
        };
        assert_eq!(limit(&w, &rates), Some((0.1, Bound::Memory)));
        let w = Work {
            bytes: 1e3,
            fmas: 1e9,
            lookups: 1e9,
            why: "",
        };
        assert_eq!(limit(&w, &rates), Some((0.1, Bound::Lookups)));
        let none = Rates::default();
        assert_eq!(limit(&w, &none), None);
    }

    #[test]
    fn best_keeps_the_faster_reading() {
        let a = Rates {
            threads: 2,
            fma_per_s: Some(1.0),
            lookups_per_s: None,
            bandwidth: vec![(4096, 2.0)],
        };
        let b = Rates {
            threads: 2,
            fma_per_s: Some(3.0),
            lookups_per_s: Some(1.0),
            bandwidth: vec![(4096, 1.0), (8192, 5.0)],
        };
        let c = a.best(&b);
        assert_eq!(c.fma_per_s, Some(3.0));
        assert_eq!(c.lookups_per_s, Some(1.0));
        assert_eq!(c.bandwidth, [(4096, 2.0), (8192, 5.0)]);
    }

    #[test]
    fn footprints_cover_every_row() {
        let sizes = footprints(2);
        assert!(sizes.windows(2).all(|w| w[0] < w[1]));
        for k in keys::RESULT_KEYS {
            if let Some(w) = work_of(k) {
                assert!(sizes.iter().any(|&s| s as f64 >= w.bytes), "{k}");
            }
        }
    }

    /// Prints this machine's readings: `cargo test -p xtask print_probes -- --ignored --nocapture`.
    #[test]
    #[ignore = "prints the probe readings of this machine"]
    fn print_probes() {
        let t0 = std::time::Instant::now();
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let p = Probes::measure(threads);
        eprintln!("{p:#?}\nprobed in {:.1} s", t0.elapsed().as_secs_f64());
    }

    /// The probes run and give plausible rates (at least 1 GB/s, 1 G multiply-adds and 100 M
    /// look-ups per second on any CPU with AVX2).
    #[test]
    fn probes_measure_something() {
        let r = probe(1, &[1 << 20]);
        if simd::isa() == "none" {
            assert!(r.fma_per_s.is_none() && r.bandwidth.is_empty());
            return;
        }
        assert!(r.fma_per_s.unwrap() > 1e9, "{r:?}");
        assert!(r.lookups_per_s.unwrap() > 1e8, "{r:?}");
        assert!(r.bandwidth[0].1 > 1e9, "{r:?}");
    }
}
