//! Decode-and-multiply-add for a few tokens, `og = 1`, `ig = 8`: the several-token path of
//! [`Kernel::DecodeDot`](super::Kernel::DecodeDot) (chosen from 2 to 16 tokens for the forward
//! and below 33 for the input gradient; decode-then-GEMM wins above).
//!
//! The weights are decoded sixteen at a time (two input groups: `Σ_m cb_m[c]` per group, codebooks
//! ascending) straight into registers and multiply-added into the inputs of a block of tokens;
//! nothing decoded is written to memory. Every multiply-add is a fused `mul_add` (one rounding),
//! with sixteen lanes in every build, so the portable, AVX2 and AVX-512 builds give identical
//! bits; the block sizes only decide what stays in registers, never the order of a sum.
//!
//! With `u` the units of sixteen inputs (`lane l` of unit `u` is input `16u + l`; a last half unit
//! when the input groups are odd has zeros in lanes 8–15):
//! - forward: `lane[l] = fma(tile_u[l], x[t, 16u + l], lane[l])` for `u` ascending from zero, then
//!   `y[t, o] = s_o · Σ16(lane)`, where `Σ16` adds the halves pairwise (`l` with `l + 8`, then
//!   `+ 4`, `+ 2`, `+ 1`);
//! - input gradient: `dx[t, 16u + l] = fma(tile_{o,u}[l], s_o·dy[t, o], ·)` over `o` ascending
//!   from zero.
//!
//! The forward's inner loop walks a row's codes by chunks and the block of `x` by a pointer
//! stepped per unit (no index arithmetic or bounds checks per unit), and codebooks of 256 entries
//! are byte-indexed tables.
//! A unit then costs about 21 cycles at 16 tokens in place, 18 in a synthetic loop with all its
//! data in L1 (16 multiply-adds with a 64-byte load each, plus the decode's four look-ups, two
//! additions and a join; timings point at the loads as the bound). Measured on 4096², 2x8, 16
//! tokens, 2 threads (medians of 3 alternating runs): 3.59 → 3.19 ms. With AVX-512 and at most
//! 8 tokens, two rows run together, so each load of `x` serves two multiply-adds: 2.0 → 1.58 ms
//! at 8 tokens, 1.32 → 1.07 at 4, 0.94 → 0.88 at 2 (medians of 3). At 16 tokens two rows would
//! need two register blocks of 8 tokens, each decoding both rows again: no faster. Decoding
//! each unit one unit ahead of its multiply-adds (software pipelining) was slower: 3.39 → 3.86 ms
//! at 16 tokens (3 alternating runs); the out-of-order core already overlaps the decode.
//!
//! Measured but not built yet: lanes of eight inputs of two tokens (`x` regrouped as
//! `[group][token pair][16]`, blocks of 32 groups, 16 KiB), two rows at a time, each decoded
//! group duplicated into both halves, so a register tile of two rows × eight token pairs holds
//! sixteen accumulators and each 64-byte load of `x` serves two multiply-adds. A prototype
//! (AVX-512 only, 2x8, 16 tokens, 4096², 2 threads, 3 alternating runs): 3.85–4.10 → 3.11–3.16
//! ms, still about 17 cycles per sixteen multiply-adds. It sums each lane over all groups in one
//! chain, not in the two chains of even and odd groups above, so its bits differ: building it
//! means that order in the portable and AVX2 backends too.

use faer::{Mat, MatRef};
use rayon::prelude::*;

use super::aligned::AlignedF32;
#[cfg(target_arch = "x86_64")]
use super::lanes16::{Avx2, Avx512};
use super::lanes16::{Lanes16, Portable};
use super::layout::{feature_major_scaled, from_feature_major};
use crate::layer::AqlmLayer;

/// Lanes of one unit: two input groups of eight.
const L: usize = 16;
/// Output rows per forward task.
const ROWS_PER_TASK: usize = 64;
/// Units of sixteen inputs per input-gradient task.
const UNITS_PER_TASK: usize = 4;
/// Rows decoded at once by the input gradient when it runs several blocks of tokens (4 KiB).
const ROWS_PER_DECODE: usize = 64;
/// Bytes of the block of `x` that one pass over the task's rows reads (sized for L1; 16 and 24
/// KiB were slower at 16 tokens: 3.4 → 3.5–4.1 ms, 2 threads, 3 alternating runs).
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

/// `Σ16(v)`: the halves added pairwise (`v[l] + v[l + 8]`, then `+ 4`, `+ 2`, `+ 1`).
fn sum16(v: &[f32; L]) -> f32 {
    let a: [f32; 8] = std::array::from_fn(|i| v[i] + v[i + 8]);
    let b: [f32; 4] = std::array::from_fn(|i| a[i] + a[i + 4]);
    let c: [f32; 2] = std::array::from_fn(|i| b[i] + b[i + 2]);
    c[0] + c[1]
}

/// Where the codes of unit `u` of row `o` are, and its decoder.
trait Units {
    /// The decoded unit `u` of row `o`: `Σ_m cb_m[c]` per group (codebooks ascending, starting
    /// from the first entry: [`AqlmLayer::group_sum_fixed`]'s value up to the sign of a zero,
    /// which no sum below can tell), the second group zero past the last one.
    fn tile<S: Lanes16>(&self, s: S, o: usize, u: usize) -> S::V;
}

/// The codebooks, `M` of them (`M = 0`: `m` read at run time). With `B8` (set by
/// `by_codebooks!` exactly when [`AqlmLayer::byte_tables`] has them, `1 ≤ M ≤ 4`) each codebook is a fixed-size table indexed by the code's byte
/// ([`AqlmLayer::byte_tables`]), so the look-ups need no bounds checks.
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

    /// `Σ_m cb_m[c_m]` for the `m` codes `c`.
    #[inline(always)]
    fn group<S: Lanes16>(&self, s: S, c: &[u16]) -> S::H {
        if B8 && M >= 1 && M <= 4 {
            let c = &c[..M];
            // The low byte is the code (see `AqlmLayer::byte_tables`).
            let mut w = s.load_h(&self.tables[0][usize::from(c[0] as u8)]);
            for mm in 1..M {
                w = s.add_h(w, s.load_h(&self.tables[mm][usize::from(c[mm] as u8)]));
            }
            return w;
        }
        let c = &c[..self.m()];
        let mut w = s.load_h(&self.cb[usize::from(c[0])]);
        for (mm, &cm) in c.iter().enumerate().skip(1) {
            w = s.add_h(w, s.load_h(&self.cb[mm * self.k + usize::from(cm)]));
        }
        w
    }
}

/// Codes row-major `[o][j][m]` (the forward's order).
struct ByRow<'a, const M: usize, const B8: bool> {
    books: Books<'a, M, B8>,
    n_ig: usize,
    codes: &'a [u16],
}

impl<const M: usize, const B8: bool> Units for ByRow<'_, M, B8> {
    #[inline(always)]
    fn tile<S: Lanes16>(&self, s: S, o: usize, u: usize) -> S::V {
        let m = self.books.m();
        let c = &self.codes[(o * self.n_ig + 2 * u) * m..];
        let lo = self.books.group(s, c);
        let hi = if 2 * u + 1 < self.n_ig {
            self.books.group(s, &c[m..])
        } else {
            s.zero_h()
        };
        s.join(lo, hi)
    }
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

/// Tokens held in registers at once, at most: sixteen 512-bit accumulators (of 32 registers)
/// with AVX-512, four pairs of 256-bit ones (of 16) with AVX2, four arrays otherwise.
const TOKENS_AVX512: usize = 16;
/// See [`TOKENS_AVX512`].
const TOKENS_AVX2: usize = 4;

/// Peak extra floats of a forward (`backward = false`) or input gradient on `t` tokens with
/// `threads` tasks at once: the padded copy of `x` (or the scaled `dy`), the unpadded output
/// buffer, and per task the lanes of its rows (forward) or its decoded rows (input gradient).
pub(crate) fn workspace_floats(
    layer: &AqlmLayer,
    t: usize,
    threads: usize,
    backward: bool,
) -> usize {
    let padded = layer.in_groups().div_ceil(2) * L * t;
    let out = layer.out_features * t;
    if backward {
        out + padded + threads * ROWS_PER_DECODE * L
    } else {
        padded + out + threads * ROWS_PER_TASK * t * L
    }
}

/// `x·Wᵀ` (no bias).
pub(crate) fn forward(layer: &AqlmLayer, x: MatRef<'_, f32>) -> Mat<f32> {
    let t = x.nrows();
    let units = layer.in_groups().div_ceil(2);
    // Unit-major `[unit][token]` (zeros past `in_features`): the tokens of a block of units are
    // contiguous. (Token-major rows put the sixteen token streams a whole row apart, which maps
    // them to the same few L1 sets: 5× slower at 64 tokens.)
    // On a cache-line boundary: each unit of a token is one 64-byte load.
    let mut xu_store = AlignedF32::zeroed(units * t * L);
    let xu = xu_store.as_mut_slice().as_chunks_mut::<L>().0;
    for tt in 0..t {
        for (i, &v) in x.row(tt).iter().enumerate() {
            xu[(i / L) * t + tt][i % L] = v;
        }
    }
    let xu = &*xu;
    let mut out = vec![0f32; layer.out_features * t];
    out.par_chunks_mut(ROWS_PER_TASK * t)
        .enumerate()
        .for_each(|(ci, chunk)| forward_task(layer, xu, t, ci * ROWS_PER_TASK, chunk));
    from_feature_major(&out, t, layer.out_features)
}

/// Rows `o0..` into `chunk` (`[o][t]`) with the best backend of this CPU.
fn forward_task(layer: &AqlmLayer, xu: &[[f32; L]], t: usize, o0: usize, chunk: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(s) = Avx512::detect() {
            // SAFETY: `s` exists, so the CPU has AVX-512F/VL, AVX2 and FMA.
            return unsafe { forward_avx512(s, layer, xu, t, o0, chunk) };
        }
        if let Some(s) = Avx2::detect() {
            // SAFETY: `s` exists, so the CPU has AVX2 and FMA.
            return unsafe { forward_avx2(s, layer, xu, t, o0, chunk) };
        }
    }
    forward_m(Portable, TOKENS_AVX2, layer, xu, t, o0, chunk);
}

/// [`forward_task`] compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn forward_avx512(
    s: Avx512,
    layer: &AqlmLayer,
    xu: &[[f32; L]],
    t: usize,
    o0: usize,
    chunk: &mut [f32],
) {
    forward_m(s, TOKENS_AVX512, layer, xu, t, o0, chunk);
}

/// [`forward_task`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn forward_avx2(
    s: Avx2,
    layer: &AqlmLayer,
    xu: &[[f32; L]],
    t: usize,
    o0: usize,
    chunk: &mut [f32],
) {
    forward_m(s, TOKENS_AVX2, layer, xu, t, o0, chunk);
}

/// [`forward_rows`] with `M` unrolled for 1, 2 and 4 codebooks.
#[inline(always)]
fn forward_m<S: Lanes16>(
    s: S,
    tb_max: usize,
    layer: &AqlmLayer,
    xu: &[[f32; L]],
    t: usize,
    o0: usize,
    chunk: &mut [f32],
) {
    by_codebooks!(layer, M, B8 => {
        forward_rows(s, tb_max, &ByRow::<M, B8>::new(layer), layer, xu, t, o0, chunk)
    })
}

/// The forward loop nest: blocks of units whose `x` fits L1, then rows, then blocks of tokens
/// held in registers; the lanes of every (row, token) carry over between unit blocks in memory,
/// which keeps the order of each lane's sum.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_rows<S: Lanes16, const M: usize, const B8: bool>(
    s: S,
    tb_max: usize,
    tiles: &ByRow<'_, M, B8>,
    layer: &AqlmLayer,
    xu: &[[f32; L]],
    t: usize,
    o0: usize,
    chunk: &mut [f32],
) {
    let units = layer.in_groups().div_ceil(2);
    let rows = chunk.len() / t;
    let per_block = (X_BLOCK_BYTES / (t * L * 4)).max(1);
    let mut lanes_store = AlignedF32::zeroed(rows * t * L);
    let lanes = lanes_store.as_mut_slice().as_chunks_mut::<L>().0;
    // Rows in pairs with AVX-512 when one register block of half the tokens covers them all.
    let pairs = if tb_max >= TOKENS_AVX512 && t <= tb_max / 2 {
        rows / 2
    } else {
        0
    };
    for u0 in (0..units).step_by(per_block) {
        let u1 = (u0 + per_block).min(units);
        let (paired, single) = lanes.split_at_mut(2 * pairs * t);
        for (p, lr) in paired.chunks_exact_mut(2 * t).enumerate() {
            let (la, lb) = lr.split_at_mut(t);
            let f = FmaRows {
                s,
                tiles,
                o: o0 + 2 * p,
                u0,
                u1,
                xu,
                t,
            };
            let mut t0 = 0;
            while t0 < t {
                let n = token_block(t - t0, tb_max / 2);
                let (a, b) = (&mut la[t0..t0 + n], &mut lb[t0..t0 + n]);
                match n {
                    8 => f.run_pair::<8>(t0, a, b),
                    4 => f.run_pair::<4>(t0, a, b),
                    2 => f.run_pair::<2>(t0, a, b),
                    _ => f.run_pair::<1>(t0, a, b),
                }
                t0 += n;
            }
        }
        for (r, lr) in single.chunks_exact_mut(t).enumerate() {
            let f = FmaRows {
                s,
                tiles,
                o: o0 + 2 * pairs + r,
                u0,
                u1,
                xu,
                t,
            };
            by_token_blocks(t, tb_max, lr, &f);
        }
    }
    for (r, (dst, lr)) in chunk
        .chunks_exact_mut(t)
        .zip(lanes.chunks_exact(t))
        .enumerate()
    {
        let sc = layer.scales[o0 + r];
        for (d, l) in dst.iter_mut().zip(lr) {
            *d = sum16(l) * sc;
        }
    }
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

/// `f` over the lanes `dst` (`[t]`, of one row or one unit) by blocks of 16, 8, 4, 2 or 1
/// tokens, at most `tb_max`.
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

/// The register blocks of the forward: row `o`, units `u0..u1` of `xu` (`[unit][token]`, `t`
/// tokens).
struct FmaRows<'a, S, const M: usize, const B8: bool> {
    s: S,
    tiles: &'a ByRow<'a, M, B8>,
    o: usize,
    u0: usize,
    u1: usize,
    xu: &'a [[f32; L]],
    t: usize,
}

impl<S: Lanes16, const M: usize, const B8: bool> TokenBlock for FmaRows<'_, S, M, B8> {
    /// `acc[tt][l] = fma(tile(o, u)[l], xu[u][t0 + tt][l], acc[tt][l])` for `u` in `u0..u1` ascending,
    /// the `T` accumulators in registers.
    #[inline(always)]
    fn run<const T: usize>(&self, t0: usize, acc: &mut [[f32; L]]) {
        let s = self.s;
        let tiles = self.tiles;
        let (m, n_ig, t) = (tiles.books.m(), tiles.n_ig, self.t);
        let mut a = [s.load(&acc[0]); T];
        unroll!(T, |tt| a[tt] = s.load(&acc[tt]));
        // The units with two groups by chunks of codes and of `x` (no index arithmetic or bounds
        // checks in the loop), then a last half unit if there is one.
        let full = self.u1.min(n_ig / 2).max(self.u0);
        let row = &tiles.codes[self.o * n_ig * m..][..n_ig * m];
        let codes = &row[2 * self.u0 * m..2 * full * m];
        let xs = &self.xu[self.u0 * t..full * t];
        // `x` of unit `u` (counted from `u0`) and token `t0 + tt` is `xs[u·t + t0 + tt]`, read
        // through a pointer stepped by `t` per unit: the multiply-adds then address `x` by base and
        // offset, not base + scaled index, which Intel cores split into two micro-ops each (16
        // tokens, 4096² 2x8, 2 threads, medians of 6 alternating runs: 3.54 → 3.39 ms; the pairs
        // below showed no difference and keep their indexed loop).
        let units = codes.len() / (2 * m);
        assert!(
            xs.len() >= units * t && t0 + T <= t,
            "x block of the row's units"
        );
        let mut xp = xs.as_ptr().wrapping_add(t0);
        for c in codes.chunks_exact(2 * m) {
            let (c0, c1) = c.split_at(m);
            let w = s.join(tiles.books.group(s, c0), tiles.books.group(s, c1));
            // SAFETY: at unit `u < units`, `xp = xs + u·t + t0`, and `u·t + t0 + tt < (u + 1)·t ≤
            // xs.len()` for `tt < T` (asserted), so the element is in `xs` and initialised.
            unroll!(T, |tt| a[tt] =
                s.fma(w, s.load(unsafe { &*xp.add(tt) }), a[tt]));
            xp = xp.wrapping_add(t);
        }
        for u in full..self.u1 {
            let w = tiles.tile(s, self.o, u);
            let x = &self.xu[u * t + t0..][..T];
            unroll!(T, |tt| a[tt] = s.fma(w, s.load(&x[tt]), a[tt]));
        }
        unroll!(T, |tt| s.store(a[tt], &mut acc[tt]));
    }
}

impl<S: Lanes16, const M: usize, const B8: bool> FmaRows<'_, S, M, B8> {
    /// [`TokenBlock::run`] for rows `o` (into `acc_a`) and `o + 1` (into `acc_b`) at once: each
    /// load of `x` serves two multiply-adds (a load per multiply-add bounded the one-row loop);
    /// every lane's chain is the one-row chain.
    #[inline(always)]
    fn run_pair<const T: usize>(&self, t0: usize, acc_a: &mut [[f32; L]], acc_b: &mut [[f32; L]]) {
        let s = self.s;
        let tiles = self.tiles;
        let (m, n_ig, t) = (tiles.books.m(), tiles.n_ig, self.t);
        let mut a = [s.load(&acc_a[0]); T];
        let mut b = [s.load(&acc_b[0]); T];
        unroll!(T, |tt| a[tt] = s.load(&acc_a[tt]));
        unroll!(T, |tt| b[tt] = s.load(&acc_b[tt]));
        let full = self.u1.min(n_ig / 2).max(self.u0);
        let rows = &tiles.codes[self.o * n_ig * m..][..2 * n_ig * m];
        let (row_a, row_b) = rows.split_at(n_ig * m);
        let span = 2 * self.u0 * m..2 * full * m;
        let xs = &self.xu[self.u0 * t..full * t];
        for ((ca, cb), xt) in row_a[span.clone()]
            .chunks_exact(2 * m)
            .zip(row_b[span].chunks_exact(2 * m))
            .zip(xs.chunks_exact(t))
        {
            let (ca0, ca1) = ca.split_at(m);
            let (cb0, cb1) = cb.split_at(m);
            let wa = s.join(tiles.books.group(s, ca0), tiles.books.group(s, ca1));
            let wb = s.join(tiles.books.group(s, cb0), tiles.books.group(s, cb1));
            let x = &xt[t0..t0 + T];
            unroll!(T, |tt| {
                let xv = s.load(&x[tt]);
                a[tt] = s.fma(wa, xv, a[tt]);
                b[tt] = s.fma(wb, xv, b[tt]);
            });
        }
        for u in full..self.u1 {
            let wa = tiles.tile(s, self.o, u);
            let wb = tiles.tile(s, self.o + 1, u);
            let x = &self.xu[u * t + t0..][..T];
            unroll!(T, |tt| {
                let xv = s.load(&x[tt]);
                a[tt] = s.fma(wa, xv, a[tt]);
                b[tt] = s.fma(wb, xv, b[tt]);
            });
        }
        unroll!(T, |tt| s.store(a[tt], &mut acc_a[tt]));
        unroll!(T, |tt| s.store(b[tt], &mut acc_b[tt]));
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

    /// The backend this CPU runs gives the portable backend's bits (fused multiply-adds in both),
    /// for odd input groups (a half last unit), every token-block size, rows in pairs and alone
    /// (an odd row count), `M = 1, 2, 3, 4` and codebooks of 2^4, 2^8 (byte-indexed tables) and
    /// 2^16 entries.
    #[test]
    fn every_backend_gives_the_portable_bits() {
        let mut rng = StdRng::seed_from_u64(21);
        for ((m, nbits), rows) in [(1, 8), (2, 8), (3, 4), (4, 8), (1, 16), (2, 8)]
            .into_iter()
            .zip([70, 70, 70, 70, 70, 67])
        {
            let layer = random_layer(&mut rng, m, nbits, 8, 1, 7, rows, false);
            let units = layer.in_groups().div_ceil(2);
            for t in [1usize, 3, 5, 8, 16, 23, 40] {
                let x = Mat::from_fn(t, layer.in_features, |_, _| rng.random_range(-1.0f32..1.0));
                let dy = Mat::from_fn(t, layer.out_features, |_, _| rng.random_range(-1.0f32..1.0));
                let y = forward(&layer, x.as_ref());
                let dx = backward(&layer, dy.as_ref());
                // The portable backend on the same layouts, one task for everything.
                let mut xu = vec![[0f32; L]; units * t];
                for tt in 0..t {
                    for i in 0..layer.in_features {
                        xu[(i / L) * t + tt][i % L] = x[(tt, i)];
                    }
                }
                let mut out = vec![0f32; layer.out_features * t];
                for (ci, chunk) in out.chunks_mut(ROWS_PER_TASK * t).enumerate() {
                    forward_m(
                        Portable,
                        TOKENS_AVX2,
                        &layer,
                        &xu,
                        t,
                        ci * ROWS_PER_TASK,
                        chunk,
                    );
                }
                let sdy = feature_major_scaled(dy.as_ref(), &layer.scales, 1);
                let mut lanes = vec![[0f32; L]; units * t];
                backward_m(Portable, TOKENS_AVX2, &layer, &sdy, t, 0, &mut lanes);
                for tt in 0..t {
                    for o in 0..layer.out_features {
                        assert_eq!(
                            y[(tt, o)].to_bits(),
                            out[o * t + tt].to_bits(),
                            "M {m} t {t}"
                        );
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
