//! Which map turns a skew block `Q` into a rotation block `R`.

use crate::error::{OrthoError, Result};

/// Largest number of Cayley–Neumann terms accepted (far beyond any useful value: at `‖Q‖₂ ≤ 0.99`
/// the truncation error is below `10⁻⁴` after 1024 terms).
pub const MAX_NEUMANN_TERMS: usize = 1024;

/// Sign convention of the exact Cayley transform.
///
/// The two conventions are transposes (= inverses) of each other for the same `Q`:
/// `Peft(Q) = Textbook(−Q) = Textbook(Q)ᵀ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CayleyConvention {
    /// `R = (I − Q)(I + Q)⁻¹`, PEFT's `solve(I + Q, I − Q, left=False)` (the default).
    #[default]
    Peft,
    /// `R = (I + Q)(I − Q)⁻¹`, the OFT paper's convention. **Not PEFT-compatible** for the exact branch.
    Textbook,
}

/// Which truncation of the Cayley–Neumann series to use.
///
/// Both approximate the *textbook* Cayley map `C = (I + Q)(I − Q)⁻¹ = I + 2Σ_{k≥1} Qᵏ`
/// (PEFT's Neumann branch does, unlike its exact branch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NeumannFlavor {
    /// PEFT ≥ 0.18, `t` terms: `t ≤ 1 → I`; `t = 2 → I + 2Q`; `t = 3` and `t = 4 → I + 2Q + 2Q² + Q³`;
    /// `t ≥ 4 → I + 2Σ_{k=1}^{t−2} Qᵏ + Q^{t−1}` (the default).
    #[default]
    Peft,
    /// **Not PEFT-compatible.** `R_p = (I + Q)Σ_{i=0}^{p−1} Qⁱ = I + 2Σ_{k=1}^{p−1} Qᵏ + Qᵖ` with the highest
    /// power `p = t − 1` rounded up to the next odd number (`t ≤ 1 → I`). For odd `p`,
    /// `R_pᵀR_p = I − Q^{2p}`: the orthogonality error is `‖Q‖₂^{2p}` and `R_p` is never singular
    /// (oft-numerics F5), whereas PEFT's default `t = 5` (`p = 4`) has error `2θ⁴ − θ⁸` and is
    /// singular at `‖Q‖₂ = 1`.
    OddPower,
}

/// How the rotation blocks are computed from the skew blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parameterization {
    /// The exact Cayley transform, one LU solve per block.
    Exact(CayleyConvention),
    /// A truncated Cayley–Neumann series: no solve, only `b × b` matrix products.
    Neumann {
        /// PEFT's `num_cayley_neumann_terms` (`t`).
        terms: usize,
        /// Which truncation rule.
        flavor: NeumannFlavor,
    },
}

impl Default for Parameterization {
    /// PEFT's default: Cayley–Neumann with 5 terms.
    fn default() -> Self {
        Self::Neumann {
            terms: 5,
            flavor: NeumannFlavor::Peft,
        }
    }
}

impl Parameterization {
    /// PEFT's exact Cayley transform, `R = (I − Q)(I + Q)⁻¹` (`use_cayley_neumann = False`).
    ///
    /// ```
    /// use oftq_ortho::{CayleyConvention, Parameterization};
    /// assert_eq!(Parameterization::exact(), Parameterization::Exact(CayleyConvention::Peft));
    /// ```
    pub fn exact() -> Self {
        Self::Exact(CayleyConvention::Peft)
    }

    /// PEFT's Cayley–Neumann series with `terms` terms (`num_cayley_neumann_terms`; PEFT's default
    /// is 5, [`Parameterization::default`]).
    ///
    /// ```
    /// use oftq_ortho::Parameterization;
    /// assert_eq!(Parameterization::neumann(5), Parameterization::default());
    /// ```
    pub fn neumann(terms: usize) -> Self {
        Self::Neumann {
            terms,
            flavor: NeumannFlavor::Peft,
        }
    }

    /// PEFT's parameterization for `use_cayley_neumann` and `num_cayley_neumann_terms`.
    pub fn peft(use_cayley_neumann: bool, num_cayley_neumann_terms: usize) -> Self {
        if use_cayley_neumann {
            Self::Neumann {
                terms: num_cayley_neumann_terms,
                flavor: NeumannFlavor::Peft,
            }
        } else {
            Self::Exact(CayleyConvention::Peft)
        }
    }

    /// Whether this parameterization reproduces PEFT bit for bit (up to rounding).
    pub fn is_peft_compatible(&self) -> bool {
        matches!(
            self,
            Self::Exact(CayleyConvention::Peft)
                | Self::Neumann {
                    flavor: NeumannFlavor::Peft,
                    ..
                }
        )
    }

    /// Checks the number of Neumann terms against [`MAX_NEUMANN_TERMS`].
    ///
    /// # Errors
    /// [`OrthoError::InvalidOption`] for more terms.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Neumann { terms, .. } if terms > MAX_NEUMANN_TERMS => {
                Err(OrthoError::InvalidOption(format!(
                    "num_cayley_neumann_terms {terms} exceeds the maximum {MAX_NEUMANN_TERMS}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Polynomial coefficients `c₀…c_p` of `R = Σ cₖ Qᵏ` for a Neumann parameterization; `None` for
    /// exact, or for more than [`MAX_NEUMANN_TERMS`] terms.
    ///
    /// ```
    /// use oftq_ortho::{NeumannFlavor, Parameterization};
    /// let p = |t, flavor| Parameterization::Neumann { terms: t, flavor }.neumann_coefficients().unwrap();
    /// assert_eq!(p(5, NeumannFlavor::Peft), vec![1.0, 2.0, 2.0, 2.0, 1.0]);
    /// assert_eq!(p(3, NeumannFlavor::Peft), p(4, NeumannFlavor::Peft));
    /// assert_eq!(p(2, NeumannFlavor::Peft), vec![1.0, 2.0]);
    /// assert_eq!(p(5, NeumannFlavor::OddPower), vec![1.0, 2.0, 2.0, 2.0, 2.0, 1.0]);
    /// ```
    pub fn neumann_coefficients(&self) -> Option<Vec<f64>> {
        let Self::Neumann { terms, flavor } = *self else {
            return None;
        };
        let highest = match (flavor, terms) {
            (_, 0 | 1) => return Some(vec![1.0]),
            (NeumannFlavor::Peft, 2) => return Some(vec![1.0, 2.0]),
            (NeumannFlavor::Peft, 3) => 3,
            (NeumannFlavor::Peft, t) => t - 1,
            (NeumannFlavor::OddPower, t) => (t - 1) | 1,
        };
        let mut c = vec![2.0; highest + 1];
        c[0] = 1.0;
        c[highest] = 1.0;
        Some(c)
    }

    /// Highest power `p` of `Q` in the Neumann polynomial (0 for `R = I`), `None` for exact.
    pub fn neumann_highest_power(&self) -> Option<usize> {
        self.neumann_coefficients().map(|c| c.len() - 1)
    }
}
