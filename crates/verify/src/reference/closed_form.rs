//! Closed forms of oft-numerics §7 (F1, F5) in terms of the spectrum `±iθⱼ` of a skew `Q`.

use nalgebra::Complex;

/// Eigen-angles of the exact (textbook) Cayley transform: `φⱼ = 2·arctan θⱼ ∈ [0, π)` (F1).
pub fn exact_eigen_angles(thetas: &[f64]) -> Vec<f64> {
    thetas.iter().map(|t| 2.0 * t.atan()).collect()
}

/// For any real polynomial `R = Σ cₖ Qᵏ` of a skew `Q` with eigenvalues `±iθⱼ` (and possibly 0):
/// `R` is normal with eigenvalues `P(±iθⱼ)`, so
/// - orthogonality error `‖RᵀR − I‖₂ = maxⱼ | |P(iθⱼ)|² − 1 |`,
/// - distance to the textbook Cayley transform `‖R − C‖₂ = maxⱼ |P(iθⱼ) − (1 + iθⱼ)/(1 − iθⱼ)|`.
///
/// Returns `(orthogonality error, distance)`. The zero eigenvalue contributes 0 to both (`c₀ = 1`)
/// for the polynomials of this crate, so it does not need to be listed.
pub fn polynomial_spectrum_errors(coeffs: &[f64], thetas: &[f64]) -> (f64, f64) {
    let mut orth = 0.0f64;
    let mut dist = 0.0f64;
    for &t in thetas.iter().chain(std::iter::once(&0.0)) {
        let z = Complex::new(0.0, t);
        let mut p = Complex::new(0.0, 0.0);
        let mut zk = Complex::new(1.0, 0.0);
        for &c in coeffs {
            p += zk * c;
            zk *= z;
        }
        let one = Complex::new(1.0, 0.0);
        let cayley = (one + z) / (one - z);
        orth = orth.max((p.norm_sqr() - 1.0).abs());
        dist = dist.max((p - cayley).norm());
    }
    (orth, dist)
}

/// F5: orthogonality error of `R_p = (I + Q)Σ_{i=0}^{p−1} Qⁱ = C(I − Qᵖ)` (highest power `p ≥ 1`):
/// - `p` odd: `θ_max^{2p}`;
/// - `p ≡ 0 (mod 4)`: `maxⱼ θⱼᵖ |2 − θⱼᵖ|`;
/// - `p ≡ 2 (mod 4)`: `maxⱼ θⱼᵖ (2 + θⱼᵖ)`.
///
/// `p = 0` (`R = I`) gives 0.
pub fn f5_orthogonality_error(p: usize, thetas: &[f64]) -> f64 {
    if p == 0 {
        return 0.0;
    }
    let e = i32::try_from(p).unwrap_or(i32::MAX);
    thetas
        .iter()
        .map(|&t| {
            let tp = t.powi(e);
            match p % 4 {
                0 => tp * (2.0 - tp).abs(),
                2 => tp * (2.0 + tp),
                _ => tp * tp,
            }
        })
        .fold(0.0, f64::max)
}

/// F5: distance `‖R_p − C‖₂ = θ_maxᵖ` of the truncated series with highest power `p ≥ 1` to the
/// textbook Cayley transform.
pub fn f5_distance(p: usize, thetas: &[f64]) -> f64 {
    let e = i32::try_from(p).unwrap_or(i32::MAX);
    thetas.iter().map(|t| t.powi(e)).fold(0.0, f64::max)
}
