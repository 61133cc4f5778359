//! The decoder against a plain f64 reference implementation, GGUF against Hugging Face folders,
//! the KV cache against full forwards, and the tokenizer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use oftq_llm::oftq_candle::candle_core::quantized::GgmlDType;
use oftq_llm::oftq_candle::candle_core::{DType, Device, Tensor};
use oftq_llm::tiny::max_abs_diff;
use oftq_llm::{Llama, LlamaConfig, tiny};

/// A tensor as nested f64 rows (`[rows][cols]`, 1-D tensors as one row).
fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let t = t.to_dtype(DType::F64).unwrap();
    match t.rank() {
        1 => vec![t.to_vec1::<f64>().unwrap()],
        _ => t.to_vec2::<f64>().unwrap(),
    }
}

/// `x·Wᵀ` for `x [n][in]`, `W [out][in]`.
fn linear(x: &[Vec<f64>], w: &[Vec<f64>]) -> Vec<Vec<f64>> {
    x.iter()
        .map(|r| {
            w.iter()
                .map(|wr| r.iter().zip(wr).map(|(a, b)| a * b).sum())
                .collect()
        })
        .collect()
}

fn rms_norm(x: &[Vec<f64>], w: &[f64], eps: f64) -> Vec<Vec<f64>> {
    x.iter()
        .map(|r| {
            let ms = r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64;
            let s = 1.0 / (ms + eps).sqrt();
            r.iter().zip(w).map(|(v, g)| v * s * g).collect()
        })
        .collect()
}

/// The Llama forward pass written out with loops in f64, from Hugging Face's description:
/// RMSNorm, half-split RoPE, causal grouped-query attention, SwiGLU, tied head.
fn reference_logits(c: &LlamaConfig, w: &BTreeMap<String, Tensor>, ids: &[u32]) -> Vec<Vec<f64>> {
    let g = |n: &str| rows(&w[n]);
    let emb = g("model.embed_tokens.weight");
    let mut h: Vec<Vec<f64>> = ids.iter().map(|&i| emb[i as usize].clone()).collect();
    let (t, d, nh, nkv) = (
        ids.len(),
        c.head_dim,
        c.num_attention_heads,
        c.num_key_value_heads,
    );
    let rope = |v: &mut [f64], pos: usize| {
        let half = d / 2;
        for i in 0..half {
            let a = pos as f64 / c.rope_theta.powf(2.0 * i as f64 / d as f64);
            let (x1, x2) = (v[i], v[i + half]);
            v[i] = x1 * a.cos() - x2 * a.sin();
            v[i + half] = x2 * a.cos() + x1 * a.sin();
        }
    };
    for l in 0..c.num_hidden_layers {
        let p = |s: &str| g(&format!("model.layers.{l}.{s}.weight"));
        let x = rms_norm(&h, &p("input_layernorm")[0], c.rms_norm_eps);
        let (mut q, mut k, v) = (
            linear(&x, &p("self_attn.q_proj")),
            linear(&x, &p("self_attn.k_proj")),
            linear(&x, &p("self_attn.v_proj")),
        );
        for pos in 0..t {
            for hd in 0..nh {
                rope(&mut q[pos][hd * d..(hd + 1) * d], pos);
            }
            for hd in 0..nkv {
                rope(&mut k[pos][hd * d..(hd + 1) * d], pos);
            }
        }
        let mut att = vec![vec![0.0; nh * d]; t];
        for hd in 0..nh {
            let kv = hd / (nh / nkv);
            for i in 0..t {
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..d)
                            .map(|e| q[i][hd * d + e] * k[j][kv * d + e])
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for (j, s) in scores.iter().enumerate() {
                    let pj = (s - m).exp() / z;
                    for e in 0..d {
                        att[i][hd * d + e] += pj * v[j][kv * d + e];
                    }
                }
            }
        }
        let o = linear(&att, &p("self_attn.o_proj"));
        for (hr, or) in h.iter_mut().zip(&o) {
            for (a, b) in hr.iter_mut().zip(or) {
                *a += b;
            }
        }
        let x = rms_norm(&h, &p("post_attention_layernorm")[0], c.rms_norm_eps);
        let (gt, up) = (
            linear(&x, &p("mlp.gate_proj")),
            linear(&x, &p("mlp.up_proj")),
        );
        let act: Vec<Vec<f64>> = gt
            .iter()
            .zip(&up)
            .map(|(a, b)| {
                a.iter()
                    .zip(b)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect()
            })
            .collect();
        let dn = linear(&act, &p("mlp.down_proj"));
        for (hr, dr) in h.iter_mut().zip(&dn) {
            for (a, b) in hr.iter_mut().zip(dr) {
                *a += b;
            }
        }
    }
    let x = rms_norm(&h, &g("model.norm.weight")[0], c.rms_norm_eps);
    linear(&x, &emb)
}

fn max_rel(a: &Tensor, b: &[Vec<f64>]) -> f64 {
    let a = rows(a);
    let scale = b.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn logits_match_a_plain_reference_from_gguf_and_hf() {
    let c = tiny::config(2);
    let w = tiny::weights(&c, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    tiny::write_gguf(&gguf, &c, &w, GgmlDType::F32).unwrap();
    tiny::write_hf(&dir.path().join("hf"), &c, &w).unwrap();
    let ids: Vec<u32> = (0..23)
        .map(|i| (i * 37 + 5) % c.vocab_size as u32)
        .collect();
    let reference = reference_logits(&c, &w, &ids);
    for path in [gguf, dir.path().join("hf")] {
        let m = Llama::load(&path).unwrap();
        assert_eq!(m.config(), &c);
        let err = max_rel(&m.logits(&ids).unwrap(), &reference);
        assert!(err < 1e-5, "{}: {err}", path.display());
    }
    // Q8_0 tensors dequantize to close values.
    let q8 = dir.path().join("q8.gguf");
    tiny::write_gguf(&q8, &c, &w, GgmlDType::Q8_0).unwrap();
    let m = Llama::load(&q8).unwrap();
    let err = max_rel(&m.logits(&ids).unwrap(), &reference);
    assert!(err > 0.0 && err < 0.05, "{err}");
    // Its head is recovered as 8-bit codes, without loss: the few-row logits agree with the f32
    // head's to rounding (sums in another order). An f32 head has no such copy and falls back.
    assert!(m.head_is_8bit());
    assert!(!Llama::load(&dir.path().join("hf")).unwrap().head_is_8bit());
    let h = m
        .forward_hidden(
            &Tensor::from_slice(&ids[..4], (1, 4), &Device::Cpu).unwrap(),
            None,
            false,
        )
        .unwrap();
    let (fast, f32_head) = (m.head_logits(&h).unwrap(), m.head(&h).unwrap());
    let scale = max_abs_diff(&f32_head, &f32_head.zeros_like().unwrap()).unwrap();
    let d = max_abs_diff(&fast, &f32_head).unwrap();
    assert!(
        d <= 1e-5 * scale && fast.dims() == f32_head.dims(),
        "{d} of {scale}"
    );
}

#[test]
fn kv_cache_and_batches_match_full_forwards() {
    let c = tiny::config(2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    tiny::write_gguf(&path, &c, &tiny::weights(&c, 3).unwrap(), GgmlDType::F32).unwrap();
    let m = Llama::load(&path).unwrap();
    let a: Vec<u32> = (0..12).map(|i| (i * 11 + 1) % 200).collect();
    let b: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 200).collect();
    let full_a = m.logits(&a).unwrap();
    let full_b = m.logits(&b).unwrap();
    // Prefill 5 tokens of both sequences, then one token at a time.
    let mut cache = m.new_cache();
    let mut got = [Vec::new(), Vec::new()];
    let t = |s: usize, e: usize| {
        Tensor::from_vec([&a[s..e], &b[s..e]].concat(), (2, e - s), &Device::Cpu).unwrap()
    };
    let first = m.forward(&t(0, 5), Some(&mut cache), false).unwrap();
    for (k, g) in got.iter_mut().enumerate() {
        g.push(first.get(k).unwrap());
    }
    for s in 5..12 {
        let l = m.forward(&t(s, s + 1), Some(&mut cache), false).unwrap();
        for (k, g) in got.iter_mut().enumerate() {
            g.push(l.get(k).unwrap());
        }
    }
    assert_eq!(cache.len(), 12);
    for (g, full) in got.iter().zip([&full_a, &full_b]) {
        let g = Tensor::cat(g, 0).unwrap();
        let d = max_abs_diff(&g, full).unwrap();
        assert!(d < 1e-4, "{d}");
    }
}

#[test]
fn tokenizer_round_trips_and_files_agree() {
    let c = tiny::config(1);
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("t.gguf");
    let w = tiny::weights(&c, 1).unwrap();
    tiny::write_gguf(&gguf, &c, &w, GgmlDType::F32).unwrap();
    tiny::write_hf(&dir.path().join("hf"), &c, &w).unwrap();
    let (g, h) = (
        Llama::load(&gguf).unwrap(),
        Llama::load(&dir.path().join("hf")).unwrap(),
    );
    for text in [
        "the other one",
        "Ünïcödé, 29 June 2007\n\t<|im_start|>user\nhi<|im_end|>",
        "",
    ] {
        let ids = g.tokenizer().encode(text).unwrap();
        assert_eq!(g.tokenizer().decode(&ids).unwrap(), text);
        assert_eq!(h.tokenizer().encode(text).unwrap(), ids);
    }
    assert_eq!(g.tokenizer().encode("<|im_end|>").unwrap(), [2]);
}
