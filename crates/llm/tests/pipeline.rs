//! The whole pipeline on a tiny random Llama, in seconds: quantize (data-free and calibrated,
//! interrupted and resumed), reload the AQLM folder, distil OFT adapters (interrupted and resumed),
//! reload them, evaluate, generate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ops::ControlFlow;
use std::path::Path;

use oftq_llm::distill::{FinetuneEvent, FinetuneOptions, finetune, mean_kl, teacher_targets};
use oftq_llm::eval::perplexity;
use oftq_llm::generate::{Sampling, generate};
use oftq_llm::oftq_candle::candle_core::quantized::GgmlDType;
use oftq_llm::quantize::{Calibration, Event, QuantizeOptions, calibration_tokens, quantize_model};
use oftq_llm::tiny::max_abs_diff;
use oftq_llm::{Llama, LlmError, tiny};

/// A tiny model with an untied head (see `tiny::weights`).
fn source(dir: &Path, blocks: usize) -> std::path::PathBuf {
    let c = oftq_llm::LlamaConfig {
        tie_word_embeddings: false,
        ..tiny::config(blocks)
    };
    let path = dir.join("tiny.gguf");
    tiny::write_gguf(&path, &c, &tiny::weights(&c, 11).unwrap(), GgmlDType::F32).unwrap();
    path
}

/// 1x4 (half a bit per weight): coarse enough that the tiny model loses quality to recover.
fn options(data_free: bool) -> QuantizeOptions {
    let mut o = QuantizeOptions::new("1x4".parse().unwrap());
    o.data_free = data_free;
    o.calibration = Calibration::Generated {
        sequences: 6,
        length: 24,
        sampling: Sampling {
            temperature: 1.0,
            top_p: 0.95,
            seed: 5,
        },
    };
    o.encoder.max_rounds = 2;
    o.batch = 4;
    o
}

fn max_diff(a: &Llama, b: &Llama, ids: &[u32]) -> f32 {
    let (x, y) = (a.logits(ids).unwrap(), b.logits(ids).unwrap());
    max_abs_diff(&x, &y).unwrap()
}

#[test]
fn quantize_resume_reload_finetune_eval_generate() {
    let dir = tempfile::tempdir().unwrap();
    let src = source(dir.path(), 2);
    let ids: Vec<u32> = Llama::load(&src)
        .unwrap()
        .tokenizer()
        .encode(&"the other one is on the river. ".repeat(12))
        .unwrap();

    // Calibrated, uninterrupted.
    let full_dir = dir.path().join("q-full");
    let (full, report) = quantize_model(
        Llama::load(&src).unwrap(),
        &full_dir,
        &options(false),
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(report.layers.len(), 14);
    assert_eq!(report.calibration_tokens, 6 * 24);
    assert!(!full_dir.join(".oftq-partial").exists());

    // Interrupted after 5 projections, then resumed: the same layers, bit for bit.
    let part_dir = dir.path().join("q-part");
    let mut n = 0;
    let stopped = quantize_model(
        Llama::load(&src).unwrap(),
        &part_dir,
        &options(false),
        |e| {
            if matches!(e, Event::LayerDone { .. }) {
                n += 1;
                if n == 5 {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        },
    );
    assert!(matches!(stopped, Err(LlmError::Interrupted)));
    assert!(part_dir.join(".oftq-partial").exists());
    // Other options refuse to resume it.
    let e = quantize_model(
        Llama::load(&src).unwrap(),
        &part_dir,
        &options(true),
        |_| ControlFlow::Continue(()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("other options"), "{e}");
    let mut resumed = 0;
    let (part, _) = quantize_model(
        Llama::load(&src).unwrap(),
        &part_dir,
        &options(false),
        |e| {
            if let Event::LayerDone { resumed: true, .. } = e {
                resumed += 1;
            }
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(resumed, 5);
    assert_eq!(max_diff(&full, &part, &ids), 0.0);
    // The folder holds exactly what the model computes with; a finished folder is not overwritten.
    let reloaded = Llama::load(&full_dir).unwrap();
    assert_eq!(reloaded.quantized().count(), 14);
    assert_eq!(max_diff(&full, &reloaded, &ids), 0.0);
    let e = quantize_model(
        Llama::load(&src).unwrap(),
        &full_dir,
        &options(false),
        |_| ControlFlow::Continue(()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("already holds a model"), "{e}");
    let e = quantize_model(reloaded, &dir.path().join("again"), &options(false), |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(e.to_string().contains("already AQLM-quantized"), "{e}");

    // Data-free gives another model.
    let (free, _) = quantize_model(
        Llama::load(&src).unwrap(),
        &dir.path().join("q-free"),
        &options(true),
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert!(max_diff(&full, &free, &ids) > 0.0);

    // Distillation: the loss goes down; interrupted and resumed equals uninterrupted.
    let teacher = Llama::load(&src).unwrap();
    let data = calibration_tokens(&teacher, &options(false).calibration, 4, |_, _| {}).unwrap();
    let opts = FinetuneOptions {
        steps: 8,
        batch: 2,
        lr: 5e-3,
        warmup: 2,
        top_k: 16,
        checkpoint_every: 3,
        validation: 2,
        adapter: oftq_llm::oftq_candle::layer::OftConfig {
            oft_block_size: 16,
            ..FinetuneOptions::default().adapter
        },
        ..FinetuneOptions::default()
    };
    let adapter_a = dir.path().join("adapter-a");
    let mut student = Llama::load(&full_dir).unwrap();
    let targets = teacher_targets(&teacher, &data, opts.top_k, 4, |_, _| {}).unwrap();
    let report = finetune(
        &mut student,
        &data,
        targets.clone(),
        &adapter_a,
        &opts,
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(report.losses.len(), 8);
    assert!(report.losses[7] < report.losses[0], "{:?}", report.losses);
    assert!(report.kept_mass > 0.0 && report.kept_mass <= 1.0);
    // Held-out KL measured at the start, the checkpoints and the end; the adapter written is the
    // best one, and better than the identity.
    let steps: Vec<usize> = report.validation.iter().map(|v| v.step).collect();
    assert_eq!(steps, [0, 3, 6, 8]);
    let best = report.validation.iter().rfind(|v| v.kept).copied().unwrap();
    assert_eq!(report.best().map(|v| v.step), Some(best.step));
    assert!(best.step > 0 && best.kl < report.validation[0].kl);
    let held = &data[data.len() - 2..];
    let held_targets = teacher_targets(&teacher, held, opts.top_k, 4, |_, _| {}).unwrap();
    let kl = mean_kl(&student, held, &held_targets, 2).unwrap();
    assert!((kl - best.kl).abs() <= 1e-5 * best.kl, "{kl} vs {best:?}");
    let adapter_b = dir.path().join("adapter-b");
    let mut s2 = Llama::load(&full_dir).unwrap();
    let stopped = finetune(
        &mut s2,
        &data,
        targets.clone(),
        &adapter_b,
        &opts,
        |e| match e {
            FinetuneEvent::Step { step: 4, .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        },
    );
    assert!(matches!(stopped, Err(LlmError::Interrupted)));
    let mut s3 = Llama::load(&full_dir).unwrap();
    let mut from = None;
    finetune(&mut s3, &data, targets.clone(), &adapter_b, &opts, |e| {
        if let FinetuneEvent::Resumed { step } = e {
            from = Some(step);
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(from, Some(3));
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        let (a, b) = (
            std::fs::read(adapter_a.join(f)).unwrap(),
            std::fs::read(adapter_b.join(f)).unwrap(),
        );
        assert_eq!(a, b, "{f}");
    }
    assert!(!adapter_a.join(".oftq-checkpoint").exists());

    // Too high a rate drives the held-out KL up: training goes back to the best state (here the
    // identity) at half the rate, and never writes an adapter worse than where it started.
    let wild = FinetuneOptions {
        lr: 1.0,
        warmup: 0,
        steps: 4,
        checkpoint_every: 2,
        ..opts.clone()
    };
    let mut s4 = Llama::load(&full_dir).unwrap();
    let r = finetune(
        &mut s4,
        &data,
        targets.clone(),
        &dir.path().join("adapter-wild"),
        &wild,
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert!(!r.validation[1].kept, "{:?}", r.validation);
    assert_eq!(r.validation[1].lr_scale, 0.5);
    let best = r.validation.iter().rfind(|v| v.kept).unwrap();
    assert_eq!(r.best().map(|v| v.step), Some(best.step));
    let kl = mean_kl(&s4, held, &held_targets, 2).unwrap();
    assert!(
        kl <= r.validation[0].kl * (1.0 + 1e-5),
        "{kl} vs {:?}",
        r.validation
    );
    let e = finetune(
        &mut Llama::load(&full_dir).unwrap(),
        &data,
        targets.clone(),
        &dir.path().join("adapter-none"),
        &FinetuneOptions {
            validation: data.len(),
            ..opts.clone()
        },
        |_| ControlFlow::Continue(()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("none to train on"), "{e}");

    // The adapter reloads onto the AQLM folder and gives the trained model's logits.
    let mut with = Llama::load(&full_dir).unwrap();
    assert_eq!(with.load_adapter(&adapter_a, "default").unwrap(), 14);
    assert!(max_diff(&with, &student, &ids) < 1e-5);
    assert!(max_diff(&with, &full, &ids) > 1e-4);

    // Evaluation: the adapter brings the student closer to the teacher.
    let ctx = 32;
    let p_src = perplexity(&teacher, &ids, ctx, usize::MAX, false).unwrap();
    let p_q = perplexity(&full, &ids, ctx, usize::MAX, false).unwrap();
    let p_oft = perplexity(&with, &ids, ctx, usize::MAX, true).unwrap();
    assert_eq!(p_src.tokens, (ids.len() / ctx) * (ctx - 1));
    assert!(p_oft.first_logits.is_some());
    for p in [&p_src, &p_q, &p_oft] {
        assert!(p.perplexity.is_finite() && p.perplexity > 1.0);
    }
    let e = perplexity(&teacher, &ids[..10], ctx, usize::MAX, false).unwrap_err();
    assert!(e.to_string().contains("fewer than one window"), "{e}");

    // Generation: greedy decoding is deterministic; the KV cache path continues the prompt.
    let prompt = with.tokenizer().encode("the").unwrap();
    let g1 = generate(
        &with,
        std::slice::from_ref(&prompt),
        6,
        Sampling::GREEDY,
        None,
        |_| {},
    )
    .unwrap();
    let g2 = generate(
        &with,
        std::slice::from_ref(&prompt),
        6,
        Sampling::GREEDY,
        None,
        |_| {},
    )
    .unwrap();
    assert_eq!(g1.tokens, g2.tokens);
    assert_eq!(g1.tokens[0].len(), 6);
    let mut all = prompt.clone();
    all.extend(&g1.tokens[0][..5]);
    let last = with.logits(&all).unwrap();
    let row = last.get(all.len() - 1).unwrap().to_vec1::<f32>().unwrap();
    let argmax = row
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
        .0;
    assert_eq!(argmax as u32, g1.tokens[0][5]);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = |p: &Path| Llama::load(p).unwrap_err().to_string();
    // Missing file.
    let e = err(&dir.path().join("nope.gguf"));
    assert!(e.contains("nope.gguf"), "{e}");
    // Truncated GGUF.
    let src = source(dir.path(), 1);
    let bytes = std::fs::read(&src).unwrap();
    for cut in [10, bytes.len() / 3, bytes.len() - 7] {
        let p = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = err(&p);
        assert!(e.contains(&format!("cut{cut}.gguf")), "{e}");
    }
    // Not a GGUF at all.
    let p = dir.path().join("text.gguf");
    std::fs::write(&p, "hello world, not a model").unwrap();
    assert!(err(&p).contains("not a readable GGUF"));
    // Another architecture.
    let arch = dir.path().join("gpt2.gguf");
    let needle = b"llama";
    let mut patched = bytes.clone();
    let at = patched
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    patched[at..at + 5].copy_from_slice(b"gpt2x");
    std::fs::write(&arch, &patched).unwrap();
    let e = err(&arch);
    assert!(e.contains("unsupported") && e.contains("gpt2x"), "{e}");
    // An unsupported tensor type: the dtype field of the first tensor info set to 99.
    let name = b"blk.0.attn_k.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let dtype_at = at + 4 + 8 * n_dims;
    let mut bad = bytes.clone();
    bad[dtype_at..dtype_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let p = dir.path().join("dtype.gguf");
    std::fs::write(&p, &bad).unwrap();
    let e = err(&p);
    assert!(e.contains("dtype.gguf") && e.contains("unsupported"), "{e}");
    // A folder that is not a model.
    let e = err(dir.path());
    assert!(e.contains("config.json"), "{e}");
    // An HF folder missing a tensor.
    let c = tiny::config(1);
    let mut w = tiny::weights(&c, 1).unwrap();
    w.remove("model.layers.0.mlp.up_proj.weight");
    let hf = dir.path().join("hf");
    tiny::write_hf(&hf, &c, &w).unwrap();
    assert!(err(&hf).contains("missing tensor model.layers.0.mlp.up_proj.weight"));

    // An adapter for another model.
    let small = source(&mkdir(dir.path().join("a")), 1);
    let other_c = oftq_llm::LlamaConfig {
        hidden_size: 96,
        tie_word_embeddings: false,
        ..tiny::config(1)
    };
    let other = mkdir(dir.path().join("b")).join("other.gguf");
    tiny::write_gguf(
        &other,
        &other_c,
        &tiny::weights(&other_c, 2).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let q_small = dir.path().join("q-small");
    let mut o = options(true);
    o.encoder.max_rounds = 1;
    quantize_model(Llama::load(&small).unwrap(), &q_small, &o, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let q_other = dir.path().join("q-other");
    quantize_model(Llama::load(&other).unwrap(), &q_other, &o, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let teacher = Llama::load(&small).unwrap();
    let data = calibration_tokens(&teacher, &o.calibration, 4, |_, _| {}).unwrap();
    let opts = FinetuneOptions {
        steps: 1,
        top_k: 4,
        validation: 1,
        adapter: oftq_llm::oftq_candle::layer::OftConfig {
            oft_block_size: 16,
            ..FinetuneOptions::default().adapter
        },
        ..FinetuneOptions::default()
    };
    let adapter = dir.path().join("adapter");
    let targets = teacher_targets(&teacher, &data, opts.top_k, 4, |_, _| {}).unwrap();
    finetune(
        &mut Llama::load(&q_small).unwrap(),
        &data,
        targets,
        &adapter,
        &opts,
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    let e = Llama::load(&q_other)
        .unwrap()
        .load_adapter(&adapter, "default")
        .unwrap_err()
        .to_string();
    assert!(e.contains("another model"), "{e}");
    let e = Llama::load(&small)
        .unwrap()
        .load_adapter(&adapter, "default")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("another model") || e.contains("no projection"),
        "{e}"
    );
}

fn mkdir(p: std::path::PathBuf) -> std::path::PathBuf {
    std::fs::create_dir_all(&p).unwrap();
    p
}
