//! A tiny random Llama, written as a GGUF file (llama.cpp's layout: q/k permuted, F32 or Q8_0
//! tensors, a byte-level BPE vocabulary in the metadata) or as a Hugging Face folder, so tests,
//! examples and CI can run the whole pipeline in seconds without downloading a model.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use oftq_candle::candle_core::quantized::gguf_file::{self, Value};
use oftq_candle::candle_core::quantized::{GgmlDType, QTensor};
use oftq_candle::candle_core::{Device, Tensor};

use crate::config::LlamaConfig;
use crate::error::{LlmError, Result};
use crate::tokenizer::{GgufVocab, Tokenizer};
use crate::weights::{PROJECTIONS, projection_path, projection_shape};

/// GPT-2's byte alphabet (see [`crate::tokenizer`]), one printable character per byte.
fn alphabet() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256u32;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).unwrap_or('?')
        })
        .collect()
}

/// A byte-level BPE vocabulary: 3 control tokens (`<|endoftext|>` 0, `<|im_start|>` 1 = BOS,
/// `<|im_end|>` 2 = EOS), the 256 byte tokens, and a few English merges; a ChatML template.
pub fn vocab() -> GgufVocab {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![3i64; 3];
    for c in alphabet() {
        tokens.push(c.to_string());
        types.push(1);
    }
    let merges: Vec<String> = [
        "Ġ t", "Ġt h", "Ġth e", "t h", "th e", "i n", "Ġ a", "e r", "o n", "Ġ s", "r e", "a n",
        "Ġ o", "Ġ w", "o r", "Ġ f", "e n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for m in &merges {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    GgufVocab {
        model: "gpt2".into(),
        tokens,
        merges,
        token_types: types,
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        chat_template: Some(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}".into(),
        ),
    }
}

/// The config of a tiny model: vocabulary 276 (the [`vocab`]), hidden 64, MLP 96, `blocks`
/// blocks, 4 heads of 16 with 2 key/value heads, RoPE base 10000, tied embeddings.
pub fn config(blocks: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size: vocab().tokens.len(),
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: blocks,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    }
}

/// Random weights for `config` by Hugging Face name (a seeded stream; projections scaled by
/// `1/√in`, norms around 1, embeddings in `±0.25`, an untied head in `±0.5`). With tied embeddings
/// a random model mostly predicts the token it was given; an untied head spreads its predictions
/// (what distillation tests need).
pub fn weights(config: &LlamaConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = |n: usize, scale: f32, offset: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                offset + scale * (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect()
    };
    let h = config.hidden_size;
    let mut m = BTreeMap::new();
    let dev = Device::Cpu;
    m.insert(
        "model.embed_tokens.weight".to_string(),
        Tensor::from_vec(
            uniform(config.vocab_size * h, 1.0, 0.0),
            (config.vocab_size, h),
            &dev,
        )?,
    );
    m.insert(
        "model.norm.weight".into(),
        Tensor::from_vec(uniform(h, 0.2, 1.0), h, &dev)?,
    );
    if !config.tie_word_embeddings {
        m.insert(
            "lm_head.weight".into(),
            Tensor::from_vec(
                uniform(config.vocab_size * h, 0.3, 0.0),
                (config.vocab_size, h),
                &dev,
            )?,
        );
    }
    for l in 0..config.num_hidden_layers {
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            m.insert(
                format!("model.layers.{l}.{norm}.weight"),
                Tensor::from_vec(uniform(h, 0.2, 1.0), h, &dev)?,
            );
        }
        for p in PROJECTIONS {
            let (o, i) = projection_shape(config, p);
            let scale = 1.5 / (i as f32).sqrt();
            m.insert(
                format!("{}.weight", projection_path(l, p)),
                Tensor::from_vec(uniform(o * i, scale, 0.0), (o, i), &dev)?,
            );
        }
    }
    Ok(m)
}

/// llama.cpp's q/k permutation (the inverse of [`crate::gguf::unpermute_qk`]).
fn permute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    Ok(w.reshape((heads, 2, out / heads / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Writes `weights` (Hugging Face names) of `config` as a llama.cpp GGUF file: `general.architecture
/// = llama`, the `llama.*` keys, the [`vocab`] as `tokenizer.ggml.*`, q/k permuted, norms in F32 and
/// the other tensors in `dtype` (e.g. `GgmlDType::F32` or `GgmlDType::Q8_0`).
///
/// # Errors
/// I/O errors; a dtype candle cannot quantize to.
pub fn write_gguf(
    path: &Path,
    config: &LlamaConfig,
    weights: &BTreeMap<String, Tensor>,
    dtype: GgmlDType,
) -> Result<()> {
    let v = vocab();
    let u32v = |x: usize| Value::U32(x as u32);
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        (
            "general.name".into(),
            Value::String("oftq tiny llama".into()),
        ),
        ("llama.block_count".into(), u32v(config.num_hidden_layers)),
        (
            "llama.context_length".into(),
            u32v(config.max_position_embeddings),
        ),
        ("llama.embedding_length".into(), u32v(config.hidden_size)),
        (
            "llama.feed_forward_length".into(),
            u32v(config.intermediate_size),
        ),
        (
            "llama.attention.head_count".into(),
            u32v(config.num_attention_heads),
        ),
        (
            "llama.attention.head_count_kv".into(),
            u32v(config.num_key_value_heads),
        ),
        ("llama.rope.dimension_count".into(), u32v(config.head_dim)),
        ("llama.attention.key_length".into(), u32v(config.head_dim)),
        ("llama.attention.value_length".into(), u32v(config.head_dim)),
        (
            "llama.rope.freq_base".into(),
            Value::F32(config.rope_theta as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(config.rms_norm_eps as f32),
        ),
        ("llama.vocab_size".into(), u32v(config.vocab_size)),
        (
            "tokenizer.ggml.model".into(),
            Value::String(v.model.clone()),
        ),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(v.tokens.iter().map(|t| Value::String(t.clone())).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                v.token_types
                    .iter()
                    .map(|&t| Value::I32(t as i32))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(v.merges.iter().map(|t| Value::String(t.clone())).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(v.chat_template.clone().unwrap_or_default()),
        ),
    ];
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    let gguf_name = |hf: &str| -> Option<String> {
        match hf {
            "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
            "model.norm.weight" => return Some("output_norm.weight".into()),
            "lm_head.weight" => return Some("output.weight".into()),
            _ => {}
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (n, name) = rest.split_once('.')?;
        let g = match name {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            _ => return None,
        };
        Some(format!("blk.{n}.{g}"))
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in weights {
        let g =
            gguf_name(name).ok_or_else(|| LlmError::Invalid(format!("no GGUF name for {name}")))?;
        let t = if name.ends_with("q_proj.weight") {
            permute_qk(t, config.num_attention_heads)?
        } else if name.ends_with("k_proj.weight") {
            permute_qk(t, config.num_key_value_heads)?
        } else {
            t.clone()
        };
        let dt = if t.rank() == 1 { GgmlDType::F32 } else { dtype };
        tensors.push((g, QTensor::quantize(&t, dt)?));
    }
    let mut f = File::create(path).map_err(LlmError::io(path))?;
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs)?;
    Ok(())
}

/// Writes `weights` of `config` as a dense Hugging Face folder: `config.json`, `model.safetensors`
/// (F32) and the tokenizer files of [`vocab`].
///
/// # Errors
/// I/O errors.
pub fn write_hf(
    dir: &Path,
    config: &LlamaConfig,
    weights: &BTreeMap<String, Tensor>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(LlmError::io(dir))?;
    let text = serde_json::to_string_pretty(&config.to_hf_json())
        .map_err(|e| LlmError::Invalid(e.to_string()))?;
    crate::atomic::write(&dir.join("config.json"), text.as_bytes())?;
    let map: std::collections::HashMap<&String, Tensor> =
        weights.iter().map(|(k, v)| (k, v.clone())).collect();
    oftq_candle::candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
    Tokenizer::from_gguf_vocab(&vocab(), Path::new("tiny"))?.save_hf(dir)
}

/// `max |a − b|` over all elements of two `f32` tensors of one shape: how the tests compare
/// logits and gradients.
///
/// # Errors
/// Shapes that differ, tensors that are not `f32`.
///
/// ```
/// use oftq_llm::oftq_candle::candle_core::{Device, Tensor};
///
/// let a = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu)?;
/// let b = Tensor::new(&[1f32, 2.5, 2.0], &Device::Cpu)?;
/// assert_eq!(oftq_llm::tiny::max_abs_diff(&a, &b)?, 1.0);
/// # Ok::<(), oftq_llm::oftq_candle::candle_core::Error>(())
/// ```
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> oftq_candle::candle_core::Result<f32> {
    (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
}
