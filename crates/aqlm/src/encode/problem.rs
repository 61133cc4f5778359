//! The encoder's working data: group layout, the grouped weight and the current codes,
//! codebooks and scales, with the reference decode and the plain squared error.

use rayon::prelude::*;

/// Number of groups per parallel work item. Fixed (never derived from the thread count) so that
/// every reduction happens in the same order whatever the pool size.
pub(crate) const GROUP_CHUNK: usize = 512;

/// Sizes of one encoding problem (notation of `aqlm.md`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    /// `O`, rows of `W`.
    pub(crate) out_features: usize,
    /// `I`, columns of `W`.
    pub(crate) in_features: usize,
    /// `og`.
    pub(crate) og: usize,
    /// `ig`.
    pub(crate) ig: usize,
    /// `Og = O/og`.
    pub(crate) n_out: usize,
    /// `Ig = I/ig`.
    pub(crate) n_in: usize,
    /// `d = og·ig`, scalars per group.
    pub(crate) d: usize,
    /// `M`.
    pub(crate) m: usize,
    /// `K = 2^B`.
    pub(crate) k: usize,
}

impl Layout {
    /// Number of groups `Og·Ig`; group `g = o·Ig + j` is the tile `W[o·og.., j·ig..]`.
    pub(crate) fn groups(&self) -> usize {
        self.n_out * self.n_in
    }
}

/// Codes `[G, M]`, codebooks `[M, K, d]` and scales `[Og]`, the layouts of [`super::Encoded`].
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub(crate) codes: Vec<u16>,
    pub(crate) codebooks: Vec<f32>,
    pub(crate) scales: Vec<f32>,
}

impl State {
    /// `out = Σ_{m ascending} C_m[codes[g][m]]` summed in f32 (the unscaled decode of group g).
    pub(crate) fn decode_group_unscaled(&self, l: &Layout, g: usize, out: &mut [f32]) {
        out.fill(0.0);
        let codes = &self.codes[g * l.m..(g + 1) * l.m];
        for (m, &c) in codes.iter().enumerate() {
            let e = &self.codebooks[(m * l.k + c as usize) * l.d..][..l.d];
            for (o, &v) in out.iter_mut().zip(e) {
                *o += v;
            }
        }
    }

    /// The decoded weight `Ŵ [O, I]` row-major, exactly as the AQLM convention:
    /// `Ŵ[o·og+a][j·ig+b] = fl32(scales[o] · Σ_m codebooks[m][codes[o][j][m]][a][b])`.
    pub(crate) fn decode_dense(&self, l: &Layout) -> Vec<f32> {
        let mut out = vec![0.0f32; l.out_features * l.in_features];
        out.par_chunks_mut(l.og * l.in_features)
            .enumerate()
            .for_each(|(o, rows)| {
                let mut buf = vec![0.0f32; l.d];
                let s = self.scales[o];
                for j in 0..l.n_in {
                    self.decode_group_unscaled(l, o * l.n_in + j, &mut buf);
                    for a in 0..l.og {
                        for b in 0..l.ig {
                            rows[a * l.in_features + j * l.ig + b] = buf[a * l.ig + b] * s;
                        }
                    }
                }
            });
        out
    }
}

/// Cuts `W` (row-major `[O, I]`, as f32) into groups `[G, d]`, element `a·ig + b` of group
/// `o·Ig + j` being `W[o·og + a][j·ig + b]`.
pub(crate) fn group_rows(w: &[f32], l: &Layout) -> Vec<f32> {
    let mut out = vec![0.0f32; l.groups() * l.d];
    for o in 0..l.n_out {
        for j in 0..l.n_in {
            let g = o * l.n_in + j;
            for a in 0..l.og {
                let src = &w[(o * l.og + a) * l.in_features + j * l.ig..][..l.ig];
                out[g * l.d + a * l.ig..][..l.ig].copy_from_slice(src);
            }
        }
    }
    out
}

/// Initial scales `s_o = ‖W[o-group, :]‖₂ + 1e-9` (aqlm `scale_nbits = 0`).
pub(crate) fn initial_scales(w: &[f32], l: &Layout) -> Vec<f32> {
    w.chunks_exact(l.n_in * l.d)
        .map(|row| {
            let ss: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            (ss.sqrt() + 1e-9) as f32
        })
        .collect()
}

/// `Σ_g ‖w_g − ŵ_g‖²` in f64, `ŵ` decoded by the AQLM convention (f32 sum, then f32 scale).
pub(crate) fn plain_sq_error(w: &[f32], st: &State, l: &Layout) -> f64 {
    let partial: Vec<f64> = (0..l.groups().div_ceil(GROUP_CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut buf = vec![0.0f32; l.d];
            let mut acc = 0.0f64;
            for g in c * GROUP_CHUNK..((c + 1) * GROUP_CHUNK).min(l.groups()) {
                st.decode_group_unscaled(l, g, &mut buf);
                let s = st.scales[g / l.n_in];
                for (&x, &y) in w[g * l.d..][..l.d].iter().zip(&buf) {
                    let e = f64::from(x) - f64::from(y * s);
                    acc += e * e;
                }
            }
            acc
        })
        .collect();
    partial.iter().sum()
}

/// Closed-form scale refit per output group for the plain objective:
/// `s_o = Σ_j ⟨w_oj, ĉ_oj⟩ / Σ_j ‖ĉ_oj‖²` with `ĉ` the unscaled decode (kept if the decode is 0).
pub(crate) fn refit_scales_plain(w: &[f32], st: &mut State, l: &Layout) {
    let new: Vec<f32> = (0..l.n_out)
        .into_par_iter()
        .map(|o| {
            let mut buf = vec![0.0f32; l.d];
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for g in o * l.n_in..(o + 1) * l.n_in {
                st.decode_group_unscaled(l, g, &mut buf);
                for (&x, &y) in w[g * l.d..][..l.d].iter().zip(&buf) {
                    num += f64::from(x) * f64::from(y);
                    den += f64::from(y) * f64::from(y);
                }
            }
            if den > 0.0 {
                (num / den) as f32
            } else {
                st.scales[o]
            }
        })
        .collect();
    st.scales = new;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_and_decode_follow_the_convention() {
        let l = Layout {
            out_features: 4,
            in_features: 6,
            og: 2,
            ig: 3,
            n_out: 2,
            n_in: 2,
            d: 6,
            m: 2,
            k: 2,
        };
        let w: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let gw = group_rows(&w, &l);
        // group (o=1, j=0): rows 2,3, cols 0..3
        assert_eq!(&gw[2 * 6..3 * 6], &[12.0, 13.0, 14.0, 18.0, 19.0, 20.0]);
        let st = State {
            codes: vec![0, 1, 1, 0, 0, 0, 1, 1],
            codebooks: (0..24).map(|v| v as f32 * 0.5).collect(),
            scales: vec![2.0, -1.0],
        };
        let dense = st.decode_dense(&l);
        // W[3][4] = scales[1] * (cb[0][codes[1][1][0]=1][1][1] + cb[1][1][1][1])
        let expect = -((6.0 + 4.0) * 0.5 + (18.0 + 4.0) * 0.5);
        assert_eq!(dense[3 * 6 + 4], expect);
    }
}
