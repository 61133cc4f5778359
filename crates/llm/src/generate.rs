//! Generation with the KV cache: greedy decoding or top-p (nucleus) sampling, batched over prompts
//! of equal length.

use std::time::Instant;

use oftq_candle::candle_core::{Device, Tensor};
use oftq_candle::layer::rand::rngs::StdRng;
use oftq_candle::layer::rand::{RngExt, SeedableRng};
use rayon::prelude::*;

use crate::error::{LlmError, Result};
use crate::model::Llama;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// `0` for greedy decoding (the most likely token); else logits are divided by it.
    pub temperature: f64,
    /// Nucleus: sample among the most likely tokens whose probabilities sum to at least `top_p`
    /// (`1` samples from the whole distribution).
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Self = Self {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };

    fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(LlmError::Invalid(format!(
                "temperature must be ≥ 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(LlmError::Invalid(format!(
                "top-p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// Batches up to which [`generate`] decodes on a single thread.
pub const SINGLE_THREAD_MAX_BATCH: usize = 2;

/// What [`generate`] produced.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The new tokens of each prompt (without the prompt).
    pub tokens: Vec<Vec<u32>>,
    /// Seconds of the prompt's forward pass (prefill).
    pub prefill_s: f64,
    /// Seconds of the token-by-token steps.
    pub decode_s: f64,
}

impl Generation {
    /// New tokens per second of the decoding steps (all sequences).
    pub fn tokens_per_s(&self) -> f64 {
        let steps = self.tokens.first().map_or(0, Vec::len).saturating_sub(1);
        let n = steps * self.tokens.len();
        if self.decode_s > 0.0 {
            n as f64 / self.decode_s
        } else {
            0.0
        }
    }
}

/// The next token of one row of logits.
fn choose(logits: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
                if v > b.1 { (i, v) } else { b }
            })
            .0 as u32
    };
    if s.temperature == 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<(f64, u32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            (
                ((f64::from(v) - f64::from(max)) / s.temperature).exp(),
                i as u32,
            )
        })
        .collect();
    p.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let total: f64 = p.iter().map(|x| x.0).sum();
    let mut keep = 0.0;
    let mut n = 0;
    for &(v, _) in &p {
        keep += v;
        n += 1;
        if keep >= s.top_p * total {
            break;
        }
    }
    let mut u = rng.random::<f64>() * keep;
    for &(v, i) in &p[..n] {
        if u < v {
            return i;
        }
        u -= v;
    }
    p[n - 1].1
}

/// Generates up to `max_new` tokens after each prompt (all prompts of the same length), with the
/// KV cache: one forward over the prompts, then one per new token. `on_step` sees the tokens
/// chosen at each step (one per prompt). With `stop = Some(id)`, generation ends once every
/// sequence has produced `id` (kept in the output); sequences that stopped earlier go on being
/// sampled, so all outputs have the same length.
///
/// # Errors
/// Prompts of different or zero lengths, more positions than the model supports, bad sampling
/// options.
pub fn generate(
    model: &Llama,
    prompts: &[Vec<u32>],
    max_new: usize,
    sampling: Sampling,
    stop: Option<u32>,
    mut on_step: impl FnMut(&[u32]),
) -> Result<Generation> {
    sampling.validate()?;
    let len = prompts.first().map_or(0, Vec::len);
    if len == 0 || prompts.iter().any(|p| p.len() != len) {
        return Err(LlmError::Invalid(
            "prompts must be non-empty and of equal length".into(),
        ));
    }
    let b = prompts.len();
    let mut rngs: Vec<StdRng> = (0..b)
        .map(|i| {
            StdRng::seed_from_u64(
                sampling
                    .seed
                    .wrapping_add(i as u64)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15),
            )
        })
        .collect();
    let mut cache = model.new_cache();
    let mut out = vec![Vec::with_capacity(max_new); b];
    let flat: Vec<u32> = prompts.concat();
    let mut input = Tensor::from_vec(flat, (b, len), &Device::Cpu)?;
    let (mut prefill_s, mut decode_s) = (0.0, 0.0);
    // One new token per sequence is too little work to split: with a small batch, the steps
    // after the prompt run on one thread (measured on SmolLM2 2x8 + OFT, batch 1: 24 tokens/s
    // on one thread, 19 on two, the second thread's hand-offs costing more than its help).
    let single = if b <= SINGLE_THREAD_MAX_BATCH && rayon::current_num_threads() > 1 {
        rayon::ThreadPoolBuilder::new().num_threads(1).build().ok()
    } else {
        None
    };
    for step in 0..max_new {
        let t0 = Instant::now();
        let hidden = match &single {
            Some(pool) if step > 0 => {
                pool.install(|| model.forward_hidden(&input, Some(&mut cache), false))?
            }
            _ => model.forward_hidden(&input, Some(&mut cache), false)?,
        };
        // Only each sequence's last position needs logits (the head is the largest product).
        let t = input.dim(1)?;
        let last = hidden
            .reshape((b, t, ()))?
            .narrow(1, t - 1, 1)?
            .squeeze(1)?;
        let rows = model.head_logits(&last)?.to_vec2::<f32>()?;
        let next: Vec<u32> = rows
            .par_iter()
            .zip(rngs.par_iter_mut())
            .map(|(r, rng)| choose(r, &sampling, rng))
            .collect();
        let dt = t0.elapsed().as_secs_f64();
        if step == 0 {
            prefill_s = dt;
        } else {
            decode_s += dt;
        }
        on_step(&next);
        for (o, &t) in out.iter_mut().zip(&next) {
            o.push(t);
        }
        input = Tensor::from_vec(next, (b, 1), &Device::Cpu)?;
        if stop.is_some_and(|s| out.iter().all(|o| o.contains(&s))) {
            break;
        }
    }
    Ok(Generation {
        tokens: out,
        prefill_s,
        decode_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_nucleus_choices() {
        let logits = [0.0f32, 5.0, 1.0, 4.9];
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(choose(&logits, &Sampling::GREEDY, &mut rng), 1);
        // top-p 0.5 keeps only the best token.
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.5,
            seed: 0,
        };
        for _ in 0..20 {
            assert_eq!(choose(&logits, &s, &mut rng), 1);
        }
        // top-p 0.99 reaches index 3 sometimes, never 0 (e^-5 of the mass is cut).
        let s = Sampling { top_p: 0.9, ..s };
        let picks: Vec<u32> = (0..200).map(|_| choose(&logits, &s, &mut rng)).collect();
        assert!(picks.contains(&3) && picks.contains(&1) && !picks.contains(&0));
        assert!(Sampling { top_p: 0.0, ..s }.validate().is_err());
        assert!(
            Sampling {
                temperature: -1.0,
                ..s
            }
            .validate()
            .is_err()
        );
    }
}
