//! Norms and spectral diagnostics computed with nalgebra's SVD and symmetric eigensolver.

use nalgebra::DMatrix;

/// Spectral norm `‖M‖₂` (largest singular value, nalgebra SVD).
pub fn spectral_norm(m: &DMatrix<f64>) -> f64 {
    m.clone()
        .svd(false, false)
        .singular_values
        .iter()
        .fold(0.0, |a: f64, &s| a.max(s))
}

fn sym_abs_max(m: DMatrix<f64>) -> f64 {
    m.symmetric_eigenvalues()
        .iter()
        .fold(0.0, |a: f64, &e| a.max(e.abs()))
}

/// Orthogonality error `‖RᵀR − I‖₂` (largest absolute eigenvalue of the symmetric `RᵀR − I`).
pub fn orthogonality_error(r: &DMatrix<f64>) -> f64 {
    let b = r.ncols();
    sym_abs_max(r.transpose() * r - DMatrix::<f64>::identity(b, b))
}

/// Co-orthogonality error `‖RRᵀ − I‖₂`.
pub fn co_orthogonality_error(r: &DMatrix<f64>) -> f64 {
    let b = r.nrows();
    sym_abs_max(r * r.transpose() - DMatrix::<f64>::identity(b, b))
}

/// For an orthogonal (normal) `R` with eigenvalues `e^{±iφⱼ}`: the values `cos φⱼ` (each pair twice),
/// as the eigenvalues of the symmetric part `(R + Rᵀ)/2`, sorted ascending. Since `φ ∈ [0, π]`
/// is determined by `cos φ`, this pins down the eigen-angles without a nonsymmetric eigensolver.
pub fn eigen_angle_cosines(r: &DMatrix<f64>) -> Vec<f64> {
    let s = (r + r.transpose()) * 0.5;
    let mut v: Vec<f64> = s.symmetric_eigenvalues().iter().copied().collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The `θⱼ` of a skew `Q` (eigenvalues `±iθⱼ`): its singular values, sorted descending (each `θⱼ`
/// appears twice, plus a zero for odd `b`).
pub fn skew_spectrum(q: &DMatrix<f64>) -> Vec<f64> {
    let mut v: Vec<f64> = q
        .clone()
        .svd(false, false)
        .singular_values
        .iter()
        .copied()
        .collect();
    v.sort_by(|a, b| b.total_cmp(a));
    v
}
