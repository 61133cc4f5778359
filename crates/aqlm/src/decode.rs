//! Bit-exact decoding of an [`AqlmLayer`] to a dense weight (`aqlm.md` §1.1).
//!
//! Rule (aqlm's `_dequantize_weight` on the `f32` CPU path): for every tile,
//! `acc: f32 = 0; for m ascending { acc += codebooks[m][code] }; w = acc · scale`.

use faer::Mat;

use crate::kernels::simd::multiversion;
use crate::layer::AqlmLayer;
use crate::storage::FloatDtype;

impl AqlmLayer {
    /// Sum of the selected codebook entries of tile `(o, j)` without the scale:
    /// `out[a·ig + b] = Σ_{m ascending} codebooks[m][codes[o][j][m]][a][b]` (f32, from 0).
    #[inline]
    pub(crate) fn group_sum(&self, o: usize, j: usize, out: &mut [f32]) {
        let s = &self.scheme;
        let (m, k, g) = (s.num_codebooks, s.codebook_size(), s.group_len());
        let codes = &self.codes[(o * self.in_groups() + j) * m..][..m];
        out.fill(0.0);
        for (mm, &c) in codes.iter().enumerate() {
            let entry = &self.codebooks[(mm * k + usize::from(c)) * g..][..g];
            for (d, &e) in out.iter_mut().zip(entry) {
                *d += e;
            }
        }
    }

    /// [`AqlmLayer::group_sum`] for tiles of exactly `G = og·ig` values, returned by value.
    #[inline(always)]
    pub(crate) fn group_sum_fixed<const G: usize>(&self, o: usize, j: usize) -> [f32; G] {
        let m = self.scheme.num_codebooks;
        let k = self.scheme.codebook_size();
        let codes = &self.codes[(o * self.in_groups() + j) * m..][..m];
        let (cb, _) = self.codebooks.as_chunks::<G>();
        let mut out = [0f32; G];
        for (mm, &c) in codes.iter().enumerate() {
            let e = &cb[mm * k + usize::from(c)];
            for b in 0..G {
                out[b] += e[b];
            }
        }
        out
    }

    /// The `M` codebooks as tables of 256 entries of eight values, when the layer has exactly
    /// `M` codebooks of 256 entries and groups of eight values (`og·ig = 8`); else `None`.
    ///
    /// A layer's codes are below its codebook size ([`AqlmLayer::new`] checks), so a code's low
    /// byte indexes these tables exactly, with no bounds check: `tables[m][usize::from(c as u8)]`.
    pub(crate) fn byte_tables<const M: usize>(&self) -> Option<&[[[f32; 8]; 256]; M]> {
        let s = &self.scheme;
        if s.codebook_size() != 256 || s.num_codebooks != M || s.group_len() != 8 {
            return None;
        }
        self.codebooks
            .as_chunks::<8>()
            .0
            .as_chunks::<256>()
            .0
            .first_chunk::<M>()
    }

    /// Decodes output groups `o0..o1` into `out`, row-major `[(o1−o0)·og, in_features]`.
    pub(crate) fn decode_rows_into(&self, o0: usize, o1: usize, out: &mut [f32]) {
        self.decode_block_into(CodeOrder::ByRow, o0, o1, 0, self.in_groups(), out);
    }

    /// Decodes the block of output groups `o0..o1` × input groups `j0..j1` into `out`,
    /// row-major `[(o1−o0)·og, (j1−j0)·ig]`, bit-identical to [`AqlmLayer::decode`], reading
    /// the codes in `order` where the layer has the `og = 1`, `ig = 8` decoder (the others read
    /// a row's codes): [`CodeOrder::ByInput`] for blocks of few input groups and many rows,
    /// whose codes would be read with a stride of a whole row per tile in the layer's order.
    pub(crate) fn decode_block_into(
        &self,
        order: CodeOrder,
        o0: usize,
        o1: usize,
        j0: usize,
        j1: usize,
        out: &mut [f32],
    ) {
        let s = &self.scheme;
        if s.out_group_size == 1 && s.in_group_size == 8 {
            decode_block_g8(self, order, o0, o1, j0, j1, out);
            return;
        }
        let (og, ig) = (s.out_group_size, s.in_group_size);
        let width = (j1 - j0) * ig;
        let mut tile = vec![0f32; s.group_len()];
        for o in o0..o1 {
            let scale = self.scales[o];
            for j in j0..j1 {
                self.group_sum(o, j, &mut tile);
                for a in 0..og {
                    let row = &mut out[((o - o0) * og + a) * width + (j - j0) * ig..][..ig];
                    for (d, &v) in row.iter_mut().zip(&tile[a * ig..(a + 1) * ig]) {
                        *d = v * scale;
                    }
                }
            }
        }
    }

    /// The dense weight `W [out_features, in_features]` in `f32`, bit for bit what aqlm's
    /// `_dequantize_weight` gives on the `f32` path (HF on CPU): `W = fl(fl(Σ_m cb_m) · s)`.
    pub fn decode(&self) -> Mat<f32> {
        let (o, i) = (self.out_features, self.in_features);
        let mut buf = vec![0f32; o * i];
        self.decode_rows_into(0, self.out_groups(), &mut buf);
        Mat::from_fn(o, i, |r, c| buf[r * i + c])
    }

    /// The dense weight as aqlm computes it when the model dtype is `dtype` (e.g. an `f16`
    /// model on GPU): the codebook sum is accumulated in `f32`, rounded to `dtype`, multiplied
    /// by the scale in `f32` and rounded to `dtype` again (`aqlm.md` §1.1). For
    /// [`FloatDtype::F32`] this equals [`AqlmLayer::decode`].
    pub fn decode_in_dtype(&self, dtype: FloatDtype) -> Mat<f32> {
        let s = &self.scheme;
        let (og, ig) = (s.out_group_size, s.in_group_size);
        let mut tile = vec![0f32; s.group_len()];
        let mut w = Mat::<f32>::zeros(self.out_features, self.in_features);
        for o in 0..self.out_groups() {
            let scale = dtype.round(self.scales[o]);
            for j in 0..self.in_groups() {
                self.group_sum(o, j, &mut tile);
                for a in 0..og {
                    for b in 0..ig {
                        let v = dtype.round(tile[a * ig + b]);
                        w[(o * og + a, j * ig + b)] = dtype.round(v * scale);
                    }
                }
            }
        }
        w
    }
}

/// Where the `og = 1`, `ig = 8` block decoder reads its codes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeOrder {
    /// The layer's `[Og, Ig, M]` codes (a row's codes contiguous).
    ByRow,
    /// [`AqlmLayer::codes_by_input`], `[Ig, Og, M]` (an input group's codes contiguous).
    ByInput,
}

multiversion! {
max = avx2;
/// [`AqlmLayer::decode_block_into`] for `og = 1`, `ig = 8` (one 8-float vector per tile), with
/// the codebook count unrolled for `M = 1, 2`: the decode of the many-token kernels.
fn decode_block_g8(
    layer: &AqlmLayer,
    order: CodeOrder,
    o0: usize,
    o1: usize,
    j0: usize,
    j1: usize,
    out: &mut [f32],
) {
    match layer.scheme.num_codebooks {
        1 => decode_block_g8_m::<1>(layer, order, o0, o1, j0, j1, out),
        2 => decode_block_g8_m::<2>(layer, order, o0, o1, j0, j1, out),
        _ => decode_block_g8_any(layer, o0, o1, j0, j1, out),
    }
}
}

/// [`decode_block_g8`] with `M` known at compile time: per tile `acc = 0`, `+= cb_m[c]` for
/// `m` ascending, then `· scale`. Codebooks of 256 entries are read as byte-indexed tables
/// ([`AqlmLayer::byte_tables`]): no bounds check per tile.
#[inline(always)]
fn decode_block_g8_m<const M: usize>(
    layer: &AqlmLayer,
    order: CodeOrder,
    o0: usize,
    o1: usize,
    j0: usize,
    j1: usize,
    out: &mut [f32],
) {
    let block = G8Block {
        layer,
        order,
        rows: o0..o1,
        groups: j0..j1,
    };
    if let Some(tables) = layer.byte_tables::<M>() {
        block.fill(out, |c: &[u16; M]| {
            let mut acc = [0f32; 8];
            for (t, &code) in tables.iter().zip(c) {
                // The low byte is the code (see `byte_tables`).
                let e = &t[usize::from(code as u8)];
                for b in 0..8 {
                    acc[b] += e[b];
                }
            }
            acc
        });
    } else {
        let k = layer.scheme.codebook_size();
        let (cb, _) = layer.codebooks.as_chunks::<8>();
        block.fill(out, |c: &[u16; M]| {
            let mut acc = [0f32; 8];
            for (mm, &code) in c.iter().enumerate() {
                let e = &cb[mm * k + usize::from(code)];
                for b in 0..8 {
                    acc[b] += e[b];
                }
            }
            acc
        });
    }
}

/// A block of output rows × input groups of an `og = 1`, `ig = 8` layer, and where its codes
/// are read from.
struct G8Block<'a> {
    layer: &'a AqlmLayer,
    order: CodeOrder,
    rows: std::ops::Range<usize>,
    groups: std::ops::Range<usize>,
}

impl G8Block<'_> {
    /// Writes `out[o][j] = sum(codes of (o, j)) · scale_o`, row-major `[rows, groups·8]`, with
    /// `sum` the unscaled tile of one group's `M` codes.
    ///
    /// Row by row; a row's codes are a slice of the layer's codes ([`CodeOrder::ByRow`]), or one
    /// element of each input group's column, a slice of [`AqlmLayer::codes_by_input`]
    /// ([`CodeOrder::ByInput`]). No strided iterator, no index arithmetic per tile: the forward's
    /// decode went from 17 to 12 instructions per tile (its share of a 64-token forward 14.8% →
    /// 13.9%, the rest is the stores; forward 8.80–8.89 → 8.64–8.68 ms, input gradient 9.62–9.72
    /// → 9.53–9.62, best of 40, alternating runs). A loop down the columns in strips of two
    /// groups was slower for the input gradient (10.15–10.49 ms).
    #[inline(always)]
    fn fill<const M: usize>(&self, out: &mut [f32], sum: impl Fn(&[u16; M]) -> [f32; 8]) {
        let layer = self.layer;
        let (rows, groups) = (self.rows.clone(), self.groups.clone());
        let width = groups.len();
        let (out8, _) = out.as_chunks_mut::<8>();
        let scales = &layer.scales[rows.clone()];
        match self.order {
            CodeOrder::ByRow => {
                let (codes, _) = layer.codes.as_chunks::<M>();
                let n_ig = layer.in_groups();
                for ((o, row), &scale) in rows.zip(out8.chunks_exact_mut(width)).zip(scales) {
                    let row_codes = &codes[o * n_ig + groups.start..][..width];
                    for (d, c) in row.iter_mut().zip(row_codes) {
                        *d = sum(c).map(|v| v * scale);
                    }
                }
            }
            CodeOrder::ByInput => {
                let (codes, _) = layer.codes_by_input().as_chunks::<M>();
                let n_og = layer.out_groups();
                let columns: Vec<&[[u16; M]]> = groups
                    .clone()
                    .map(|j| &codes[j * n_og + rows.start..][..rows.len()])
                    .collect();
                for ((r, row), &scale) in out8.chunks_exact_mut(width).enumerate().zip(scales) {
                    for (d, col) in row.iter_mut().zip(&columns) {
                        *d = sum(&col[r]).map(|v| v * scale);
                    }
                }
            }
        }
    }
}

/// [`decode_block_g8`] for any `M`.
#[inline(always)]
fn decode_block_g8_any(
    layer: &AqlmLayer,
    o0: usize,
    o1: usize,
    j0: usize,
    j1: usize,
    out: &mut [f32],
) {
    let (out8, _) = out.as_chunks_mut::<8>();
    let width = j1 - j0;
    for (o, row) in (o0..o1).zip(out8.chunks_exact_mut(width)) {
        let scale = layer.scales[o];
        for (d, j) in row.iter_mut().zip(j0..j1) {
            let tile = layer.group_sum_fixed::<8>(o, j);
            for b in 0..8 {
                d[b] = tile[b] * scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::CodeOrder;
    use crate::kernels::tests::random_layer;
    use crate::{AqlmLayer, AqlmScheme};

    /// The block decoders (row blocks, column blocks, the `ig = 8` fast paths for `M = 1, 2`
    /// with byte-indexed 256-entry codebooks and without, and the generic one) give exactly the
    /// bits of the corresponding part of the whole-weight decode, written by an independent loop
    /// over [`AqlmLayer::group_sum`].
    #[test]
    fn block_decoders_match_the_tile_rule_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(11);
        for (m, nbits, ig, og) in [
            (1, 8, 8, 1),
            (2, 8, 8, 1),
            (2, 4, 8, 1),
            (3, 4, 8, 1),
            (2, 3, 4, 2),
        ] {
            let layer = random_layer(&mut rng, m, nbits, ig, og, 6, 5, false);
            let (rows, cols) = (layer.out_features, layer.in_features);
            let mut want = vec![0f32; rows * cols];
            let mut tile = vec![0f32; og * ig];
            for o in 0..layer.out_groups() {
                for j in 0..layer.in_groups() {
                    layer.group_sum(o, j, &mut tile);
                    for a in 0..og {
                        for b in 0..ig {
                            want[(o * og + a) * cols + j * ig + b] =
                                tile[a * ig + b] * layer.scales[o];
                        }
                    }
                }
            }
            let w = layer.decode();
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(w[(r, c)].to_bits(), want[r * cols + c].to_bits());
                }
            }
            let (j0, j1) = (2, 5);
            let width = (j1 - j0) * ig;
            let mut got = vec![0f32; rows * width];
            layer.decode_block_into(CodeOrder::ByInput, 0, layer.out_groups(), j0, j1, &mut got);
            for r in 0..rows {
                for c in 0..width {
                    let v = want[r * cols + j0 * ig + c];
                    assert_eq!(got[r * width + c].to_bits(), v.to_bits(), "{m}x{nbits}");
                }
            }
            let (o0, o1) = (1, 4);
            let mut got = vec![0f32; (o1 - o0) * og * cols];
            layer.decode_rows_into(o0, o1, &mut got);
            assert!(
                got.iter()
                    .zip(&want[o0 * og * cols..o1 * og * cols])
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
    }

    #[test]
    fn decodes_out_group_layout() {
        // og = 2, ig = 1, one codebook of 1 bit: entry c is the 2×1 tile [c+1, −(c+1)].
        let s = AqlmScheme::new(1, 1, 1, 2).unwrap();
        let cb = vec![1.0, -1.0, 2.0, -2.0];
        let layer = AqlmLayer::new(2, 2, s, vec![0, 1], cb, vec![3.0], None).unwrap();
        let w = layer.decode();
        assert_eq!(
            [w[(0, 0)], w[(1, 0)], w[(0, 1)], w[(1, 1)]],
            [3.0, -3.0, 6.0, -6.0]
        );
        let f16 = layer.decode_in_dtype(crate::FloatDtype::F16);
        assert_eq!(f16, w);
    }
}
