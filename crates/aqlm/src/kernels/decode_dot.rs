//! Decode-and-dot: for each tile `(o, j)`, sum its codebook entries (`Σ_m cb_m[c]`) and dot
//! it with the input group (forward) or add it, weighted by the scaled `dy`, into the input
//! gradient. Suited to large codebooks (1x16: the 2 MiB codebook stays in cache) and few tokens.
//!
//! Forward: `y[t, r] = s_o · Σ_{b asc} lane[b]` with `lane[b] = Σ_{j asc} tile_j[a][b] · x[t, j·ig + b]`.
//! Input gradient: `dx[t, j·ig + b] = Σ_{o asc} Σ_{a asc} (s_o·dy[t, o·og + a]) · tile[a][b]`.
//!
//! For `og = 1`, `ig = 8` the forward from two tokens on and the input gradient are
//! [`decode_fma`](super::decode_fma)'s register kernel (its own order: sixteen lanes, fused
//! multiply-adds).

use faer::{Mat, MatRef};
use rayon::prelude::*;

use super::layout::{by_input_groups, from_feature_major, token_major};
use super::simd::multiversion;
use crate::layer::AqlmLayer;

/// Output rows per forward task (rounded to whole output groups).
const ROWS_PER_TASK: usize = 64;
/// Input columns per input-gradient task (rounded to whole input groups).
const COLS_PER_TASK: usize = 64;

/// Sum of the lanes in ascending order.
#[inline(always)]
fn lane_sum(l: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in l {
        s += v;
    }
    s
}

/// `x·Wᵀ` (no bias).
///
/// Per output row and token, `ig` lane accumulators `lane[b] += tile[a][b] · x[t, j·ig + b]`
/// run over `j` ascending (vertical SIMD, no horizontal sums in the loop); the result is
/// `s_o · Σ_{b ascending} lane[b]`.
pub(crate) fn forward(layer: &AqlmLayer, x: MatRef<'_, f32>) -> Mat<f32> {
    let t = x.nrows();
    if t > 1 && layer.fast_decode() {
        return super::decode_fma::forward(layer, x);
    }
    let og = layer.scheme.out_group_size;
    let xt = token_major(x);
    let groups = (ROWS_PER_TASK / og).max(1);
    let mut out = vec![0f32; layer.out_features * t];
    out.par_chunks_mut(groups * og * t)
        .enumerate()
        .for_each(|(ci, chunk)| forward_task(layer, &xt, t, ci * groups, chunk));
    from_feature_major(&out, t, layer.out_features)
}

multiversion! {
max = avx2;
/// Output groups `o0..` into `chunk` (`[o][a][t]`).
fn forward_task(layer: &AqlmLayer, xt: &[f32], t: usize, o0: usize, chunk: &mut [f32]) {
    let sch = &layer.scheme;
    let (m, og, ig, g) = (sch.num_codebooks, sch.out_group_size, sch.in_group_size, sch.group_len());
    if og == 1 && ig == 8 && t == 1 {
        match m {
            1 => return forward_mx_g8_t1::<1>(layer, xt, o0, chunk),
            2 => return forward_mx_g8_t1::<2>(layer, xt, o0, chunk),
            4 => return forward_mx_g8_t1::<4>(layer, xt, o0, chunk),
            _ => {}
        }
    }
    if og == 1 && ig == 8 {
        forward_g8(layer, xt, t, o0, chunk);
        return;
    }
    let (n_in, n_ig) = (layer.in_features, layer.in_groups());
    let mut tile = vec![0f32; g];
    let mut lanes = vec![0f32; og * t * ig];
    for (go, dst) in chunk.chunks_mut(og * t).enumerate() {
        let o = o0 + go;
        lanes.fill(0.0);
        for j in 0..n_ig {
            let tile: &[f32] = if m == 1 {
                let c = usize::from(layer.codes[o * n_ig + j]);
                &layer.codebooks[c * g..(c + 1) * g]
            } else {
                layer.group_sum(o, j, &mut tile);
                &tile
            };
            for a in 0..og {
                let w = &tile[a * ig..(a + 1) * ig];
                for tt in 0..t {
                    let xr = &xt[tt * n_in + j * ig..][..ig];
                    let l = &mut lanes[(a * t + tt) * ig..][..ig];
                    for b in 0..ig {
                        l[b] += w[b] * xr[b];
                    }
                }
            }
        }
        let s = layer.scales[o];
        for (d, l) in dst.iter_mut().zip(lanes.chunks_exact(ig)) {
            *d = lane_sum(l) * s;
        }
    }
}
}

/// The `og = 1`, `ig = 8` case of [`forward_task`] for any `M` and token count (reached for one
/// token with `M` other than 1, 2 and 4; several tokens go to [`decode_fma`](super::decode_fma)):
/// fixed-size lanes; same arithmetic, same order.
#[inline(always)]
fn forward_g8(layer: &AqlmLayer, xt: &[f32], t: usize, o0: usize, chunk: &mut [f32]) {
    let n_ig = layer.in_groups();
    let (x8, _) = xt.as_chunks::<8>(); // x8[tt·n_ig + j]
    let mut lanes = vec![[0f32; 8]; t];
    for (go, dst) in chunk.chunks_mut(t).enumerate() {
        let o = o0 + go;
        lanes.fill([0f32; 8]);
        for j in 0..n_ig {
            let tile = layer.group_sum_fixed::<8>(o, j);
            for (tt, l) in lanes.iter_mut().enumerate() {
                let xr = &x8[tt * n_ig + j];
                for b in 0..8 {
                    l[b] += tile[b] * xr[b];
                }
            }
        }
        let s = layer.scales[o];
        for (d, l) in dst.iter_mut().zip(&lanes) {
            *d = lane_sum(l) * s;
        }
    }
}

/// The tile of codes `c`: `Σ_{m ascending} cb_m[c_m]`, read from the byte-indexed `tables`
/// when the layer has them ([`AqlmLayer::byte_tables`]), else from the codebooks `cb` (`k`
/// entries each). A function, not a closure, so that it is always inlined: as a closure it was
/// compiled out of line, one call per tile (see [`forward_mx_g8_t1`]).
///
/// Starting from the first entry instead of 0 changes no bit (`0 + e = e`, up to the sign of a
/// zero, which no sum in the kernels can tell) and spares `M = 1` an addition.
#[inline(always)]
fn tile_sum<const M: usize>(
    tables: Option<&[[[f32; 8]; 256]; M]>,
    cb: &[[f32; 8]],
    k: usize,
    c: &[u16; M],
) -> [f32; 8] {
    if let Some(tables) = tables {
        // The low byte is the code (see `AqlmLayer::byte_tables`).
        let mut w = tables[0][usize::from(c[0] as u8)];
        for mm in 1..M {
            let e = &tables[mm][usize::from(c[mm] as u8)];
            for b in 0..8 {
                w[b] += e[b];
            }
        }
        return w;
    }
    let mut w = cb[usize::from(c[0])];
    for (mm, &cm) in c.iter().enumerate().skip(1) {
        let e = &cb[mm * k + usize::from(cm)];
        for b in 0..8 {
            w[b] += e[b];
        }
    }
    w
}

/// The `M`-codebook `og = 1`, `ig = 8` one-token case of [`forward_task`] (1x16, 1x8, 2x8, 4x8),
/// four rows interleaved (four independent chains of multiply-adds); the tile is the sum of
/// [`AqlmLayer::group_sum_fixed`] (codebooks ascending): same arithmetic, same order. Codebooks
/// of 256 entries are read as byte-indexed tables ([`AqlmLayer::byte_tables`]): SmolLM2's 576 → 192
/// projection in 2x8, one token, one thread, 13.1 → 10.3 µs (medians of 3 alternating runs).
#[inline(always)]
fn forward_mx_g8_t1<const M: usize>(layer: &AqlmLayer, xt: &[f32], o0: usize, chunk: &mut [f32]) {
    const R: usize = 4;
    let n_ig = layer.in_groups();
    let k = layer.scheme.codebook_size();
    let (cb, _) = layer.codebooks.as_chunks::<8>();
    let (x8, _) = xt.as_chunks::<8>();
    let x8 = &x8[..n_ig];
    let row = |o: usize| {
        layer.codes[o * n_ig * M..(o + 1) * n_ig * M]
            .as_chunks::<M>()
            .0
    };
    let tables = layer.byte_tables::<M>();
    let tile = |c: &[u16; M]| tile_sum(tables, cb, k, c);
    let mut o = o0;
    let mut chunks = chunk.chunks_exact_mut(R);
    for dst in &mut chunks {
        let rows: [&[[u16; M]]; R] = std::array::from_fn(|r| row(o + r));
        let mut lanes = [[0f32; 8]; R];
        for (j, xj) in x8.iter().enumerate() {
            for r in 0..R {
                let w = tile(&rows[r][j]);
                for b in 0..8 {
                    lanes[r][b] += w[b] * xj[b];
                }
            }
        }
        for r in 0..R {
            dst[r] = lane_sum(&lanes[r]) * layer.scales[o + r];
        }
        o += R;
    }
    for d in chunks.into_remainder() {
        let mut lanes = [0f32; 8];
        for (xj, c) in x8.iter().zip(row(o)) {
            let w = tile(c);
            for b in 0..8 {
                lanes[b] += w[b] * xj[b];
            }
        }
        *d = lane_sum(&lanes) * layer.scales[o];
        o += 1;
    }
}

/// `dy·W`.
pub(crate) fn backward(layer: &AqlmLayer, dy: MatRef<'_, f32>) -> Mat<f32> {
    if layer.fast_decode() {
        return super::decode_fma::backward(layer, dy);
    }
    let groups = (COLS_PER_TASK / layer.scheme.in_group_size).max(1);
    by_input_groups(layer, dy, groups, backward_task)
}

multiversion! {
max = avx2;
/// Input groups `j0..` of the input gradient into `chunk` (`[j][b][t]`).
fn backward_task(
    layer: &AqlmLayer,
    sdy: &[f32],
    codes_t: &[u16],
    t: usize,
    j0: usize,
    chunk: &mut [f32],
) {
    let sch = &layer.scheme;
    let (m, k, og, ig, g) =
        (sch.num_codebooks, sch.codebook_size(), sch.out_group_size, sch.in_group_size, sch.group_len());
    let n_og = layer.out_groups();
    let mut tile = vec![0f32; g];
    for (dj, dxj) in chunk.chunks_mut(ig * t).enumerate() {
        let j = j0 + dj;
        for o in 0..n_og {
            let codes = &codes_t[(j * n_og + o) * m..][..m];
            tile.fill(0.0);
            for (mm, &c) in codes.iter().enumerate() {
                let e = &layer.codebooks[(mm * k + usize::from(c)) * g..][..g];
                for (d, &v) in tile.iter_mut().zip(e) {
                    *d += v;
                }
            }
            for a in 0..og {
                let src = &sdy[(o * og + a) * t..][..t];
                for b in 0..ig {
                    let w = tile[a * ig + b];
                    for (d, &sv) in dxj[b * t..(b + 1) * t].iter_mut().zip(src) {
                        *d += w * sv;
                    }
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

    /// The interleaved one-token paths for `M = 1, 2, 4` give the bits of the general `ig = 8`
    /// loop, including a partial last block of rows.
    #[test]
    fn interleaved_one_token_rows_match_the_general_loop_bit_for_bit() {
        let mut rng = StdRng::seed_from_u64(5);
        for m in [1, 2, 4] {
            let layer = random_layer(&mut rng, m, 8, 8, 1, 9, 23, false);
            let x: Vec<f32> = (0..layer.in_features)
                .map(|i| (i as f32 * 0.21).cos())
                .collect();
            let (mut a, mut b) = (vec![0f32; 23], vec![0f32; 23]);
            match m {
                1 => forward_mx_g8_t1::<1>(&layer, &x, 0, &mut a),
                2 => forward_mx_g8_t1::<2>(&layer, &x, 0, &mut a),
                _ => forward_mx_g8_t1::<4>(&layer, &x, 0, &mut a),
            }
            forward_g8(&layer, &x, 1, 0, &mut b);
            assert!(
                a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
                "M = {m}"
            );
        }
    }
}
