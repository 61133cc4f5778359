//! Encoder: quantize a dense weight `W [out, in]` into AQLM codes, codebooks and scales.
//!
//! Algorithm (aqlm.md §3, "a simple, correct encoder"):
//! 1. scales `s_o = ‖W[o-group, :]‖₂ + 1e-9`, groups normalised to `W/s`;
//! 2. residual k-means: codebook `m` is k-means of the residual left by codebooks `0..m`;
//! 3. rounds of (a) code search, (b) codebook update, (c) closed-form scale refit, until
//!    `max_rounds` or until a round improves the relative error by less than
//!    `relative_tolerance`.
//!
//! Objective: the plain `‖W − Ŵ‖²_F` by default, or, with calibration `H = XᵀX/N` (see
//! [`xtx_from_inputs`]), the output-aware `tr((W − Ŵ) H (W − Ŵ)ᵀ) = ‖(W − Ŵ)Xᵀ‖²/N`.
//! The plain code search is the exact joint search over all `K²` pairs for two codebooks of at
//! most 8 bits (e.g. 2x8) and beam search over the codebooks otherwise; the plain codebook update
//! is exact least squares over all `M·K` codewords jointly. With `H`, codes are searched by
//! aqlm's incremental beam search over `(in-group, codebook)` visits and codebooks are updated by
//! preconditioned conjugate gradients.
//!
//! Every step cannot increase the objective (exact block-coordinate descent), the result is
//! deterministic for a given seed whatever the rayon thread count, and the decode convention
//! is AQLM's: `Ŵ[o·og+a][j·ig+b] = scales[o] · Σ_{m ascending} codebooks[m][codes[o][j][m]][a][b]`
//! summed in f32.
//!
//! ```
//! use faer::Mat;
//! use oftq_aqlm::AqlmScheme;
//! use oftq_aqlm::encode::{quantize, QuantizeOptions};
//!
//! let w = Mat::<f32>::from_fn(8, 16, |i, j| ((i * 16 + j) as f32 * 0.37).sin());
//! let scheme = AqlmScheme::builder(2, 4).in_group_size(4).build()?;
//! let enc = quantize(w.as_ref(), scheme, &QuantizeOptions::default())?;
//! assert_eq!(enc.codes.len(), 8 * 4 * 2);
//! assert!(enc.relative_error < 0.2);
//! # Ok::<(), oftq_aqlm::encode::EncodeError>(())
//! ```

mod beam;
mod calibrated;
mod codebook;
mod error;
mod kernels;
mod kmeans;
mod options;
mod pair;
mod problem;
mod rng;

use std::ops::ControlFlow;
use std::time::Instant;

use faer::{Mat, MatRef};

use crate::scheme::AqlmScheme;

pub use error::EncodeError;
pub use options::{QuantizeOptions, RoundStats};

use calibrated::Calib;
use problem::{Layout, State};
use rng::SplitMix64;

/// A quantized weight, in the layouts of `aqlm.QuantizedLinear` (aqlm.md §1).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The scheme used.
    pub scheme: AqlmScheme,
    /// `I`, columns of the weight.
    pub in_features: usize,
    /// `O`, rows of the weight.
    pub out_features: usize,
    /// Unsigned codes `[Og, Ig, M]` row-major (`Og = O/og`, `Ig = I/ig`).
    pub codes: Vec<u16>,
    /// Codebooks `[M, K = 2^B, og, ig]` row-major.
    pub codebooks: Vec<f32>,
    /// Scales `[Og]`, one per output group.
    pub scales: Vec<f32>,
    /// Final relative error: `‖W − Ŵ‖²_F / ‖W‖²_F`, or with calibration
    /// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`, `Ŵ` decoded by the AQLM convention.
    pub relative_error: f64,
    /// Statistics of the initialisation (round 0) and of every completed round.
    pub history: Vec<RoundStats>,
}

impl Encoded {
    /// Rounds the codebooks and scales to `dtype` (e.g. [`crate::FloatDtype::F16`], as aqlm's
    /// `convert_to_hf.py` stores them), so that the layer computes with exactly the values a saved
    /// checkpoint holds. The relative error is not recomputed.
    #[must_use]
    pub fn rounded_to(mut self, dtype: crate::FloatDtype) -> Self {
        for v in self.codebooks.iter_mut().chain(self.scales.iter_mut()) {
            *v = dtype.round(*v);
        }
        self
    }

    /// The quantized layer (with an optional bias), ready for inference and for saving.
    ///
    /// # Errors
    /// Those of [`crate::AqlmLayer::new`] (a bias of the wrong length).
    pub fn into_layer(self, bias: Option<Vec<f32>>) -> Result<crate::AqlmLayer, crate::AqlmError> {
        crate::AqlmLayer::new(
            self.in_features,
            self.out_features,
            self.scheme,
            self.codes,
            self.codebooks,
            self.scales,
            bias,
        )
    }
}

/// Quantizes `weight [out, in]` with the plain objective `‖W − Ŵ‖²` and no progress reporting.
///
/// # Errors
/// See [`quantize_with`].
pub fn quantize<T: Copy + Into<f64>>(
    weight: MatRef<'_, T>,
    scheme: AqlmScheme,
    options: &QuantizeOptions,
) -> Result<Encoded, EncodeError> {
    quantize_with(weight, None, scheme, options, |_| ControlFlow::Continue(()))
}

/// Quantizes `weight [out, in]` into AQLM (see the module docs).
///
/// - `xtx`: optional calibration second moment `H [in, in]` (e.g. from [`xtx_from_inputs`]);
///   with it the objective is `tr(ΔW H ΔWᵀ)`. It is symmetrised as `(H + Hᵀ)/2`.
/// - `progress`: called after the initialisation and after every round with that round's
///   statistics; returning [`ControlFlow::Break`] stops the encoder after that round, and the
///   encoding reached so far is returned (its `history` ends with that round).
///
/// # Errors
/// [`EncodeError::Scheme`] for an invalid scheme; [`EncodeError::Shape`] if the weight is
/// empty, not divisible into `og × ig` tiles, or `xtx` is not `[in, in]`;
/// [`EncodeError::NonFinite`] for NaN/∞ inputs; [`EncodeError::Option`] for bad options;
/// [`EncodeError::Degenerate`] if `tr(W H Wᵀ) ≤ 0`.
pub fn quantize_with<T, F>(
    weight: MatRef<'_, T>,
    xtx: Option<MatRef<'_, f64>>,
    scheme: AqlmScheme,
    options: &QuantizeOptions,
    mut progress: F,
) -> Result<Encoded, EncodeError>
where
    T: Copy + Into<f64>,
    F: FnMut(&RoundStats) -> ControlFlow<()>,
{
    let start = Instant::now();
    scheme.validate()?;
    options.validate()?;
    let l = layout(weight.nrows(), weight.ncols(), scheme)?;
    let dense = read_weight(weight)?;
    let w = problem::group_rows(&dense, &l);
    let calib = match xtx {
        None => None,
        Some(h) => Some(Calib::new(dense, read_xtx(h, l.in_features)?, &l)),
    };
    let plain_denom: f64 = w.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    if let Some(c) = &calib
        && (c.denom <= 0.0 || !c.denom.is_finite())
    {
        return Err(EncodeError::Degenerate(format!(
            "tr(W·XᵀX·Wᵀ) = {} for the weight and xtx given; the output-aware relative error is undefined",
            c.denom
        )));
    }
    let rel_error = |st: &State| match &calib {
        Some(c) => c.relative_error(st, &l),
        None if plain_denom > 0.0 => problem::plain_sq_error(&w, st, &l) / plain_denom,
        None => 0.0,
    };

    let mut rng = SplitMix64::new(options.seed);
    let scales = problem::initial_scales(&w, &l);
    let mut x = w.clone();
    for (g, xg) in x.chunks_exact_mut(l.d).enumerate() {
        let s = scales[g / l.n_in];
        xg.iter_mut().for_each(|v| *v /= s);
    }
    let (codebooks, codes) = kmeans::residual_kmeans(&x, &l, options.kmeans_iters, &mut rng);
    drop(x);
    let mut st = State {
        codes,
        codebooks,
        scales,
    };
    let mut err = rel_error(&st);
    let mut history = vec![RoundStats {
        round: 0,
        relative_error: err,
        seconds: start.elapsed().as_secs_f64(),
        elapsed: start.elapsed().as_secs_f64(),
    }];
    let mut stop = progress(&history[0]).is_break();
    let use_pairs = options.joint_pair_search && calib.is_none() && pair::applicable(&l);

    for round in 1..=options.max_rounds {
        if stop || err == 0.0 {
            break;
        }
        let t0 = Instant::now();
        let prev = st.clone();
        match &calib {
            None => {
                if use_pairs {
                    pair::search_pairs(&w, &mut st, &l);
                } else {
                    let mut order: Vec<usize> = (0..l.m).collect();
                    rng.shuffle(&mut order);
                    beam::search_codes(&w, &mut st, &l, &order, options.beam_size);
                }
                codebook::update_codebooks_plain(&w, &mut st, &l);
                problem::refit_scales_plain(&w, &mut st, &l);
            }
            Some(c) => {
                let visits = visit_order(&l, &mut rng);
                c.search_codes(&mut st, &l, &visits, options.beam_size);
                c.update_codebooks(&mut st, &l, options.cg_iters);
                c.refit_scales(&mut st, &l);
            }
        }
        let new_err = rel_error(&st);
        if new_err.is_nan() || new_err > err {
            // Rounding made the round worse (or produced NaN): keep the previous state.
            st = prev;
            break;
        }
        let improved = err - new_err;
        err = new_err;
        history.push(RoundStats {
            round,
            relative_error: err,
            seconds: t0.elapsed().as_secs_f64(),
            elapsed: start.elapsed().as_secs_f64(),
        });
        stop = progress(&history[history.len() - 1]).is_break()
            || improved < options.relative_tolerance * (err + improved);
    }
    Ok(Encoded {
        scheme,
        in_features: l.in_features,
        out_features: l.out_features,
        codes: st.codes,
        codebooks: st.codebooks,
        scales: st.scales,
        relative_error: err,
        history,
    })
}

/// The calibration second moment `H = XᵀX / N` (f64) of inputs `X [N, in]` (`[tokens, features]`),
/// as aqlm accumulates it (`XTX`), for [`quantize_with`].
///
/// # Errors
/// [`EncodeError::Shape`] if `X` has no rows or no columns; [`EncodeError::NonFinite`] for NaN/∞.
pub fn xtx_from_inputs<T: Copy + Into<f64>>(
    inputs: MatRef<'_, T>,
) -> Result<Mat<f64>, EncodeError> {
    let (n, i) = (inputs.nrows(), inputs.ncols());
    if n == 0 || i == 0 {
        return Err(EncodeError::Shape {
            what: "calibration inputs",
            problem: format!("expected [tokens, in_features] with both > 0, got [{n}, {i}]"),
        });
    }
    let mut x = Mat::<f64>::zeros(n, i);
    for c in 0..i {
        for r in 0..n {
            let v: f64 = (*inputs.get(r, c)).into();
            if !v.is_finite() {
                return Err(EncodeError::NonFinite {
                    what: "calibration inputs",
                    row: r,
                    col: c,
                });
            }
            x[(r, c)] = v;
        }
    }
    let mut h = Mat::<f64>::zeros(i, i);
    faer::linalg::matmul::matmul(
        h.as_mut(),
        faer::Accum::Replace,
        x.transpose(),
        x.as_ref(),
        1.0 / n as f64,
        faer::Par::Seq,
    );
    crate::kernels::clear_upper_simd_state();
    Ok(h)
}

fn layout(o: usize, i: usize, scheme: AqlmScheme) -> Result<Layout, EncodeError> {
    let (og, ig) = (scheme.out_group_size, scheme.in_group_size);
    if o == 0 || i == 0 || !o.is_multiple_of(og) || !i.is_multiple_of(ig) {
        return Err(EncodeError::Shape {
            what: "weight",
            problem: format!(
                "[out {o}, in {i}] must be non-empty with out divisible by out_group_size {og} and in divisible by in_group_size {ig}"
            ),
        });
    }
    Ok(Layout {
        out_features: o,
        in_features: i,
        og,
        ig,
        n_out: o / og,
        n_in: i / ig,
        d: og * ig,
        m: scheme.num_codebooks,
        k: scheme.codebook_size(),
    })
}

fn read_weight<T: Copy + Into<f64>>(w: MatRef<'_, T>) -> Result<Vec<f32>, EncodeError> {
    let (o, i) = (w.nrows(), w.ncols());
    let mut out = vec![0.0f32; o * i];
    for r in 0..o {
        for c in 0..i {
            let v: f64 = (*w.get(r, c)).into();
            let v32 = v as f32;
            if !v32.is_finite() {
                return Err(EncodeError::NonFinite {
                    what: "weight",
                    row: r,
                    col: c,
                });
            }
            out[r * i + c] = v32;
        }
    }
    Ok(out)
}

fn read_xtx(h: MatRef<'_, f64>, i: usize) -> Result<Vec<f64>, EncodeError> {
    if h.nrows() != i || h.ncols() != i {
        return Err(EncodeError::Shape {
            what: "xtx",
            problem: format!(
                "expected [{i}, {i}] (in_features square), got [{}, {}]",
                h.nrows(),
                h.ncols()
            ),
        });
    }
    let mut out = vec![0.0f64; i * i];
    for r in 0..i {
        for c in 0..i {
            let (a, b) = (*h.get(r, c), *h.get(c, r));
            if !a.is_finite() {
                return Err(EncodeError::NonFinite {
                    what: "xtx",
                    row: r,
                    col: c,
                });
            }
            out[r * i + c] = 0.5 * (a + b);
        }
    }
    Ok(out)
}

/// In-groups in a shuffled order, codebooks shuffled within each in-group (as aqlm).
fn visit_order(l: &Layout, rng: &mut SplitMix64) -> Vec<(usize, usize)> {
    let mut js: Vec<usize> = (0..l.n_in).collect();
    rng.shuffle(&mut js);
    let mut out = Vec::with_capacity(l.n_in * l.m);
    for j in js {
        let mut ms: Vec<usize> = (0..l.m).collect();
        rng.shuffle(&mut ms);
        out.extend(ms.into_iter().map(|m| (j, m)));
    }
    out
}

#[cfg(test)]
mod tests;
