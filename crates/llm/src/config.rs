//! [`LlamaConfig`]: the hyper-parameters of a Llama-family decoder, from GGUF metadata or a
//! Hugging Face `config.json`, and back to a `config.json` that transformers loads.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::error::{LlmError, Result};

/// The geometry and constants of a Llama-family decoder (`LlamaForCausalLM`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention: each serves `heads / kv_heads` query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RoPE base `θ` (frequencies `θ^(−2i/head_dim)`).
    pub rope_theta: f64,
    /// RMSNorm `ε`.
    pub rms_norm_eps: f64,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id.
    pub eos_token_id: Option<u32>,
}

impl LlamaConfig {
    /// Checks that the sizes fit together.
    ///
    /// # Errors
    /// [`LlmError::Malformed`] naming `path` and the inconsistency.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |why: String| Err(LlmError::malformed(path, why));
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        if let Some((k, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{k} is 0"));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} is odd (RoPE rotates pairs)",
                self.head_dim
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope_theta {} is not positive", self.rope_theta));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return bad(format!("rms_norm_eps {} is not ≥ 0", self.rms_norm_eps));
        }
        Ok(())
    }

    /// Width of the query projection output (`heads · head_dim`).
    pub fn q_size(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of the key and value projection outputs (`kv_heads · head_dim`).
    pub fn kv_size(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Parses a Hugging Face `config.json` of a `LlamaForCausalLM` (`model_type` `"llama"`; the
    /// RoPE base from `rope_parameters.rope_theta` or the older `rope_theta`; only the default
    /// RoPE type).
    ///
    /// # Errors
    /// [`LlmError::Malformed`] for missing or mistyped fields, [`LlmError::Unsupported`] for another
    /// architecture, scaled RoPE, biases or another activation.
    pub fn from_hf_json(json: &Value, path: &Path) -> Result<Self> {
        let obj = json
            .as_object()
            .ok_or_else(|| LlmError::malformed(path, "config.json is not a JSON object"))?;
        match obj.get("model_type").and_then(Value::as_str) {
            Some("llama") => {}
            other => {
                return Err(LlmError::unsupported(
                    path,
                    format!("model_type {other:?}: only Llama-family models (\"llama\") run here"),
                ));
            }
        }
        let usize_of = |k: &str| -> Result<Option<usize>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| LlmError::malformed(path, format!("{k} = {v} is not a size"))),
            }
        };
        let need = |k: &str| -> Result<usize> {
            usize_of(k)?.ok_or_else(|| LlmError::malformed(path, format!("no {k}")))
        };
        let f64_of = |v: &Value, k: &str| {
            v.as_f64()
                .ok_or_else(|| LlmError::malformed(path, format!("{k} = {v} is not a number")))
        };
        for (k, ok) in [
            ("attention_bias", Value::Bool(false)),
            ("mlp_bias", Value::Bool(false)),
            ("hidden_act", Value::String("silu".into())),
        ] {
            if let Some(v) = obj.get(k)
                && *v != ok
            {
                return Err(LlmError::unsupported(
                    path,
                    format!("{k} = {v} (only {ok})"),
                ));
            }
        }
        let rope = obj
            .get("rope_parameters")
            .or_else(|| obj.get("rope_scaling"));
        let mut rope_theta = obj
            .get("rope_theta")
            .map(|v| f64_of(v, "rope_theta"))
            .transpose()?;
        if let Some(Value::Object(r)) = rope {
            match r
                .get("rope_type")
                .or_else(|| r.get("type"))
                .and_then(Value::as_str)
            {
                None | Some("default") => {}
                Some(t) => {
                    return Err(LlmError::unsupported(path, format!("RoPE type {t:?}")));
                }
            }
            if let Some(t) = r.get("rope_theta") {
                rope_theta = Some(f64_of(t, "rope_parameters.rope_theta")?);
            }
        }
        let heads = need("num_attention_heads")?;
        let hidden = need("hidden_size")?;
        let token = |k: &str| -> Result<Option<u32>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(a)) => Ok(a.first().and_then(Value::as_u64).map(|v| v as u32)),
                Some(v) => v
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        LlmError::malformed(path, format!("{k} = {v} is not a token id"))
                    }),
            }
        };
        let config = Self {
            vocab_size: need("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: need("intermediate_size")?,
            num_hidden_layers: need("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: usize_of("num_key_value_heads")?.unwrap_or(heads),
            head_dim: usize_of("head_dim")?.unwrap_or(hidden / heads.max(1)),
            rope_theta: rope_theta.unwrap_or(10_000.0),
            rms_norm_eps: obj
                .get("rms_norm_eps")
                .map(|v| f64_of(v, "rms_norm_eps"))
                .transpose()?
                .unwrap_or(1e-6),
            max_position_embeddings: usize_of("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: obj
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: token("bos_token_id")?,
            eos_token_id: token("eos_token_id")?,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// The `config.json` transformers loads as `LlamaForCausalLM` (f32 weights): the RoPE base
    /// both as `rope_parameters` (transformers ≥ 5) and `rope_theta` (older versions).
    pub fn to_hf_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("architectures", json!(["LlamaForCausalLM"]));
        put("model_type", json!("llama"));
        put("vocab_size", json!(self.vocab_size));
        put("hidden_size", json!(self.hidden_size));
        put("intermediate_size", json!(self.intermediate_size));
        put("num_hidden_layers", json!(self.num_hidden_layers));
        put("num_attention_heads", json!(self.num_attention_heads));
        put("num_key_value_heads", json!(self.num_key_value_heads));
        put("head_dim", json!(self.head_dim));
        put("hidden_act", json!("silu"));
        put(
            "max_position_embeddings",
            json!(self.max_position_embeddings),
        );
        put("rms_norm_eps", json!(self.rms_norm_eps));
        put("rope_theta", json!(self.rope_theta));
        put(
            "rope_parameters",
            json!({"rope_type": "default", "rope_theta": self.rope_theta}),
        );
        put("tie_word_embeddings", json!(self.tie_word_embeddings));
        put("attention_bias", json!(false));
        put("mlp_bias", json!(false));
        put("bos_token_id", json!(self.bos_token_id));
        put("eos_token_id", json!(self.eos_token_id));
        put("torch_dtype", json!("float32"));
        put("use_cache", json!(true));
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 300,
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 128,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    #[test]
    fn hf_json_round_trip_and_checks() {
        let c = tiny();
        let p = Path::new("config.json");
        assert_eq!(LlamaConfig::from_hf_json(&c.to_hf_json(), p).unwrap(), c);
        let mut j = c.to_hf_json();
        j["model_type"] = json!("gpt2");
        let e = LlamaConfig::from_hf_json(&j, p).unwrap_err().to_string();
        assert!(e.contains("unsupported") && e.contains("gpt2"), "{e}");
        let mut j = c.to_hf_json();
        j["rope_parameters"] = json!({"rope_type": "yarn", "factor": 4.0});
        assert!(LlamaConfig::from_hf_json(&j, p).is_err());
        let mut j = c.to_hf_json();
        j["num_key_value_heads"] = json!(3);
        let e = LlamaConfig::from_hf_json(&j, p).unwrap_err().to_string();
        assert!(e.contains("multiple"), "{e}");
        let mut j = c.to_hf_json();
        j.as_object_mut().unwrap().remove("hidden_size");
        assert!(
            LlamaConfig::from_hf_json(&j, p)
                .unwrap_err()
                .to_string()
                .contains("hidden_size")
        );
        // The older layout: rope_theta only, no head_dim.
        let mut j = c.to_hf_json();
        j.as_object_mut().unwrap().remove("rope_parameters");
        j.as_object_mut().unwrap().remove("head_dim");
        assert_eq!(LlamaConfig::from_hf_json(&j, p).unwrap(), c);
    }
}
