//! Decode-and-multiply-add for a few tokens, `og = 1`, `ig = 8`: the several-token path of
//! [`Kernel::DecodeDot`](super::Kernel::DecodeDot) (chosen from 2 to 32 tokens for the forward
//! and below 33 for the input gradient; decode-then-GEMM wins above).
//!
//! The weights are decoded straight into registers (`Σ_m cb_m[c]` per input group, codebooks
//! ascending) and multiply-added into the inputs of a block of tokens; nothing decoded is written
//! to memory. Every multiply-add is a fused `mul_add` (one rounding), with sixteen lanes in every
//! build, so the portable, AVX2 and AVX-512 builds give identical bits; the block sizes only
//! decide what stays in registers, never the order of a sum.
//!
//! - Forward: per row `o` and token `t`, eight lanes `lane[l] = fma(w_{o,j}[l], x[t, 8j + l],
//!   lane[l])` for the input groups `j` ascending from zero, then `y[t, o] = s_o · Σ8(lane)`, where
//!   `Σ8` adds pairwise (`l` with `l + 4`, then `+ 2`, `+ 1`). A vector holds the lanes of a
//!   token pair (`2p` in lanes 0–7, `2p + 1` in 8–15; a last odd token pairs with zeros), and a
//!   decoded group is loaded into both halves, so a register block of up to three rows × eight
//!   pairs decodes each group once per row for sixteen tokens and serves each 64-byte load of
//!   `x` to every row of the block. `x` is regrouped `[group][pair][16]` and walked in blocks of
//!   32 KiB (L1); the lanes carry over between blocks in memory.
//! - Input gradient: with `u` the units of sixteen inputs (two groups; a last half unit when the
//!   groups are odd has zeros in lanes 8–15), `dx[t, 16u + l] = fma(tile_{o,u}[l], s_o·dy[t, o],
//!   ·)` over `o` ascending from zero.
//!
//! Measured on 4096², 2x8, 2 threads, criterion medians of alternating runs against the previous
//! forward (lanes of sixteen inputs of one token, two groups per vector, even and odd groups in
//! separate chains, one row per block at 16 tokens): 3.87–3.90 → 2.85–2.90 ms at 16 tokens,
//! 1.96–2.01 → 1.59–1.76 at 8, 1.34–1.44 → 1.18–1.24 at 4, 0.98–1.23 → 1.02 at 2, 19.8–20.0 →
//! 15.4–16.8 at 64 (`Kernel::DecodeDot` forced); 1x16: 5.05–5.50 → 4.50–4.61 at 16, 3.23 → 2.93 at
//! 8; on AVX2 (the AVX-512 build switched off) equal or faster within this machine's noise. In
//! steps, at 16 tokens: the token-pair lanes with two rows per block 3.6–3.9 → 2.8–3.2; three rows
//! 2.80 → 2.67–2.71 (24 accumulators, no spills); each row's codes read through a pointer instead
//! of checked indices 2.71–2.90 → 2.59–2.60; the 64 rows of a task as 20 blocks of three and two of
//! two instead of 21 and a row alone 2.70–2.79 → 2.64–2.73 (3 alternating runs). The blocks of `x`:
//! 8, 16, 32, 64 KiB gave 3.68, 2.89–3.10, 2.83–2.94, 3.82 ms with two-row blocks; 24, 32, 40 KiB
//! 2.52–2.73, 2.57–2.74, 2.78–3.22 ms with three (3 alternating runs). LLVM turns two broadcast loads and a
//! 512-bit addition into a 256-bit addition (its indexed memory operand two micro-ops) and a
//! `vinsertf64x4`; one broadcast in inline assembly, its address computed outside, was no faster
//! (2.72–2.85 against 2.66–2.72 ms: an address addition per look-up instead); the whole decode of a
//! group of 2x8 in assembly (two broadcasts with indexed addresses, one addition:
//! `Lanes16::table_sum_dup`), one micro-op fewer per row and group, 2.58–2.78 → 2.47–2.80 ms
//! (median 2.63 → 2.53, 9 alternating runs). The loop issues about 57 micro-ops per group and block
//! of three rows (24 multiply-adds, 8 loads of `x`, 6 look-ups with their index shifts, 3
//! additions, the pointer steps): at four per cycle, 14 cycles against 12 for the multiply-adds
//! alone.
//!
//! Measured and not kept: software pipelining of the decode (one group ahead: slower, 3.39 →
//! 3.86 ms at 16 tokens with the previous lanes; the out-of-order core already overlaps the
//! decode); the codes of 32 groups turned into byte offsets by vector instructions ahead of the
//! loop, so a look-up loads its offset instead of loading and shifting its code (2.86–3.02 →
//! 3.19–3.30 ms, 4 alternating runs); look-up tables at 16 tokens ([`lut`](super::lut)'s notes).

use faer::{Mat, MatRef};
use rayon::prelude::*;

use super::aligned::AlignedF32;
#[cfg(target_arch = "x86_64")]
use super::lanes16::{Avx2, Avx512};
use super::lanes16::{Lanes16, Portable};
use super::layout::{feature_major_scaled, from_feature_major};
use crate::layer::AqlmLayer;

/// Lanes of a vector: two input groups of one token (input gradient), or one input group of two
/// tokens (forward).
const L: usize = 16;
/// Output rows per forward task.
const ROWS_PER_TASK: usize = 64;
/// Units of sixteen inputs per input-gradient task.
const UNITS_PER_TASK: usize = 4;
/// Rows decoded at once by the input gradient when it runs several blocks of tokens (4 KiB).
const ROWS_PER_DECODE: usize = 64;
/// Bytes of the block of `x` that one pass over the task's rows reads (sized for L1; 8, 16 and 64
/// KiB measured slower: the module notes).
const X_BLOCK_BYTES: usize = 32 << 10;

/// `body` for `tt = 0 … T − 1` (`T ≤ 16`), written out with constant indices: an array of
/// register accumulators indexed in a loop stayed in memory (LLVM unrolled the loop only by two,
/// and `array::from_fn`'s closure is compiled without the target features), 2–3× slower.
macro_rules! unroll {
    ($t:expr, |$i:ident| $body:expr) => {
        unroll!(@ $t, $i, $body, 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    };
    (@ $t:expr, $i:ident, $body:expr, $($n:literal)*) => {
        $(
            if $n < $t {
                let $i = $n;
                $body;
            }
        )*
    };
}

/// `$body` with the constant `$M` set to the codebook count of `$layer` for 1, 2 and 4 codebooks
/// (the loops over codebooks unrolled), and to 0 (read at run time) otherwise; and the constant
/// `$B8` set exactly when the layer has byte-indexed tables ([`AqlmLayer::byte_tables`] for
/// `$M ≥ 1`).
macro_rules! by_codebooks {
    ($layer:expr, $M:ident, $B8:ident => $body:expr) => {
        match $layer.scheme.num_codebooks {
            1 if $layer.byte_tables::<1>().is_some() => by_codebooks!(@ 1, true, $M, $B8 => $body),
            2 if $layer.byte_tables::<2>().is_some() => by_codebooks!(@ 2, true, $M, $B8 => $body),
            4 if $layer.byte_tables::<4>().is_some() => by_codebooks!(@ 4, true, $M, $B8 => $body),
            1 => by_codebooks!(@ 1, false, $M, $B8 => $body),
            2 => by_codebooks!(@ 2, false, $M, $B8 => $body),
            4 => by_codebooks!(@ 4, false, $M, $B8 => $body),
            _ => by_codebooks!(@ 0, false, $M, $B8 => $body),
        }
    };
    (@ $mv:literal, $bv:literal, $M:ident, $B8:ident => $body:expr) => {{
        const $M: usize = $mv;
        const $B8: bool = $bv;
        $body
    }};
}

/// Where the codes of unit `u` of row `o` are, and its decoder (the input gradient's tiles).
trait Units {
    /// The decoded unit `u` of row `o`: `Σ_m cb_m[c]` per group (codebooks ascending, starting
    /// from the first entry: [`AqlmLayer::group_sum_fixed`]'s value up to the sign of a zero,
    /// which no sum below can tell), the second group zero past the last one.
    fn tile<S: Lanes16>(&self, s: S, o: usize, u: usize) -> S::V;
}

/// The codebooks, `M` of them (`M = 0`: `m` read at run time). With `B8` (set by
/// `by_codebooks!` exactly when [`AqlmLayer::byte_tables`] has them, `1 ≤ M ≤ 4`) each codebook
/// is a fixed-size table indexed by the code's byte, so the look-ups need no bounds checks.
#[derive(Clone, Copy)]
struct Books<'a, const M: usize, const B8: bool> {
    cb: &'a [[f32; 8]],
    k: usize,
    m: usize,
    /// The codebooks as tables of 256 entries when `B8` (the first `M` of them; else unused).
    tables: [&'a [[f32; 8]; 256]; 4],
}

/// The empty table of [`Books::tables`] past the codebooks (never read).
static NO_TABLE: [[f32; 8]; 256] = [[0.0; 8]; 256];

impl<const M: usize, const B8: bool> Books<'_, M, B8> {
    fn new(layer: &AqlmLayer) -> Books<'_, M, B8> {
        let cb = layer.codebooks.as_chunks::<8>().0;
        let mut tables = [&NO_TABLE; 4];
        if let Some(books) = layer.byte_tables::<M>().filter(|_| B8) {
            for (t, c) in tables.iter_mut().zip(books) {
                *t = c;
            }
        }
        Books {
            cb,
            k: layer.scheme.codebook_size(),
            m: layer.scheme.num_codebooks,
            tables,
        }
    }

    /// The codebook count.
    #[inline(always)]
    fn m(&self) -> usize {
        if M == 0 { self.m } else { M }
    }

    /// The entry of codebook `mm` for code `c`.
    #[inline(always)]
    fn entry(&self, mm: usize, c: u16) -> &[f32; 8] {
        if B8 && M >= 1 && M <= 4 {
            // The low byte is the code (see `AqlmLayer::byte_tables`).
            &self.tables[mm][usize::from(c as u8)]
        } else {
            &self.cb[mm * self.k + usize::from(c)]
        }
    }

    /// `Σ_m cb_m[c_m]` for the `m` codes `c` (ascending `m`), eight lanes.
    #[inline(always)]
    fn group<S: Lanes16>(&self, s: S, c: &[u16]) -> S::H {
        let c = &c[..self.m()];
        let mut w = s.load_h(self.entry(0, c[0]));
        for (mm, &cm) in c.iter().enumerate().skip(1) {
            w = s.add_h(w, s.load_h(self.entry(mm, cm)));
        }
        w
    }

    /// [`Books::group`] in lanes `0..8` and again in `8..16` (the same bits in both halves).
    #[inline(always)]
    fn group_dup<S: Lanes16>(&self, s: S, c: &[u16]) -> S::V {
        let c = &c[..self.m()];
        if B8 && M == 2 {
            // The low byte is the code (see `AqlmLayer::byte_tables`).
            return s.table_sum_dup(self.tables[0], c[0] as u8, self.tables[1], c[1] as u8);
        }
        let mut w = s.load_dup(self.entry(0, c[0]));
        for (mm, &cm) in c.iter().enumerate().skip(1) {
            w = s.add(w, s.load_dup(self.entry(mm, cm)));
        }
        w
    }
}

/// Codes row-major `[o][j][m]` (the forward's order), and the codebooks.
struct ByRow<'a, const M: usize, const B8: bool> {
    books: Books<'a, M, B8>,
    n_ig: usize,
    codes: &'a [u16],
}

/// Codes by input group `[j][o][m]` (the input gradient's order).
struct ByInput<'a, const M: usize, const B8: bool> {
    books: Books<'a, M, B8>,
    n_ig: usize,
    n_og: usize,
    codes: &'a [u16],
}

impl<const M: usize, const B8: bool> Units for ByInput<'_, M, B8> {
    #[inline(always)]
    fn tile<S: Lanes16>(&self, s: S, o: usize, u: usize) -> S::V {
        let m = self.books.m();
        let lo = self
            .books
            .group(s, &self.codes[(2 * u * self.n_og + o) * m..]);
        let hi = if 2 * u + 1 < self.n_ig {
            self.books
                .group(s, &self.codes[((2 * u + 1) * self.n_og + o) * m..])
        } else {
            s.zero_h()
        };
        s.join(lo, hi)
    }
}

impl<'a, const M: usize, const B8: bool> ByRow<'a, M, B8> {
    fn new(layer: &'a AqlmLayer) -> Self {
        Self {
            books: Books::new(layer),
            n_ig: layer.in_groups(),
            codes: &layer.codes,
        }
    }
}

impl<'a, const M: usize, const B8: bool> ByInput<'a, M, B8> {
    fn new(layer: &'a AqlmLayer) -> Self {
        Self {
            books: Books::new(layer),
            n_ig: layer.in_groups(),
            n_og: layer.out_groups(),
            codes: layer.codes_by_input(),
        }
    }
}

/// Tokens held in registers at once by the input gradient, at most: sixteen 512-bit
/// accumulators (of 32 registers) with AVX-512, four pairs of 256-bit ones (of 16) with AVX2,
/// four arrays otherwise.
const TOKENS_AVX512: usize = 16;
/// See [`TOKENS_AVX512`].
const TOKENS_AVX2: usize = 4;
/// Token pairs per row of the forward's register blocks, at most: with [`ROWS_AVX512`] rows,
/// 24 512-bit accumulators (of 32 registers) with AVX-512; with [`ROWS_AVX2`], four pairs of
/// 256-bit ones (of 16) with AVX2, four arrays otherwise.
const PAIRS_AVX512: usize = 8;
/// See [`PAIRS_AVX512`].
const PAIRS_AVX2: usize = 2;
/// Rows of the forward's register blocks, at most (see [`PAIRS_AVX512`]).
const ROWS_AVX512: usize = 3;
/// See [`ROWS_AVX512`].
const ROWS_AVX2: usize = 2;

/// Peak extra floats of a forward (`backward = false`) or input gradient on `t` tokens with
/// `threads` tasks at once: the regrouped copy of `x` (or the padded, scaled `dy`), the output
/// buffer, and per task the lanes of its rows (forward) or its decoded rows (input gradient).
pub(crate) fn workspace_floats(
    layer: &AqlmLayer,
    t: usize,
    threads: usize,
    backward: bool,
) -> usize {
    let out = layer.out_features * t;
    if backward {
        let padded = layer.in_groups().div_ceil(2) * L * t;
        out + padded + threads * ROWS_PER_DECODE * L
    } else {
        let regrouped = layer.in_groups() * t.div_ceil(2) * L;
        regrouped + out + threads * ROWS_PER_TASK * t.div_ceil(2) * L
    }
}

/// `x·Wᵀ` (no bias).
pub(crate) fn forward(layer: &AqlmLayer, x: MatRef<'_, f32>) -> Mat<f32> {
    let t = x.nrows();
    let mut xg_store = by_group_and_pair(x);
    let xg = &*xg_store.as_mut_slice().as_chunks_mut::<L>().0;
    let mut out = vec![0f32; layer.out_features * t];
    out.par_chunks_mut(ROWS_PER_TASK * t)
        .enumerate()
        .for_each(|(ci, chunk)| forward_task(layer, xg, t, ci * ROWS_PER_TASK, chunk));
    from_feature_major(&out, t, layer.out_features)
}

/// `x [T, 8·n_ig]` group-major, `[j][pair][lane]`: lanes `0..8` of pair `p` hold inputs
/// `8j..8j + 8` of token `2p`, lanes `8..16` those of token `2p + 1` (zeros past the last token).
/// The token pairs of a block of groups are contiguous, and each pair of one group is one
/// 64-byte load (the buffer starts at a cache line).
fn by_group_and_pair(x: MatRef<'_, f32>) -> AlignedF32 {
    let pairs = x.nrows().div_ceil(2);
    let mut store = AlignedF32::zeroed(x.ncols().div_ceil(8) * pairs * L);
    let xg = store.as_mut_slice().as_chunks_mut::<L>().0;
    for tt in 0..x.nrows() {
        let (p, h) = (tt / 2, 8 * (tt % 2));
        for (i, &v) in x.row(tt).iter().enumerate() {
            xg[(i / 8) * pairs + p][h + i % 8] = v;
        }
    }
    store
}

/// Rows `o0..` into `chunk` (`[o][t]`) with the best backend of this CPU.
fn forward_task(layer: &AqlmLayer, xg: &[[f32; L]], t: usize, o0: usize, chunk: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(s) = Avx512::detect() {
            // SAFETY: `s` exists, so the CPU has AVX-512F/VL, AVX2 and FMA.
            return unsafe { forward_avx512(s, layer, xg, t, o0, chunk) };
        }
        if let Some(s) = Avx2::detect() {
            // SAFETY: `s` exists, so the CPU has AVX2 and FMA.
            return unsafe { forward_avx2(s, layer, xg, t, o0, chunk) };
        }
    }
    forward_m(Portable, ROWS_AVX2, PAIRS_AVX2, layer, xg, t, o0, chunk);
}

/// [`forward_task`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn forward_avx512(
    s: Avx512,
    layer: &AqlmLayer,
    xg: &[[f32; L]],
    t: usize,
    o0: usize,
    chunk: &mut [f32],
) {
    forward_m(s, ROWS_AVX512, PAIRS_AVX512, layer, xg, t, o0, chunk);
}

/// [`forward_task`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn forward_avx2(
    s: Avx2,
    layer: &AqlmLayer,
    xg: &[[f32; L]],
    t: usize,
    o0: usize,
    chunk: &mut [f32],
) {
    forward_m(s, ROWS_AVX2, PAIRS_AVX2, layer, xg, t, o0, chunk);
}

/// [`forward_rows`] with `M` unrolled for 1, 2 and 4 codebooks.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_m<S: Lanes16>(
    s: S,
    rb_max: usize,
    pb_max: usize,
    layer: &AqlmLayer,
    xg: &[[f32; L]],
    t: usize,
    o0: usize,
    chunk: &mut [f32],
) {
    by_codebooks!(layer, M, B8 => {
        forward_rows(s, rb_max, pb_max, &ByRow::<M, B8>::new(layer), layer, xg, t, o0, chunk)
    })
}

/// The forward loop nest: blocks of input groups whose `x` fits L1, then blocks of `rb_max` rows
/// (at most 3; four rows left are two blocks of two), then blocks of at most `pb_max` token pairs
/// (at most 8) held in registers; the lanes of every (row, token pair) carry over between group
/// blocks in memory, which keeps the order of each lane's sum.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_rows<S: Lanes16, const M: usize, const B8: bool>(
    s: S,
    rb_max: usize,
    pb_max: usize,
    tiles: &ByRow<'_, M, B8>,
    layer: &AqlmLayer,
    xg: &[[f32; L]],
    t: usize,
    o0: usize,
    chunk: &mut [f32],
) {
    let (n_ig, pairs) = (tiles.n_ig, t.div_ceil(2));
    // The register blocks below exist for up to 3 rows and 8 pairs.
    let (rb_max, pb_max) = (rb_max.clamp(1, 3), pb_max.clamp(1, 8));
    let rows = chunk.len() / t;
    let per_block = (X_BLOCK_BYTES / (pairs * L * 4)).max(1);
    let mut lanes_store = AlignedF32::zeroed(rows * pairs * L);
    let lanes = lanes_store.as_mut_slice().as_chunks_mut::<L>().0;
    for j0 in (0..n_ig).step_by(per_block) {
        let j1 = (j0 + per_block).min(n_ig);
        let mut r0 = 0;
        while r0 < rows {
            // Four rows left of blocks of three: two pairs, not a block of three and a row alone
            // (whose loads of `x` serve one multiply-add each).
            let nr = match rows - r0 {
                4 if rb_max == 3 => 2,
                left => left.min(rb_max),
            };
            let lr = &mut lanes[r0 * pairs..(r0 + nr) * pairs];
            let f = FmaRows {
                s,
                tiles,
                o: o0 + r0,
                j0,
                j1,
                xg,
                pairs,
            };
            let mut p0 = 0;
            while p0 < pairs {
                let n = token_block(pairs - p0, pb_max);
                match (nr, n) {
                    (3, 8) => f.run::<3, 8>(p0, lr),
                    (3, 4) => f.run::<3, 4>(p0, lr),
                    (3, 2) => f.run::<3, 2>(p0, lr),
                    (3, _) => f.run::<3, 1>(p0, lr),
                    (2, 8) => f.run::<2, 8>(p0, lr),
                    (2, 4) => f.run::<2, 4>(p0, lr),
                    (2, 2) => f.run::<2, 2>(p0, lr),
                    (2, _) => f.run::<2, 1>(p0, lr),
                    (_, 8) => f.run::<1, 8>(p0, lr),
                    (_, 4) => f.run::<1, 4>(p0, lr),
                    (_, 2) => f.run::<1, 2>(p0, lr),
                    (_, _) => f.run::<1, 1>(p0, lr),
                }
                p0 += n;
            }
            r0 += nr;
        }
    }
    for (r, (dst, lr)) in chunk
        .chunks_exact_mut(t)
        .zip(lanes.chunks_exact(pairs))
        .enumerate()
    {
        let sc = layer.scales[o0 + r];
        for (tt, d) in dst.iter_mut().enumerate() {
            let (lo, hi) = lr[tt / 2].split_at(8);
            *d = sum8(if tt % 2 == 0 { lo } else { hi }) * sc;
        }
    }
}

/// `Σ8(v)` of `v[..8]`, added pairwise: `v[l] + v[l + 4]`, then `+ 2`, then `+ 1`.
fn sum8(v: &[f32]) -> f32 {
    let b: [f32; 4] = std::array::from_fn(|i| v[i] + v[i + 4]);
    let c: [f32; 2] = std::array::from_fn(|i| b[i] + b[i + 2]);
    c[0] + c[1]
}

/// The largest of 16, 8, 4, 2, 1 that is at most `left` and `max`.
fn token_block(left: usize, max: usize) -> usize {
    [16, 8, 4, 2, 1]
        .into_iter()
        .find(|&n| n <= left && n <= max)
        .unwrap_or(1)
}

/// A register block over the `T` tokens from `t0` on, whose accumulators are `acc[..T]`.
trait TokenBlock {
    /// Loads `acc`, runs the block, stores `acc`.
    fn run<const T: usize>(&self, t0: usize, acc: &mut [[f32; L]]);
}

/// `f` over the lanes `dst` (`[t]`, of one unit) by blocks of 16, 8, 4, 2 or 1 tokens, at most
/// `tb_max`.
#[inline(always)]
fn by_token_blocks(t: usize, tb_max: usize, dst: &mut [[f32; L]], f: &impl TokenBlock) {
    let mut t0 = 0;
    while t0 < t {
        let n = token_block(t - t0, tb_max);
        let acc = &mut dst[t0..t0 + n];
        match n {
            16 => f.run::<16>(t0, acc),
            8 => f.run::<8>(t0, acc),
            4 => f.run::<4>(t0, acc),
            2 => f.run::<2>(t0, acc),
            _ => f.run::<1>(t0, acc),
        }
        t0 += n;
    }
}

/// The register blocks of the forward: rows `o..o + R` (`R` of 1, 2), input groups `j0..j1` of
/// `xg` (`[j][pair]`, `pairs` token pairs).
struct FmaRows<'a, S, const M: usize, const B8: bool> {
    s: S,
    tiles: &'a ByRow<'a, M, B8>,
    o: usize,
    j0: usize,
    j1: usize,
    xg: &'a [[f32; L]],
    pairs: usize,
}

impl<S: Lanes16, const M: usize, const B8: bool> FmaRows<'_, S, M, B8> {
    /// `acc[r][q][l] = fma(dup(group(o + r, j))[l], xg[j][p0 + q][l], acc[r][q][l])` for `j` in
    /// `j0..j1` ascending, where `acc[r][q]` is `lr[r·pairs + p0 + q]` and `dup` repeats the eight
    /// decoded weights of a group in both halves; the `R × P` accumulators stay in registers, so
    /// each decoded group serves `P` multiply-adds and each load of `x` serves `R`.
    #[inline(always)]
    fn run<const R: usize, const P: usize>(&self, p0: usize, lr: &mut [[f32; L]]) {
        let s = self.s;
        let tiles = self.tiles;
        let (m, n_ig, pairs) = (tiles.books.m(), tiles.n_ig, self.pairs);
        assert!(
            (1..=3).contains(&R) && lr.len() >= R * pairs && p0 + P <= pairs,
            "register block of the rows' lanes"
        );
        let mut a = [[s.load(&lr[0]); P]; R];
        unroll!(R, |r| unroll!(P, |q| a[r][q] =
            s.load(&lr[r * pairs + p0 + q])));
        let (stride, groups) = (n_ig * m, self.j1 - self.j0);
        // Row `o + r`'s codes of groups `j0..j1`, read through a pointer stepped by `m` per group.
        let mut cp: [*const u16; R] = std::array::from_fn(|r| {
            let at = (self.o + r) * stride;
            tiles.codes[at + self.j0 * m..at + self.j1 * m].as_ptr()
        });
        let xs = &self.xg[self.j0 * pairs..self.j1 * pairs];
        assert!(xs.len() == groups * pairs, "x block of the rows' groups");
        // `x` of group `g` (counted from `j0`) and pair `p0 + q` is `xs[g·pairs + p0 + q]`, read
        // through a pointer stepped by `pairs` per group: base-and-offset addressing, which
        // Intel cores keep in one micro-op (a scaled index splits it in two).
        let mut xp = xs.as_ptr().wrapping_add(p0);
        for _ in 0..groups {
            // SAFETY: at group `g < groups`, `cp[r]` points at element `g·m` of row `o + r`'s
            // slice of `groups·m` codes (bounds-checked above), so its `m` codes are in it.
            let code = |r: usize| unsafe { std::slice::from_raw_parts(cp[r], m) };
            let mut w = [tiles.books.group_dup(s, code(0)); R];
            unroll!(R, |r| if r > 0 {
                w[r] = tiles.books.group_dup(s, code(r));
            });
            unroll!(P, |q| {
                // SAFETY: at group `g < xs.len() / pairs`, `xp = xs + g·pairs + p0`, and
                // `g·pairs + p0 + q < (g + 1)·pairs ≤ xs.len()` for `q < P` (asserted), so the
                // element is in `xs` and initialised.
                let xv = s.load(unsafe { &*xp.add(q) });
                unroll!(R, |r| a[r][q] = s.fma(w[r], xv, a[r][q]));
            });
            xp = xp.wrapping_add(pairs);
            unroll!(R, |r| cp[r] = cp[r].wrapping_add(m));
        }
        unroll!(R, |r| unroll!(P, |q| s
            .store(a[r][q], &mut lr[r * pairs + p0 + q])));
    }
}

/// `dy·W`.
pub(crate) fn backward(layer: &AqlmLayer, dy: MatRef<'_, f32>) -> Mat<f32> {
    let t = dy.nrows();
    let sdy = feature_major_scaled(dy, &layer.scales, 1);
    let units = layer.in_groups().div_ceil(2);
    // Lanes `[unit][t]`, cut to `in_features` at the end; on a cache-line boundary.
    let mut out_store = AlignedF32::zeroed(units * t * L);
    let out = out_store.as_mut_slice().as_chunks_mut::<L>().0;
    out.par_chunks_mut(UNITS_PER_TASK * t)
        .enumerate()
        .for_each(|(ci, chunk)| backward_task(layer, &sdy, t, ci * UNITS_PER_TASK, chunk));
    Mat::from_fn(t, layer.in_features, |tt, i| out[(i / L) * t + tt][i % L])
}

/// Units `u0..` of the input gradient into `chunk` (`[u][t]`) with the best backend of this CPU.
fn backward_task(layer: &AqlmLayer, sdy: &[f32], t: usize, u0: usize, chunk: &mut [[f32; L]]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(s) = Avx512::detect() {
            // SAFETY: `s` exists, so the CPU has AVX-512F/VL, AVX2 and FMA.
            return unsafe { backward_avx512(s, layer, sdy, t, u0, chunk) };
        }
        if let Some(s) = Avx2::detect() {
            // SAFETY: `s` exists, so the CPU has AVX2 and FMA.
            return unsafe { backward_avx2(s, layer, sdy, t, u0, chunk) };
        }
    }
    backward_m(Portable, TOKENS_AVX2, layer, sdy, t, u0, chunk);
}

/// [`backward_task`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn backward_avx512(
    s: Avx512,
    layer: &AqlmLayer,
    sdy: &[f32],
    t: usize,
    u0: usize,
    chunk: &mut [[f32; L]],
) {
    backward_m(s, TOKENS_AVX512, layer, sdy, t, u0, chunk);
}

/// [`backward_task`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn backward_avx2(
    s: Avx2,
    layer: &AqlmLayer,
    sdy: &[f32],
    t: usize,
    u0: usize,
    chunk: &mut [[f32; L]],
) {
    backward_m(s, TOKENS_AVX2, layer, sdy, t, u0, chunk);
}

/// [`backward_units`] with `M` unrolled for 1, 2 and 4 codebooks.
#[inline(always)]
fn backward_m<S: Lanes16>(
    s: S,
    tb_max: usize,
    layer: &AqlmLayer,
    sdy: &[f32],
    t: usize,
    u0: usize,
    chunk: &mut [[f32; L]],
) {
    let n_og = layer.out_groups();
    by_codebooks!(layer, M, B8 => {
        let tiles = ByInput::<M, B8>::new(layer);
        backward_units(s, tb_max, &tiles, n_og, sdy, t, u0, chunk)
    })
}

/// The input-gradient loop nest: per unit, blocks of tokens held in registers, rows ascending.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_units<S: Lanes16>(
    s: S,
    tb_max: usize,
    tiles: &impl Units,
    n_og: usize,
    sdy: &[f32],
    t: usize,
    u0: usize,
    chunk: &mut [[f32; L]],
) {
    // One block of tokens: decode in registers. Several: decode a block of rows once into `buf`
    // (L1) and run every block of tokens over it; the same operations in the same order.
    let rows_per_pass = if t <= tb_max { n_og } else { ROWS_PER_DECODE };
    let mut buf_store = AlignedF32::zeroed(if t <= tb_max { 0 } else { ROWS_PER_DECODE * L });
    let buf = buf_store.as_mut_slice().as_chunks_mut::<L>().0;
    for (du, dst) in chunk.chunks_exact_mut(t).enumerate() {
        let u = u0 + du;
        for o0 in (0..n_og).step_by(rows_per_pass) {
            let o1 = (o0 + rows_per_pass).min(n_og);
            if t <= tb_max {
                let f = AxpyRows {
                    s,
                    tiles,
                    u,
                    o0,
                    o1,
                    sdy,
                    t,
                };
                by_token_blocks(t, tb_max, dst, &f);
            } else {
                for (o, b) in (o0..o1).zip(buf.iter_mut()) {
                    s.store(tiles.tile(s, o, u), b);
                }
                let f = AxpyRows {
                    s,
                    tiles: &Decoded { buf, o0 },
                    u,
                    o0,
                    o1,
                    sdy,
                    t,
                };
                by_token_blocks(t, tb_max, dst, &f);
            }
        }
    }
}

/// Units already decoded into `buf` (`buf[o − o0]`), for any `u`.
struct Decoded<'a> {
    buf: &'a [[f32; L]],
    o0: usize,
}

impl Units for Decoded<'_> {
    #[inline(always)]
    fn tile<S: Lanes16>(&self, s: S, o: usize, _u: usize) -> S::V {
        s.load(&self.buf[o - self.o0])
    }
}

/// The register blocks of the input gradient: unit `u`, rows `o0..o1` of the scaled `dy`
/// (`[o][t]`).
struct AxpyRows<'a, S, U> {
    s: S,
    tiles: &'a U,
    u: usize,
    o0: usize,
    o1: usize,
    sdy: &'a [f32],
    t: usize,
}

impl<S: Lanes16, U: Units> TokenBlock for AxpyRows<'_, S, U> {
    /// `acc[tt][l] = fma(tile(o, u)[l], sdy[o][t0 + tt], acc[tt][l])` for `o` in `o0..o1`
    /// ascending, the `T` accumulators in registers.
    #[inline(always)]
    fn run<const T: usize>(&self, t0: usize, acc: &mut [[f32; L]]) {
        let s = self.s;
        let mut a = [s.load(&acc[0]); T];
        unroll!(T, |tt| a[tt] = s.load(&acc[tt]));
        for o in self.o0..self.o1 {
            let w = self.tiles.tile(s, o, self.u);
            let d = &self.sdy[o * self.t + t0..][..T];
            unroll!(T, |tt| a[tt] = s.fma(w, s.splat(d[tt]), a[tt]));
        }
        unroll!(T, |tt| s.store(a[tt], &mut acc[tt]));
    }
}

#[cfg(test)]
mod tests {
    use faer::Mat;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::kernels::tests::random_layer;

    /// The forward's documented order in scalar code: `lane[l]` chained over the groups `j`
    /// ascending with fused multiply-adds of `Σ_m cb_m[c]` (codebooks ascending), then `s_o ·
    /// Σ8(lane)`.
    fn forward_scalar(layer: &AqlmLayer, x: MatRef<'_, f32>, tt: usize, o: usize) -> f32 {
        let m = layer.scheme.num_codebooks;
        let k = layer.scheme.codebook_size();
        let mut lane = [0f32; 8];
        for j in 0..layer.in_groups() {
            let c = &layer.codes[(o * layer.in_groups() + j) * m..][..m];
            for (l, v) in lane.iter_mut().enumerate() {
                let mut w = layer.codebooks[usize::from(c[0]) * 8 + l];
                for (mm, &cm) in c.iter().enumerate().skip(1) {
                    w += layer.codebooks[(mm * k + usize::from(cm)) * 8 + l];
                }
                *v = w.mul_add(x[(tt, 8 * j + l)], *v);
            }
        }
        sum8(&lane) * layer.scales[o]
    }

    /// The forward of every backend this CPU has follows the documented order bit for bit
    /// ([`forward_scalar`]), and the input gradient of the backend it runs gives the portable
    /// backend's bits: odd input groups (a half last unit of the input gradient), odd token
    /// counts (a half last pair), every register-block size, rows by three, by two and alone (65,
    /// 67 and 70 rows: tasks of 64 rows and a last one of 1, 3 or 6), `M = 1, 2, 3, 4` and
    /// codebooks of 2^4, 2^8 (byte-indexed tables) and 2^16 entries.
    #[test]
    fn every_backend_gives_the_documented_bits() {
        let mut rng = StdRng::seed_from_u64(21);
        for ((m, nbits), rows) in [(1, 8), (2, 8), (3, 4), (4, 8), (1, 16), (2, 8)]
            .into_iter()
            .zip([70, 65, 70, 70, 70, 67])
        {
            let layer = random_layer(&mut rng, m, nbits, 8, 1, 7, rows, false);
            let units = layer.in_groups().div_ceil(2);
            for t in [1usize, 3, 5, 8, 16, 23, 40] {
                let x = Mat::from_fn(t, layer.in_features, |_, _| rng.random_range(-1.0f32..1.0));
                let dy = Mat::from_fn(t, layer.out_features, |_, _| rng.random_range(-1.0f32..1.0));
                let y = forward(&layer, x.as_ref());
                let dx = backward(&layer, dy.as_ref());
                // Each backend this CPU has, on one task for all rows.
                let mut xg_store = by_group_and_pair(x.as_ref());
                let xg = &*xg_store.as_mut_slice().as_chunks_mut::<L>().0;
                let mut by_backend = vec![vec![0f32; layer.out_features * t]];
                forward_m(
                    Portable,
                    ROWS_AVX2,
                    PAIRS_AVX2,
                    &layer,
                    xg,
                    t,
                    0,
                    &mut by_backend[0],
                );
                #[cfg(target_arch = "x86_64")]
                {
                    if let Some(s) = Avx2::detect() {
                        let mut out = vec![0f32; layer.out_features * t];
                        // SAFETY: `s` exists, so the CPU has AVX2 and FMA.
                        unsafe { forward_avx2(s, &layer, xg, t, 0, &mut out) };
                        by_backend.push(out);
                    }
                    if let Some(s) = Avx512::detect() {
                        let mut out = vec![0f32; layer.out_features * t];
                        // SAFETY: `s` exists, so the CPU has AVX-512F/VL, AVX2 and FMA.
                        unsafe { forward_avx512(s, &layer, xg, t, 0, &mut out) };
                        by_backend.push(out);
                    }
                }
                let sdy = feature_major_scaled(dy.as_ref(), &layer.scales, 1);
                let mut lanes = vec![[0f32; L]; units * t];
                backward_m(Portable, TOKENS_AVX2, &layer, &sdy, t, 0, &mut lanes);
                for tt in 0..t {
                    for o in 0..layer.out_features {
                        let want = forward_scalar(&layer, x.as_ref(), tt, o).to_bits();
                        assert_eq!(y[(tt, o)].to_bits(), want, "M {m} t {t}");
                        for out in &by_backend {
                            assert_eq!(out[o * t + tt].to_bits(), want, "M {m} t {t}");
                        }
                    }
                    for i in 0..layer.in_features {
                        let want = lanes[(i / L) * t + tt][i % L];
                        assert_eq!(dx[(tt, i)].to_bits(), want.to_bits(), "M {m} t {t}");
                    }
                }
            }
        }
    }
}
