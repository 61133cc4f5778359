//! Hugging Face AQLM checkpoint folders: `config.json` + `model.safetensors`.
//!
//! A linear layer with prefix `P` is AQLM when the tensor `P.codes` exists; it then needs
//! `P.codebooks [M, 2^B, og, ig]`, `P.scales [Og, 1, 1, 1]` and optionally `P.bias [O]`
//! (`aqlm.md` §4). Every other tensor is kept byte for byte so that a save round-trips.

mod atomic;
mod config;
mod tensors;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use serde_json::Value;

pub use atomic::{write_atomic, write_atomic_with};
pub use config::QuantizationConfig;
pub use safetensors::Dtype;
pub use tensors::{RawTensor, floats_as_f32};

use crate::error::AqlmError;
use crate::layer::AqlmLayer;
use crate::storage::Storage;

/// File name of the model config inside a checkpoint folder.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the (single-file) weights inside a checkpoint folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// An HF-style AQLM checkpoint held in memory.
///
/// ```
/// use oftq_aqlm::{AqlmCheckpoint, AqlmLayer, AqlmScheme, QuantizationConfig};
/// let scheme = AqlmScheme::builder(1, 2).in_group_size(2).build().unwrap();
/// let layer = AqlmLayer::new(4, 1, scheme, vec![1, 3], vec![0.5; 8], vec![2.0], None).unwrap();
/// let mut ckpt = AqlmCheckpoint::new(QuantizationConfig::new(scheme));
/// ckpt.insert_layer("model.proj", layer).unwrap();
/// let dir = tempfile::tempdir().unwrap();
/// ckpt.save(dir.path()).unwrap();
/// let back = AqlmCheckpoint::load(dir.path()).unwrap();
/// assert_eq!(back.layer("model.proj").unwrap().decode(), ckpt.layer("model.proj").unwrap().decode());
/// ```
#[derive(Debug, Clone)]
pub struct AqlmCheckpoint {
    config: QuantizationConfig,
    /// The whole `config.json`, kept so a save preserves the fields this crate does not use.
    config_json: Value,
    layers: BTreeMap<String, AqlmLayer>,
    tensors: BTreeMap<String, RawTensor>,
    metadata: Option<HashMap<String, String>>,
}

impl AqlmCheckpoint {
    /// An empty checkpoint with this quantization config.
    pub fn new(config: QuantizationConfig) -> Self {
        Self {
            config,
            config_json: Value::Object(serde_json::Map::new()),
            layers: BTreeMap::new(),
            tensors: BTreeMap::new(),
            metadata: None,
        }
    }

    /// The quantization config.
    pub fn config(&self) -> &QuantizationConfig {
        &self.config
    }

    /// The full `config.json` as loaded (an empty object for a new checkpoint).
    pub fn config_json(&self) -> &Value {
        &self.config_json
    }

    /// Sets the rest of `config.json` (the model's own fields, e.g. a Llama config) that
    /// [`save`](Self::save) writes; its `quantization_config` block is replaced by this
    /// checkpoint's on save.
    pub fn set_config_json(&mut self, json: Value) {
        self.config_json = json;
    }

    /// Every AQLM layer, by prefix.
    pub fn layers(&self) -> &BTreeMap<String, AqlmLayer> {
        &self.layers
    }

    /// The AQLM layer with prefix `name`.
    ///
    /// # Errors
    /// [`AqlmError::UnknownLayer`] (listing the layers there are) if there is none.
    pub fn layer(&self, name: &str) -> Result<&AqlmLayer, AqlmError> {
        self.layers
            .get(name)
            .ok_or_else(|| AqlmError::UnknownLayer {
                name: name.to_string(),
                available: self.layers.keys().cloned().collect(),
            })
    }

    /// Consumes the checkpoint, giving its AQLM layers by prefix.
    pub fn into_layers(self) -> BTreeMap<String, AqlmLayer> {
        self.layers
    }

    /// The other (non-AQLM) tensors, by full name, kept as read.
    pub fn tensors(&self) -> &BTreeMap<String, RawTensor> {
        &self.tensors
    }

    /// Adds (or replaces) the AQLM layer `name`.
    ///
    /// # Errors
    /// [`AqlmError::InvalidScheme`] if the layer's scheme differs from the checkpoint's (an
    /// HF config holds one scheme), [`AqlmError::Shape`] if `name` collides with a dense tensor.
    pub fn insert_layer(&mut self, name: &str, layer: AqlmLayer) -> Result<(), AqlmError> {
        if layer.scheme() != self.config.scheme {
            return Err(AqlmError::InvalidScheme(format!(
                "layer {name:?} uses {} but the checkpoint is {}",
                layer.scheme(),
                self.config.scheme
            )));
        }
        if let Some(t) = self
            .tensors
            .keys()
            .find(|t| t.starts_with(&format!("{name}.")))
        {
            return Err(AqlmError::Shape {
                what: format!("layer {name:?}"),
                expected: "a prefix not used by a dense tensor".into(),
                got: format!("dense tensor {t:?}"),
            });
        }
        self.layers.insert(name.to_string(), layer);
        Ok(())
    }

    /// Adds (or replaces) a dense tensor kept as-is.
    ///
    /// # Errors
    /// [`AqlmError::Shape`] if `data` does not match `dtype` and `shape`.
    pub fn insert_tensor(&mut self, name: &str, tensor: RawTensor) -> Result<(), AqlmError> {
        let n: Option<usize> = tensor
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d));
        let bytes = n
            .and_then(|n| n.checked_mul(tensor.dtype.bitsize()))
            .map(|b| b.div_ceil(8));
        if bytes != Some(tensor.data.len()) {
            return Err(AqlmError::Shape {
                what: format!("tensor {name:?}"),
                expected: format!("{:?} {:?} = {bytes:?} bytes", tensor.dtype, tensor.shape),
                got: format!("{} bytes", tensor.data.len()),
            });
        }
        self.tensors.insert(name.to_string(), tensor);
        Ok(())
    }

    /// Loads `dir/config.json` and `dir/model.safetensors`.
    ///
    /// # Errors
    /// [`AqlmError::Io`] for unreadable files, [`AqlmError::Config`] for a bad config,
    /// [`AqlmError::Safetensors`] for a malformed container (including a header that claims
    /// more bytes than the file holds), [`AqlmError::Tensor`] naming the tensor for a missing
    /// companion tensor, a wrong dtype, shape or code value.
    pub fn load(dir: &Path) -> Result<Self, AqlmError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(|source| AqlmError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config_json: Value = serde_json::from_str(&text).map_err(|e| AqlmError::Config {
            path: config_path.clone(),
            msg: format!("not valid JSON: {e}"),
        })?;
        let config = QuantizationConfig::from_json(&config_json, &config_path)?;

        let weights = dir.join(WEIGHTS_FILE);
        if !weights.exists() && dir.join(format!("{WEIGHTS_FILE}.index.json")).exists() {
            return Err(AqlmError::Safetensors {
                path: weights,
                msg: "sharded checkpoints (model.safetensors.index.json) are not supported".into(),
            });
        }
        let bytes = read_safetensors_file(&weights)?;
        let st_err = |msg: String| AqlmError::Safetensors {
            path: weights.clone(),
            msg,
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| st_err(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| st_err(e.to_string()))?;
        let metadata = header.metadata().clone();

        let mut views: BTreeMap<String, safetensors::tensor::TensorView<'_>> =
            st.iter().map(|(n, v)| (n.to_string(), v)).collect();
        let prefixes: Vec<String> = views
            .keys()
            .filter_map(|n| n.strip_suffix(".codes").map(str::to_string))
            .collect();
        let mut layers = BTreeMap::new();
        for prefix in prefixes {
            let layer = load_layer(&weights, &prefix, &mut views, &config)?;
            layers.insert(prefix, layer);
        }
        let tensors = views
            .into_iter()
            .map(|(n, v)| {
                let t = RawTensor {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                };
                (n, t)
            })
            .collect();
        Ok(Self {
            config,
            config_json,
            layers,
            tensors,
            metadata,
        })
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` atomically (creating `dir`).
    /// Each layer is written with its [`AqlmLayer::storage`] dtypes: codes packed the aqlm
    /// way (`v ≥ 2^(B−1)` stored as `v − 2^B`), scales as `[Og, 1, 1, 1]`.
    ///
    /// # Errors
    /// [`AqlmError::Io`] on write failures, [`AqlmError::Safetensors`] if serialization fails.
    pub fn save(&self, dir: &Path) -> Result<(), AqlmError> {
        std::fs::create_dir_all(dir).map_err(|source| AqlmError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let weights = dir.join(WEIGHTS_FILE);
        let mut out: Vec<(String, RawTensor)> = Vec::new();
        for (prefix, layer) in &self.layers {
            out.extend(layer_tensors(prefix, layer));
        }
        out.extend(self.tensors.iter().map(|(n, t)| (n.clone(), t.clone())));
        let views = out
            .iter()
            .map(|(n, t)| {
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                    .map(|v| (n.as_str(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AqlmError::Safetensors {
                path: weights.clone(),
                msg: e.to_string(),
            })?;
        let metadata = self
            .metadata
            .clone()
            .unwrap_or_else(|| HashMap::from([("format".to_string(), "pt".to_string())]));
        let bytes =
            safetensors::serialize(views, Some(metadata)).map_err(|e| AqlmError::Safetensors {
                path: weights.clone(),
                msg: e.to_string(),
            })?;

        let mut json = self.config_json.clone();
        if !json.is_object() {
            json = Value::Object(serde_json::Map::new());
        }
        if let Value::Object(root) = &mut json {
            let mut block = match root.remove("quantization_config") {
                Some(Value::Object(b)) => b,
                _ => serde_json::Map::new(),
            };
            if let Value::Object(new) = self.config.to_json() {
                block.extend(new);
            }
            root.insert("quantization_config".into(), Value::Object(block));
        }
        let config_path = dir.join(CONFIG_FILE);
        let text = serde_json::to_string_pretty(&json).map_err(|e| AqlmError::Config {
            path: config_path.clone(),
            msg: format!("cannot serialize: {e}"),
        })?;
        write_atomic(&weights, &bytes)?;
        write_atomic(&config_path, text.as_bytes())
    }
}

/// Reads a whole safetensors file after checking that the header length it claims fits in
/// the file (so a corrupt header cannot trigger a huge allocation or an out-of-bounds read).
fn read_safetensors_file(path: &PathBuf) -> Result<Vec<u8>, AqlmError> {
    let io = |source| AqlmError::Io {
        path: path.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    let st_err = |msg: String| AqlmError::Safetensors {
        path: path.clone(),
        msg,
    };
    if len < 8 {
        return Err(st_err(format!(
            "file is {len} bytes, shorter than the 8-byte header length"
        )));
    }
    let mut head = [0u8; 8];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(io)?;
        f.read_exact(&mut head).map_err(io)?;
    }
    let n = u64::from_le_bytes(head);
    if n > len - 8 {
        return Err(st_err(format!(
            "header claims {n} bytes but the file holds only {} after the length",
            len - 8
        )));
    }
    std::fs::read(path).map_err(io)
}

fn load_layer(
    path: &Path,
    prefix: &str,
    views: &mut BTreeMap<String, safetensors::tensor::TensorView<'_>>,
    config: &QuantizationConfig,
) -> Result<AqlmLayer, AqlmError> {
    let scheme = config.scheme;
    let (m, k, og, ig) = (
        scheme.num_codebooks,
        scheme.codebook_size(),
        scheme.out_group_size,
        scheme.in_group_size,
    );
    let terr = |name: &str, msg: String| AqlmError::Tensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        msg,
    };
    let mut take = |suffix: &str, required: bool| {
        let name = format!("{prefix}.{suffix}");
        match views.remove(&name) {
            Some(v) => Ok(Some((name, v))),
            None if required => Err(terr(
                &name,
                format!("missing (required because {prefix}.codes exists)"),
            )),
            None => Ok(None),
        }
    };
    let (codes_name, codes) = take("codes", true)?.ok_or_else(|| terr(prefix, "missing".into()))?;
    let (cb_name, cb) = take("codebooks", true)?.ok_or_else(|| terr(prefix, "missing".into()))?;
    let (sc_name, sc) = take("scales", true)?.ok_or_else(|| terr(prefix, "missing".into()))?;
    let bias = take("bias", false)?;

    let float = |name: &str, v: &safetensors::tensor::TensorView<'_>| {
        tensors::float_dtype(v.dtype()).ok_or_else(|| {
            terr(
                name,
                format!("dtype {:?} is not F32, F16 or BF16", v.dtype()),
            )
        })
    };

    // codebooks [M, K, og, ig]
    let cb_dtype = float(&cb_name, &cb)?;
    if cb.shape() != [m, k, og, ig] {
        return Err(terr(
            &cb_name,
            format!(
                "shape {:?} does not match the config's [M, 2^B, og, ig] = {:?}",
                cb.shape(),
                [m, k, og, ig]
            ),
        ));
    }
    // scales [Og, 1, 1, 1] (also accepted: [Og])
    let sc_dtype = float(&sc_name, &sc)?;
    let n_og = match sc.shape() {
        [n, rest @ ..] if rest.iter().all(|&d| d == 1) && *n > 0 => *n,
        s => {
            return Err(terr(
                &sc_name,
                format!("shape {s:?} is not [out_groups, 1, 1, 1]"),
            ));
        }
    };
    // codes [Og, Ig, M], or aqlm's CPU-permuted [Ig, Og, M] when unambiguous
    let code_dtype = tensors::code_dtype(codes.dtype()).ok_or_else(|| {
        terr(
            &codes_name,
            format!("dtype {:?} is not I8, I16 or I32", codes.dtype()),
        )
    })?;
    code_dtype
        .check_nbits(scheme.nbits)
        .map_err(|e| terr(&codes_name, e.to_string()))?;
    let (n_ig, permuted) = match codes.shape() {
        [a, b, mm] if *mm == m && *a == n_og && *b > 0 => (*b, false),
        [a, b, mm] if *mm == m && *b == n_og && *a > 0 => (*a, true),
        s => {
            return Err(terr(
                &codes_name,
                format!(
                    "shape {s:?} is not [out_groups = {n_og} (from scales), in_groups, M = {m}]"
                ),
            ));
        }
    };
    let raw =
        tensors::codes_from_bytes(code_dtype, codes.data(), scheme.nbits).map_err(|(i, v)| {
            terr(
                &codes_name,
                format!("element {i} = {v} is not a valid {}-bit code", scheme.nbits),
            )
        })?;
    let codes_vec = if permuted {
        let mut c = vec![0u16; raw.len()];
        for j in 0..n_ig {
            for o in 0..n_og {
                c[(o * n_ig + j) * m..][..m].copy_from_slice(&raw[(j * n_og + o) * m..][..m]);
            }
        }
        c
    } else {
        raw
    };
    let out_features = n_og * og;
    let in_features = n_ig * ig;
    let (bias_vec, bias_dtype) = match &bias {
        Some((name, v)) => {
            let d = float(name, v)?;
            if v.shape() != [out_features] {
                return Err(terr(
                    name,
                    format!("shape {:?} is not [{out_features}]", v.shape()),
                ));
            }
            (Some(tensors::floats_from_bytes(d, v.data())), d)
        }
        None => (None, crate::storage::FloatDtype::F16),
    };
    let layer = AqlmLayer::new(
        in_features,
        out_features,
        scheme,
        codes_vec,
        tensors::floats_from_bytes(cb_dtype, cb.data()),
        tensors::floats_from_bytes(sc_dtype, sc.data()),
        bias_vec,
    )
    .map_err(|e| terr(prefix, e.to_string()))?;
    let storage = Storage {
        codes: code_dtype,
        codebooks: cb_dtype,
        scales: sc_dtype,
        bias: bias_dtype,
    };
    layer
        .with_storage(storage)
        .map_err(|e| terr(&codes_name, e.to_string()))
}

/// The tensors of one layer as they are written.
fn layer_tensors(prefix: &str, layer: &AqlmLayer) -> Vec<(String, RawTensor)> {
    let s = layer.scheme();
    let st = layer.storage();
    let mut v = vec![
        (
            format!("{prefix}.codes"),
            RawTensor {
                dtype: tensors::st_code(st.codes),
                shape: vec![layer.out_groups(), layer.in_groups(), s.num_codebooks],
                data: tensors::codes_to_bytes(st.codes, layer.codes(), s.nbits),
            },
        ),
        (
            format!("{prefix}.codebooks"),
            RawTensor {
                dtype: tensors::st_float(st.codebooks),
                shape: vec![
                    s.num_codebooks,
                    s.codebook_size(),
                    s.out_group_size,
                    s.in_group_size,
                ],
                data: tensors::floats_to_bytes(st.codebooks, layer.codebooks()),
            },
        ),
        (
            format!("{prefix}.scales"),
            RawTensor {
                dtype: tensors::st_float(st.scales),
                shape: vec![layer.out_groups(), 1, 1, 1],
                data: tensors::floats_to_bytes(st.scales, layer.scales()),
            },
        ),
    ];
    if let Some(b) = layer.bias() {
        v.push((
            format!("{prefix}.bias"),
            RawTensor {
                dtype: tensors::st_float(st.bias),
                shape: vec![layer.out_features()],
                data: tensors::floats_to_bytes(st.bias, b),
            },
        ));
    }
    v
}
