//! PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors`, as PEFT 0.21 writes them.
//!
//! Keys are `base_model.model.<module path>.oft_R.weight` (`[r or 1, b(b−1)/2]`, F32), metadata
//! `{"format": "pt"}`; a non-default adapter name is saved in a sub-folder `<dir>/<name>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use faer::{Mat, MatRef};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use oftq_aqlm::checkpoint::{floats_as_f32, write_atomic};

use crate::config::OftConfig;
use crate::error::{LayerError, Result};

/// File name of the adapter config.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// File name of the adapter weights.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The PEFT version whose format and numerics oftq writes.
pub const PEFT_FORMAT_VERSION: &str = "0.21.2";
const PREFIX: &str = "base_model.model.";
const SUFFIX: &str = ".oft_R.weight";

/// The contents of a PEFT OFT adapter folder.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    /// The config, as written.
    pub config: OftConfig,
    /// `oft_R.weight` per module path (without `base_model.model.`), as `f32`.
    pub weights: BTreeMap<String, Mat<f32>>,
    /// Every other tensor (e.g. biases with `bias = "all"`), by full key, as `f32` with its shape.
    pub other: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

/// Where PEFT's `save_pretrained` puts adapter `name` under `dir`: `dir` itself for `"default"`,
/// else `dir/<name>`.
pub fn adapter_dir(dir: &Path, name: &str) -> PathBuf {
    if name == "default" {
        dir.to_path_buf()
    } else {
        dir.join(name)
    }
}

/// Reads a PEFT OFT adapter folder.
///
/// Follows PEFT's loader: a config without `oft_block_size` (PEFT ≤ 0.13) and weights with
/// `.oft_r.` keys (PEFT 0.14–0.15) are rejected with PEFT's explanation; a Cayley–Neumann adapter
/// written by PEFT < 0.18 (or with no version) gets a warning, since its polynomial differed.
///
/// # Errors
/// [`LayerError::Io`], [`LayerError::Malformed`] naming the file and key, [`LayerError::Config`].
pub fn load_adapter(dir: &Path) -> Result<PeftAdapter> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|source| LayerError::Io {
        path: cfg_path.clone(),
        source,
    })?;
    let config = parse_config(&text, &cfg_path)?;
    if config.is_pre_018_neumann() {
        log::warn!(
            "{}: Cayley-Neumann adapter written by PEFT {} (< 0.18.0): its polynomial had a different last coefficient; \
             outputs will differ slightly from the ones it was trained with",
            cfg_path.display(),
            config.peft_version.as_deref().unwrap_or("unknown")
        );
    }
    let w_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&w_path).map_err(|source| LayerError::Io {
        path: w_path.clone(),
        source,
    })?;
    let malformed = |why: String| LayerError::Malformed {
        path: w_path.clone(),
        why,
    };
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| malformed(format!("not a valid safetensors file: {e}")))?;
    let mut weights = BTreeMap::new();
    let mut other = BTreeMap::new();
    for (key, view) in st.tensors() {
        if key.contains(".oft_r.") {
            return Err(malformed(format!(
                "Trying to load old OFT checkpoint (key {key}), which is no longer supported. \
                 Please install PEFT <= v0.15.2 to load it or train a new OFT adapter."
            )));
        }
        let data = floats_as_f32(view.dtype(), view.data()).ok_or_else(|| {
            malformed(format!(
                "tensor {key}: unsupported dtype {:?}",
                view.dtype()
            ))
        })?;
        let shape = view.shape().to_vec();
        match key
            .strip_prefix(PREFIX)
            .and_then(|k| k.strip_suffix(SUFFIX))
        {
            Some(module) => {
                let [rows, cols] = shape[..] else {
                    return Err(malformed(format!(
                        "tensor {key}: expected 2 dimensions, got shape {shape:?}"
                    )));
                };
                weights.insert(
                    module.to_string(),
                    Mat::from_fn(rows, cols, |i, j| data[i * cols + j]),
                );
            }
            None => {
                other.insert(key, (shape, data));
            }
        }
    }
    if weights.is_empty() {
        return Err(malformed(format!(
            "no `{PREFIX}<module>{SUFFIX}` tensor found"
        )));
    }
    Ok(PeftAdapter {
        config,
        weights,
        other,
    })
}

/// Parses and validates an `adapter_config.json` text.
///
/// # Errors
/// [`LayerError::Malformed`] for invalid JSON or wrong types, [`LayerError::Config`] for PEFT's
/// validation errors.
pub fn parse_config(text: &str, path: &Path) -> Result<OftConfig> {
    let malformed = |why: String| LayerError::Malformed {
        path: path.into(),
        why,
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| malformed(format!("invalid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| malformed("expected a JSON object".into()))?;
    match obj.get("peft_type").and_then(Value::as_str) {
        Some("OFT") => {}
        other => {
            return Err(malformed(format!(
                "peft_type is {other:?}, expected \"OFT\""
            )));
        }
    }
    if !obj.contains_key("oft_block_size") {
        return Err(malformed(
            "OFT has been updated since PEFT 0.14.0 (no `oft_block_size` in the config). \
             Please retrain the adapter or install PEFT <= 0.13 to load it."
                .into(),
        ));
    }
    let config: OftConfig =
        serde_json::from_value(value).map_err(|e| malformed(format!("invalid OFT config: {e}")))?;
    config.validate()?;
    Ok(config)
}

/// Writes adapter `name` as PEFT's `save_pretrained` does, into [`adapter_dir`]`(dir, name)`:
/// sorted-key `adapter_config.json` (with `inference_mode: true`, `peft_version` 0.21.2) and F32
/// `adapter_model.safetensors` with metadata `{"format": "pt"}`. Both files are written atomically.
/// Returns the folder written.
///
/// # Errors
/// [`LayerError::Config`] for options PEFT cannot represent (textbook Cayley sign, odd-power
/// Neumann flavor) or an invalid config; [`LayerError::NonFinite`]; I/O errors.
pub fn save_adapter(
    dir: &Path,
    name: &str,
    config: &OftConfig,
    weights: &BTreeMap<String, MatRef<'_, f32>>,
) -> Result<PathBuf> {
    config.validate()?;
    if config.oftq != Default::default() && !config.parameterization().is_peft_compatible() {
        return Err(LayerError::Config(
            "this adapter uses an oftq-only parameterization (textbook Cayley sign or odd-power Neumann) that PEFT \
             cannot represent; it cannot be saved in PEFT's format"
                .into(),
        ));
    }
    let out = adapter_dir(dir, name);
    std::fs::create_dir_all(&out).map_err(|source| LayerError::Io {
        path: out.clone(),
        source,
    })?;
    let mut cfg = config.clone();
    cfg.inference_mode = true;
    cfg.peft_version = Some(PEFT_FORMAT_VERSION.into());
    let json = serde_json::to_value(&cfg).map_err(|e| LayerError::Config(e.to_string()))?;
    let text =
        serde_json::to_string_pretty(&json).map_err(|e| LayerError::Config(e.to_string()))?;
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (module, w) in weights {
        if !w.is_all_finite() {
            return Err(LayerError::NonFinite(format!(
                "adapter {name:?} weight of {module}"
            )));
        }
        let mut bytes = Vec::with_capacity(w.nrows() * w.ncols() * 4);
        for i in 0..w.nrows() {
            for j in 0..w.ncols() {
                bytes.extend_from_slice(&w[(i, j)].to_le_bytes());
            }
        }
        bufs.push((
            format!("{PREFIX}{module}{SUFFIX}"),
            vec![w.nrows(), w.ncols()],
            bytes,
        ));
    }
    let views = bufs
        .iter()
        .map(|(k, shape, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| LayerError::Config(format!("tensor {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let st =
        safetensors::serialize(views, Some(meta)).map_err(|e| LayerError::Config(e.to_string()))?;
    write_atomic(&out.join(WEIGHTS_FILE), &st)?;
    write_atomic(&out.join(CONFIG_FILE), text.as_bytes())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = OftConfig {
            oft_block_size: 4,
            target_modules: Some(crate::TargetModules::List(vec!["proj".into()])),
            ..OftConfig::default()
        };
        let w = Mat::<f32>::from_fn(2, 6, |i, j| (i * 6 + j) as f32 / 10.0);
        let weights = BTreeMap::from([("blocks.0.proj".to_string(), w.as_ref())]);
        let out = save_adapter(dir.path(), "second", &cfg, &weights).unwrap();
        assert_eq!(out, dir.path().join("second"));
        let back = load_adapter(&out).unwrap();
        assert_eq!(back.weights["blocks.0.proj"], w);
        assert_eq!(back.config.oft_block_size, 4);
        assert!(back.config.inference_mode);
        let text = std::fs::read_to_string(out.join(CONFIG_FILE)).unwrap();
        assert!(
            text.find("\"auto_mapping\"").unwrap() < text.find("\"bias\"").unwrap(),
            "sorted keys"
        );

        let p = Path::new("x.json");
        assert!(
            parse_config(r#"{"peft_type": "OFT", "r": 8}"#, p)
                .unwrap_err()
                .to_string()
                .contains("0.14.0")
        );
        assert!(parse_config(r#"{"peft_type": "LORA", "oft_block_size": 8}"#, p).is_err());
        assert!(parse_config(r#"{"peft_type": "OFT", "oft_block_size": "x"}"#, p).is_err());
        assert!(parse_config("[1,", p).is_err());
        assert!(parse_config(r#"{"peft_type": "OFT", "oft_block_size": 0, "r": 0}"#, p).is_err());
    }
}
