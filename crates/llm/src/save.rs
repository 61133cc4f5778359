//! Writing a model with AQLM projections as a Hugging Face folder that `transformers` (with
//! `aqlm` installed) loads as `LlamaForCausalLM` unchanged.

use std::path::Path;

use oftq_candle::layer::aqlm::{AqlmCheckpoint, AqlmScheme, QuantizationConfig};
use serde_json::{Value, json};

use crate::atomic::write;
use crate::error::{LlmError, Result};
use crate::model::{Llama, Projection};
use crate::weights::{PROJECTIONS, projection_path, tensor_to_raw};

/// The AQLM checkpoint of `model`: every quantized projection (codes/codebooks/scales), the dense
/// tensors (embeddings, norms, an untied head, projections left dense), and `config.json` = the
/// Llama config plus `quantization_config`. `linear_weights_not_to_quantize` lists the head both
/// as a module (`lm_head`, what transformers ≥ 5 matches) and as a parameter (`lm_head.weight`,
/// what older versions match), and every projection left dense.
///
/// # Errors
/// A model without quantized projections, or with several schemes.
pub fn checkpoint(model: &Llama) -> Result<AqlmCheckpoint> {
    let scheme = scheme_of(model)?;
    let mut keep_dense = vec!["lm_head".to_string(), "lm_head.weight".to_string()];
    let mut dense = Vec::new();
    let mut layers = Vec::new();
    for (l, b) in model.blocks().iter().enumerate() {
        for (p, proj) in PROJECTIONS.iter().zip(b.projections()) {
            let module = projection_path(l, p);
            match proj {
                Projection::Quantized(m) => layers.push((module, m.base().clone())),
                Projection::Dense(w) => {
                    keep_dense.push(module.clone());
                    keep_dense.push(format!("{module}.weight"));
                    dense.push((format!("{module}.weight"), w.clone()));
                }
            }
        }
        dense.push((
            format!("model.layers.{l}.input_layernorm.weight"),
            b.attn_norm.clone(),
        ));
        dense.push((
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            b.mlp_norm.clone(),
        ));
    }
    dense.push((
        "model.embed_tokens.weight".into(),
        model.embedding().clone(),
    ));
    dense.push(("model.norm.weight".into(), model.final_norm().clone()));
    if let Some(h) = model.untied_head() {
        dense.push(("lm_head.weight".into(), h.clone()));
    }
    let mut qc = QuantizationConfig::new(scheme);
    qc.linear_weights_not_to_quantize = keep_dense;
    let mut ckpt = AqlmCheckpoint::new(qc);
    let mut cfg = model.config().to_hf_json();
    if let Value::Object(m) = &mut cfg {
        m.insert("transformers_version".into(), json!("5.0.0"));
    }
    ckpt.set_config_json(cfg);
    for (name, layer) in layers {
        ckpt.insert_layer(&name, layer)?;
    }
    for (name, t) in dense {
        ckpt.insert_tensor(&name, tensor_to_raw(&t)?)?;
    }
    Ok(ckpt)
}

/// The single AQLM scheme of `model`'s quantized projections.
///
/// # Errors
/// No quantized projection, or several schemes.
pub fn scheme_of(model: &Llama) -> Result<AqlmScheme> {
    let mut schemes = model.quantized().map(|m| m.base().scheme());
    let first = schemes
        .next()
        .ok_or_else(|| LlmError::Invalid("the model has no AQLM projection".into()))?;
    if let Some(other) = schemes.find(|s| *s != first) {
        return Err(LlmError::Invalid(format!(
            "the model mixes AQLM schemes {first} and {other}; a Hugging Face config holds one"
        )));
    }
    Ok(first)
}

/// Writes `model` (with AQLM projections) as a Hugging Face folder: `config.json`,
/// `model.safetensors` (see [`checkpoint`]), the tokenizer files and `generation_config.json`,
/// each atomically.
///
/// # Errors
/// See [`checkpoint`]; I/O errors.
pub fn save_hf_aqlm(model: &Llama, dir: &Path) -> Result<()> {
    let ckpt = checkpoint(model)?;
    ckpt.save(dir)?;
    model.tokenizer().save_hf(dir)?;
    let c = model.config();
    let gen_cfg = json!({
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "transformers_version": "5.0.0",
    });
    let text = serde_json::to_string_pretty(&gen_cfg)
        .map_err(|e| LlmError::Invalid(format!("generation_config.json: {e}")))?;
    write(&dir.join("generation_config.json"), text.as_bytes())
}
