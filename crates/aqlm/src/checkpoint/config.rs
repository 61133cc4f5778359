//! The `quantization_config` block of an HF AQLM `config.json`.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::AqlmError;
use crate::scheme::AqlmScheme;

/// transformers' `AqlmConfig` (`quant_method: "aqlm"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizationConfig {
    /// The scheme: `num_codebooks`, `nbits_per_codebook`, `in_group_size`, `out_group_size`.
    pub scheme: AqlmScheme,
    /// `linear_weights_not_to_quantize`: `<path>.weight` names of linears kept dense.
    pub linear_weights_not_to_quantize: Vec<String>,
}

impl QuantizationConfig {
    /// A config for `scheme` with an empty `linear_weights_not_to_quantize`.
    pub fn new(scheme: AqlmScheme) -> Self {
        Self {
            scheme,
            linear_weights_not_to_quantize: Vec::new(),
        }
    }

    /// Reads the config from a parsed `config.json`: the `quantization_config` block (HF), or
    /// the legacy top-level `aqlm` block. Missing numeric fields take `AqlmConfig`'s defaults
    /// (in 8, out 1, M 1, B 16); a null list is empty.
    ///
    /// # Errors
    /// [`AqlmError::Config`] naming `path` and the field that is missing or wrong.
    pub fn from_json(json: &Value, path: &Path) -> Result<Self, AqlmError> {
        let err = |msg: String| AqlmError::Config {
            path: path.to_path_buf(),
            msg,
        };
        let root = json
            .as_object()
            .ok_or_else(|| err("top level is not a JSON object".into()))?;
        let (block, legacy) = match (root.get("quantization_config"), root.get("aqlm")) {
            (Some(q), _) => (q, false),
            (None, Some(a)) => (a, true),
            (None, None) => {
                return Err(err(
                    "no \"quantization_config\" (or legacy \"aqlm\") block".into()
                ));
            }
        };
        let block = block
            .as_object()
            .ok_or_else(|| err("\"quantization_config\" is not an object".into()))?;
        if !legacy {
            match block.get("quant_method").and_then(Value::as_str) {
                Some("aqlm") => {}
                other => {
                    return Err(err(format!("quant_method must be \"aqlm\", got {other:?}")));
                }
            }
        }
        let num = |key: &str, default: u64| -> Result<u64, AqlmError> {
            match block.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| err(format!("{key} must be a non-negative integer, got {v}"))),
            }
        };
        let to_usize = |key: &str, v: u64| {
            usize::try_from(v).map_err(|_| err(format!("{key} = {v} is too large")))
        };
        let ig = to_usize("in_group_size", num("in_group_size", 8)?)?;
        let og = to_usize("out_group_size", num("out_group_size", 1)?)?;
        let m = to_usize("num_codebooks", num("num_codebooks", 1)?)?;
        let b = num("nbits_per_codebook", 16)?;
        let b =
            u32::try_from(b).map_err(|_| err(format!("nbits_per_codebook = {b} is too large")))?;
        let scheme = AqlmScheme::builder(m, b)
            .in_group_size(ig)
            .out_group_size(og)
            .build()
            .map_err(|e| err(e.to_string()))?;
        let list = match block.get("linear_weights_not_to_quantize") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        err(format!(
                            "linear_weights_not_to_quantize holds a non-string: {v}"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(err(format!(
                    "linear_weights_not_to_quantize must be a list, got {v}"
                )));
            }
        };
        Ok(Self {
            scheme,
            linear_weights_not_to_quantize: list,
        })
    }

    /// The `quantization_config` JSON object as transformers writes it.
    pub fn to_json(&self) -> Value {
        let s = &self.scheme;
        let mut m = Map::new();
        m.insert("quant_method".into(), "aqlm".into());
        m.insert("in_group_size".into(), s.in_group_size.into());
        m.insert("out_group_size".into(), s.out_group_size.into());
        m.insert("num_codebooks".into(), s.num_codebooks.into());
        m.insert("nbits_per_codebook".into(), s.nbits.into());
        m.insert(
            "linear_weights_not_to_quantize".into(),
            Value::Array(
                self.linear_weights_not_to_quantize
                    .iter()
                    .cloned()
                    .map(Value::String)
                    .collect(),
            ),
        );
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hf_and_legacy_and_round_trips() {
        let p = Path::new("config.json");
        let j: Value = serde_json::from_str(
            r#"{"quantization_config": {"quant_method": "aqlm", "nbits_per_codebook": 8,
                "num_codebooks": 2, "in_group_size": 8, "out_group_size": 1,
                "linear_weights_not_to_quantize": ["lm_head.weight"]}}"#,
        )
        .unwrap();
        let c = QuantizationConfig::from_json(&j, p).unwrap();
        assert_eq!(c.scheme, AqlmScheme::new(2, 8, 8, 1).unwrap());
        assert_eq!(c.linear_weights_not_to_quantize, ["lm_head.weight"]);
        let back = serde_json::json!({ "quantization_config": c.to_json() });
        assert_eq!(QuantizationConfig::from_json(&back, p).unwrap(), c);

        let legacy: Value = serde_json::from_str(r#"{"aqlm": {"num_codebooks": 1}}"#).unwrap();
        let c = QuantizationConfig::from_json(&legacy, p).unwrap();
        assert_eq!(c.scheme, AqlmScheme::new(1, 16, 8, 1).unwrap());
    }

    #[test]
    fn rejects_bad_configs() {
        let p = Path::new("config.json");
        for bad in [
            r#"[]"#,
            r#"{}"#,
            r#"{"quantization_config": {"quant_method": "gptq"}}"#,
            r#"{"quantization_config": {"quant_method": "aqlm", "nbits_per_codebook": 17}}"#,
            r#"{"quantization_config": {"quant_method": "aqlm", "num_codebooks": -1}}"#,
            r#"{"quantization_config": {"quant_method": "aqlm", "in_group_size": "8"}}"#,
            r#"{"quantization_config": {"quant_method": "aqlm", "linear_weights_not_to_quantize": [1]}}"#,
        ] {
            let j: Value = serde_json::from_str(bad).unwrap();
            let e = QuantizationConfig::from_json(&j, p).unwrap_err();
            assert!(matches!(e, AqlmError::Config { .. }), "{bad}: {e}");
        }
    }
}
