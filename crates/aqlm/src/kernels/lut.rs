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

use faer::{Mat, MatRef};
use rayon::prelude::*;

use super::layout::{by_input_groups, feature_major, from_feature_major};
use super::simd::multiversion;
#[cfg(target_arch = "x86_64")]
use super::simd::{Isa, Level, prefetch_range};
use crate::layer::{AqlmLayer, ROW_INTERLEAVE};

/// Target size of one block of tables, in `f32` (1 MiB, half an L2).
const LUT_BLOCK_FLOATS: usize = 1 << 18;
/// Output rows per gather task (rounded to whole output groups).
const ROWS_PER_TASK: usize = 128;
/// Output rows per task of the one-token `2^B = 256` gather (a multiple of
/// [`ROW_INTERLEAVE`]): each block of tables is reused by this many rows.
const T1_ROWS_PER_TASK: usize = 512;
/// Tables (of 256 `f32`) per pass of the one-token gather: 32 KiB, within L1.
const T1_TABLES_PER_PASS: usize = 32;
/// Groups of 32 rows ahead whose codes the AVX-512 one-token gather prefetches. While generating,
/// a layer's codes come from memory once per token, in chunks of 256 bytes per row block and pass
/// (one every `8·n_tab` bytes), which the hardware prefetchers do not follow: SmolLM2-135M 2x8,
/// 128 greedy tokens, 2 threads, alternating runs, 53.2–56.4 tokens/s without, 58.2–62.0 one
/// group ahead, 59.7–61.4 two (the 4096² bench, whose codes stay in cache: 694–739 against
/// 711–724 µs).
const T1_PREFETCH_GROUPS: usize = 2;
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

/// Input groups per block of tables (at least 1).
pub(crate) fn block_groups(layer: &AqlmLayer, tokens: usize) -> usize {
    (LUT_BLOCK_FLOATS / lut_floats_per_group(layer, tokens).max(1)).clamp(1, layer.in_groups())
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

multiversion! {
max = avx2;
/// One-token fast path for `2^B = 256`, `og = 1`: adds the contributions of the tables
/// `tables[i − i0]` (`i = j·M + m`) to `acc` (output rows `o0..`, `o0` a multiple of 8).
///
/// Codes come from [`AqlmLayer::codes_u8_interleaved`] (`n_tab` tables per row). The tables
/// are visited in blocks of [`T1_TABLES_PER_PASS`] (32 KiB, so they stay in L1) and, per
/// block, eight rows at a time so eight independent sums interleave. Per row the tables are
/// still added in ascending `i`, the order of [`gather`].
fn gather_t1_k256(
    codes: &[u8],
    tables: &[[f32; 256]],
    n_tab: usize,
    i0: usize,
    o0: usize,
    acc: &mut [f32],
) {
    const R: usize = ROW_INTERLEAVE;
    let (c8, _) = codes.as_chunks::<R>();
    for (p, tabs) in tables.chunks(T1_TABLES_PER_PASS).enumerate() {
        let first = i0 + p * T1_TABLES_PER_PASS;
        for (bi, accr) in acc.chunks_mut(R).enumerate() {
            let rows = &c8[(o0 / R + bi) * n_tab + first..][..tabs.len()];
            let mut sum = [0f32; R];
            sum[..accr.len()].copy_from_slice(accr);
            for (tab, c) in tabs.iter().zip(rows) {
                for r in 0..R {
                    sum[r] += tab[usize::from(c[r])];
                }
            }
            let n = accr.len();
            accr.copy_from_slice(&sum[..n]);
        }
    }
}
}

/// [`gather_t1_k256`], with AVX2's hardware gather when the CPU has it: one `vgatherdps` adds
/// table `i` to the eight sums of a row block (lane `r` = row `r`), the same additions in the
/// same order as the portable loop, so the same bits. (LLVM vectorizes the portable loop into
/// eight scalar loads and shuffles per table, which saturates the shuffle port.)
fn gather_t1(
    codes: &[u8],
    tables: &[[f32; 256]],
    n_tab: usize,
    i0: usize,
    o0: usize,
    acc: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match Isa::detect().level() {
        Level::Avx512 => {
            // SAFETY: the token proves the CPU supports AVX-512F and AVX2.
            unsafe { gather_t1_avx512(codes, tables, n_tab, i0, o0, acc) };
            return;
        }
        Level::Avx2 => {
            // SAFETY: the token proves the CPU supports AVX2.
            unsafe { gather_t1_avx2(codes, tables, n_tab, i0, o0, acc) };
            return;
        }
        Level::Portable => {}
    }
    gather_t1_k256(codes, tables, n_tab, i0, o0, acc);
}

/// The AVX-512 body of [`gather_t1`]: one 16-lane `vgatherdps` adds table `i` to the sums of two
/// row blocks (lanes 0–7 the first block's rows, 8–15 the second's), and two such chains run
/// side by side, so 32 rows advance per table (four row blocks' codes in flight: the codes of a
/// layer come from memory once per token while generating, and with two row blocks per table
/// the gather waited on them — 37 vs 22 µs for a cold 576 × 576 layer). Rows that do not fill
/// 32 go through [`gather_t1_avx2`]. Per row, the same additions in the same order: the same
/// bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
fn gather_t1_avx512(
    codes: &[u8],
    tables: &[[f32; 256]],
    n_tab: usize,
    i0: usize,
    o0: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::{
        _mm_set_epi64x, _mm512_add_ps, _mm512_cvtepu8_epi32, _mm512_i32gather_ps, _mm512_loadu_ps,
        _mm512_storeu_ps,
    };
    const R: usize = ROW_INTERLEAVE;
    const ROWS: usize = 4 * R;
    let full = acc.len() / ROWS * ROWS;
    let (acc, tail) = acc.split_at_mut(full);
    let (c8, _) = codes.as_chunks::<R>();
    for (p, tabs) in tables.chunks(T1_TABLES_PER_PASS).enumerate() {
        let first = i0 + p * T1_TABLES_PER_PASS;
        for (bi, accr) in acc.chunks_exact_mut(ROWS).enumerate() {
            let ob = o0 / R + 4 * bi;
            let rows: [&[[u8; R]]; 4] =
                std::array::from_fn(|q| &c8[(ob + q) * n_tab + first..][..tabs.len()]);
            // The codes of row block `q` for table `i` as one little-endian `i64`.
            let code = |q: usize, i: usize| i64::from_le_bytes(rows[q][i]);
            for q in 0..4 {
                // This pass's codes of the row blocks `T1_PREFETCH_GROUPS` groups ahead (past the
                // end of the codes too: a hint never faults).
                let ahead = c8
                    .as_ptr()
                    .wrapping_add((ob + 4 * T1_PREFETCH_GROUPS + q) * n_tab + first);
                prefetch_range(ahead.cast(), tabs.len() * R);
            }
            // SAFETY: `accr` holds 32 f32; every index is a byte, so `< 256 = tab.len()`.
            unsafe {
                let mut v0 = _mm512_loadu_ps(accr.as_ptr());
                let mut v1 = _mm512_loadu_ps(accr.as_ptr().add(2 * R));
                for (i, tab) in tabs.iter().enumerate() {
                    let i01 = _mm512_cvtepu8_epi32(_mm_set_epi64x(code(1, i), code(0, i)));
                    let i23 = _mm512_cvtepu8_epi32(_mm_set_epi64x(code(3, i), code(2, i)));
                    v0 = _mm512_add_ps(v0, _mm512_i32gather_ps::<4>(i01, tab.as_ptr()));
                    v1 = _mm512_add_ps(v1, _mm512_i32gather_ps::<4>(i23, tab.as_ptr()));
                }
                _mm512_storeu_ps(accr.as_mut_ptr(), v0);
                _mm512_storeu_ps(accr.as_mut_ptr().add(2 * R), v1);
            }
        }
    }
    if !tail.is_empty() {
        gather_t1_avx2(codes, tables, n_tab, i0, o0 + full, tail);
    }
}

/// The AVX2 body of [`gather_t1`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gather_t1_avx2(
    codes: &[u8],
    tables: &[[f32; 256]],
    n_tab: usize,
    i0: usize,
    o0: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::{
        __m128i, _mm_loadl_epi64, _mm256_add_ps, _mm256_cvtepu8_epi32, _mm256_i32gather_ps,
        _mm256_loadu_ps, _mm256_storeu_ps,
    };
    const R: usize = ROW_INTERLEAVE;
    let (c8, _) = codes.as_chunks::<R>();
    for (p, tabs) in tables.chunks(T1_TABLES_PER_PASS).enumerate() {
        let first = i0 + p * T1_TABLES_PER_PASS;
        // Two row blocks at a time: two independent chains of additions.
        for (bi, accr) in acc.chunks_mut(2 * R).enumerate() {
            let ob = o0 / R + 2 * bi;
            let rows0 = &c8[ob * n_tab + first..][..tabs.len()];
            // A lone last block reuses its own codes for the second chain (its sums are dropped).
            let ob1 = if accr.len() > R { ob + 1 } else { ob };
            let rows1 = &c8[ob1 * n_tab + first..][..tabs.len()];
            let mut sum = [0f32; 2 * R];
            sum[..accr.len()].copy_from_slice(accr);
            // SAFETY: `sum` holds 16 f32; each code row holds 8 bytes; every index is a byte,
            // so `< 256 = tab.len()`.
            unsafe {
                let mut v0 = _mm256_loadu_ps(sum.as_ptr());
                let mut v1 = _mm256_loadu_ps(sum.as_ptr().add(R));
                for ((tab, c0), c1) in tabs.iter().zip(rows0).zip(rows1) {
                    let i0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(c0.as_ptr().cast::<__m128i>()));
                    let i1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(c1.as_ptr().cast::<__m128i>()));
                    v0 = _mm256_add_ps(v0, _mm256_i32gather_ps::<4>(tab.as_ptr(), i0));
                    v1 = _mm256_add_ps(v1, _mm256_i32gather_ps::<4>(tab.as_ptr(), i1));
                }
                _mm256_storeu_ps(sum.as_mut_ptr(), v0);
                _mm256_storeu_ps(sum.as_mut_ptr().add(R), v1);
            }
            let n = accr.len();
            accr.copy_from_slice(&sum[..n]);
        }
    }
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
    let codes_u8: &[u8] = if fast || fast8 {
        layer.codes_u8_interleaved()
    } else {
        &[]
    };
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
        if fast {
            let (tables, _) = block.as_chunks::<256>();
            acc.par_chunks_mut(T1_ROWS_PER_TASK)
                .enumerate()
                .for_each(|(ci, a)| {
                    gather_t1(codes_u8, tables, n_tab, j0 * m, ci * T1_ROWS_PER_TASK, a)
                });
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
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::kernels::tests::random_layer;

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

    /// The hardware-gather one-token path adds exactly what the portable loop adds, in the same
    /// order: identical bits, including a partial last block of rows and several passes.
    #[test]
    fn t1_gather_matches_the_portable_loop_bit_for_bit() {
        // Fewer rows than one AVX-512 block, whole blocks, whole blocks and a tail.
        for n_og in [21usize, 64, 77] {
            let n_tab = 70usize;
            let mut s = 7u64;
            let mut next = move || {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 33) as u32
            };
            let mut codes = vec![0u8; n_og.div_ceil(ROW_INTERLEAVE) * n_tab * ROW_INTERLEAVE];
            for (i, c) in codes.iter_mut().enumerate() {
                // Rows past n_og stay 0, as in the layer's cache.
                if (i % ROW_INTERLEAVE) + (i / (n_tab * ROW_INTERLEAVE)) * ROW_INTERLEAVE < n_og {
                    *c = next() as u8;
                }
            }
            let tables: Vec<[f32; 256]> = (0..n_tab)
                .map(|_| std::array::from_fn(|_| next() as f32 / u32::MAX as f32 - 0.5))
                .collect();
            let start: Vec<f32> = (0..n_og).map(|i| i as f32 * 0.25).collect();
            let mut want = start.clone();
            gather_t1_k256(&codes, &tables, n_tab, 0, 0, &mut want);
            let same = |got: &[f32]| {
                got.iter()
                    .zip(&want)
                    .all(|(x, y)| x.to_bits() == y.to_bits())
            };
            let mut got = start.clone();
            gather_t1(&codes, &tables, n_tab, 0, 0, &mut got);
            assert!(same(&got), "dispatched, {n_og} rows");
            // Every build this CPU runs, each from its own entry point.
            #[cfg(target_arch = "x86_64")]
            {
                let level = Isa::detect().level();
                if level >= Level::Avx2 {
                    let mut got = start.clone();
                    // SAFETY: the CPU supports AVX2 (checked).
                    unsafe { gather_t1_avx2(&codes, &tables, n_tab, 0, 0, &mut got) };
                    assert!(same(&got), "AVX2, {n_og} rows");
                }
                if level >= Level::Avx512 {
                    let mut got = start.clone();
                    // SAFETY: the CPU supports AVX-512F and AVX2 (checked).
                    unsafe { gather_t1_avx512(&codes, &tables, n_tab, 0, 0, &mut got) };
                    assert!(same(&got), "AVX-512, {n_og} rows");
                }
            }
        }
    }
}
