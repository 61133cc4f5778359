//! Calibrated AQLM quantization of a whole model, block by block (as AQLM and GPTQ do).
//!
//! Every projection `W` is encoded to minimise `‖X·Wᵀ − X·Ŵᵀ‖²_F = tr(ΔW·H·ΔWᵀ)` with
//! `H = XᵀX/N` over the calibration inputs `X` it sees (oftq-aqlm's calibrated encoder).
//! Block `l`'s inputs are computed through blocks `0..l` *already quantized*; within a block,
//! q/k/v share `H` (the normed block input), `o` sees the attention output through the quantized
//! q/k/v, gate/up share the normed residual after attention, `down` sees the SwiGLU activation
//! through the quantized gate/up. With `data_free`, `H = I` (weight error only) and no calibration
//! text is needed.
//!
//! Progress is saved after every projection in `<out>/.oftq-partial/` (the calibration tokens, the
//! options, the layers done): running the same command again resumes where it stopped.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use oftq_candle::candle_core::{DType, Device, Tensor};
use oftq_candle::layer::aqlm::encode::{
    QuantizeOptions as EncoderOptions, RoundStats, quantize_with,
};
use oftq_candle::layer::aqlm::{
    AqlmCheckpoint, AqlmLayer, AqlmScheme, FloatDtype, QuantizationConfig,
};
use oftq_candle::layer::faer::{Accum, Mat, Par, linalg::matmul::matmul};
use serde_json::json;

use crate::error::{LlmError, Result};
use crate::generate::{Sampling, generate};
use crate::model::{Llama, Projection, Step, rms_norm};
use crate::save::save_hf_aqlm;
use crate::weights::{PROJECTIONS, projection_path};

/// Where the calibration text comes from.
#[derive(Debug, Clone)]
pub enum Calibration {
    /// Sequences sampled from the source model itself, each starting at BOS (data-free
    /// calibration, as LLM-QAT generates its training data).
    Generated {
        /// Number of sequences.
        sequences: usize,
        /// Tokens per sequence (BOS included).
        length: usize,
        /// How tokens are sampled.
        sampling: Sampling,
    },
    /// The user's text, tokenized, cut into sequences of `length` tokens (at most `sequences`).
    Tokens {
        /// The token ids.
        ids: Vec<u32>,
        /// Tokens per sequence.
        length: usize,
        /// Maximum number of sequences.
        sequences: usize,
    },
}

impl Calibration {
    /// The default: 128 sequences of 256 tokens sampled at temperature 1, top-p 0.95, seed 0.
    pub fn generated_default() -> Self {
        Self::Generated {
            sequences: 128,
            length: 256,
            sampling: Sampling {
                temperature: 1.0,
                top_p: 0.95,
                seed: 0,
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Generated {
                sequences,
                length,
                sampling,
            } => format!(
                "generated {sequences}x{length} T{} p{} seed {}",
                sampling.temperature, sampling.top_p, sampling.seed
            ),
            Self::Tokens {
                ids,
                length,
                sequences,
            } => {
                let h = ids.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| {
                    (h ^ u64::from(t)).wrapping_mul(0x100_0000_01b3)
                });
                format!(
                    "text of {} tokens (fnv {h:016x}) in {sequences}x{length}",
                    ids.len()
                )
            }
        }
    }
}

/// Options of [`quantize_model`].
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// The AQLM scheme (e.g. 2x8: two 8-bit codebooks over groups of 8 inputs, 2 bits per weight).
    pub scheme: AqlmScheme,
    /// Weight error only (`H = I`), no calibration.
    pub data_free: bool,
    /// The calibration text (unused with `data_free`).
    pub calibration: Calibration,
    /// The encoder's options.
    pub encoder: EncoderOptions,
    /// Relative damping `δ`: `H + δ·mean(diag H)·I` keeps the calibrated problem well posed for
    /// inputs the calibration never excites (GPTQ's `percdamp`).
    pub damping: f64,
    /// Calibration sequences per forward pass.
    pub batch: usize,
}

impl QuantizeOptions {
    /// The defaults for `scheme`: calibrated on [`Calibration::generated_default`], at most 6
    /// encoder rounds stopping at a relative improvement below 0.5% (the calibrated encoder gains
    /// less than 2% of its error after the fourth round on this model's layers), damping `1e-4`.
    pub fn new(scheme: AqlmScheme) -> Self {
        Self {
            scheme,
            data_free: false,
            calibration: Calibration::generated_default(),
            encoder: EncoderOptions {
                max_rounds: 6,
                relative_tolerance: 5e-3,
                ..EncoderOptions::default()
            },
            damping: 1e-4,
            batch: 32,
        }
    }

    fn state(&self) -> serde_json::Value {
        json!({
            "scheme": self.scheme.to_string(),
            "data_free": self.data_free,
            "calibration": if self.data_free { String::new() } else { self.calibration.describe() },
            "encoder": format!("{:?}", self.encoder),
            "damping": self.damping,
        })
    }
}

/// What [`quantize_model`] reports as it goes.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// Calibration text generation: `done` of `total` tokens per sequence.
    Calibrating {
        /// Steps done.
        done: usize,
        /// Steps in all.
        total: usize,
    },
    /// A projection starts (`index` of `total`, from 0).
    Layer {
        /// Module path.
        module: &'a str,
        /// Its index.
        index: usize,
        /// Projections in all.
        total: usize,
    },
    /// An encoder round of the current projection finished.
    Round(&'a RoundStats),
    /// A projection is done (`resumed`: taken from an interrupted run).
    LayerDone {
        /// Module path.
        module: &'a str,
        /// The encoder's relative error (output-aware when calibrated).
        relative_error: f64,
        /// Seconds spent.
        seconds: f64,
        /// Whether it came from the saved progress.
        resumed: bool,
    },
}

/// What [`quantize_model`] did.
#[derive(Debug, Clone, Default)]
pub struct QuantizeReport {
    /// Per projection: module path, relative error, seconds (0 when resumed).
    pub layers: Vec<(String, f64, f64)>,
    /// Calibration tokens used.
    pub calibration_tokens: usize,
    /// Seconds generating the calibration text.
    pub calibration_s: f64,
    /// Seconds in all.
    pub seconds: f64,
}

const PARTIAL: &str = ".oftq-partial";

/// The saved progress of an interrupted run.
struct Partial {
    dir: PathBuf,
    layers: BTreeMap<String, (AqlmLayer, f64)>,
    ckpt: AqlmCheckpoint,
    errors: serde_json::Map<String, serde_json::Value>,
}

impl Partial {
    /// Opens (resuming) or creates the progress folder of `out`.
    fn open(out: &Path, opts: &QuantizeOptions) -> Result<Self> {
        let dir = out.join(PARTIAL);
        let state_path = dir.join("state.json");
        let state = opts.state();
        if out.join("config.json").exists() && !dir.exists() {
            return Err(LlmError::Invalid(format!(
                "{} already holds a model (config.json) and no interrupted run; choose another --out or remove it",
                out.display()
            )));
        }
        if dir.exists() {
            let text = std::fs::read_to_string(&state_path).map_err(LlmError::io(&state_path))?;
            let saved: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| LlmError::malformed(&state_path, e.to_string()))?;
            if saved != state {
                return Err(LlmError::Invalid(format!(
                    "{} holds an interrupted run with other options ({saved}); rerun with the same options to resume, or remove it",
                    dir.display()
                )));
            }
            let errors_path = dir.join("errors.json");
            let errors = std::fs::read_to_string(&errors_path)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default();
            let ckpt_dir = dir.join("layers");
            let ckpt = if ckpt_dir.join("config.json").exists() {
                AqlmCheckpoint::load(&ckpt_dir)?
            } else {
                AqlmCheckpoint::new(QuantizationConfig::new(opts.scheme))
            };
            let layers = ckpt
                .layers()
                .iter()
                .map(|(k, l)| {
                    let e = errors
                        .get(k)
                        .and_then(serde_json::Value::as_f64)
                        .unwrap_or(f64::NAN);
                    (k.clone(), (l.clone(), e))
                })
                .collect();
            return Ok(Self {
                dir,
                layers,
                ckpt,
                errors,
            });
        }
        std::fs::create_dir_all(&dir).map_err(LlmError::io(&dir))?;
        crate::atomic::write(&state_path, state.to_string().as_bytes())?;
        Ok(Self {
            dir,
            layers: BTreeMap::new(),
            ckpt: AqlmCheckpoint::new(QuantizationConfig::new(opts.scheme)),
            errors: serde_json::Map::new(),
        })
    }

    fn add(&mut self, module: &str, layer: &AqlmLayer, error: f64) -> Result<()> {
        self.ckpt.insert_layer(module, layer.clone())?;
        self.ckpt.save(&self.dir.join("layers"))?;
        self.errors.insert(module.into(), json!(error));
        let text = serde_json::Value::Object(self.errors.clone()).to_string();
        crate::atomic::write(&self.dir.join("errors.json"), text.as_bytes())
    }

    /// The calibration tokens of the interrupted run, or the ones `make` gives (then saved).
    fn tokens(&self, make: impl FnOnce() -> Result<Vec<Vec<u32>>>) -> Result<Vec<Vec<u32>>> {
        let path = self.dir.join("calibration.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            return serde_json::from_str(&text)
                .map_err(|e| LlmError::malformed(&path, e.to_string()));
        }
        let t = make()?;
        let text = serde_json::to_string(&t).map_err(|e| LlmError::Invalid(e.to_string()))?;
        crate::atomic::write(&path, text.as_bytes())?;
        Ok(t)
    }
}

/// The calibration sequences (`[sequences][length]`) of `cal` for `model`.
///
/// # Errors
/// Text too short for one sequence; generation errors.
pub fn calibration_tokens(
    model: &Llama,
    cal: &Calibration,
    batch: usize,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Vec<Vec<u32>>> {
    match cal {
        Calibration::Tokens {
            ids,
            length,
            sequences,
        } => {
            let n = (ids.len() / length.max(&1)).min(*sequences);
            if n == 0 || *length < 2 {
                return Err(LlmError::Invalid(format!(
                    "the calibration text has {} tokens, fewer than one sequence of {length}",
                    ids.len()
                )));
            }
            Ok(ids
                .chunks_exact(*length)
                .take(n)
                .map(<[u32]>::to_vec)
                .collect())
        }
        Calibration::Generated {
            sequences,
            length,
            sampling,
        } => {
            let bos = model.config().bos_token_id.unwrap_or(0);
            let mut out = Vec::with_capacity(*sequences);
            let batch = batch.max(1);
            let total = sequences.div_ceil(batch) * length.saturating_sub(1);
            let mut done = 0;
            for (k, start) in (0..*sequences).step_by(batch).enumerate() {
                let n = batch.min(sequences - start);
                let prompts = vec![vec![bos]; n];
                let s = Sampling {
                    seed: sampling.seed.wrapping_add(k as u64 * 1_000_003),
                    ..*sampling
                };
                let g = generate(model, &prompts, length.saturating_sub(1), s, None, |_| {
                    done += 1;
                    on_step(done, total);
                })?;
                out.extend(g.tokens.into_iter().map(|t| {
                    let mut v = vec![bos];
                    v.extend(t);
                    v
                }));
            }
            Ok(out)
        }
    }
}

/// Accumulates `H = Σ xᵀx` in `f64` over chunks, then `H/N + δ·mean(diag)·I`.
struct Hessian {
    h: Mat<f64>,
    n: usize,
}

impl Hessian {
    fn new(d: usize) -> Self {
        Self {
            h: Mat::zeros(d, d),
            n: 0,
        }
    }

    fn add(&mut self, x: &Tensor) -> Result<()> {
        let (n, d) = x.dims2()?;
        let v = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let xm = oftq_candle::layer::faer::MatRef::from_row_major_slice(&v, n, d);
        matmul(
            self.h.as_mut(),
            Accum::Add,
            xm.transpose(),
            xm,
            1.0,
            Par::rayon(0),
        );
        crate::model::after_parallel_product();
        self.n += n;
        Ok(())
    }

    fn finish(mut self, damping: f64) -> Mat<f64> {
        let d = self.h.nrows();
        let inv = 1.0 / self.n.max(1) as f64;
        let mean_diag = (0..d).map(|i| self.h[(i, i)]).sum::<f64>() * inv / d.max(1) as f64;
        for j in 0..d {
            for i in 0..d {
                self.h[(i, j)] *= inv;
            }
            self.h[(j, j)] += damping * mean_diag;
        }
        self.h
    }
}

/// Encodes one projection and puts it into the model.
struct Encoder<'a, F> {
    opts: &'a QuantizeOptions,
    partial: Partial,
    report: QuantizeReport,
    on: F,
    index: usize,
    total: usize,
}

impl<F: FnMut(Event<'_>) -> ControlFlow<()>> Encoder<'_, F> {
    /// Reports `e`; a `Break` from the callback becomes [`LlmError::Interrupted`].
    fn report(&mut self, e: Event<'_>) -> Result<()> {
        match (self.on)(e) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(LlmError::Interrupted),
        }
    }

    fn done(&self, module: &str) -> bool {
        self.partial.layers.contains_key(module)
    }

    fn encode(
        &mut self,
        model: &mut Llama,
        l: usize,
        p: usize,
        h: Option<&Mat<f64>>,
    ) -> Result<()> {
        let module = projection_path(l, PROJECTIONS[p]);
        self.report(Event::Layer {
            module: &module,
            index: self.index,
            total: self.total,
        })?;
        self.index += 1;
        let t0 = Instant::now();
        let (layer, err, resumed) = match self.partial.layers.get(&module) {
            Some((layer, e)) => (layer.clone(), *e, true),
            None => {
                let slot = model.blocks()[l].projections()[p];
                let Projection::Dense(w) = slot else {
                    return Err(LlmError::Invalid(format!("{module} is already quantized")));
                };
                let (rows, cols) = w.dims2()?;
                let v = w.flatten_all()?.to_vec1::<f32>()?;
                let wm = oftq_candle::layer::faer::MatRef::from_row_major_slice(&v, rows, cols);
                let on = &mut self.on;
                let mut stopped = false;
                let enc = quantize_with(
                    wm,
                    h.map(Mat::as_ref),
                    self.opts.scheme,
                    &self.opts.encoder,
                    |st| {
                        let flow = on(Event::Round(st));
                        stopped |= flow.is_break();
                        flow
                    },
                )?;
                if stopped {
                    return Err(LlmError::Interrupted);
                }
                let err = enc.relative_error;
                // The layer computes with the f16 values its checkpoint stores.
                let layer = enc.rounded_to(FloatDtype::F16).into_layer(None)?;
                self.partial.add(&module, &layer, err)?;
                (layer, err, false)
            }
        };
        let seconds = if resumed {
            0.0
        } else {
            t0.elapsed().as_secs_f64()
        };
        self.report.layers.push((module.clone(), err, seconds));
        *model.blocks_mut()[l].projections_mut()[p] = Projection::aqlm(layer, &module);
        self.report(Event::LayerDone {
            module: &module,
            relative_error: err,
            seconds,
            resumed,
        })
    }
}

/// Quantizes every projection of the dense `model` (see the module docs), writes the Hugging Face
/// AQLM folder `out` (config, weights, tokenizer files) and returns the quantized model. `on` sees
/// the progress; returning `ControlFlow::Break` stops the run with [`LlmError::Interrupted`]
/// (the progress saved so far is kept, and the same call resumes from it).
///
/// # Errors
/// A model with projections already quantized; `out` holding another model or an interrupted run
/// with other options; calibration text shorter than one sequence; encoder errors; I/O errors.
pub fn quantize_model(
    mut model: Llama,
    out: &Path,
    opts: &QuantizeOptions,
    on: impl FnMut(Event<'_>) -> ControlFlow<()>,
) -> Result<(Llama, QuantizeReport)> {
    let start = Instant::now();
    if model.quantized().next().is_some() {
        return Err(LlmError::Invalid(
            "the model is already AQLM-quantized; quantize a dense source (GGUF or dense folder)"
                .into(),
        ));
    }
    let n_blocks = model.blocks().len();
    let partial = Partial::open(out, opts)?;
    let mut enc = Encoder {
        opts,
        partial,
        report: QuantizeReport::default(),
        on,
        index: 0,
        total: n_blocks * PROJECTIONS.len(),
    };
    if opts.data_free {
        for l in 0..n_blocks {
            for p in 0..PROJECTIONS.len() {
                enc.encode(&mut model, l, p, None)?;
            }
        }
    } else {
        let t0 = Instant::now();
        let on = &mut enc.on;
        let seqs = enc.partial.tokens(|| {
            let mut stopped = false;
            let t = calibration_tokens(&model, &opts.calibration, opts.batch, |done, total| {
                stopped |= on(Event::Calibrating { done, total }).is_break();
            })?;
            if stopped {
                Err(LlmError::Interrupted)
            } else {
                Ok(t)
            }
        })?;
        enc.report.calibration_s = t0.elapsed().as_secs_f64();
        enc.report.calibration_tokens = seqs.iter().map(Vec::len).sum();
        calibrated(&mut model, &seqs, opts, &mut enc)?;
    }
    save_hf_aqlm(&model, out)?;
    let partial_dir = enc.partial.dir.clone();
    std::fs::remove_dir_all(&partial_dir).map_err(LlmError::io(&partial_dir))?;
    enc.report.seconds = start.elapsed().as_secs_f64();
    Ok((model, enc.report))
}

/// The calibrated pass: block by block, each projection encoded against the inputs it sees
/// through the already-quantized part of the model.
fn calibrated<F: FnMut(Event<'_>) -> ControlFlow<()>>(
    model: &mut Llama,
    seqs: &[Vec<u32>],
    opts: &QuantizeOptions,
    enc: &mut Encoder<'_, F>,
) -> Result<()> {
    let len = seqs.first().map_or(0, Vec::len);
    let batch = opts.batch.max(1);
    let eps = model.config().rms_norm_eps;
    // The residual stream of every chunk of sequences.
    let mut hs: Vec<(Tensor, usize)> = seqs
        .chunks(batch)
        .map(|c| {
            let t = Tensor::from_vec(c.concat(), (c.len(), len), &Device::Cpu)?;
            Ok((model.embed(&t)?, c.len()))
        })
        .collect::<Result<_>>()?;
    let step = |b: usize| Step {
        batch: b,
        time: len,
        start: 0,
        train: false,
    };
    let (hidden, inter) = (model.config().hidden_size, model.config().intermediate_size);
    let hessian = |xs: &[Tensor], d: usize| -> Result<Mat<f64>> {
        let mut h = Hessian::new(d);
        for x in xs {
            h.add(x)?;
        }
        Ok(h.finish(opts.damping))
    };
    for l in 0..model.blocks().len() {
        let module = |p: usize| projection_path(l, PROJECTIONS[p]);
        // q, k, v on the normed block input.
        let norm1: Vec<Tensor> = hs
            .iter()
            .map(|(h, _)| rms_norm(h, &model.blocks()[l].attn_norm, eps).map_err(LlmError::from))
            .collect::<Result<_>>()?;
        let h_qkv = if (0..3).all(|p| enc.done(&module(p))) {
            None
        } else {
            Some(hessian(&norm1, hidden)?)
        };
        for p in 0..3 {
            enc.encode(model, l, p, h_qkv.as_ref())?;
        }
        // o on the attention output through the quantized q, k, v.
        let att: Vec<Tensor> = norm1
            .iter()
            .zip(&hs)
            .map(|(x, (_, b))| model.attention(l, x, step(*b), None))
            .collect::<Result<_>>()?;
        let h_o = if enc.done(&module(3)) {
            None
        } else {
            Some(hessian(&att, model.config().q_size())?)
        };
        enc.encode(model, l, 3, h_o.as_ref())?;
        for ((h, _), a) in hs.iter_mut().zip(&att) {
            *h = (&*h + model.blocks()[l].o.forward_t(a, false)?)?;
        }
        drop(att);
        // gate, up on the normed residual.
        let norm2: Vec<Tensor> = hs
            .iter()
            .map(|(h, _)| rms_norm(h, &model.blocks()[l].mlp_norm, eps).map_err(LlmError::from))
            .collect::<Result<_>>()?;
        let h_gu = if (4..6).all(|p| enc.done(&module(p))) {
            None
        } else {
            Some(hessian(&norm2, hidden)?)
        };
        for p in 4..6 {
            enc.encode(model, l, p, h_gu.as_ref())?;
        }
        // down on the SwiGLU activation through the quantized gate, up.
        let act: Vec<Tensor> = norm2
            .iter()
            .map(|x| model.mlp_act(l, x, false))
            .collect::<Result<_>>()?;
        let h_down = if enc.done(&module(6)) {
            None
        } else {
            Some(hessian(&act, inter)?)
        };
        enc.encode(model, l, 6, h_down.as_ref())?;
        for ((h, _), m) in hs.iter_mut().zip(&act) {
            *h = (&*h + model.blocks()[l].down.forward_t(m, false)?)?;
        }
    }
    Ok(())
}
