//! Skew packing in PEFT's order and skew matrices with a prescribed spectrum.

use nalgebra::DMatrix;

/// The pairs `(i, j)`, `i < j`, of a `b × b` strict upper triangle in row-major order
/// (`torch.triu_indices(b, b, offset=1)`): `(0,1), (0,2), …, (0,b−1), (1,2), …`.
pub fn packed_pairs(b: usize) -> Vec<(usize, usize)> {
    (0..b)
        .flat_map(|i| (i + 1..b).map(move |j| (i, j)))
        .collect()
}

/// `Q = U − Uᵀ` with `U` strictly upper triangular holding `v` in [`packed_pairs`] order.
///
/// `None` if `v.len() != b(b−1)/2`.
pub fn skew_from_packed(v: &[f64], b: usize) -> Option<DMatrix<f64>> {
    let pairs = packed_pairs(b);
    if v.len() != pairs.len() {
        return None;
    }
    let mut u = DMatrix::<f64>::zeros(b, b);
    for (&(i, j), &x) in pairs.iter().zip(v) {
        u[(i, j)] = x;
    }
    Some(&u - u.transpose())
}

/// The strict upper triangle of `q` in [`packed_pairs`] order (PEFT's `_pytorch_skew_symmetric_inv`).
pub fn packed_from_skew(q: &DMatrix<f64>) -> Vec<f64> {
    packed_pairs(q.nrows())
        .into_iter()
        .map(|(i, j)| q[(i, j)])
        .collect()
}

/// Chain rule from `G = ∂L/∂Q` to the packed row: `∂L/∂v_k = G[i][j] − G[j][i]` (since `Q = U − Uᵀ`).
pub fn packed_grad(g: &DMatrix<f64>) -> Vec<f64> {
    packed_pairs(g.nrows())
        .into_iter()
        .map(|(i, j)| g[(i, j)] - g[(j, i)])
        .collect()
}

/// An orthogonal matrix from the QR decomposition of a square `a` (Householder QR), with the
/// signs fixed so that `R` has a non-negative diagonal (Haar-distributed for Gaussian `a`).
pub fn orthogonal_from(a: DMatrix<f64>) -> DMatrix<f64> {
    let qr = a.qr();
    let r = qr.r();
    let mut q = qr.q();
    for j in 0..q.ncols() {
        if r[(j, j)] < 0.0 {
            q.column_mut(j).neg_mut();
        }
    }
    q
}

/// The skew matrix `Q = V · blockdiag([[0, θ₁], [−θ₁, 0]], …) · Vᵀ` for an orthogonal `V` (`b × b`)
/// and `⌊b/2⌋` or fewer angles `θⱼ ≥ 0`: its eigenvalues are `±iθⱼ` (and zeros), so
/// `‖Q‖₂ = maxⱼ θⱼ` and `‖Q‖_F² = 2Σθⱼ²`.
///
/// `None` if there are more than `b/2` angles or `v` is not square.
pub fn skew_with_angles(v: &DMatrix<f64>, thetas: &[f64]) -> Option<DMatrix<f64>> {
    let b = v.nrows();
    if 2 * thetas.len() > b || v.ncols() != b {
        return None;
    }
    let mut d = DMatrix::<f64>::zeros(b, b);
    for (j, &t) in thetas.iter().enumerate() {
        d[(2 * j, 2 * j + 1)] = t;
        d[(2 * j + 1, 2 * j)] = -t;
    }
    let q = v * d * v.transpose();
    // Remove the rounding asymmetry so that Q is exactly skew.
    Some((&q - q.transpose()) * 0.5)
}
