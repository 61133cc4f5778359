//! COFT projections on skew matrices (oft-numerics F8), written on the matrices, not packed rows.

use nalgebra::DMatrix;

/// Per block `Qᵢ ← Qᵢ · min(1, ρ/‖Qᵢ‖_F)` (PEFT's kind of constraint; `Q = 0` stays 0).
pub fn project_per_block(qs: &[DMatrix<f64>], rho: f64) -> Vec<DMatrix<f64>> {
    qs.iter()
        .map(|q| {
            let n = q.norm();
            if n <= rho { q.clone() } else { q * (rho / n) }
        })
        .collect()
}

/// All blocks together: `Qᵢ ← Qᵢ · min(1, ρ/(Σᵢ‖Qᵢ‖_F²)^{1/2})` (LyCORIS' kind of constraint).
pub fn project_global(qs: &[DMatrix<f64>], rho: f64) -> Vec<DMatrix<f64>> {
    let n = qs.iter().map(|q| q.norm_squared()).sum::<f64>().sqrt();
    let s = if n <= rho { 1.0 } else { rho / n };
    qs.iter().map(|q| q * s).collect()
}
