//! Encoder options and per-round statistics.

use super::error::EncodeError;

/// Options of [`quantize`](super::quantize) and [`quantize_with`](super::quantize_with).
///
/// The defaults reach the quality targets of the project on 2x8 layers (see the crate README);
/// every field is public so callers can use struct-update syntax:
///
/// ```
/// use oftq_aqlm::encode::QuantizeOptions;
/// let opts = QuantizeOptions { max_rounds: 5, seed: 42, ..QuantizeOptions::default() };
/// assert_eq!(opts.beam_size, 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeOptions {
    /// Maximum number of alternation rounds (code search → codebook update → scale refit)
    /// after the residual k-means initialisation. `0` returns the k-means initialisation.
    pub max_rounds: usize,
    /// Stop as soon as a round improves the relative error by less than this fraction:
    /// `(err_prev − err) < relative_tolerance · err_prev`. `0.0` runs all `max_rounds`.
    pub relative_tolerance: f64,
    /// Beam width of the general code search (aqlm `--beam_size`, default 1 as in aqlm's
    /// `main.py`, i.e. greedy coordinate descent over the codebooks).
    pub beam_size: usize,
    /// Maximum Lloyd iterations of each residual k-means in the initialisation; k-means also
    /// stops early when no assignment changes. aqlm uses 100; the default 20 costs 0.0017 of
    /// relative error at the start of a 2x8 encoding and ~0.0002 after a few rounds, for a
    /// fifth of the time.
    pub kmeans_iters: usize,
    /// With exactly two codebooks of at most 8 bits and the plain objective, search all `K²`
    /// code pairs of every group exactly instead of running the beam search.
    pub joint_pair_search: bool,
    /// Preconditioned conjugate-gradient iterations of the codebook update per round when a
    /// calibration `XᵀX` is given (the plain objective is solved exactly instead).
    pub cg_iters: usize,
    /// Seed of every random choice (k-means initial centroids, visiting orders).
    pub seed: u64,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        Self {
            max_rounds: 40,
            relative_tolerance: 1e-3,
            beam_size: 1,
            kmeans_iters: 20,
            joint_pair_search: true,
            cg_iters: 25,
            seed: 0,
        }
    }
}

impl QuantizeOptions {
    /// Checks the ranges of the options.
    ///
    /// # Errors
    /// [`EncodeError::Option`] naming the field.
    pub fn validate(&self) -> Result<(), EncodeError> {
        if self.beam_size == 0 {
            return Err(EncodeError::Option {
                name: "beam_size",
                problem: "must be at least 1".into(),
            });
        }
        if !(self.relative_tolerance.is_finite() && self.relative_tolerance >= 0.0) {
            return Err(EncodeError::Option {
                name: "relative_tolerance",
                problem: format!("must be finite and ≥ 0, got {}", self.relative_tolerance),
            });
        }
        Ok(())
    }
}

/// Statistics of one encoder round, reported to the progress callback and kept in
/// [`Encoded::history`](super::Encoded::history).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundStats {
    /// `0` for the residual k-means initialisation, then `1, 2, …` for alternation rounds.
    pub round: usize,
    /// The objective's relative error after this round (see [`Encoded::relative_error`](super::Encoded::relative_error)).
    pub relative_error: f64,
    /// Wall time of this round in seconds.
    pub seconds: f64,
    /// Wall time since the start of the encoding in seconds.
    pub elapsed: f64,
}
