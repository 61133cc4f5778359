//! Knowledge distillation of OFT adapters: the AQLM student learns the source model's next-token
//! distribution.
//!
//! **Loss.** Per token, `KL(p_T ‖ p_S)` at temperature 1, averaged over tokens. The teacher's
//! distribution is cached once per training sequence as its `k` most likely tokens plus one
//! "tail" bin holding the rest of the mass (see [`TeacherTargets`]); the KL is then exact on that
//! `(k+1)`-bin coarsening, `Σ_{i∈K} p_i log(p_i/q_i) + p_tail log(p_tail/q_tail)`, a lower bound of
//! the full KL that equals it when the tail is negligible (k = 64 keeps over 99% of the mass on
//! generated text). It is computed fused with the output head ([`crate::kl_head`]), so the
//! `[tokens, vocab]` logits are never held.
//!
//! **Optimiser.** oftq-layer's AdamW (PEFT's defaults: β = (0.9, 0.999), ε = 1e-8, weight decay
//! 0.01) with linear warm-up and cosine decay, the global gradient norm clipped to 1.0, COFT
//! projected after every step; checkpoints every `checkpoint_every` steps (adapter, moments, step)
//! let an interrupted run resume exactly.
//!
//! **Selection on held-out sequences.** The last `validation` sequences of the data are never
//! trained on. Their mean KL is measured before the first step (the identity adapter, `R = I`,
//! i.e. the quantized model as it is), at every checkpoint and after the last step. A measurement
//! that improves on the best so far makes the current state the best one; one that does not sends
//! training back to the best state (adapter and Adam moments) with the learning rate halved from
//! then on. The adapter written is the best one, so distillation never leaves the student further
//! from its teacher on the held-out text than it started. (At PEFT's rate of 1e-3 a 4-bit model,
//! already close to its teacher, otherwise drifts away from it; see docs/llm.md.)

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use oftq_candle::candle_core::{Device, Tensor, Var};
use oftq_candle::candle_nn::VarMap;
use oftq_candle::layer::OftConfig;
use oftq_candle::layer::config::TargetModules;
use oftq_candle::layer::faer::Mat;
use oftq_candle::layer::train::{AdamW, LrSchedule, Moments, ParamKey, clip_grad_norm};
use rayon::prelude::*;
use serde_json::json;

use crate::error::{LlmError, Result};
use crate::kl_head::kl_head_loss;
use crate::model::Llama;
use crate::model::vector_math::log_sum_exp;
use crate::weights::PROJECTIONS;

/// The teacher's next-token distributions of a set of sequences, kept as the top `k` tokens of
/// each position (ids and probabilities) and the remaining mass.
#[derive(Debug, Clone)]
pub struct TeacherTargets {
    /// Tokens kept per position.
    pub k: usize,
    /// `[positions, k]` token ids.
    pub ids: Vec<u32>,
    /// `[positions, k]` probabilities.
    pub probs: Vec<f32>,
    /// `[positions]` probability of all other tokens.
    pub tail: Vec<f32>,
}

impl TeacherTargets {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.tail.len()
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.tail.is_empty()
    }

    /// Mean probability mass kept in the top `k` (the rest is the tail bin).
    pub fn kept_mass(&self) -> f64 {
        1.0 - self.tail.iter().map(|&t| f64::from(t)).sum::<f64>() / self.len().max(1) as f64
    }

    /// The targets of rows `start..start+n`.
    fn slice(&self, start: usize, n: usize) -> Self {
        Self {
            k: self.k,
            ids: self.ids[start * self.k..(start + n) * self.k].to_vec(),
            probs: self.probs[start * self.k..(start + n) * self.k].to_vec(),
            tail: self.tail[start..start + n].to_vec(),
        }
    }

    /// Top-`k` targets of `logits [rows, vocab]`: probabilities `e^(z_i − lse)` in `f64`, with each
    /// row's log-sum-exp in one vectorized pass (`f32` terms within 2 ulp, summed in `f64`).
    pub fn from_logits(logits: &Tensor, k: usize) -> Result<Self> {
        let (rows, vocab) = logits.dims2()?;
        let k = k.clamp(1, vocab);
        let v = logits.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let per_row: Vec<(Vec<u32>, Vec<f32>, f32)> = v
            .par_chunks(vocab)
            .map(|z| {
                let lse = log_sum_exp(z);
                let mut idx: Vec<u32> = (0..vocab as u32).collect();
                idx.select_nth_unstable_by(k - 1, |&a, &b| {
                    z[b as usize].total_cmp(&z[a as usize]).then(a.cmp(&b))
                });
                idx.truncate(k);
                idx.sort_unstable_by(|&a, &b| {
                    z[b as usize].total_cmp(&z[a as usize]).then(a.cmp(&b))
                });
                let p: Vec<f32> = idx
                    .iter()
                    .map(|&i| (f64::from(z[i as usize]) - lse).exp() as f32)
                    .collect();
                let kept: f64 = p.iter().map(|&x| f64::from(x)).sum();
                (idx, p, (1.0 - kept).max(0.0) as f32)
            })
            .collect();
        let mut t = Self {
            k,
            ids: Vec::with_capacity(rows * k),
            probs: Vec::with_capacity(rows * k),
            tail: Vec::with_capacity(rows),
        };
        for (i, p, tail) in per_row {
            t.ids.extend(i);
            t.probs.extend(p);
            t.tail.push(tail);
        }
        Ok(t)
    }

    fn append(&mut self, other: Self) {
        self.ids.extend(other.ids);
        self.probs.extend(other.probs);
        self.tail.extend(other.tail);
    }
}

/// Options of [`finetune`].
#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    /// The adapter's PEFT config (its `target_modules` is set to the seven projections).
    pub adapter: OftConfig,
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps (linear), then cosine decay to 10% of the peak.
    pub warmup: usize,
    /// Global gradient-norm clip.
    pub clip: f64,
    /// Teacher tokens kept per position.
    pub top_k: usize,
    /// Steps between checkpoints and held-out measurements (0: none; the held-out KL is then
    /// measured at the start and the end only).
    pub checkpoint_every: usize,
    /// Held-out sequences: the last ones of the data, never trained on; their KL picks the
    /// adapter kept (see the module docs). 0: none, the last step's adapter is kept.
    pub validation: usize,
}

impl Default for FinetuneOptions {
    /// Block 32, Cayley–Neumann 5 terms (PEFT's defaults), 2 sequences per step, peak rate 1e-3
    /// with 10 warm-up steps, clip 1.0, top-64 teacher, a checkpoint and a held-out measurement
    /// every 25 steps, 8 held-out sequences.
    fn default() -> Self {
        Self {
            adapter: OftConfig {
                oft_block_size: 32,
                use_cayley_neumann: true,
                num_cayley_neumann_terms: 5,
                ..OftConfig::default()
            },
            steps: 200,
            batch: 2,
            lr: 1e-3,
            warmup: 10,
            clip: 1.0,
            top_k: 64,
            checkpoint_every: 25,
            validation: 8,
        }
    }
}

/// What [`finetune`] reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum FinetuneEvent {
    /// An optimiser step finished.
    Step {
        /// Step index (from 0).
        step: usize,
        /// Steps in all.
        total: usize,
        /// Distillation loss of the step's batch (before the update).
        loss: f64,
        /// Learning rate used.
        lr: f64,
        /// Gradient norm before clipping.
        grad_norm: f64,
        /// Seconds of the step.
        seconds: f64,
    },
    /// Resumed from a checkpoint at this step.
    Resumed {
        /// The first step to run.
        step: usize,
    },
    /// The held-out KL was measured.
    Validated(Validation),
}

/// One held-out measurement of [`finetune`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    /// Steps taken when measured (0: the identity adapter).
    pub step: usize,
    /// Mean KL to the teacher over the held-out positions.
    pub kl: f64,
    /// Whether it improved on the best so far (and became the best); if not, training went back
    /// to the best state.
    pub kept: bool,
    /// The factor on the learning-rate schedule from here on (halved at each step back).
    pub lr_scale: f64,
}

/// What [`finetune`] did.
#[derive(Debug, Clone, Default)]
pub struct FinetuneReport {
    /// Loss per step.
    pub losses: Vec<f64>,
    /// Seconds per step.
    pub step_seconds: Vec<f64>,
    /// Mean teacher mass in the kept top-k.
    pub kept_mass: f64,
    /// Trainable parameters.
    pub parameters: usize,
    /// Seconds in all.
    pub seconds: f64,
    /// The held-out measurements, in order (those before a resume included).
    pub validation: Vec<Validation>,
}

impl FinetuneReport {
    /// The measurement of the adapter written: the last one that improved on the best so far
    /// (`None` without held-out sequences, when the last step's adapter is written).
    pub fn best(&self) -> Option<&Validation> {
        best_of(&self.validation)
    }
}

/// The last measurement of `history` that improved on the best before it: the best one.
fn best_of(history: &[Validation]) -> Option<&Validation> {
    history.iter().rfind(|v| v.kept)
}

const ADAPTER: &str = "default";
const CHECKPOINT: &str = ".oftq-checkpoint";

/// The teacher targets of `data` (sequences of equal length), `batch` sequences at a time.
///
/// # Errors
/// Model errors.
pub fn teacher_targets(
    teacher: &Llama,
    data: &[Vec<u32>],
    k: usize,
    batch: usize,
    mut on: impl FnMut(usize, usize),
) -> Result<TeacherTargets> {
    let mut all: Option<TeacherTargets> = None;
    let mut done = 0;
    for chunk in data.chunks(batch.max(1)) {
        let len = chunk[0].len();
        let tokens = Tensor::from_vec(chunk.concat(), (chunk.len(), len), &Device::Cpu)?;
        let logits = teacher.forward(&tokens, None, false)?;
        let t = TeacherTargets::from_logits(&logits.reshape((chunk.len() * len, ()))?, k)?;
        match &mut all {
            Some(a) => a.append(t),
            None => all = Some(t),
        }
        done += chunk.len();
        on(done, data.len());
    }
    all.ok_or_else(|| LlmError::Invalid("no training sequences".into()))
}

/// The mean coarsened KL of `student`'s next-token distributions to the teacher's `targets` (as
/// [`teacher_targets`] gives for `data`, sequences of equal length) over all positions of `data`,
/// `batch` sequences at a time: the loss [`finetune`] minimises, without gradients.
///
/// # Errors
/// No data, sequences of unequal length, targets that do not fit the data; model errors.
pub fn mean_kl(
    student: &Llama,
    data: &[Vec<u32>],
    targets: &TeacherTargets,
    batch: usize,
) -> Result<f64> {
    let len = data.first().map_or(0, Vec::len);
    if len == 0 || data.iter().any(|s| s.len() != len) || targets.len() != data.len() * len {
        return Err(LlmError::Invalid(format!(
            "{} teacher targets do not fit {} sequences of {len} tokens (sequences must be non-empty and of equal length)",
            targets.len(),
            data.len()
        )));
    }
    let batch = batch.max(1);
    let mut sum = 0.0;
    for (c, chunk) in data.chunks(batch).enumerate() {
        let rows = chunk.len() * len;
        let tokens = Tensor::from_vec(chunk.concat(), (chunk.len(), len), &Device::Cpu)?;
        let tgt = targets.slice(c * batch * len, rows);
        let hidden = student.final_hidden(&tokens, false)?;
        let loss = kl_head_loss(&hidden, student.head_weight(), Arc::new(tgt))?;
        sum += f64::from(loss.to_scalar::<f32>()?) * rows as f64;
    }
    Ok(sum / (data.len() * len) as f64)
}

/// The trainable `Var`s of `model`'s adapter, by (module, adapter).
fn params(model: &Llama) -> Vec<(ParamKey, Var)> {
    model
        .quantized()
        .filter_map(|m| {
            m.adapter(ADAPTER)
                .map(|a| (ParamKey::new(m.module(), ADAPTER), a.var().clone()))
        })
        .collect()
}

fn tensor_mat(v: &Tensor) -> Result<Mat<f32>> {
    let (r, c) = v.dims2()?;
    let x = v.flatten_all()?.to_vec1::<f32>()?;
    Ok(Mat::from_fn(r, c, |i, j| x[i * c + j]))
}

fn set_var(v: &Var, m: &Mat<f32>) -> Result<()> {
    let data: Vec<f32> = (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)]))
        .collect();
    v.set(&Tensor::from_vec(
        data,
        (m.nrows(), m.ncols()),
        &Device::Cpu,
    )?)?;
    Ok(())
}

/// The adapter config written with the adapter: the options plus PEFT's bookkeeping fields.
pub fn adapter_config(opts: &FinetuneOptions, base: &Path) -> OftConfig {
    OftConfig {
        target_modules: Some(TargetModules::List(
            PROJECTIONS
                .iter()
                .map(|p| p.rsplit('.').next().unwrap_or(p).to_string())
                .collect(),
        )),
        task_type: Some("CAUSAL_LM".into()),
        base_model_name_or_path: Some(base.display().to_string()),
        ..opts.adapter.clone()
    }
}

/// Trains OFT adapter `"default"` on every AQLM projection of `student` to match the teacher's
/// next-token distributions `targets` (from [`teacher_targets`], one per position of `data`,
/// sequences of equal length), then writes the PEFT adapter folder `out` (what
/// `PeftModel.from_pretrained` loads onto the AQLM folder). The teacher itself is not needed here:
/// compute the targets, drop it, then train (its weights would double the peak memory).
/// Checkpoints go to `<out>/.oftq-checkpoint/` (with held-out sequences, also one before the first
/// step, and each holds the best state so far); running again with the same data and options
/// resumes from the last one. `on` sees the progress; returning `ControlFlow::Break` stops with
/// [`LlmError::Interrupted`] (after the step's checkpoint, if one was due).
///
/// # Errors
/// A student without AQLM projections or with an adapter already; no data; targets that do not
/// fit the data or the student's vocabulary; model, I/O errors.
pub fn finetune(
    student: &mut Llama,
    data: &[Vec<u32>],
    targets: TeacherTargets,
    out: &Path,
    opts: &FinetuneOptions,
    mut on: impl FnMut(FinetuneEvent) -> ControlFlow<()>,
) -> Result<FinetuneReport> {
    let start = Instant::now();
    if data.is_empty() || data.iter().any(|s| s.len() != data[0].len() || s.len() < 2) {
        return Err(LlmError::Invalid(
            "training data must be sequences of equal length ≥ 2".into(),
        ));
    }
    if opts.validation >= data.len() {
        return Err(LlmError::Invalid(format!(
            "{} sequences leave none to train on after {} held-out ones (give more text or fewer held-out sequences)",
            data.len(),
            opts.validation
        )));
    }
    let positions: usize = data.iter().map(Vec::len).sum();
    if targets.len() != positions {
        return Err(LlmError::Invalid(format!(
            "{} teacher targets for {positions} training positions",
            targets.len()
        )));
    }
    if let Some(&id) = targets
        .ids
        .iter()
        .find(|&&i| i as usize >= student.config().vocab_size)
    {
        return Err(LlmError::Invalid(format!(
            "a teacher target is token {id}, outside the student's vocabulary of {} (another model's teacher?)",
            student.config().vocab_size
        )));
    }
    let varmap = VarMap::new();
    let config = adapter_config(opts, student.source());
    if student.add_adapter(ADAPTER, &config, &varmap)? == 0 {
        return Err(LlmError::Invalid(
            "the student has no AQLM projection to adapt".into(),
        ));
    }
    let params = params(student);
    let mut report = FinetuneReport {
        parameters: params.iter().map(|(_, v)| v.elem_count()).sum(),
        kept_mass: targets.kept_mass(),
        ..FinetuneReport::default()
    };
    let targets = Arc::new(targets);
    let (train, held) = data.split_at(data.len() - opts.validation);

    let mut adamw = AdamW::new(opts.lr);
    let schedule = LrSchedule::Cosine {
        warmup: opts.warmup,
        min_ratio: 0.1,
    };
    let ckpt = Checkpoint::new(out, opts, data)?;
    let mut selection = Selection::default();
    let resumed = ckpt.load(&params, &mut adamw)?;
    let fresh = resumed.is_none();
    let first = match resumed {
        Some((step, sel)) => {
            selection = sel;
            if on(FinetuneEvent::Resumed { step }).is_break() {
                return Err(LlmError::Interrupted);
            }
            step
        }
        None => 0,
    };
    for m in student.quantized() {
        m.project_coft()?;
    }
    let len = data[0].len();
    let b = opts.batch.clamp(1, train.len());
    let held_targets = targets.slice(train.len() * len, held.len() * len);
    let held_out_kl = |student: &Llama| mean_kl(student, held, &held_targets, b);
    // With held-out sequences, the checkpoint on disk always holds the best state: it is written
    // after the first measurement and after each later one, once a worse state has been replaced
    // by the best one read back from it (no copy is kept in memory).
    let select = !held.is_empty();
    if select && fresh {
        let v = selection.record(0, held_out_kl(student)?);
        ckpt.save(0, &params, &adamw, &selection)?;
        if on(FinetuneEvent::Validated(v)).is_break() {
            return Err(LlmError::Interrupted);
        }
    }
    for step in first..opts.steps {
        let t_step = Instant::now();
        let s0 = (step * b) % train.len();
        let idx: Vec<usize> = (0..b).map(|i| (s0 + i) % train.len()).collect();
        let tokens: Vec<u32> = idx.iter().flat_map(|&i| train[i].iter().copied()).collect();
        let tokens = Tensor::from_vec(tokens, (b, len), &Device::Cpu)?;
        let mut tgt = targets.slice(idx[0] * len, len);
        for &i in &idx[1..] {
            tgt.append(targets.slice(i * len, len));
        }
        let hidden = student.final_hidden(&tokens, true)?;
        let loss = kl_head_loss(&hidden, student.head_weight(), Arc::new(tgt))?;
        let loss_v = f64::from(loss.to_scalar::<f32>()?);
        let grads = loss.backward()?;
        drop((loss, hidden));
        let mut g = BTreeMap::new();
        let mut p = BTreeMap::new();
        for (key, var) in &params {
            let gr = grads
                .get(var.as_tensor())
                .ok_or_else(|| LlmError::Invalid(format!("no gradient for {key}")))?;
            g.insert(key.clone(), tensor_mat(gr)?);
            p.insert(key.clone(), tensor_mat(var.as_tensor())?);
        }
        drop(grads);
        let grad_norm = clip_grad_norm(&mut g, Some(opts.clip));
        let lr = schedule.at(opts.lr, step, opts.steps) * selection.lr_scale();
        let (np, state) = adamw.propose(&p, &g, lr);
        adamw.commit(state);
        for (key, var) in &params {
            if let Some(m) = np.get(key) {
                set_var(var, m)?;
            }
        }
        for m in student.quantized() {
            m.project_coft()?;
        }
        let seconds = t_step.elapsed().as_secs_f64();
        report.losses.push(loss_v);
        report.step_seconds.push(seconds);
        let done = step + 1;
        let checkpoint =
            opts.checkpoint_every > 0 && done % opts.checkpoint_every == 0 && done < opts.steps;
        let mut validated = None;
        if select && (checkpoint || done == opts.steps) {
            let v = selection.record(done, held_out_kl(student)?);
            if !v.kept {
                ckpt.load(&params, &mut adamw)?.ok_or_else(|| {
                    LlmError::malformed(&ckpt.dir, "the best state's checkpoint is gone")
                })?;
            }
            validated = Some(v);
        }
        if checkpoint {
            ckpt.save(done, &params, &adamw, &selection)?;
        }
        let flow = on(FinetuneEvent::Step {
            step,
            total: opts.steps,
            loss: loss_v,
            lr,
            grad_norm,
            seconds,
        });
        if flow.is_break() || validated.is_some_and(|v| on(FinetuneEvent::Validated(v)).is_break())
        {
            return Err(LlmError::Interrupted);
        }
    }
    oftq_candle::save_adapter(
        out,
        ADAPTER,
        &config,
        student.quantized().filter_map(|m| m.adapter(ADAPTER)),
    )?;
    ckpt.remove()?;
    report.validation = selection.history;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The held-out measurements of a run, from which the best one and the learning-rate factor
/// follow.
#[derive(Debug, Clone, Default)]
struct Selection {
    history: Vec<Validation>,
}

impl Selection {
    /// The factor on the learning-rate schedule: that of the last measurement (1 before any).
    fn lr_scale(&self) -> f64 {
        self.history.last().map_or(1.0, |v| v.lr_scale)
    }

    /// Records the held-out KL after `step` steps: the new best if lower than the best so far
    /// (a non-finite KL never is), else the learning rate is halved.
    fn record(&mut self, step: usize, kl: f64) -> Validation {
        let kept = kl < best_of(&self.history).map_or(f64::INFINITY, |b| b.kl);
        let lr_scale = self.lr_scale() * if kept { 1.0 } else { 0.5 };
        let v = Validation {
            step,
            kl,
            kept,
            lr_scale,
        };
        self.history.push(v);
        v
    }

    fn to_json(&self) -> serde_json::Value {
        json!(
            self.history
                .iter()
                .map(|v| json!([v.step, v.kl, v.kept, v.lr_scale]))
                .collect::<Vec<_>>()
        )
    }

    fn from_json(v: &serde_json::Value) -> Option<Self> {
        let history = v
            .as_array()?
            .iter()
            .map(|h| {
                Some(Validation {
                    step: usize::try_from(h.get(0)?.as_u64()?).ok()?,
                    kl: h.get(1)?.as_f64().unwrap_or(f64::NAN),
                    kept: h.get(2)?.as_bool()?,
                    lr_scale: h.get(3)?.as_f64()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { history })
    }
}

/// The checkpoint folder of a run: `params-<step>.safetensors`, `moments-<step>.safetensors`, and
/// `state.json` (options, data fingerprint, step, the optimiser's step count, the held-out
/// selection) written last and atomically, so it only ever names a complete pair; older pairs are
/// removed after it is written.
struct Checkpoint {
    dir: PathBuf,
    fingerprint: serde_json::Value,
}

impl Checkpoint {
    fn new(out: &Path, opts: &FinetuneOptions, data: &[Vec<u32>]) -> Result<Self> {
        let h = data
            .iter()
            .flatten()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &t| {
                (h ^ u64::from(t)).wrapping_mul(0x100_0000_01b3)
            });
        Ok(Self {
            dir: out.join(CHECKPOINT),
            fingerprint: json!({
                "options": format!("{opts:?}"),
                "data": format!("{}x{} fnv {h:016x}", data.len(), data[0].len()),
            }),
        })
    }

    fn load(
        &self,
        params: &[(ParamKey, Var)],
        adamw: &mut AdamW,
    ) -> Result<Option<(usize, Selection)>> {
        let state_path = self.dir.join("state.json");
        let Ok(text) = std::fs::read_to_string(&state_path) else {
            return Ok(None);
        };
        let state: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LlmError::malformed(&state_path, e.to_string()))?;
        if state.get("fingerprint") != Some(&self.fingerprint) {
            return Err(LlmError::Invalid(format!(
                "{} holds a checkpoint of a run with other options or data; rerun with the same ones to resume, or remove it",
                self.dir.display()
            )));
        }
        let step = state
            .get("step")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| LlmError::malformed(&state_path, "no step"))?
            as usize;
        let selection = state
            .get("selection")
            .and_then(Selection::from_json)
            .ok_or_else(|| LlmError::malformed(&state_path, "no held-out selection state"))?;
        let load = |f: &str| -> Result<std::collections::HashMap<String, Tensor>> {
            let p = self.dir.join(f);
            oftq_candle::candle_core::safetensors::load(&p, &Device::Cpu)
                .map_err(|e| LlmError::malformed(&p, e.to_string()))
        };
        let (pt, mt) = (
            load(&format!("params-{step}.safetensors"))?,
            load(&format!("moments-{step}.safetensors"))?,
        );
        let adam_steps = state
            .get("adam_steps")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| LlmError::malformed(&state_path, "no optimiser step count"))?;
        let mut moments: Moments = BTreeMap::new();
        for (key, var) in params {
            let name = key.to_string();
            let missing =
                || LlmError::malformed(&self.dir, format!("checkpoint {step}: no tensor {name}"));
            var.set(pt.get(&name).ok_or_else(missing)?)?;
            // Before the optimiser's first step there are no moments.
            if adam_steps == 0 {
                continue;
            }
            let shape = var.dims2()?;
            let m64 = |s: &str| -> Result<Mat<f64>> {
                let t = mt.get(&format!("{name}.{s}")).ok_or_else(missing)?;
                let (r, c) = t.dims2()?;
                if (r, c) != shape {
                    return Err(LlmError::malformed(
                        &self.dir,
                        format!(
                            "checkpoint {step}: moment {name}.{s} is [{r}, {c}], its parameter {shape:?}"
                        ),
                    ));
                }
                let v = t.flatten_all()?.to_vec1::<f64>()?;
                Ok(Mat::from_fn(r, c, |i, j| v[i * c + j]))
            };
            moments.insert(key.clone(), (m64("m")?, m64("v")?));
        }
        adamw.restore(moments, adam_steps);
        Ok(Some((step, selection)))
    }

    fn save(
        &self,
        step: usize,
        params: &[(ParamKey, Var)],
        adamw: &AdamW,
        selection: &Selection,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(LlmError::io(&self.dir))?;
        let mut pt = std::collections::HashMap::new();
        let mut mt = std::collections::HashMap::new();
        let (moments, _) = adamw.moments();
        for (key, var) in params {
            let name = key.to_string();
            pt.insert(name.clone(), var.as_tensor().copy()?);
            if let Some((m, v)) = moments.get(key) {
                for (s, x) in [("m", m), ("v", v)] {
                    let data: Vec<f64> = (0..x.nrows())
                        .flat_map(|i| (0..x.ncols()).map(move |j| x[(i, j)]))
                        .collect();
                    mt.insert(
                        format!("{name}.{s}"),
                        Tensor::from_vec(data, (x.nrows(), x.ncols()), &Device::Cpu)?,
                    );
                }
            }
        }
        for (f, map) in [("params", &pt), ("moments", &mt)] {
            let dst = self.dir.join(format!("{f}-{step}.safetensors"));
            crate::atomic::save_tensors(&dst, map)?;
        }
        let state = json!({
            "fingerprint": self.fingerprint,
            "step": step,
            "adam_steps": adamw.moments().1,
            "selection": selection.to_json(),
        });
        crate::atomic::write(&self.dir.join("state.json"), state.to_string().as_bytes())?;
        // Older pairs are no longer named by state.json.
        let current = [
            format!("params-{step}.safetensors"),
            format!("moments-{step}.safetensors"),
        ];
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.ends_with(".safetensors") && !current.contains(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn remove(&self) -> Result<()> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(LlmError::io(&self.dir))?;
        }
        Ok(())
    }
}
