//! COFT: projecting the skew parameters onto a Frobenius-norm ball.
//!
//! PEFT projects each stored block's `Q` onto the ball `‖Q‖_F ≤ ρ`, `ρ = eps/√(stored blocks)`,
//! under `no_grad` at the start of every forward, and writes the projected values back into the
//! parameter. The projection is *not* differentiated: gradients are taken at the projected point.
//! On the packed row `v` (`‖Q‖_F = √2‖v‖₂`) it reads `v ← v·min(1, ρ/(√2‖v‖₂))`.

use faer::MatMut;

use crate::error::{OrthoError, Result};
use crate::real::Real;

/// A COFT constraint: the ball the skew parameters are projected onto.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CoftRadius {
    /// Each stored block's `Q` is projected onto `‖Q‖_F ≤ ρ` (PEFT's kind of constraint).
    PerBlock(f64),
    /// All stored blocks together are projected onto `(Σᵢ ‖Qᵢ‖_F²)^{1/2} ≤ ρ` (LyCORIS' kind).
    Global(f64),
}

impl CoftRadius {
    /// PEFT's radius: `eps/√(stored blocks)` per block on `‖Q‖_F` (`stored_blocks = 1` with block sharing).
    ///
    /// Reproduces PEFT's rounding: it computes `eps * 1 / torch.sqrt(torch.tensor(r))`, an `f32`
    /// tensor, i.e. `ρ = fl32(fl32(1/fl32(√r)) · fl32(eps))`, whatever the parameter dtype.
    ///
    /// ```
    /// use oftq_ortho::CoftRadius;
    /// assert_eq!(CoftRadius::peft(1e-2, 4), CoftRadius::PerBlock(f64::from(0.5f32 * 1e-2f32)));
    /// ```
    pub fn peft(eps: f64, stored_blocks: usize) -> Self {
        let root = (stored_blocks.max(1) as f32).sqrt();
        Self::PerBlock(f64::from((1.0f32 / root) * eps as f32))
    }

    /// The official OFT code's constraint (`Zeju1997/oft`): the raw `b × b` parameter `B` (with
    /// `Q = ½(B − Bᵀ)`) is projected onto the Frobenius ball of radius `eps·b²/√r` per block
    /// (`eps·b²` with block sharing, its `project()` path, `r = 1` here).
    ///
    /// Since `‖½(B − Bᵀ)‖_F ≤ ‖B‖_F`, this is the per-block radius on `Q` that their ball implies; it is
    /// the exact equivalent when `B` is itself skew (as when it is initialised at zero and trained
    /// through its skew part only).
    pub fn official_oft(eps: f64, block_size: usize, n_blocks: usize) -> Self {
        let b2 = (block_size * block_size) as f64;
        Self::PerBlock(eps * b2 / (n_blocks.max(1) as f64).sqrt())
    }

    /// LyCORIS' `diag-oft` constraint: the *global* Frobenius norm of `Q = B − Bᵀ` over all blocks is
    /// limited to `constraint · out_dim`.
    pub fn lycoris(constraint: f64, out_dim: usize) -> Self {
        Self::Global(constraint * out_dim as f64)
    }

    /// The radius `ρ`.
    pub fn radius(&self) -> f64 {
        match *self {
            Self::PerBlock(r) | Self::Global(r) => r,
        }
    }
}

/// Projects packed parameters `[stored blocks, b(b−1)/2]` in place onto the COFT ball.
///
/// Per block: `Q ← Q·min(1, ρ/‖Q‖_F)` with `‖Q‖_F = √2‖v‖₂`. Globally: the same with the norm of
/// all blocks together. Idempotent, the identity inside the ball, output norm `≤ ρ`, and the result
/// stays skew (it is a scaling of the packed row).
///
/// # Errors
/// [`OrthoError::InvalidOption`] for a negative or non-finite radius; [`OrthoError::NonFinite`] for
/// non-finite parameters (nothing is modified then).
///
/// ```
/// use faer::mat;
/// use oftq_ortho::{CoftRadius, project_coft};
/// // PEFT 0.21.2 test vector: eps = 0.1, two stored blocks (peft-oft.md §9).
/// let mut w = mat![[0.1f64, -0.2, 0.3, 0.05, -0.15, 0.25], [0.0, 0.1, 0.0, -0.1, 0.2, 0.05]];
/// project_coft(w.as_mut(), CoftRadius::peft(0.1, 2)).unwrap();
/// assert!((w[(0, 0)] - 0.01048285).abs() < 1e-8);
/// assert!((w[(1, 4)] - 0.04).abs() < 1e-8); // the radius is rounded to f32 as in PEFT
/// ```
pub fn project_coft<T: Real>(mut packed: MatMut<'_, T>, radius: CoftRadius) -> Result<()> {
    let rho = radius.radius();
    if !(rho.is_finite() && rho >= 0.0) {
        return Err(OrthoError::InvalidOption(format!(
            "COFT radius must be finite and >= 0, got {rho}"
        )));
    }
    let (rows, cols) = (packed.nrows(), packed.ncols());
    let mut sq = vec![0.0f64; rows];
    for (i, s) in sq.iter_mut().enumerate() {
        for k in 0..cols {
            let v = packed[(i, k)];
            if !v.is_finite() {
                return Err(OrthoError::NonFinite {
                    what: "COFT parameters",
                    block: i,
                });
            }
            *s += v.f64() * v.f64();
        }
    }
    // ‖Q‖_F = √2‖v‖₂ (accumulated in f64). Outside the ball PEFT computes `eps' * (Q / ‖Q‖_F)`:
    // divide first, then scale, as below.
    let scale_of = |fro: f64| if fro <= rho { None } else { Some(fro) };
    let scales: Vec<Option<f64>> = match radius {
        CoftRadius::PerBlock(_) => sq.iter().map(|s| scale_of((2.0 * s).sqrt())).collect(),
        CoftRadius::Global(_) => vec![scale_of((2.0 * sq.iter().sum::<f64>()).sqrt()); rows],
    };
    for (i, s) in scales.into_iter().enumerate() {
        if let Some(fro) = s {
            let (fro, rho) = (T::c(fro), T::c(rho));
            for k in 0..cols {
                packed[(i, k)] = rho * (packed[(i, k)] / fro);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    #[test]
    fn projection_properties() {
        let mut w = Mat::<f64>::from_fn(3, 10, |i, j| ((i * 10 + j) as f64).sin());
        project_coft(w.as_mut(), CoftRadius::PerBlock(0.5)).unwrap();
        for i in 0..3 {
            let fro = (2.0 * (0..10).map(|k| w[(i, k)] * w[(i, k)]).sum::<f64>()).sqrt();
            assert!(fro <= 0.5 * (1.0 + 1e-15));
        }
        let before = w.clone();
        project_coft(w.as_mut(), CoftRadius::PerBlock(0.5)).unwrap();
        assert!((&w - &before).norm_max() < 1e-16);
        assert!(project_coft(w.as_mut(), CoftRadius::PerBlock(-1.0)).is_err());
    }

    #[test]
    fn global_ball() {
        let mut w = Mat::<f32>::from_fn(4, 6, |i, j| (i + j) as f32);
        project_coft(w.as_mut(), CoftRadius::lycoris(0.25, 4)).unwrap();
        let total: f32 = (0..4)
            .flat_map(|i| (0..6).map(move |k| (i, k)))
            .map(|(i, k)| 2.0 * w[(i, k)].powi(2))
            .sum();
        assert!((total.sqrt() - 1.0).abs() < 1e-5);
    }
}
