//! [`ModelWeights`]: a Llama model's tensors by Hugging Face name — dense `f32` tensors and AQLM
//! layers — loaded from a GGUF file or a Hugging Face folder (dense or AQLM), checked against the
//! config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oftq_candle::candle_core::{DType, Device, Tensor};
use oftq_candle::layer::aqlm::{AqlmCheckpoint, AqlmLayer, AqlmScheme, RawTensor, checkpoint};

use crate::config::LlamaConfig;
use crate::error::{LlmError, Result};
use crate::tokenizer::Tokenizer;

/// The seven linear projections of a block, with their Hugging Face module suffixes.
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// The module path of projection `proj` (one of [`PROJECTIONS`]) of block `layer`.
pub fn projection_path(layer: usize, proj: &str) -> String {
    format!("model.layers.{layer}.{proj}")
}

/// `[out, in]` of projection `proj` under `config`.
pub fn projection_shape(config: &LlamaConfig, proj: &str) -> (usize, usize) {
    let (h, i, q, kv) = (
        config.hidden_size,
        config.intermediate_size,
        config.q_size(),
        config.kv_size(),
    );
    match proj {
        "self_attn.q_proj" => (q, h),
        "self_attn.k_proj" | "self_attn.v_proj" => (kv, h),
        "self_attn.o_proj" => (h, q),
        "mlp.down_proj" => (h, i),
        _ => (i, h),
    }
}

/// Every tensor a model of `config` needs that is not a projection, with its shape.
fn other_tensors(config: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let h = config.hidden_size;
    let mut v = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![config.vocab_size, h],
        ),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    if !config.tie_word_embeddings {
        v.push(("lm_head.weight".into(), vec![config.vocab_size, h]));
    }
    for l in 0..config.num_hidden_layers {
        v.push((format!("model.layers.{l}.input_layernorm.weight"), vec![h]));
        v.push((
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            vec![h],
        ));
    }
    v
}

/// Checks a dense tensor set: every tensor a model of `config` needs, with its shape, and nothing
/// else.
pub(crate) fn check_shapes(
    config: &LlamaConfig,
    tensors: &BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let mut want = other_tensors(config);
    for l in 0..config.num_hidden_layers {
        for p in PROJECTIONS {
            let (o, i) = projection_shape(config, p);
            want.push((format!("{}.weight", projection_path(l, p)), vec![o, i]));
        }
    }
    check_set(&want, tensors, path)
}

fn check_set(
    want: &[(String, Vec<usize>)],
    have: &BTreeMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    for (name, dims) in want {
        let t = have
            .get(name)
            .ok_or_else(|| LlmError::malformed(path, format!("missing tensor {name}")))?;
        if t.dims() != dims.as_slice() {
            return Err(LlmError::malformed(
                path,
                format!(
                    "tensor {name} has shape {:?}, the config needs {dims:?}",
                    t.dims()
                ),
            ));
        }
    }
    if let Some(extra) = have.keys().find(|k| !want.iter().any(|(n, _)| n == *k)) {
        return Err(LlmError::unsupported(
            path,
            format!("unexpected tensor {extra}"),
        ));
    }
    Ok(())
}

/// A model's weights: the dense tensors and the AQLM-quantized projections.
#[derive(Debug, Clone)]
pub struct ModelWeights {
    /// The hyper-parameters.
    pub config: LlamaConfig,
    /// Dense `f32` tensors by Hugging Face name: embeddings, norms, an untied head, and the
    /// projections that are not quantized (`….weight`).
    pub dense: BTreeMap<String, Tensor>,
    /// AQLM projections by module path (`model.layers.0.self_attn.q_proj`).
    pub aqlm: BTreeMap<String, AqlmLayer>,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Where the weights came from.
    pub source: PathBuf,
}

impl ModelWeights {
    /// Loads a GGUF file (`*.gguf`) or a Hugging Face folder (`config.json`, `model.safetensors`,
    /// `tokenizer.json`; AQLM-quantized when `config.json` has an AQLM `quantization_config`).
    ///
    /// # Errors
    /// See [`crate::gguf::read`] and [`ModelWeights::from_hf_dir`].
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::from_hf_dir(path)
        } else if path.extension().is_some_and(|e| e == "gguf") {
            let g = crate::gguf::read(path)?;
            let tokenizer = Tokenizer::from_gguf_vocab(&g.vocab, path)?;
            Ok(Self {
                config: g.config,
                dense: g.tensors,
                aqlm: BTreeMap::new(),
                tokenizer,
                source: path.into(),
            })
        } else if !path.exists() {
            Err(LlmError::Io {
                path: path.into(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            })
        } else {
            Err(LlmError::unsupported(
                path,
                "expected a .gguf file or a Hugging Face model folder (config.json + model.safetensors)",
            ))
        }
    }

    /// Loads a Hugging Face `LlamaForCausalLM` folder: dense (`model.safetensors` of float tensors)
    /// or AQLM (aqlm's `codes/codebooks/scales` for the projections, everything else dense).
    ///
    /// # Errors
    /// [`LlmError::Io`] / [`LlmError::Malformed`] for missing or invalid files, missing tensors or
    /// wrong shapes; [`LlmError::Unsupported`] for another architecture or unexpected tensors.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join(checkpoint::CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(LlmError::io(&cfg_path))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LlmError::malformed(&cfg_path, format!("not valid JSON: {e}")))?;
        let config = LlamaConfig::from_hf_json(&json, &cfg_path)?;
        let weights_path = dir.join(checkpoint::WEIGHTS_FILE);
        // The tokenizer (parsing its merges takes about a tenth of loading a 2x8 folder) is read
        // on another thread while the weights load.
        let (tokenizer, weights) = rayon::join(
            || Tokenizer::from_hf_dir(dir, config.bos_token_id, config.eos_token_id),
            || Self::read_hf_tensors(dir, &json, &weights_path),
        );
        let (tokenizer, (dense, aqlm)) = (tokenizer?, weights?);
        let w = Self {
            config,
            dense,
            aqlm,
            tokenizer,
            source: dir.into(),
        };
        w.check(&weights_path)?;
        Ok(w)
    }

    /// The tensors of a Hugging Face folder: dense ones by name, and the AQLM projections when
    /// the config has a `quantization_config` (see [`ModelWeights::from_hf_dir`]).
    fn read_hf_tensors(
        dir: &Path,
        json: &serde_json::Value,
        weights_path: &Path,
    ) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, AqlmLayer>)> {
        if json.get("quantization_config").is_some() {
            let ckpt = AqlmCheckpoint::load(dir)?;
            let dense = ckpt
                .tensors()
                .iter()
                .map(|(n, t)| Ok((n.clone(), raw_to_tensor(t, n, weights_path)?)))
                .collect::<Result<BTreeMap<_, _>>>()?;
            return Ok((dense, ckpt.into_layers()));
        }
        if !weights_path.is_file() {
            return Err(LlmError::malformed(
                weights_path,
                "missing (sharded checkpoints are not supported)",
            ));
        }
        let dense = oftq_candle::candle_core::safetensors::load(weights_path, &Device::Cpu)
            .map_err(|e| LlmError::malformed(weights_path, e.to_string()))?
            .into_iter()
            .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok((dense, BTreeMap::new()))
    }

    /// Checks every tensor against the config: each projection present once (dense or AQLM) with
    /// its shape, every other tensor present with its shape, nothing unexpected, one AQLM scheme.
    fn check(&self, path: &Path) -> Result<()> {
        let c = &self.config;
        let mut want = other_tensors(c);
        for l in 0..c.num_hidden_layers {
            for p in PROJECTIONS {
                let (o, i) = projection_shape(c, p);
                let module = projection_path(l, p);
                match self.aqlm.get(&module) {
                    Some(a) if (a.out_features(), a.in_features()) == (o, i) => {}
                    Some(a) => {
                        return Err(LlmError::malformed(
                            path,
                            format!(
                                "AQLM layer {module} is [{}, {}], the config needs [{o}, {i}]",
                                a.out_features(),
                                a.in_features()
                            ),
                        ));
                    }
                    None => want.push((format!("{module}.weight"), vec![o, i])),
                }
            }
        }
        if let Some(extra) = self
            .aqlm
            .keys()
            .find(|k| !PROJECTIONS.iter().any(|p| k.ends_with(p)))
        {
            return Err(LlmError::unsupported(
                path,
                format!("unexpected AQLM layer {extra}"),
            ));
        }
        check_set(&want, &self.dense, path)
    }

    /// The AQLM scheme of the quantized projections, if any.
    pub fn scheme(&self) -> Option<AqlmScheme> {
        self.aqlm.values().next().map(AqlmLayer::scheme)
    }

    /// The dense tensor `name`.
    ///
    /// # Errors
    /// [`LlmError::Malformed`] if it is missing.
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.dense
            .get(name)
            .ok_or_else(|| LlmError::malformed(&self.source, format!("missing tensor {name}")))
    }
}

/// A dense safetensors tensor of an AQLM checkpoint as an `f32` candle tensor.
fn raw_to_tensor(t: &RawTensor, name: &str, path: &Path) -> Result<Tensor> {
    let data = checkpoint::floats_as_f32(t.dtype, &t.data).ok_or_else(|| {
        LlmError::unsupported(path, format!("tensor {name} has dtype {:?}", t.dtype))
    })?;
    Ok(Tensor::from_vec(data, t.shape.clone(), &Device::Cpu)?)
}

/// A dense tensor as AQLM's checkpoint wants it (`f32`, row-major bytes).
pub(crate) fn tensor_to_raw(t: &Tensor) -> Result<RawTensor> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(RawTensor {
        dtype: checkpoint::Dtype::F32,
        shape: t.dims().to_vec(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    })
}
