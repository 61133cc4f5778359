//! Loading an AQLM layer from an HF checkpoint folder with PEFT adapters on top — the code path of
//! `oftq forward` and of the golden harness.

use std::path::{Path, PathBuf};

use oftq_aqlm::AqlmCheckpoint;
use oftq_ortho::DivergencePolicy;

use crate::adapter::OftAdapter;
use crate::base::BaseLinear;
use crate::error::{LayerError, Result};
use crate::oft_linear::{AqlmOftLinear, OftLinear};
use crate::peft_io::load_adapter;

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
    let ckpt = AqlmCheckpoint::load(model_dir)?;
    let base = ckpt.layer(module)?.clone();
    let mut layer = OftLinear::new(base);
    for (name, dir) in adapters {
        add_peft_adapter_with(&mut layer, module, name, dir, options)?;
    }
    Ok(layer)
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
    let mut file = load_adapter(dir)?;
    file.config.oftq.divergence = options.divergence;
    let weight = file
        .weights
        .get(module)
        .cloned()
        .ok_or_else(|| LayerError::Malformed {
            path: dir.join(crate::peft_io::WEIGHTS_FILE),
            why: format!(
                "no oft_R.weight for module {module:?} (has {:?})",
                file.weights.keys().collect::<Vec<_>>()
            ),
        })?;
    let adapter = OftAdapter::with_weight(&file.config, layer.base().in_features(), weight)
        .map_err(|e| LayerError::Malformed {
            path: dir.join(crate::peft_io::WEIGHTS_FILE),
            why: format!("adapter {name:?} on {module}: {e}"),
        })?;
    layer.insert_adapter(name, adapter)
}
