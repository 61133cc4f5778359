//! Perplexity as `ref_llm.py` (and the usual language-model evaluations) computes it: windows of
//! `context` tokens without overlap from the first `max_tokens` tokens of a text; in each window
//! the log-probability of token `i+1` given tokens `≤ i`, for `i = 0 … context−2` (the first token
//! of a window is not scored); `exp` of the mean negative log-probability over all windows.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use oftq_candle::candle_core::{D, DType, Device, Tensor};

use crate::error::{LlmError, Result};
use crate::model::Llama;

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
/// `f64`.
pub fn log_likelihood(logits: &Tensor, targets: &[u32]) -> Result<f64> {
    let lp = oftq_candle::candle_nn::ops::log_softmax(&logits.to_dtype(DType::F64)?, D::Minus1)?;
    let idx = Tensor::from_slice(targets, (targets.len(), 1), &Device::Cpu)?;
    Ok(lp.gather(&idx, 1)?.sum_all()?.to_scalar::<f64>()?)
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
