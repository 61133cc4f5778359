//! Reading a Llama GGUF file (llama.cpp's format) with candle's reader: the config from the
//! metadata, every tensor dequantized to `f32` under its Hugging Face name (q/k projections
//! un-permuted from llama.cpp's interleaved RoPE layout back to Hugging Face's half-split one), and
//! the tokenizer vocabulary.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use oftq_candle::candle_core::quantized::gguf_file::{Content, Value};
use oftq_candle::candle_core::{Device, Tensor};

use crate::config::LlamaConfig;
use crate::error::{LlmError, Result};
use crate::tokenizer::GgufVocab;

/// A GGUF model read into memory.
#[derive(Debug)]
pub struct GgufModel {
    /// The decoder's hyper-parameters.
    pub config: LlamaConfig,
    /// Every tensor, `f32`, by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`, …),
    /// shaped as Hugging Face shapes them (`[out, in]` for projections).
    pub tensors: BTreeMap<String, Tensor>,
    /// The tokenizer metadata.
    pub vocab: GgufVocab,
}

/// The Hugging Face name of a GGUF tensor of a Llama model, or `None` for an unknown name.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (n, name) = rest.split_once('.')?;
    let n: usize = n.parse().ok()?;
    let module = match name {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{n}.{module}"))
}

/// Undoes llama.cpp's q/k permutation: GGUF stores each head's rows as interleaved pairs
/// `(0, d/2), (1, d/2+1), …` for its RoPE; Hugging Face keeps the halves apart. Rows of a head,
/// viewed as `[d/2, 2]`, are transposed to `[2, d/2]` (transformers' `reverse_permute_weights`).
pub fn unpermute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    if heads == 0 || !out.is_multiple_of(2 * heads) {
        return Err(LlmError::Invalid(format!(
            "cannot un-permute a [{out}, {inp}] projection for {heads} heads"
        )));
    }
    let half = out / heads / 2;
    Ok(w.reshape((heads, half, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

fn meta<'a>(c: &'a Content, key: &str, path: &Path) -> Result<&'a Value> {
    c.metadata
        .get(key)
        .ok_or_else(|| LlmError::malformed(path, format!("no metadata key {key}")))
}

fn meta_usize(c: &Content, key: &str, path: &Path) -> Result<usize> {
    let v = meta(c, key, path)?;
    v.to_u64()
        .ok()
        .or_else(|| v.to_u32().ok().map(u64::from))
        .or_else(|| v.to_i32().ok().and_then(|i| u64::try_from(i).ok()))
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| LlmError::malformed(path, format!("{key} is not a size: {v:?}")))
}

fn meta_f64(c: &Content, key: &str, path: &Path) -> Result<f64> {
    let v = meta(c, key, path)?;
    // An f32 value is read as the shortest decimal that round-trips it (1e-5, not
    // 9.99999974e-6), as it was written before llama.cpp stored it in f32.
    v.to_f32()
        .map(|x| format!("{x}").parse::<f64>().unwrap_or(f64::from(x)))
        .or_else(|_| v.to_f64())
        .map_err(|_| LlmError::malformed(path, format!("{key} is not a number: {v:?}")))
}

fn meta_id(c: &Content, key: &str) -> Option<u32> {
    let v = c.metadata.get(key)?;
    v.to_u32()
        .ok()
        .or_else(|| v.to_i32().ok().and_then(|i| u32::try_from(i).ok()))
}

fn strings(c: &Content, key: &str, path: &Path) -> Result<Vec<String>> {
    let v = meta(c, key, path)?
        .to_vec()
        .map_err(|_| LlmError::malformed(path, format!("{key} is not an array")))?;
    v.iter()
        .map(|s| {
            s.to_string()
                .cloned()
                .map_err(|_| LlmError::malformed(path, format!("{key} holds a non-string")))
        })
        .collect()
}

/// Reads only the metadata of a GGUF file: config and vocabulary (no tensor data).
///
/// # Errors
/// As [`read`].
pub fn read_metadata(path: &Path) -> Result<(LlamaConfig, GgufVocab, Content)> {
    let file = File::open(path).map_err(LlmError::io(path))?;
    let mut r = BufReader::new(file);
    let content = Content::read(&mut r).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("unknown dtype") {
            LlmError::unsupported(path, format!("tensor type: {msg}"))
        } else {
            LlmError::malformed(path, format!("not a readable GGUF file: {msg}"))
        }
    })?;
    let arch = meta(&content, "general.architecture", path)?
        .to_string()
        .map_err(|_| LlmError::malformed(path, "general.architecture is not a string"))?
        .clone();
    if arch != "llama" {
        return Err(LlmError::unsupported(
            path,
            format!("architecture {arch:?}: only \"llama\" models run here"),
        ));
    }
    let k = |s: &str| format!("{arch}.{s}");
    let tokens = strings(&content, "tokenizer.ggml.tokens", path)?;
    let heads = meta_usize(&content, &k("attention.head_count"), path)?;
    let hidden = meta_usize(&content, &k("embedding_length"), path)?;
    let head_dim = match content.metadata.get(&k("attention.key_length")) {
        Some(_) => meta_usize(&content, &k("attention.key_length"), path)?,
        None => hidden / heads.max(1),
    };
    if let Some(d) = content.metadata.get(&k("rope.dimension_count"))
        && d.to_u32().ok().map(|d| d as usize) != Some(head_dim)
    {
        return Err(LlmError::unsupported(
            path,
            format!("partial RoPE ({d:?} of {head_dim} dimensions)"),
        ));
    }
    if content.metadata.contains_key(&k("rope.scaling.type")) {
        return Err(LlmError::unsupported(path, "scaled RoPE"));
    }
    let config = LlamaConfig {
        vocab_size: match content.metadata.get(&k("vocab_size")) {
            Some(_) => meta_usize(&content, &k("vocab_size"), path)?,
            None => tokens.len(),
        },
        hidden_size: hidden,
        intermediate_size: meta_usize(&content, &k("feed_forward_length"), path)?,
        num_hidden_layers: meta_usize(&content, &k("block_count"), path)?,
        num_attention_heads: heads,
        num_key_value_heads: match content.metadata.get(&k("attention.head_count_kv")) {
            Some(_) => meta_usize(&content, &k("attention.head_count_kv"), path)?,
            None => heads,
        },
        head_dim,
        rope_theta: match content.metadata.get(&k("rope.freq_base")) {
            Some(_) => meta_f64(&content, &k("rope.freq_base"), path)?,
            None => 10_000.0,
        },
        rms_norm_eps: meta_f64(&content, &k("attention.layer_norm_rms_epsilon"), path)?,
        max_position_embeddings: meta_usize(&content, &k("context_length"), path)?,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        bos_token_id: meta_id(&content, "tokenizer.ggml.bos_token_id"),
        eos_token_id: meta_id(&content, "tokenizer.ggml.eos_token_id"),
    };
    config.validate(path)?;
    let vocab = GgufVocab {
        model: meta(&content, "tokenizer.ggml.model", path)?
            .to_string()
            .map_err(|_| LlmError::malformed(path, "tokenizer.ggml.model is not a string"))?
            .clone(),
        merges: match content.metadata.get("tokenizer.ggml.merges") {
            Some(_) => strings(&content, "tokenizer.ggml.merges", path)?,
            None => Vec::new(),
        },
        token_types: match content.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|_| {
                    LlmError::malformed(path, "tokenizer.ggml.token_type is not an array")
                })?
                .iter()
                .map(|t| t.to_i32().map(i64::from).unwrap_or(1))
                .collect(),
            None => Vec::new(),
        },
        tokens,
        bos: config.bos_token_id,
        eos: config.eos_token_id,
        unk: meta_id(&content, "tokenizer.ggml.unknown_token_id"),
        chat_template: content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned()),
    };
    Ok((config, vocab, content))
}

/// Reads a Llama GGUF file: config, vocabulary and every tensor dequantized to `f32` under its
/// Hugging Face name (see [`hf_name`], [`unpermute_qk`]), checked against the config's shapes.
///
/// # Errors
/// [`LlmError::Io`] for a missing file; [`LlmError::Malformed`] for a truncated or corrupt file,
/// missing metadata or tensors, wrong shapes; [`LlmError::Unsupported`] for another architecture,
/// an unknown tensor name or type, scaled or partial RoPE.
pub fn read(path: &Path) -> Result<GgufModel> {
    let (config, vocab, content) = read_metadata(path)?;
    let file = File::open(path).map_err(LlmError::io(path))?;
    let mut r = BufReader::new(file);
    let mut tensors = BTreeMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let hf = hf_name(name)
            .ok_or_else(|| LlmError::unsupported(path, format!("unknown tensor {name}")))?;
        let q = content
            .tensor(&mut r, name, &Device::Cpu)
            .map_err(|e| LlmError::malformed(path, format!("tensor {name}: {e}")))?;
        let mut t = q.dequantize(&Device::Cpu).map_err(|e| {
            LlmError::unsupported(path, format!("tensor {name} ({:?}): {e}", q.dtype()))
        })?;
        if name.ends_with("attn_q.weight") {
            t = unpermute_qk(&t, config.num_attention_heads)?;
        } else if name.ends_with("attn_k.weight") {
            t = unpermute_qk(&t, config.num_key_value_heads)?;
        }
        tensors.insert(hf, t);
    }
    crate::weights::check_shapes(&config, &tensors, path)?;
    Ok(GgufModel {
        config,
        tensors,
        vocab,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.12.ffn_down.weight").unwrap(),
            "model.layers.12.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert!(hf_name("blk.x.ffn_down.weight").is_none());
        assert!(hf_name("rope_freqs.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d/2, in).swapaxes(1, 2).reshape(out, in).
        let (heads, d, inp) = (3, 8, 5);
        let w = Tensor::arange(0f32, (heads * d * inp) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * d, inp))
            .unwrap();
        let permuted = w
            .reshape((heads, 2, d / 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((heads * d, inp))
            .unwrap();
        let back = unpermute_qk(&permuted, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert!(unpermute_qk(&w.narrow(0, 0, 5).unwrap(), heads).is_err());
    }
}
