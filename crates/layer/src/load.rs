//! Loading AQLM layers from an HF checkpoint folder with PEFT adapters on top: one layer
//! ([`load_aqlm_oft`], the code path of `oftq forward` and of the golden harness) or every layer of
//! the model at once ([`load_aqlm_oft_model`]), each file read once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oftq_aqlm::AqlmCheckpoint;
use oftq_ortho::DivergencePolicy;

use crate::adapter::OftAdapter;
use crate::base::BaseLinear;
use crate::error::{LayerError, Result};
use crate::oft_linear::{AqlmOftLinear, OftLinear};
use crate::peft_io::{PeftAdapter, WEIGHTS_FILE, load_adapter};

/// Load-time options that PEFT's files cannot carry (a PEFT `adapter_config.json` always gets
/// oftq's defaults for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    /// What to do when an adapter's Cayley–Neumann series is not certified to converge
    /// (`‖Q‖₂` bound ≥ 1): [`DivergencePolicy::Warn`] by default; [`DivergencePolicy::Error`]
    /// refuses such an adapter at load time.
    pub divergence: DivergencePolicy,
}

/// Loads AQLM layer `module` from the HF checkpoint folder `model_dir` and stacks the PEFT adapter
/// folders `adapters` (name, folder) on it, active in the given order, with the default
/// [`LoadOptions`].
///
/// Every shape is checked here, at load time: a missing module, an adapter without a tensor for
/// `module`, or parameters that do not fit the layer's `in_features` are errors naming the file.
///
/// # Errors
/// Any load or validation error.
pub fn load_aqlm_oft(
    model_dir: &Path,
    module: &str,
    adapters: &[(String, PathBuf)],
) -> Result<AqlmOftLinear> {
    load_aqlm_oft_with(model_dir, module, adapters, LoadOptions::default())
}

/// [`load_aqlm_oft`] with explicit [`LoadOptions`].
///
/// # Errors
/// Any load or validation error; under [`DivergencePolicy::Error`], an adapter whose Neumann
/// series is not certified to converge ([`LayerError::Malformed`] naming the file, wrapping
/// `NeumannDivergence`).
pub fn load_aqlm_oft_with(
    model_dir: &Path,
    module: &str,
    adapters: &[(String, PathBuf)],
    options: LoadOptions,
) -> Result<AqlmOftLinear> {
    let mut layers = AqlmCheckpoint::load(model_dir)?.into_layers();
    let Some(base) = layers.remove(module) else {
        return Err(oftq_aqlm::AqlmError::UnknownLayer {
            name: module.into(),
            available: layers.into_keys().collect(),
        }
        .into());
    };
    let mut layer = OftLinear::new(base);
    for (name, dir) in adapters {
        let file = read_adapter(dir, options)?;
        attach(&mut layer, module, name, dir, &file, true)?;
    }
    Ok(layer)
}

/// Every AQLM layer of the HF checkpoint folder `model_dir`, by module name, each wrapped with
/// the PEFT adapter folders `adapters` (name, folder) that hold an `oft_R.weight` for it, active in
/// the given order. The checkpoint and every adapter folder are read once, whatever the number of
/// modules (with [`load_aqlm_oft`] in a loop each call re-reads them all).
///
/// Coverage follows PEFT's injection: an adapter wraps only the modules it has a tensor for (its
/// `target_modules` when it was trained), so a module no adapter covers is returned with no
/// adapter — a plain quantized layer — and one covered by some adapters only gets those. A tensor
/// for a module that is not an AQLM layer of the checkpoint is an error naming the adapter file,
/// unless the checkpoint holds that module as a dense layer (`<module>.weight`, e.g. an `lm_head`
/// kept in 16 bits): this loader returns AQLM layers only, and such entries are left to the caller
/// ([`crate::peft_io::load_adapter`] gives every tensor of the folder).
///
/// ```no_run
/// use std::path::{Path, PathBuf};
/// use oftq_layer::{LoadOptions, load_aqlm_oft_model};
/// let adapters = [("default".to_string(), PathBuf::from("adapter"))];
/// let model = load_aqlm_oft_model(Path::new("model"), &adapters, LoadOptions::default())?;
/// for (name, layer) in &model {
///     println!("{name}: {layer}, adapters {:?}", layer.adapter_names());
/// }
/// # Ok::<(), oftq_layer::LayerError>(())
/// ```
///
/// # Errors
/// Any load or validation error of the checkpoint or an adapter (shapes are checked against each
/// layer's `in_features`, as in [`load_aqlm_oft`]); an adapter tensor for a module the checkpoint
/// does not have; the same adapter name twice.
pub fn load_aqlm_oft_model(
    model_dir: &Path,
    adapters: &[(String, PathBuf)],
    options: LoadOptions,
) -> Result<BTreeMap<String, AqlmOftLinear>> {
    let ckpt = AqlmCheckpoint::load(model_dir)?;
    let dense: Vec<String> = ckpt
        .tensors()
        .keys()
        .filter_map(|k| k.strip_suffix(".weight").map(str::to_string))
        .collect();
    let mut files = Vec::with_capacity(adapters.len());
    for (i, (name, dir)) in adapters.iter().enumerate() {
        if adapters[..i].iter().any(|(n, _)| n == name) {
            return Err(LayerError::Adapter {
                name: name.clone(),
                why: "given twice".into(),
            });
        }
        let file = read_adapter(dir, options)?;
        let unknown: Vec<&String> = file
            .weights
            .keys()
            .filter(|m| !ckpt.layers().contains_key(*m) && !dense.contains(*m))
            .collect();
        if !unknown.is_empty() {
            return Err(LayerError::Malformed {
                path: dir.join(WEIGHTS_FILE),
                why: format!(
                    "adapter {name:?} has oft_R.weight for modules that are not layers of {}: {unknown:?}",
                    model_dir.display()
                ),
            });
        }
        files.push(file);
    }
    ckpt.into_layers()
        .into_iter()
        .map(|(module, base)| {
            let mut layer = OftLinear::new(base);
            for ((name, dir), file) in adapters.iter().zip(&files) {
                attach(&mut layer, &module, name, dir, file, false)?;
            }
            Ok((module, layer))
        })
        .collect()
}

/// Reads a PEFT adapter folder with the load-time options applied.
fn read_adapter(dir: &Path, options: LoadOptions) -> Result<PeftAdapter> {
    let mut file = load_adapter(dir)?;
    file.config.oftq.divergence = options.divergence;
    Ok(file)
}

/// Adds `file`'s tensor for `module` to `layer` as adapter `name` (`dir`: the folder, for
/// messages). Without a tensor for `module`: an error if `required`, else nothing is added.
fn attach<B: BaseLinear>(
    layer: &mut OftLinear<B>,
    module: &str,
    name: &str,
    dir: &Path,
    file: &PeftAdapter,
    required: bool,
) -> Result<()> {
    let Some(weight) = file.weights.get(module) else {
        if !required {
            return Ok(());
        }
        return Err(LayerError::Malformed {
            path: dir.join(WEIGHTS_FILE),
            why: format!(
                "no oft_R.weight for module {module:?} (has {:?})",
                file.weights.keys().collect::<Vec<_>>()
            ),
        });
    };
    let adapter = OftAdapter::with_weight(&file.config, layer.base().in_features(), weight.clone())
        .map_err(|e| LayerError::Malformed {
            path: dir.join(WEIGHTS_FILE),
            why: format!("adapter {name:?} on {module}: {e}"),
        })?;
    layer.insert_adapter(name, adapter)
}

/// Loads the PEFT adapter folder `dir` and adds its tensor for `module` to `layer` as adapter
/// `name`, with the default [`LoadOptions`].
///
/// # Errors
/// Load errors, a missing tensor for `module`, shapes that do not fit.
pub fn add_peft_adapter<B: BaseLinear>(
    layer: &mut OftLinear<B>,
    module: &str,
    name: &str,
    dir: &Path,
) -> Result<()> {
    add_peft_adapter_with(layer, module, name, dir, LoadOptions::default())
}

/// [`add_peft_adapter`] with explicit [`LoadOptions`].
///
/// # Errors
/// As [`add_peft_adapter`], plus a divergent Neumann series under [`DivergencePolicy::Error`].
pub fn add_peft_adapter_with<B: BaseLinear>(
    layer: &mut OftLinear<B>,
    module: &str,
    name: &str,
    dir: &Path,
    options: LoadOptions,
) -> Result<()> {
    let file = read_adapter(dir, options)?;
    attach(layer, module, name, dir, &file, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OftConfig, TargetModules};
    use crate::peft_io::save_adapter;
    use faer::Mat;
    use oftq_aqlm::{AqlmLayer, AqlmScheme, QuantizationConfig, RawTensor};

    fn layer(in_f: usize, out_f: usize, salt: usize) -> AqlmLayer {
        let scheme = AqlmScheme::builder(1, 4).in_group_size(4).build().unwrap();
        let codes = (0..out_f * in_f / 4)
            .map(|i| ((i * 7 + salt) % 16) as u16)
            .collect();
        let cb = (0..16 * 4)
            .map(|i| ((i * 5 + salt) % 11) as f32 / 8.0 - 0.6)
            .collect();
        AqlmLayer::new(in_f, out_f, scheme, codes, cb, vec![0.5; out_f], None).unwrap()
    }

    /// A checkpoint with AQLM layers `l0` (in 8), `l1` (in 16), `l2` (in 8) and a dense `head`.
    fn model(dir: &Path) {
        let scheme = AqlmScheme::builder(1, 4).in_group_size(4).build().unwrap();
        let mut ckpt = AqlmCheckpoint::new(QuantizationConfig::new(scheme));
        for (name, in_f, salt) in [("l0", 8, 1), ("l1", 16, 2), ("l2", 8, 3)] {
            ckpt.insert_layer(name, layer(in_f, 4, salt)).unwrap();
        }
        let head = RawTensor {
            dtype: oftq_aqlm::checkpoint::Dtype::F32,
            shape: vec![2, 4],
            data: vec![0; 32],
        };
        ckpt.insert_tensor("head.weight", head).unwrap();
        ckpt.save(dir).unwrap();
    }

    /// An adapter (blocks of 4) with a tensor for each `(module, in_features)`.
    fn adapter(dir: &Path, modules: &[(&str, usize)], salt: f32) -> PathBuf {
        let config = OftConfig {
            oft_block_size: 4,
            target_modules: Some(TargetModules::List(
                modules.iter().map(|(m, _)| (*m).to_string()).collect(),
            )),
            ..OftConfig::default()
        };
        let mats: Vec<(String, Mat<f32>)> = modules
            .iter()
            .map(|(m, in_f)| {
                let w = Mat::from_fn(in_f / 4, 6, |i, k| salt * ((i * 6 + k) as f32 * 0.7).sin());
                ((*m).to_string(), w)
            })
            .collect();
        let weights = mats.iter().map(|(m, w)| (m.clone(), w.as_ref())).collect();
        save_adapter(dir, "default", &config, &weights).unwrap()
    }

    #[test]
    fn model_loader_attaches_by_coverage_and_matches_the_layer_loader() {
        let tmp = tempfile::tempdir().unwrap();
        let m = tmp.path().join("model");
        model(&m);
        let a = adapter(&tmp.path().join("a"), &[("l0", 8), ("l1", 16)], 0.1);
        let b = adapter(&tmp.path().join("b"), &[("l1", 16), ("head", 4)], -0.2);
        let adapters = [
            ("first".to_string(), a.clone()),
            ("second".to_string(), b.clone()),
        ];
        let all = load_aqlm_oft_model(&m, &adapters, LoadOptions::default()).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["l0", "l1", "l2"]);
        assert_eq!(all["l0"].adapter_names(), ["first"]);
        assert_eq!(all["l1"].adapter_names(), ["first", "second"]);
        assert!(all["l2"].adapter_names().is_empty());
        // Bit for bit what the one-layer loader gives with the adapters that cover the module.
        let one = |module: &str, which: &[usize]| {
            let list: Vec<(String, PathBuf)> = which.iter().map(|&i| adapters[i].clone()).collect();
            load_aqlm_oft(&m, module, &list).unwrap()
        };
        for (module, which, d) in [
            ("l0", &[0][..], 8),
            ("l1", &[0, 1][..], 16),
            ("l2", &[][..], 8),
        ] {
            let x = Mat::<f32>::from_fn(3, d, |t, f| ((t * d + f) as f32 * 0.3).cos());
            let want = one(module, which).forward(x.as_ref()).unwrap();
            assert_eq!(all[module].forward(x.as_ref()).unwrap(), want, "{module}");
        }
    }

    #[test]
    fn model_loader_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let m = tmp.path().join("model");
        model(&m);
        let stray = adapter(&tmp.path().join("stray"), &[("l0", 8), ("l9", 8)], 0.1);
        let e = load_aqlm_oft_model(&m, &[("s".into(), stray)], LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("adapter_model.safetensors") && e.contains("\"l9\""),
            "{e}"
        );
        let wrong = adapter(&tmp.path().join("wrong"), &[("l1", 8)], 0.1);
        let e = load_aqlm_oft_model(&m, &[("w".into(), wrong)], LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("adapter \"w\" on l1") && e.contains("shape"),
            "{e}"
        );
        let a = adapter(&tmp.path().join("a"), &[("l0", 8)], 0.1);
        let twice = [("x".to_string(), a.clone()), ("x".to_string(), a.clone())];
        assert!(matches!(
            load_aqlm_oft_model(&m, &twice, LoadOptions::default()),
            Err(LayerError::Adapter { .. })
        ));
        let e = load_aqlm_oft(&m, "nope", &[]).unwrap_err().to_string();
        assert!(e.contains(r#"AQLM layers: ["l0", "l1", "l2"]"#), "{e}");
    }
}
