//! Perplexity as `ref_llm.py` (and the usual language-model evaluations) computes it: windows of
//! `context` tokens without overlap from the first `max_tokens` tokens of a text; in each window
//! the log-probability of token `i+1` given tokens `≤ i`, for `i = 0 … context−2` (the first token
//! of a window is not scored); `exp` of the mean negative log-probability over all windows.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use oftq_candle::candle_core::{DType, Device, Storage, Tensor};
use oftq_candle::storage_slice;
use rayon::prelude::*;

use crate::error::{LlmError, Result};
use crate::model::Llama;
use crate::model::vector_math::log_sum_exp;

/// The result of [`perplexity`].
#[derive(Debug, Clone)]
pub struct Perplexity {
    /// `exp(mean negative log-likelihood)`.
    pub perplexity: f64,
    /// Tokens scored (`windows · (context − 1)`).
    pub tokens: usize,
    /// Windows evaluated.
    pub windows: usize,
    /// Median seconds of one window's forward pass.
    pub forward_s: f64,
    /// The first window's logits `[context, vocab]`.
    pub first_logits: Option<Tensor>,
}

/// The `[t, vocab]` logits' log-probabilities of `targets` (row `i` scores `targets[i]`), summed in
/// `f64`: `Σᵢ (zᵢ[targets[i]] − log Σⱼ e^zᵢⱼ)`, each row's log-sum-exp in one vectorized pass
/// (`m + log Σⱼ e^(zᵢⱼ − m)` with `m` the row's maximum; terms in `f32` within 2 ulp, summed in
/// `f64`), rows in parallel and their results added in row order, so the value does not depend
/// on the thread count.
///
/// # Errors
/// [`LlmError::Invalid`] unless `logits` is a matrix with one row per target and every target
/// is below the vocabulary size.
pub fn log_likelihood(logits: &Tensor, targets: &[u32]) -> Result<f64> {
    let (rows, vocab) = logits.dims2()?;
    if rows != targets.len() {
        return Err(LlmError::Invalid(format!(
            "{rows} rows of logits for {} targets",
            targets.len()
        )));
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(LlmError::Invalid(format!(
            "target token {t} is outside the vocabulary of {vocab}"
        )));
    }
    let z = logits.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = z.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(LlmError::Invalid("logits are not on the CPU".into()));
    };
    let data = storage_slice::<f32>(cpu, layout, "logits")?;
    let per_row: Vec<f64> = data
        .par_chunks(vocab.max(1))
        .zip(targets.par_iter())
        .map(|(row, &t)| f64::from(row[t as usize]) - log_sum_exp(row))
        .collect();
    Ok(per_row.iter().sum())
}

/// Perplexity of `model` on `ids` (see the module docs): `ids.len().min(max_tokens) / context`
/// windows. With `keep_first`, the first window's logits are returned too.
///
/// # Errors
/// [`LlmError::Invalid`] when the tokens do not fill one window or `context < 2`; model errors.
pub fn perplexity(
    model: &Llama,
    ids: &[u32],
    context: usize,
    max_tokens: usize,
    keep_first: bool,
) -> Result<Perplexity> {
    if context < 2 {
        return Err(LlmError::Invalid(format!(
            "--context must be at least 2, got {context}"
        )));
    }
    let n = ids.len().min(max_tokens);
    let windows = n / context;
    if windows == 0 {
        return Err(LlmError::Invalid(format!(
            "the text has {n} tokens (after --max-tokens), fewer than one window of {context}"
        )));
    }
    let (mut nll, mut times, mut first_logits) = (0.0f64, Vec::new(), None);
    for w in 0..windows {
        let win = &ids[w * context..(w + 1) * context];
        let t0 = Instant::now();
        let logits = model.logits(win)?;
        times.push(t0.elapsed().as_secs_f64());
        nll -= log_likelihood(&logits.narrow(0, 0, context - 1)?, &win[1..])?;
        if w == 0 && keep_first {
            first_logits = Some(logits);
        }
    }
    times.sort_by(f64::total_cmp);
    let tokens = windows * (context - 1);
    Ok(Perplexity {
        perplexity: (nll / tokens as f64).exp(),
        tokens,
        windows,
        forward_s: times[times.len() / 2],
        first_logits,
    })
}

/// Writes `input_ids` (i64, `[context]`) and `logits` (f32, `[context, vocab]`) as safetensors, as
/// `ref_llm.py --logits-out` does.
///
/// # Errors
/// I/O errors.
pub fn write_logits(path: &Path, input_ids: &[u32], logits: &Tensor) -> Result<()> {
    let ids: Vec<i64> = input_ids.iter().map(|&i| i64::from(i)).collect();
    let map: HashMap<String, Tensor> = HashMap::from([
        (
            "input_ids".to_string(),
            Tensor::from_vec(ids, input_ids.len(), &Device::Cpu)?,
        ),
        (
            "logits".to_string(),
            logits.to_dtype(DType::F32)?.contiguous()?,
        ),
    ]);
    crate::atomic::save_tensors(path, &map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_likelihood_sums_the_targets_log_probabilities() {
        let z = [[1.0f32, 2.0, 3.0], [0.5, -1.0, 0.0]];
        let logits = Tensor::new(&z, &Device::Cpu).unwrap();
        let lse = |r: &[f32; 3]| r.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
        let want = (f64::from(z[0][2]) - lse(&z[0])) + (f64::from(z[1][0]) - lse(&z[1]));
        let got = log_likelihood(&logits, &[2, 0]).unwrap();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // A narrowed (row-sliced) view and f64 logits give the same.
        let wide = Tensor::new(&[z[0], z[1], [9.0, 9.0, 9.0]], &Device::Cpu).unwrap();
        let narrowed = log_likelihood(&wide.narrow(0, 0, 2).unwrap(), &[2, 0]).unwrap();
        assert_eq!(narrowed, got);
        let f64_logits = logits.to_dtype(DType::F64).unwrap();
        assert_eq!(log_likelihood(&f64_logits, &[2, 0]).unwrap(), got);
    }

    #[test]
    fn log_likelihood_rejects_mismatched_targets() {
        let logits = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let err = log_likelihood(&logits, &[0]).unwrap_err().to_string();
        assert!(err.contains("2 rows of logits for 1 targets"), "{err}");
        let err = log_likelihood(&logits, &[0, 3]).unwrap_err().to_string();
        assert!(err.contains("outside the vocabulary of 3"), "{err}");
        let not_a_matrix = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        assert!(log_likelihood(&not_a_matrix, &[0]).is_err());
    }
}
