//! Codebook update for the plain objective: least squares over all `M·K` codewords jointly.
//!
//! With codes and scales fixed, `min_C Σ_g ‖w_g − s_o Σ_m C_m[b_gm]‖²` has the normal equations
//! `A C = R` with `A = Σ_g s_o² e_g e_gᵀ` (`[MK, MK]`, `e_g` the 0/1 indicator of the `M` codes of
//! group `g`) and `R = Σ_g s_o e_g w_gᵀ` (`[MK, d]`). We solve `(A + λI) C = R + λ C_old` by
//! Cholesky in f64: the small ridge `λ` pulls towards the current codebooks (so unused codewords
//! stay put) and cannot increase the objective. When `M·K` is too large for a dense solve, the
//! codebooks are updated one at a time instead (each such block is diagonal, solved exactly).

use super::problem::{Layout, State};

/// Largest `M·K` solved densely.
const DENSE_LIMIT: usize = 2048;

/// Relative ridge `λ = RIDGE · mean(diag A)`.
const RIDGE: f64 = 1e-7;

/// Updates `st.codebooks` in place (see the module docs).
pub(crate) fn update_codebooks_plain(w: &[f32], st: &mut State, l: &Layout) {
    if l.m * l.k <= DENSE_LIMIT && l.m > 1 {
        joint_update(w, st, l);
    } else {
        for m in 0..l.m {
            single_update(w, st, l, m);
        }
    }
}

fn joint_update(w: &[f32], st: &mut State, l: &Layout) {
    let n = l.m * l.k;
    let d = l.d;
    let mut a = vec![0.0f64; n * n];
    let mut r = vec![0.0f64; n * d];
    for g in 0..l.groups() {
        let s = f64::from(st.scales[g / l.n_in]);
        let codes = &st.codes[g * l.m..][..l.m];
        let wg = &w[g * d..][..d];
        for (m, &c) in codes.iter().enumerate() {
            let p = m * l.k + c as usize;
            for (m2, &c2) in codes.iter().enumerate() {
                a[p * n + m2 * l.k + c2 as usize] += s * s;
            }
            for (v, &x) in r[p * d..][..d].iter_mut().zip(wg) {
                *v += s * f64::from(x);
            }
        }
    }
    let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
    let lambda = RIDGE * trace / n as f64 + 1e-30;
    for i in 0..n {
        a[i * n + i] += lambda;
        for (v, &c) in r[i * d..][..d].iter_mut().zip(&st.codebooks[i * d..][..d]) {
            *v += lambda * f64::from(c);
        }
    }
    if cholesky_in_place(&mut a, n) {
        cholesky_solve(&a, n, &mut r, d);
        if r.iter().all(|v| v.is_finite()) {
            for (c, &v) in st.codebooks.iter_mut().zip(&r) {
                *c = v as f32;
            }
            return;
        }
    }
    // Numerically singular (cannot happen with λ > 0 unless scales vanish): fall back.
    for m in 0..l.m {
        single_update(w, st, l, m);
    }
}

/// Exact update of codebook `m` with the others fixed: per codeword, the scale-weighted mean of
/// the residuals `w_g/s_o − Σ_{m'≠m} C_{m'}[b]` of the groups that use it.
fn single_update(w: &[f32], st: &mut State, l: &Layout, m: usize) {
    let d = l.d;
    let mut num = vec![0.0f64; l.k * d];
    let mut den = vec![0.0f64; l.k];
    for g in 0..l.groups() {
        let s = f64::from(st.scales[g / l.n_in]);
        let codes = &st.codes[g * l.m..][..l.m];
        let c = codes[m] as usize;
        den[c] += s * s;
        for b in 0..d {
            let mut other = 0.0f64;
            for (m2, &c2) in codes.iter().enumerate() {
                if m2 != m {
                    other += f64::from(st.codebooks[(m2 * l.k + c2 as usize) * d + b]);
                }
            }
            num[c * d + b] += s * (f64::from(w[g * d + b]) - s * other);
        }
    }
    for c in 0..l.k {
        if den[c] > 0.0 {
            for b in 0..d {
                st.codebooks[(m * l.k + c) * d + b] = (num[c * d + b] / den[c]) as f32;
            }
        }
    }
}

/// Lower Cholesky factor of the row-major SPD matrix `a [n, n]` in place (`a = L Lᵀ`, only the
/// lower triangle is used and written). Returns `false` on a non-positive pivot.
pub(crate) fn cholesky_in_place(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let mut djj = a[j * n + j];
        for k in 0..j {
            djj -= a[j * n + k] * a[j * n + k];
        }
        if djj <= 0.0 || !djj.is_finite() {
            return false;
        }
        let ljj = djj.sqrt();
        a[j * n + j] = ljj;
        // Rows below j: a[i][j] = (a[i][j] − Σ_{k<j} a[i][k] a[j][k]) / ljj.
        let (upper, lower) = a.split_at_mut((j + 1) * n);
        let row_j = &upper[j * n..j * n + j];
        for row_i in lower.chunks_exact_mut(n) {
            let mut v = row_i[j];
            for (x, y) in row_i[..j].iter().zip(row_j) {
                v -= x * y;
            }
            row_i[j] = v / ljj;
        }
    }
    true
}

/// Solves `L Lᵀ X = B` for `B [n, d]` row-major in place, `L` from [`cholesky_in_place`].
pub(crate) fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64], d: usize) {
    for i in 0..n {
        for k in 0..i {
            let f = l[i * n + k];
            if f != 0.0 {
                for c in 0..d {
                    b[i * d + c] -= f * b[k * d + c];
                }
            }
        }
        let inv = 1.0 / l[i * n + i];
        for c in 0..d {
            b[i * d + c] *= inv;
        }
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            let f = l[k * n + i];
            if f != 0.0 {
                for c in 0..d {
                    b[i * d + c] -= f * b[k * d + c];
                }
            }
        }
        let inv = 1.0 / l[i * n + i];
        for c in 0..d {
            b[i * d + c] *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_spd_system() {
        let n = 5;
        let mut a = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] =
                    1.0 / (1.0 + (i as f64 - j as f64).abs()) + if i == j { 2.0 } else { 0.0 };
            }
        }
        let x: Vec<f64> = (0..n * 2).map(|v| v as f64 - 3.0).collect();
        let mut b = vec![0.0; n * 2];
        for i in 0..n {
            for c in 0..2 {
                b[i * 2 + c] = (0..n).map(|k| a[i * n + k] * x[k * 2 + c]).sum();
            }
        }
        let mut f = a.clone();
        assert!(cholesky_in_place(&mut f, n));
        cholesky_solve(&f, n, &mut b, 2);
        for (u, v) in b.iter().zip(&x) {
            assert!((u - v).abs() < 1e-12);
        }
    }
}
