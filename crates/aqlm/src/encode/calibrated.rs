//! The output-aware objective `‖(W − Ŵ)Xᵀ‖² = tr(ΔW·H·ΔWᵀ)` with `H = XᵀX/N` (aqlm.md §3).
//!
//! Rows are independent, so each output group is searched on its own; within a row group the
//! in-groups are coupled through `H`, so the code search visits `(j, m)` pairs one at a time with
//! aqlm's incremental loss (`beam_search_xtx.py`). The codebook update minimises the same
//! quadratic with preconditioned conjugate gradients warm-started at the current codebooks
//! (each iterate lowers the objective), and the scales are refit in closed form.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::beam::Transposed;
use super::kernels::{argmin, dist_scores};
use super::problem::{Layout, State};

/// Rows per parallel matmul block (fixed, independent of the thread count).
const ROW_BLOCK: usize = 32;

/// The calibration data of one encoding: `H` (symmetrised) and the products that do not change.
pub(crate) struct Calib {
    /// `H [I, I]` row-major, f64.
    h: Vec<f64>,
    /// `H` as f32 for the code search.
    h32: Vec<f32>,
    /// `W [O, I]` row-major, f32 (the input weight).
    w: Vec<f32>,
    /// `W·H [O, I]` row-major.
    wh: Vec<f64>,
    /// `tr(W H Wᵀ)`.
    pub(crate) denom: f64,
}

impl Calib {
    /// Precomputes `W·H` and `tr(W H Wᵀ)`; `h` must be `[I, I]` row-major and symmetric.
    pub(crate) fn new(w: Vec<f32>, h: Vec<f64>, l: &Layout) -> Self {
        let wd: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
        let wh = mul_h(&wd, &h, l.in_features);
        let denom = wd.iter().zip(&wh).map(|(a, b)| a * b).sum();
        let h32 = h.iter().map(|&v| v as f32).collect();
        Self {
            h,
            h32,
            w,
            wh,
            denom,
        }
    }

    /// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` with `Ŵ` decoded by the AQLM convention.
    pub(crate) fn relative_error(&self, st: &State, l: &Layout) -> f64 {
        let dec = st.decode_dense(l);
        let delta: Vec<f64> = self
            .w
            .iter()
            .zip(&dec)
            .map(|(&a, &b)| f64::from(a) - f64::from(b))
            .collect();
        let z = mul_h(&delta, &self.h, l.in_features);
        delta.iter().zip(&z).map(|(a, b)| a * b).sum::<f64>() / self.denom
    }

    /// Closed-form scales per output group: `s_o = Σ_r ⟨W_r, (ĈH)_r⟩ / Σ_r ⟨Ĉ_r, (ĈH)_r⟩` over the
    /// rows `r` of the group, `Ĉ` the unscaled decode (kept where the denominator is 0).
    pub(crate) fn refit_scales(&self, st: &mut State, l: &Layout) {
        let c = unscaled_dense(st, l);
        let z = mul_h(&c, &self.h, l.in_features);
        let row = l.og * l.in_features;
        for o in 0..l.n_out {
            let r = o * row..(o + 1) * row;
            let num: f64 = self.w[r.clone()]
                .iter()
                .zip(&z[r.clone()])
                .map(|(&a, b)| f64::from(a) * b)
                .sum();
            let den: f64 = c[r.clone()].iter().zip(&z[r]).map(|(a, b)| a * b).sum();
            if den > 0.0 {
                st.scales[o] = (num / den) as f32;
            }
        }
    }

    /// Codebook update by `iters` Jacobi-preconditioned CG iterations on
    /// `min_C tr((W − S·P(C)) H (W − S·P(C))ᵀ)`, `P` the unscaled decode with fixed codes.
    pub(crate) fn update_codebooks(&self, st: &mut State, l: &Layout, iters: usize) {
        let n = l.m * l.k * l.d;
        let s: Vec<f64> = st.scales.iter().map(|&v| f64::from(v)).collect();
        let s2: Vec<f64> = s.iter().map(|v| v * v).collect();
        let apply = |x: &[f64]| {
            let p = decode_unscaled_f64(x, st, l);
            let z = mul_h(&p, &self.h, l.in_features);
            scatter(&z, &s2, st, l)
        };
        let rhs = scatter(&self.wh, &s, st, l);
        // Jacobi preconditioner: diag[m, c, a·ig+b] = Σ_{g uses (m,c)} s_o² H[jb, jb].
        let mut diag = vec![0.0f64; n];
        for g in 0..l.groups() {
            let (o, j) = (g / l.n_in, g % l.n_in);
            for (m, &c) in st.codes[g * l.m..][..l.m].iter().enumerate() {
                let base = (m * l.k + c as usize) * l.d;
                for a in 0..l.og {
                    for b in 0..l.ig {
                        let col = j * l.ig + b;
                        diag[base + a * l.ig + b] += s2[o] * self.h[col * l.in_features + col];
                    }
                }
            }
        }
        let inv: Vec<f64> = diag
            .iter()
            .map(|&v| if v > 0.0 { 1.0 / v } else { 0.0 })
            .collect();
        let mut x: Vec<f64> = st.codebooks.iter().map(|&v| f64::from(v)).collect();
        let ax = apply(&x);
        let mut r: Vec<f64> = rhs.iter().zip(&ax).map(|(a, b)| a - b).collect();
        let mut z: Vec<f64> = r.iter().zip(&inv).map(|(a, b)| a * b).collect();
        let mut p = z.clone();
        let mut rz: f64 = r.iter().zip(&z).map(|(a, b)| a * b).sum();
        for _ in 0..iters {
            if rz <= 0.0 || !rz.is_finite() {
                break;
            }
            let ap = apply(&p);
            let pap: f64 = p.iter().zip(&ap).map(|(a, b)| a * b).sum();
            if pap <= 0.0 || !pap.is_finite() {
                break;
            }
            let alpha = rz / pap;
            for i in 0..n {
                x[i] += alpha * p[i];
                r[i] -= alpha * ap[i];
                z[i] = r[i] * inv[i];
            }
            let rz_new: f64 = r.iter().zip(&z).map(|(a, b)| a * b).sum();
            let beta = rz_new / rz;
            rz = rz_new;
            for i in 0..n {
                p[i] = z[i] + beta * p[i];
            }
        }
        if x.iter().all(|v| v.is_finite()) {
            for (c, &v) in st.codebooks.iter_mut().zip(&x) {
                *c = v as f32;
            }
        }
    }

    /// Code search for every output group (see the module docs). `visits` lists `(j, m)` in
    /// visiting order; `beam` is the beam width per output group.
    pub(crate) fn search_codes(
        &self,
        st: &mut State,
        l: &Layout,
        visits: &[(usize, usize)],
        beam: usize,
    ) {
        let tr = Transposed::new(st, l);
        // q[j][m][c] = Σ_a C_m[c]_a H_jj C_m[c]_aᵀ.
        let q: Vec<f32> = (0..l.n_in)
            .into_par_iter()
            .flat_map_iter(|j| {
                let mut out = vec![0.0f32; l.m * l.k];
                for (mc, e) in st.codebooks.chunks_exact(l.d).enumerate() {
                    let mut acc = 0.0f64;
                    for a in 0..l.og {
                        let ea = &e[a * l.ig..][..l.ig];
                        for (b, &x) in ea.iter().enumerate() {
                            let hrow = &self.h[(j * l.ig + b) * l.in_features + j * l.ig..][..l.ig];
                            let hx: f64 =
                                hrow.iter().zip(ea).map(|(&h, &y)| h * f64::from(y)).sum();
                            acc += f64::from(x) * hx;
                        }
                    }
                    out[mc] = acc as f32;
                }
                out
            })
            .collect();
        let dec = st.decode_dense(l);
        let row = l.og * l.in_features;
        let ctx = SearchCtx {
            calib: self,
            st,
            l,
            tr: &tr,
            q: &q,
            visits,
            beam,
        };
        let new_codes: Vec<Vec<u16>> = (0..l.n_out)
            .into_par_iter()
            .map(|o| ctx.search_row(o, &dec[o * row..(o + 1) * row]))
            .collect();
        for (o, c) in new_codes.into_iter().enumerate() {
            st.codes[o * l.n_in * l.m..][..l.n_in * l.m].copy_from_slice(&c);
        }
    }
}

struct SearchCtx<'a> {
    calib: &'a Calib,
    st: &'a State,
    l: &'a Layout,
    tr: &'a Transposed,
    q: &'a [f32],
    visits: &'a [(usize, usize)],
    beam: usize,
}

struct BeamRow {
    codes: Vec<u16>,
    delta: Vec<f32>,
    loss: f64,
}

impl SearchCtx<'_> {
    fn entry(&self, m: usize, c: usize) -> &[f32] {
        let l = self.l;
        &self.st.codebooks[(m * l.k + c) * l.d..][..l.d]
    }

    /// `g = (Δ' H)[:, jsl]` flattened `[og, ig]`, with `Δ' = Δ + s·E_old` on the block `j`.
    fn gradient(&self, delta: &[f32], j: usize, s: f32, e_old: &[f32], g: &mut [f32]) {
        let l = self.l;
        let ni = l.in_features;
        for a in 0..l.og {
            let da = &delta[a * ni..][..ni];
            for b in 0..l.ig {
                let hrow = &self.calib.h32[(j * l.ig + b) * ni..][..ni];
                let mut acc = dot(hrow, da);
                let hjj = &hrow[j * l.ig..][..l.ig];
                acc += s * dot(hjj, &e_old[a * l.ig..][..l.ig]);
                g[a * l.ig + b] = acc;
            }
        }
    }

    fn search_row(&self, o: usize, dec_rows: &[f32]) -> Vec<u16> {
        let l = self.l;
        let ni = l.in_features;
        let row = l.og * ni;
        let codes0 = self.st.codes[o * l.n_in * l.m..][..l.n_in * l.m].to_vec();
        let s = self.st.scales[o];
        if s == 0.0 {
            return codes0;
        }
        let w = &self.calib.w[o * row..(o + 1) * row];
        let delta: Vec<f32> = w.iter().zip(dec_rows).map(|(a, b)| a - b).collect();
        let loss = if self.beam > 1 {
            let mut acc = 0.0f64;
            for a in 0..l.og {
                let da = &delta[a * ni..][..ni];
                for (i, &x) in da.iter().enumerate() {
                    acc += f64::from(x) * f64::from(dot(&self.calib.h32[i * ni..][..ni], da));
                }
            }
            acc
        } else {
            0.0
        };
        let mut beams = vec![BeamRow {
            codes: codes0,
            delta,
            loss,
        }];
        let mut g = vec![0.0f32; l.d];
        let mut sg = vec![0.0f32; l.d];
        let mut nrm = vec![0.0f32; l.k];
        let mut scores = vec![0.0f32; l.k];
        let mut cands: Vec<(f64, usize, usize)> = Vec::new();
        for &(j, m) in self.visits {
            let qjm = &self.q[(j * l.m + m) * l.k..][..l.k];
            for (n, &qv) in nrm.iter_mut().zip(qjm) {
                *n = s * s * qv;
            }
            cands.clear();
            for (bi, br) in beams.iter().enumerate() {
                let old = br.codes[j * l.m + m] as usize;
                let e_old = self.entry(m, old);
                self.gradient(&br.delta, j, s, e_old, &mut g);
                for (x, &v) in sg.iter_mut().zip(&g) {
                    *x = s * v;
                }
                // scores[c] = s² q[c] − 2s⟨C_c, g⟩; the loss of candidate c is Lp + scores[c].
                dist_scores(&sg, &self.tr.t[m], &nrm, &mut scores);
                if self.beam == 1 {
                    let (best, v) = argmin(&scores);
                    if v < scores[old] {
                        cands.push((0.0, bi, best));
                    }
                } else {
                    let lp = br.loss - f64::from(scores[old]);
                    cands.extend(
                        scores
                            .iter()
                            .enumerate()
                            .map(|(c, &v)| (lp + f64::from(v), bi, c)),
                    );
                }
            }
            if self.beam == 1 {
                if let (Some(&(_, _, c)), Some(br)) = (cands.first(), beams.first_mut()) {
                    self.apply_change(br, j, m, c, s);
                }
                continue;
            }
            cands.sort_unstable_by(|a, b| {
                a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
            });
            let mut next: Vec<BeamRow> = Vec::with_capacity(self.beam);
            for &(loss, bi, c) in &cands {
                let parent = &beams[bi];
                let idx = j * l.m + m;
                if next.iter().any(|n| {
                    n.codes[idx] as usize == c
                        && n.codes
                            .iter()
                            .zip(&parent.codes)
                            .enumerate()
                            .all(|(t, (x, y))| t == idx || x == y)
                }) {
                    continue;
                }
                let mut nb = BeamRow {
                    codes: parent.codes.clone(),
                    delta: parent.delta.clone(),
                    loss,
                };
                self.apply_change(&mut nb, j, m, c, s);
                nb.loss = loss;
                next.push(nb);
                if next.len() == self.beam {
                    break;
                }
            }
            beams = next;
        }
        beams.into_iter().next().map_or_else(
            || self.st.codes[o * l.n_in * l.m..][..l.n_in * l.m].to_vec(),
            |b| b.codes,
        )
    }

    /// Sets code `(j, m)` of a beam to `c` and updates its residual block.
    fn apply_change(&self, br: &mut BeamRow, j: usize, m: usize, c: usize, s: f32) {
        let l = self.l;
        let idx = j * l.m + m;
        let old = br.codes[idx] as usize;
        if old == c {
            return;
        }
        let (e_old, e_new) = (self.entry(m, old), self.entry(m, c));
        for a in 0..l.og {
            let blk = &mut br.delta[a * l.in_features + j * l.ig..][..l.ig];
            for ((v, &x), &y) in blk
                .iter_mut()
                .zip(&e_old[a * l.ig..])
                .zip(&e_new[a * l.ig..])
            {
                *v += s * (x - y);
            }
        }
        br.codes[idx] = c as u16;
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums in a fixed order (vectorisable, deterministic).
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for t in 0..8 {
            acc[t] += x[t] * y[t];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `X·H` for `X [rows, I]` row-major, in fixed row blocks (deterministic for any thread count).
pub(crate) fn mul_h(x: &[f64], h: &[f64], ni: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; x.len()];
    let hm = MatRef::from_row_major_slice(h, ni, ni);
    out.par_chunks_mut(ROW_BLOCK * ni)
        .zip(x.par_chunks(ROW_BLOCK * ni))
        .for_each(|(o, xb)| {
            let rows = xb.len() / ni;
            let dst = MatMut::from_row_major_slice_mut(o, rows, ni);
            let lhs = MatRef::from_row_major_slice(xb, rows, ni);
            matmul(dst, Accum::Replace, lhs, hm, 1.0, Par::Seq);
            crate::kernels::clear_upper_simd_state();
        });
    out
}

/// Unscaled decode `[O, I]` (f32 codebook sums, as f64).
fn unscaled_dense(st: &State, l: &Layout) -> Vec<f64> {
    let mut out = vec![0.0f64; l.out_features * l.in_features];
    let mut buf = vec![0.0f32; l.d];
    for g in 0..l.groups() {
        st.decode_group_unscaled(l, g, &mut buf);
        place(
            &buf.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            g,
            l,
            &mut out,
        );
    }
    out
}

/// Unscaled decode `[O, I]` of the f64 codebooks `x [M, K, d]` with the codes of `st`.
fn decode_unscaled_f64(x: &[f64], st: &State, l: &Layout) -> Vec<f64> {
    let mut out = vec![0.0f64; l.out_features * l.in_features];
    let mut buf = vec![0.0f64; l.d];
    for g in 0..l.groups() {
        buf.fill(0.0);
        for (m, &c) in st.codes[g * l.m..][..l.m].iter().enumerate() {
            for (v, &e) in buf
                .iter_mut()
                .zip(&x[(m * l.k + c as usize) * l.d..][..l.d])
            {
                *v += e;
            }
        }
        place(&buf, g, l, &mut out);
    }
    out
}

/// Writes the tile `buf [og, ig]` of group `g` into the row-major `[O, I]` matrix `out`.
fn place(buf: &[f64], g: usize, l: &Layout, out: &mut [f64]) {
    let (o, j) = (g / l.n_in, g % l.n_in);
    for a in 0..l.og {
        out[(o * l.og + a) * l.in_features + j * l.ig..][..l.ig]
            .copy_from_slice(&buf[a * l.ig..][..l.ig]);
    }
}

/// Adjoint of the decode: `out[m, b_gm, :] += wt_o · Z_tile(g)` for every group and codebook.
fn scatter(z: &[f64], wt: &[f64], st: &State, l: &Layout) -> Vec<f64> {
    let mut out = vec![0.0f64; l.m * l.k * l.d];
    for g in 0..l.groups() {
        let (o, j) = (g / l.n_in, g % l.n_in);
        for (m, &c) in st.codes[g * l.m..][..l.m].iter().enumerate() {
            let base = (m * l.k + c as usize) * l.d;
            for a in 0..l.og {
                let src = &z[(o * l.og + a) * l.in_features + j * l.ig..][..l.ig];
                for (v, &x) in out[base + a * l.ig..][..l.ig].iter_mut().zip(src) {
                    *v += wt[o] * x;
                }
            }
        }
    }
    out
}
