//! Decode-and-dot: for each tile `(o, j)`, sum its codebook entries (`Σ_m cb_m[c]`) and dot
//! it with the input group (forward) or add it, weighted by the scaled `dy`, into the input
//! gradient. Suited to large codebooks (1x16: the 2 MiB codebook stays in cache) and few tokens.
//!
//! Forward: `y[t, r] = s_o · Σ_{j asc} ⟨tile_j[a], x[t, j-group]⟩` (dot with `b` ascending).
//! Input gradient: `dx[t, j·ig + b] = Σ_{o asc} Σ_{a asc} (s_o·dy[t, o·og + a]) · tile[a][b]`.

use faer::{Mat, MatRef};
use rayon::prelude::*;

use super::layout::{feature_major_scaled, from_feature_major, token_major};
use crate::layer::AqlmLayer;

/// Output rows per forward task (rounded to whole output groups).
const ROWS_PER_TASK: usize = 64;
/// Input columns per input-gradient task (rounded to whole input groups).
const COLS_PER_TASK: usize = 64;

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = 0f32;
    for (&x, &y) in a.iter().zip(b) {
        s += x * y;
    }
    s
}

/// `x·Wᵀ` (no bias).
pub(crate) fn forward(layer: &AqlmLayer, x: MatRef<'_, f32>) -> Mat<f32> {
    let t = x.nrows();
    let sch = &layer.scheme;
    let (m, og, ig, g) = (
        sch.num_codebooks,
        sch.out_group_size,
        sch.in_group_size,
        sch.group_len(),
    );
    let (n_in, n_ig) = (layer.in_features, layer.in_groups());
    let xt = token_major(x);
    let groups = (ROWS_PER_TASK / og).max(1);
    let mut out = vec![0f32; layer.out_features * t];
    out.par_chunks_mut(groups * og * t)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let o0 = ci * groups;
            let mut tile = vec![0f32; g];
            let mut acc = vec![0f32; og * t];
            for (go, dst) in chunk.chunks_mut(og * t).enumerate() {
                let o = o0 + go;
                acc.fill(0.0);
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
                            acc[a * t + tt] += dot(w, &xt[tt * n_in + j * ig..][..ig]);
                        }
                    }
                }
                let s = layer.scales[o];
                for (d, &v) in dst.iter_mut().zip(&acc) {
                    *d = v * s;
                }
            }
        });
    from_feature_major(&out, t, layer.out_features)
}

/// `dy·W`.
pub(crate) fn backward(layer: &AqlmLayer, dy: MatRef<'_, f32>) -> Mat<f32> {
    let t = dy.nrows();
    let sch = &layer.scheme;
    let (m, k, og, ig, g) = (
        sch.num_codebooks,
        sch.codebook_size(),
        sch.out_group_size,
        sch.in_group_size,
        sch.group_len(),
    );
    let n_og = layer.out_groups();
    let sdy = feature_major_scaled(dy, &layer.scales, og);
    let codes_t = layer.codes_by_input();
    let groups = (COLS_PER_TASK / ig).max(1);
    let mut out = vec![0f32; layer.in_features * t];
    out.par_chunks_mut(groups * ig * t)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let j0 = ci * groups;
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
        });
    from_feature_major(&out, t, layer.in_features)
}
