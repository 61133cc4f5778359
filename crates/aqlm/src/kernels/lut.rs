//! Lookup-table kernels (the port of aqlm's numba `numba_gemm_lut`, made deterministic).
//!
//! Forward: for input group `j`, `lut[m][a][c][t] = Σ_{b asc} cb[m][c][a][b] · x[t, j·ig + b]`
//! (for one token in fused multiply-adds, see [`build_t1`]),
//! then `acc[o·og + a][t] += lut[m][a][codes[o][j][m]][t]` for `j` ascending, `m` ascending, and
//! finally `y = acc · s_o`. The tables are built one block of input groups at a time (block
//! ≤ 1 MiB, so it stays in L2), each block shared by all output-row tasks.
//!
//! Input gradient: for input group `j`, the scaled upstream gradient is scattered by code,
//! `acc[m][c][a][t] = Σ_{o asc, codes[o][j][m] = c} s_o · dy[t, o·og + a]`, then
//! `dx[t, j·ig + b] = Σ_{m asc} Σ_{c asc} Σ_{a asc} acc[m][c][a][t] · cb[m][c][a][b]`.
//!
//! Measured for the forward of 16 and 64 tokens (4096² 2x8, 2 threads) and not kept, since the
//! decode kernels the layer picks there stay faster (about 3.9 ms at 16 tokens, 9.1 at 64): an
//! AVX-512 gather of one 64-byte load per code and sixteen tokens, 8.2 → 6.3 ms at 16 tokens and
//! 44 → 34 ms at 64; each thread keeping one input group's tables in L1 and streaming its rows'
//! sums through them (codes regrouped by input group), 4.1–4.3 ms and 19–21 ms. A look-up of a
//! 64-byte table entry from L2 (1 MiB of tables, one thread) took about 5 cycles on this machine.
//!
//! One token (`2^B = 256`, `og = 1`, the 2x8 GEMV): the codes are read in the pass layout of
//! [`AqlmLayer::codes_u8_by_pass`], front to back, two 16-byte loads per table and 32 rows.
//! With the earlier layout (blocks of 8 rows × all tables, four 8-byte loads per table and 32
//! rows, 256-byte runs 8 KiB apart, hence a software prefetch two row groups ahead) the 4096²
//! forward took 776–811 µs on 2 threads and 1.42–1.48 ms on one; in passes, 693–739 µs and
//! 1.25–1.26 ms (medians of 200 calls, three alternating runs), without any software prefetch:
//! generating with SmolLM2-135M 2x8 (128 greedy tokens, codes cold), 57.2–60.0 tokens/s before,
//! 56.4–61.1 after (four alternating runs), the hardware prefetchers following the sequential
//! runs. A microbenchmark of the bare gather loop (4.2 M look-ups, one thread) reads 0.80–0.86
//! ms: the 16-lane gather, about ten cycles per sixteen look-ups here, is the limit.

use faer::{Mat, MatRef};
use rayon::prelude::*;

use super::layout::{by_input_groups, feature_major, from_feature_major};
use super::simd::multiversion;
#[cfg(target_arch = "x86_64")]
use super::simd::{Isa, Level};
use crate::layer::{AqlmLayer, PASS_ROWS, PASS_TABLES, ROW_INTERLEAVE};

/// Target size of one block of tables, in `f32` (1 MiB, half an L2).
const LUT_BLOCK_FLOATS: usize = 1 << 18;
/// Output rows per gather task (rounded to whole output groups).
const ROWS_PER_TASK: usize = 128;
/// Output rows per task of the one-token `2^B = 256` gather (a multiple of [`PASS_ROWS`]):
/// each block of tables is reused by this many rows.
const T1_ROWS_PER_TASK: usize = 512;
/// Input groups per scatter task.
const GROUPS_PER_TASK: usize = 4;

thread_local! {
    /// The tables of [`forward`], kept between calls on the calling thread (at most a block,
    /// [`LUT_BLOCK_FLOATS`], or one group's tables if larger): generating a token calls
    /// `forward` 150 times for SmolLM2, and allocating and zero-filling the tables each time
    /// took 3% of a token. A call takes the buffer out and puts it back, so a call nested on
    /// the same thread (rayon may run another task while one waits) allocates its own.
    static LUT_SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Floats in the tables of one input group: `M · og · 2^B · tokens`.
pub(crate) fn lut_floats_per_group(layer: &AqlmLayer, tokens: usize) -> usize {
    let s = &layer.scheme;
    s.num_codebooks * s.out_group_size * s.codebook_size() * tokens
}

/// Input groups per block of tables (at least 1). For the one-token gather (`2^B = 256`,
/// `og = 1`) a block holds whole passes: its `M` tables per group add up to a multiple of
/// [`PASS_TABLES`] (or it is the whole layer).
pub(crate) fn block_groups(layer: &AqlmLayer, tokens: usize) -> usize {
    let jb = LUT_BLOCK_FLOATS / lut_floats_per_group(layer, tokens).max(1);
    let s = &layer.scheme;
    let step = if tokens == 1 && s.out_group_size == 1 && s.codebook_size() == 256 {
        // The smallest group count whose tables fill whole passes (at most `PASS_TABLES`).
        (1..PASS_TABLES)
            .find(|g| (g * s.num_codebooks).is_multiple_of(PASS_TABLES))
            .unwrap_or(PASS_TABLES)
    } else {
        1
    };
    (jb / step * step).max(step).min(layer.in_groups()).max(1)
}

multiversion! {
max = avx512;
/// One token's table of one codebook (and output-group row `a`) for one input group:
/// `e[c] = fma(rows[(ig−1)·k + c], xs[ig−1], … fma(rows[c], xs[0], 0))`, one fused multiply-add
/// per `b` in ascending order (`rows` is that codebook's `[b][c]` block of
/// [`AqlmLayer::codebooks_by_entry`], `k = e.len()` entries per row). Vectorized over entries, a
/// register tile of 128 at a time, so each entry is summed in registers and stored once. Fused
/// in every build (software `fma` in the portable one), so every build gives the same bits.
/// (With separate multiplies and adds in 256-bit registers the build took 12% of the samples of
/// a token generated with SmolLM2 2x8; 9% now, most of it waiting for the codebooks.)
fn build_t1(rows: &[f32], xs: &[f32], e: &mut [f32]) {
    const TILE: usize = 128;
    let k = e.len();
    let (tiles, rest) = e.as_chunks_mut::<TILE>();
    for (ti, dst) in tiles.iter_mut().enumerate() {
        let mut acc = [0f32; TILE];
        for (b, &xb) in xs.iter().enumerate() {
            let (row, _) = rows[b * k + ti * TILE..].as_chunks::<TILE>();
            for (a, &w) in acc.iter_mut().zip(&row[0]) {
                *a = w.mul_add(xb, *a);
            }
        }
        *dst = acc;
    }
    let c0 = k - rest.len();
    rest.fill(0.0);
    for (b, &xb) in xs.iter().enumerate() {
        for (d, &w) in rest.iter_mut().zip(&rows[b * k + c0..]) {
            *d = w.mul_add(xb, *d);
        }
    }
}
}

multiversion! {
max = avx2;
/// Builds the tables of input group `j` into `lut` (`[m][a][c][t]`; for one token by
/// [`build_t1`]).
fn build(layer: &AqlmLayer, xf: &[f32], t: usize, j: usize, lut: &mut [f32]) {
    let s = &layer.scheme;
    let (m, k, og, ig) = (
        s.num_codebooks,
        s.codebook_size(),
        s.out_group_size,
        s.in_group_size,
    );
    if t == 1 {
        let cbt = layer.codebooks_by_entry();
        let xs = &xf[j * ig..][..ig];
        for (ma, e) in lut.chunks_exact_mut(k).take(m * og).enumerate() {
            build_t1(&cbt[ma * ig * k..][..ig * k], xs, e);
        }
        return;
    }
    lut.fill(0.0);
    if og == 1 && t.is_multiple_of(8) {
        // Tokens in register tiles of 8: each table entry is summed in registers and stored
        // once (same order: from 0, `b` ascending). With og = 1 the tables `[m][c][t]` follow
        // the codebook entries `[m][c]` one for one.
        let (x8, _) = xf.as_chunks::<8>(); // x8[(j·ig + b)·t/8 + tile]
        let (l8, _) = lut.as_chunks_mut::<8>();
        let tiles = t / 8;
        for (e, dst) in layer.codebooks.chunks_exact(ig).zip(l8.chunks_exact_mut(tiles)) {
            for (tile, d) in dst.iter_mut().enumerate() {
                let mut acc = [0f32; 8];
                for (b, &wb) in e.iter().enumerate() {
                    let xv = &x8[(j * ig + b) * tiles + tile];
                    for l in 0..8 {
                        acc[l] += wb * xv[l];
                    }
                }
                *d = acc;
            }
        }
    } else {
        // Vectorize over tokens.
        for mm in 0..m {
            for a in 0..og {
                for c in 0..k {
                    let e = &mut lut[((mm * og + a) * k + c) * t..][..t];
                    let w = &layer.codebooks[((mm * k + c) * og + a) * ig..][..ig];
                    for (b, &wb) in w.iter().enumerate() {
                        for (d, &xv) in e.iter_mut().zip(&xf[(j * ig + b) * t..][..t]) {
                            *d += wb * xv;
                        }
                    }
                }
            }
        }
    }
}
}

multiversion! {
max = avx2;
/// Adds the contributions of input groups `j0..j1` (tables in `lut`) to the accumulators of
/// output groups starting at `o0` (`acc [rows][t]`).
fn gather(
    layer: &AqlmLayer,
    lut: &[f32],
    t: usize,
    j0: usize,
    j1: usize,
    o0: usize,
    acc: &mut [f32],
) {
    let s = &layer.scheme;
    let (m, k, og) = (s.num_codebooks, s.codebook_size(), s.out_group_size);
    let n_ig = layer.in_groups();
    let per_j = m * og * k * t;
    for (go, acc_o) in acc.chunks_mut(og * t).enumerate() {
        let o = o0 + go;
        let codes = &layer.codes[(o * n_ig + j0) * m..(o * n_ig + j1) * m];
        for a in 0..og {
            if t == 1 {
                let mut sum = acc_o[a];
                for (dj, cj) in codes.chunks_exact(m).enumerate() {
                    let lj = &lut[dj * per_j..][..per_j];
                    for (mm, &c) in cj.iter().enumerate() {
                        sum += lj[(mm * og + a) * k + usize::from(c)];
                    }
                }
                acc_o[a] = sum;
            } else {
                let dst = &mut acc_o[a * t..(a + 1) * t];
                for (dj, cj) in codes.chunks_exact(m).enumerate() {
                    let lj = &lut[dj * per_j..][..per_j];
                    for (mm, &c) in cj.iter().enumerate() {
                        let src = &lj[((mm * og + a) * k + usize::from(c)) * t..][..t];
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}
}

/// Where the one-token gather finds its codes: [`AqlmLayer::codes_u8_by_pass`] (`n_tab` tables
/// per row, `n_groups` groups of [`PASS_ROWS`] rows).
#[derive(Clone, Copy)]
struct PassCodes<'a> {
    codes: &'a [u8],
    n_tab: usize,
    n_groups: usize,
}

impl<'a> PassCodes<'a> {
    fn new(layer: &'a AqlmLayer) -> Self {
        Self {
            codes: layer.codes_u8_by_pass(),
            n_tab: layer.in_groups() * layer.scheme.num_codebooks,
            n_groups: layer.out_groups().div_ceil(PASS_ROWS),
        }
    }

    /// The codes of row group `g` in the pass that starts at table `first` (a multiple of
    /// [`PASS_TABLES`]): entry `i` holds table `first + i`'s codes of the group's 32 rows.
    fn group(&self, first: usize, g: usize) -> &'a [[u8; PASS_ROWS]] {
        debug_assert!(first.is_multiple_of(PASS_TABLES) && first < self.n_tab);
        let len = (self.n_tab - first).min(PASS_TABLES);
        let start = (first * self.n_groups + g * len) * PASS_ROWS;
        self.codes[start..start + len * PASS_ROWS].as_chunks().0
    }
}

/// The passes of the one-token gather over the tables `tables[i − i0]`: each pass is
/// [`PASS_TABLES`] consecutive tables (32 KiB, so they stay in L1), from `i0` (a multiple of
/// [`PASS_TABLES`]), paired with the first table's index.
fn passes(tables: &[[f32; 256]], i0: usize) -> impl Iterator<Item = (usize, &[[f32; 256]])> {
    assert!(
        i0.is_multiple_of(PASS_TABLES),
        "a block of tables starts at a pass"
    );
    tables
        .chunks(PASS_TABLES)
        .enumerate()
        .map(move |(p, tabs)| (i0 + p * PASS_TABLES, tabs))
}

/// Runs `add(sums, codes)` for every pass and every group of [`PASS_ROWS`] rows of `acc`
/// (output rows `o0..`, `o0` a multiple of [`PASS_ROWS`]), `sums` holding the group's running
/// sums (a partial last group is padded; its padding is dropped).
#[inline(always)]
fn by_pass_and_group(
    codes: PassCodes<'_>,
    tables: &[[f32; 256]],
    i0: usize,
    o0: usize,
    acc: &mut [f32],
    mut add: impl FnMut(&mut [f32; PASS_ROWS], &[[f32; 256]], &[[u8; PASS_ROWS]]),
) {
    debug_assert!(o0.is_multiple_of(PASS_ROWS));
    for (first, tabs) in passes(tables, i0) {
        for (gi, accr) in acc.chunks_mut(PASS_ROWS).enumerate() {
            let rows = codes.group(first, o0 / PASS_ROWS + gi);
            let mut sums = [0f32; PASS_ROWS];
            sums[..accr.len()].copy_from_slice(accr);
            add(&mut sums, tabs, rows);
            let n = accr.len();
            accr.copy_from_slice(&sums[..n]);
        }
    }
}

multiversion! {
max = avx2;
/// One-token fast path for `2^B = 256`, `og = 1`: adds the contributions of the tables
/// `tables[i − i0]` (`i = j·M + m`) to `acc` (output rows `o0..`, `o0` a multiple of
/// [`PASS_ROWS`]).
///
/// The tables are visited in passes of [`PASS_TABLES`] (32 KiB, so they stay in L1) and, per
/// pass, 32 rows at a time, so 32 independent sums interleave; the codes are those of
/// [`AqlmLayer::codes_u8_by_pass`], read front to back. Per row the tables are still added in
/// ascending `i`, the order of [`gather`].
fn gather_t1_portable(codes: PassCodes<'_>, tables: &[[f32; 256]], i0: usize, o0: usize, acc: &mut [f32]) {
    by_pass_and_group(codes, tables, i0, o0, acc, |sums, tabs, rows| {
        for (tab, c) in tabs.iter().zip(rows) {
            for r in 0..PASS_ROWS {
                sums[r] += tab[usize::from(c[r])];
            }
        }
    });
}
}

/// [`gather_t1_portable`], with the hardware gather when the CPU has it: one `vgatherdps` adds
/// table `i` to the sums of 16 (AVX-512) or 8 (AVX2) rows of a group, lane `r` = row `r`; the
/// same additions in the same order as the portable loop, so the same bits. (LLVM vectorizes
/// the portable loop into scalar loads and shuffles per table, which saturates the shuffle port.)
fn gather_t1(codes: PassCodes<'_>, tables: &[[f32; 256]], i0: usize, o0: usize, acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match Isa::detect().level() {
        Level::Avx512 => {
            // SAFETY: the token proves the CPU supports AVX-512F and AVX2.
            unsafe { gather_t1_avx512(codes, tables, i0, o0, acc) };
            return;
        }
        Level::Avx2 => {
            // SAFETY: the token proves the CPU supports AVX2.
            unsafe { gather_t1_avx2(codes, tables, i0, o0, acc) };
            return;
        }
        Level::Portable => {}
    }
    gather_t1_portable(codes, tables, i0, o0, acc);
}

/// The AVX-512 body of [`gather_t1`]: per table, two 16-byte loads of codes and two 16-lane
/// gathers advance the 32 rows of a group (two independent chains of additions).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
fn gather_t1_avx512(
    codes: PassCodes<'_>,
    tables: &[[f32; 256]],
    i0: usize,
    o0: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm512_add_ps, _mm512_cvtepu8_epi32, _mm512_i32gather_ps,
        _mm512_loadu_ps, _mm512_storeu_ps,
    };
    by_pass_and_group(codes, tables, i0, o0, acc, |sums, tabs, rows| {
        // SAFETY: `sums` holds 32 f32 and each code entry 32 bytes; every index is a byte, so
        // `< 256 = tab.len()`.
        unsafe {
            let mut v0 = _mm512_loadu_ps(sums.as_ptr());
            let mut v1 = _mm512_loadu_ps(sums.as_ptr().add(16));
            for (tab, c) in tabs.iter().zip(rows) {
                let c = c.as_ptr().cast::<__m128i>();
                let i0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(c));
                let i1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(c.add(1)));
                v0 = _mm512_add_ps(v0, _mm512_i32gather_ps::<4>(i0, tab.as_ptr()));
                v1 = _mm512_add_ps(v1, _mm512_i32gather_ps::<4>(i1, tab.as_ptr()));
            }
            _mm512_storeu_ps(sums.as_mut_ptr(), v0);
            _mm512_storeu_ps(sums.as_mut_ptr().add(16), v1);
        }
    });
}

/// The AVX2 body of [`gather_t1`]: per table, four 8-lane gathers advance the 32 rows of a
/// group (four independent chains of additions).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gather_t1_avx2(
    codes: PassCodes<'_>,
    tables: &[[f32; 256]],
    i0: usize,
    o0: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::{
        __m128i, __m256, _mm_loadl_epi64, _mm256_add_ps, _mm256_cvtepu8_epi32, _mm256_i32gather_ps,
        _mm256_loadu_ps, _mm256_storeu_ps,
    };
    by_pass_and_group(codes, tables, i0, o0, acc, |sums, tabs, rows| {
        // SAFETY: `sums` holds 32 f32 and each code entry 32 bytes; every index is a byte, so
        // `< 256 = tab.len()`.
        unsafe {
            let mut v: [__m256; 4] =
                std::array::from_fn(|q| _mm256_loadu_ps(sums.as_ptr().add(8 * q)));
            for (tab, c) in tabs.iter().zip(rows) {
                for (q, vq) in v.iter_mut().enumerate() {
                    let cq = _mm_loadl_epi64(c.as_ptr().add(8 * q).cast::<__m128i>());
                    let iq = _mm256_cvtepu8_epi32(cq);
                    *vq = _mm256_add_ps(*vq, _mm256_i32gather_ps::<4>(tab.as_ptr(), iq));
                }
            }
            for (q, vq) in v.iter().enumerate() {
                _mm256_storeu_ps(sums.as_mut_ptr().add(8 * q), *vq);
            }
        }
    });
}

multiversion! {
max = avx2;
/// Fast path for `2^B = 256`, `og = 1` and a token count that is a multiple of 8: eight rows
/// at a time (codes from [`AqlmLayer::codes_u8_interleaved`], `o0` a multiple of 8), tokens
/// in register tiles of 8, so the sums stay in registers and sixty-four independent chains
/// interleave. Per (row, token) the order is the same as [`gather`]'s.
fn gather_k256_t8(
    codes: &[u8],
    lut: &[f32],
    t: usize,
    n_tab: usize,
    i0: usize,
    span: usize,
    o0: usize,
    acc: &mut [f32],
) {
    const R: usize = ROW_INTERLEAVE;
    let (c8, _) = codes.as_chunks::<R>();
    let (tables, _) = lut.as_chunks::<8>(); // tables[(i·256 + c)·t/8 + tile]
    let tiles = t / 8;
    for (bi, accr) in acc.chunks_mut(R * t).enumerate() {
        let rows = &c8[(o0 / R + bi) * n_tab + i0..][..span];
        let n_rows = accr.len() / t;
        for tile in 0..tiles {
            let mut sum = [[0f32; 8]; R];
            for r in 0..n_rows {
                sum[r].copy_from_slice(&accr[r * t + tile * 8..][..8]);
            }
            for (i, c) in rows.iter().enumerate() {
                for r in 0..R {
                    let src = &tables[(i * 256 + usize::from(c[r])) * tiles + tile];
                    for l in 0..8 {
                        sum[r][l] += src[l];
                    }
                }
            }
            for r in 0..n_rows {
                accr[r * t + tile * 8..][..8].copy_from_slice(&sum[r]);
            }
        }
    }
}
}

/// `x·Wᵀ` (no bias).
pub(crate) fn forward(layer: &AqlmLayer, x: MatRef<'_, f32>) -> Mat<f32> {
    let t = x.nrows();
    let og = layer.scheme.out_group_size;
    let n_ig = layer.in_groups();
    let xf = feature_major(x);
    let per_j = lut_floats_per_group(layer, t);
    let jb = block_groups(layer, t);
    let groups = (ROWS_PER_TASK / og).max(1);
    let k256 = og == 1 && layer.scheme.codebook_size() == 256;
    let fast = k256 && t == 1;
    let fast8 = k256 && t.is_multiple_of(8);
    let codes_u8: &[u8] = if fast8 {
        layer.codes_u8_interleaved()
    } else {
        &[]
    };
    let pass_codes = fast.then(|| PassCodes::new(layer));
    let m = layer.scheme.num_codebooks;
    let n_tab = n_ig * m;
    let mut acc = vec![0f32; layer.out_features * t];
    // Every entry a block reads, `build` writes first: the scratch needs no zeroing.
    let mut lut = LUT_SCRATCH.take();
    if lut.len() < jb * per_j {
        lut.resize(jb * per_j, 0.0);
    }
    let mut j0 = 0;
    while j0 < n_ig {
        let j1 = (j0 + jb).min(n_ig);
        let block = &mut lut[..(j1 - j0) * per_j];
        block
            .par_chunks_mut(per_j)
            .enumerate()
            .for_each(|(dj, lj)| build(layer, &xf, t, j0 + dj, lj));
        let block = &*block;
        if let Some(pc) = pass_codes {
            let (tables, _) = block.as_chunks::<256>();
            acc.par_chunks_mut(T1_ROWS_PER_TASK)
                .enumerate()
                .for_each(|(ci, a)| gather_t1(pc, tables, j0 * m, ci * T1_ROWS_PER_TASK, a));
        } else if fast8 {
            let span = (j1 - j0) * m;
            acc.par_chunks_mut(groups * t)
                .enumerate()
                .for_each(|(ci, a)| {
                    gather_k256_t8(codes_u8, block, t, n_tab, j0 * m, span, ci * groups, a)
                });
        } else {
            acc.par_chunks_mut(groups * og * t)
                .enumerate()
                .for_each(|(ci, a)| gather(layer, block, t, j0, j1, ci * groups, a));
        }
        j0 = j1;
    }
    for (r, row) in acc.chunks_mut(t).enumerate() {
        let s = layer.scales[r / og];
        for v in row {
            *v *= s;
        }
    }
    LUT_SCRATCH.set(lut);
    from_feature_major(&acc, t, layer.out_features)
}

/// `dy·W`.
pub(crate) fn backward(layer: &AqlmLayer, dy: MatRef<'_, f32>) -> Mat<f32> {
    by_input_groups(layer, dy, GROUPS_PER_TASK, scatter_task)
}

multiversion! {
max = avx2;
/// Input gradient of input groups `j0..` into `chunk` (`[j][b][t]`).
fn scatter_task(
    layer: &AqlmLayer,
    sdy: &[f32],
    codes_t: &[u16],
    t: usize,
    j0: usize,
    chunk: &mut [f32],
) {
    let s = &layer.scheme;
    let (m, k, og, ig) = (s.num_codebooks, s.codebook_size(), s.out_group_size, s.in_group_size);
    let n_og = layer.out_groups();
    let mut acc = vec![0f32; m * k * og * t];
    for (dj, dxj) in chunk.chunks_mut(ig * t).enumerate() {
        let j = j0 + dj;
        acc.fill(0.0);
        let codes = &codes_t[j * n_og * m..(j + 1) * n_og * m];
        for (o, co) in codes.chunks_exact(m).enumerate() {
            for a in 0..og {
                let src = &sdy[(o * og + a) * t..][..t];
                for (mm, &c) in co.iter().enumerate() {
                    let dst = &mut acc[((mm * k + usize::from(c)) * og + a) * t..][..t];
                    if t.is_multiple_of(8) {
                        let (d8, _) = dst.as_chunks_mut::<8>();
                        let (s8, _) = src.as_chunks::<8>();
                        for (d, s) in d8.iter_mut().zip(s8) {
                            for l in 0..8 {
                                d[l] += s[l];
                            }
                        }
                    } else {
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        }
        if ig == 8 && t.is_multiple_of(8) {
            // Register-tiled contraction: 8 inputs × 8 tokens stay in registers; same order
            // (entries e ascending, from 0) as the general loop below.
            let tiles = t / 8;
            let (acc8, _) = acc.as_chunks::<8>();
            let (cb8, _) = layer.codebooks.as_chunks::<8>();
            for tile in 0..tiles {
                let mut d = [[0f32; 8]; 8];
                for (e, w) in cb8[..acc8.len() / tiles].iter().enumerate() {
                    let v = &acc8[e * tiles + tile];
                    for b in 0..8 {
                        for l in 0..8 {
                            d[b][l] += w[b] * v[l];
                        }
                    }
                }
                for b in 0..8 {
                    dxj[b * t + tile * 8..][..8].copy_from_slice(&d[b]);
                }
            }
            continue;
        }
        for (e, src) in acc.chunks_exact(t).enumerate() {
            // e = (mm·k + c)·og + a; its codebook row is cb[mm][c][a][..ig].
            let w = &layer.codebooks[e * ig..][..ig];
            for (b, &wb) in w.iter().enumerate() {
                for (d, &v) in dxj[b * t..(b + 1) * t].iter_mut().zip(src) {
                    *d += wb * v;
                }
            }
        }
    }
}
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::kernels::tests::{random_layer, random_mat, rel_err};

    /// The one-token tables (register tiles of entries) are the documented sums bit for bit:
    /// `lut[m][a][c] = Σ_{b asc} cb[m][c][a][b]·x[j·ig + b]` from 0, for codebooks narrower and
    /// wider than a tile and for every input group.
    #[test]
    fn one_token_tables_are_the_documented_sums() {
        let mut rng = StdRng::seed_from_u64(11);
        for (m, nbits, ig, og) in [(2, 8, 8, 1), (1, 4, 8, 1), (3, 7, 3, 2), (1, 10, 4, 1)] {
            let layer = random_layer(&mut rng, m, nbits, ig, og, 3, 5, false);
            let x: Vec<f32> = (0..layer.in_features)
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let k = layer.scheme.codebook_size();
            let mut lut = vec![f32::NAN; lut_floats_per_group(&layer, 1)];
            for j in 0..layer.in_groups() {
                build(&layer, &x, 1, j, &mut lut);
                for mm in 0..m {
                    for a in 0..og {
                        for c in 0..k {
                            let e = &layer.codebooks[((mm * k + c) * og + a) * ig..][..ig];
                            let mut want = 0f32;
                            for (b, &w) in e.iter().enumerate() {
                                want = w.mul_add(x[j * ig + b], want);
                            }
                            let got = lut[(mm * og + a) * k + c];
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{m}x{nbits} j{j} m{mm} a{a} c{c}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A one-token forward over several blocks of tables, with `M = 3` (so a block's groups are
    /// rounded to whole passes: 341 → 320), matches the decoded product.
    #[test]
    fn one_token_blocks_start_at_passes() {
        let mut rng = StdRng::seed_from_u64(3);
        let layer = random_layer(&mut rng, 3, 8, 8, 1, 700, 45, false);
        assert_eq!(block_groups(&layer, 1), 320);
        let x = random_mat(&mut rng, 1, layer.in_features);
        let want = &x * layer.decode().transpose();
        let y = forward(&layer, x.as_ref());
        assert!(rel_err(&y, &want) < 2e-6);
    }

    /// The pass layout holds every code where the documentation puts it, 0 past the last row.
    #[test]
    fn codes_by_pass_follow_the_documented_layout() {
        let mut rng = StdRng::seed_from_u64(5);
        for (m, n_ig, n_og) in [(2, 35, 77), (1, 32, 32), (3, 11, 5)] {
            let layer = random_layer(&mut rng, m, 8, 8, 1, n_ig, n_og, false);
            let (n, groups) = (n_ig * m, n_og.div_ceil(PASS_ROWS));
            let codes = layer.codes_u8_by_pass();
            assert_eq!(codes.len(), groups * PASS_ROWS * n);
            for o in 0..groups * PASS_ROWS {
                for i in 0..n {
                    let (p, g, r) = (i / PASS_TABLES, o / PASS_ROWS, o % PASS_ROWS);
                    let len = (n - PASS_TABLES * p).min(PASS_TABLES);
                    let at = PASS_TABLES * p * groups * PASS_ROWS
                        + g * len * PASS_ROWS
                        + (i % PASS_TABLES) * PASS_ROWS
                        + r;
                    let want = if o < n_og {
                        layer.codes[o * n + i] as u8
                    } else {
                        0
                    };
                    assert_eq!(codes[at], want, "{m} codebooks, row {o}, table {i}");
                }
            }
        }
    }

    /// The hardware-gather one-token path adds exactly what the portable loop adds, in the same
    /// order: identical bits, including a partial last group of rows, a partial last pass and a
    /// block of tables that starts at a later pass.
    #[test]
    fn t1_gather_matches_the_portable_loop_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(7);
        // Fewer rows than one group, whole groups, whole groups and a partial one.
        for n_og in [21usize, 64, 77] {
            // 70 tables: passes of 32, 32 and 6.
            let layer = random_layer(&mut rng, 2, 8, 8, 1, 35, n_og, false);
            let pc = PassCodes::new(&layer);
            let tables: Vec<[f32; 256]> = (0..pc.n_tab)
                .map(|_| std::array::from_fn(|_| rng.random_range(-0.5f32..0.5)))
                .collect();
            let start: Vec<f32> = (0..n_og).map(|i| i as f32 * 0.25).collect();
            for i0 in [0, PASS_TABLES] {
                let tabs = &tables[i0..];
                let mut want = start.clone();
                gather_t1_portable(pc, tabs, i0, 0, &mut want);
                let same = |got: &[f32]| {
                    got.iter()
                        .zip(&want)
                        .all(|(x, y)| x.to_bits() == y.to_bits())
                };
                let mut got = start.clone();
                gather_t1(pc, tabs, i0, 0, &mut got);
                assert!(same(&got), "dispatched, {n_og} rows, from table {i0}");
                // Every build this CPU runs, each from its own entry point.
                #[cfg(target_arch = "x86_64")]
                {
                    let level = Isa::detect().level();
                    if level >= Level::Avx2 {
                        let mut got = start.clone();
                        // SAFETY: the CPU supports AVX2 (checked).
                        unsafe { gather_t1_avx2(pc, tabs, i0, 0, &mut got) };
                        assert!(same(&got), "AVX2, {n_og} rows, from table {i0}");
                    }
                    if level >= Level::Avx512 {
                        let mut got = start.clone();
                        // SAFETY: the CPU supports AVX-512F and AVX2 (checked).
                        unsafe { gather_t1_avx512(pc, tabs, i0, 0, &mut got) };
                        assert!(same(&got), "AVX-512, {n_og} rows, from table {i0}");
                    }
                }
            }
            // The portable loop is the documented order: table by table, ascending.
            let mut want = start.clone();
            gather_t1_portable(pc, &tables, 0, 0, &mut want);
            for (o, w) in want.iter().enumerate() {
                let mut sum = start[o];
                for (i, tab) in tables.iter().enumerate() {
                    sum += tab[usize::from(layer.codes[o * pc.n_tab + i] as u8)];
                }
                assert_eq!(w.to_bits(), sum.to_bits(), "row {o}");
            }
        }
    }
}
