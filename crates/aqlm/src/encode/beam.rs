//! General code search for the plain objective: beam search over the `M` codebooks of each
//! group (aqlm `beam_search_l2`; beam 1 is greedy coordinate descent).

use rayon::prelude::*;

use super::kernels::{argmin, dist_scores, transpose_with_norms};
use super::problem::{GROUP_CHUNK, Layout, State};

/// Codebooks transposed per codebook (`[M][d, K]`) with their squared norms (`[M][K]`).
pub(crate) struct Transposed {
    pub(crate) t: Vec<Vec<f32>>,
    pub(crate) nrm: Vec<Vec<f32>>,
}

impl Transposed {
    pub(crate) fn new(st: &State, l: &Layout) -> Self {
        let (t, nrm) = (0..l.m)
            .map(|m| transpose_with_norms(&st.codebooks[m * l.k * l.d..][..l.k * l.d], l.k, l.d))
            .unzip();
        Self { t, nrm }
    }
}

/// Re-chooses the codes of every group to reduce `‖w_g/s_o − Σ_m C_m[b_m]‖²`, visiting the
/// codebooks in `order`. The current codes are always among the candidates, so no group gets
/// worse (up to f32 rounding). Groups of a zero scale are left alone.
pub(crate) fn search_codes(w: &[f32], st: &mut State, l: &Layout, order: &[usize], beam: usize) {
    let tr = Transposed::new(st, l);
    let codebooks = &st.codebooks;
    let scales = &st.scales;
    st.codes
        .par_chunks_mut(GROUP_CHUNK * l.m)
        .enumerate()
        .for_each(|(c, codes)| {
            let mut ws = Workspace::new(l);
            for (i, gc) in codes.chunks_exact_mut(l.m).enumerate() {
                let g = c * GROUP_CHUNK + i;
                let s = scales[g / l.n_in];
                if s == 0.0 {
                    continue;
                }
                for (x, &v) in ws.x.iter_mut().zip(&w[g * l.d..][..l.d]) {
                    *x = v / s;
                }
                if beam == 1 {
                    greedy(gc, codebooks, &tr, l, order, &mut ws);
                } else {
                    beam_group(gc, codebooks, &tr, l, order, beam, &mut ws);
                }
            }
        });
}

struct Workspace {
    x: Vec<f32>,
    r: Vec<f32>,
    scores: Vec<f32>,
}

impl Workspace {
    fn new(l: &Layout) -> Self {
        Self {
            x: vec![0.0; l.d],
            r: vec![0.0; l.d],
            scores: vec![0.0; l.k],
        }
    }
}

/// `r = x − Σ_{m' ≠ skip} C_{m'}[codes[m']]`.
fn residual(x: &[f32], codes: &[u16], skip: usize, cb: &[f32], l: &Layout, r: &mut [f32]) {
    r.copy_from_slice(x);
    for (m, &c) in codes.iter().enumerate() {
        if m != skip {
            for (v, &e) in r.iter_mut().zip(&cb[(m * l.k + c as usize) * l.d..][..l.d]) {
                *v -= e;
            }
        }
    }
}

fn greedy(
    gc: &mut [u16],
    cb: &[f32],
    tr: &Transposed,
    l: &Layout,
    order: &[usize],
    ws: &mut Workspace,
) {
    for &m in order {
        residual(&ws.x, gc, m, cb, l, &mut ws.r);
        dist_scores(&ws.r, &tr.t[m], &tr.nrm[m], &mut ws.scores);
        let cur = gc[m] as usize;
        let (best, v) = argmin(&ws.scores);
        if v < ws.scores[cur] {
            gc[m] = best as u16;
        }
    }
}

fn beam_group(
    gc: &mut [u16],
    cb: &[f32],
    tr: &Transposed,
    l: &Layout,
    order: &[usize],
    beam: usize,
    ws: &mut Workspace,
) {
    // Each beam: its codes and its loss ‖x − Σ C‖² − ‖x‖²-free form (we keep ‖r‖² + score).
    let mut beams: Vec<(Vec<u16>, f32)> = vec![(gc.to_vec(), f32::INFINITY)];
    let mut cands: Vec<(f32, usize, usize)> = Vec::with_capacity(beam * l.k);
    for &m in order {
        cands.clear();
        for (bi, (codes, _)) in beams.iter().enumerate() {
            residual(&ws.x, codes, m, cb, l, &mut ws.r);
            let rr: f32 = ws.r.iter().map(|v| v * v).sum();
            dist_scores(&ws.r, &tr.t[m], &tr.nrm[m], &mut ws.scores);
            cands.extend(ws.scores.iter().enumerate().map(|(c, &s)| (rr + s, bi, c)));
        }
        // Deterministic order: loss, then parent beam, then code.
        cands.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut next: Vec<(Vec<u16>, f32)> = Vec::with_capacity(beam);
        for &(loss, bi, c) in &cands {
            let mut codes = beams[bi].0.clone();
            codes[m] = c as u16;
            if !next.iter().any(|(n, _)| *n == codes) {
                next.push((codes, loss));
                if next.len() == beam {
                    break;
                }
            }
        }
        beams = next;
    }
    if let Some((codes, _)) = beams.first() {
        gc.copy_from_slice(codes);
    }
}
