//! Writing trained adapters as PEFT adapter folders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Result;
use oftq_layer::OftConfig;
use oftq_layer::faer::{Mat, MatRef};

use crate::adapter::OftAdapter;

/// Writes the current parameters of `adapters` (one per module, all of adapter `name`) as PEFT's
/// `save_pretrained` does, through [`oftq_layer::save_adapter`]: the same files, byte for byte, as
/// oftq-layer writes for the same values — `adapter_config.json` from `config` and
/// `adapter_model.safetensors` with `base_model.model.<module>.oft_R.weight` per module, into
/// [`oftq_layer::adapter_dir`]`(dir, name)` (atomically). Returns the folder written.
///
/// Call [`OftAdapter::project_coft`] first if the adapters use COFT and the last optimizer step
/// has not been projected yet.
///
/// ```
/// use oftq_candle::candle_nn::VarMap;
/// use oftq_candle::layer::{DenseLinear, OftConfig, faer::Mat};
/// use oftq_candle::{DenseOftLinear, save_adapter};
/// let varmap = VarMap::new();
/// let base = DenseLinear::new(Mat::<f32>::identity(4, 8), None, false)?;
/// let mut proj = DenseOftLinear::new(base, "proj");
/// let config = OftConfig { oft_block_size: 4, ..OftConfig::default() };
/// proj.add_adapter("default", &config, &varmap)?;
/// let dir = std::env::temp_dir().join(format!("oftq-candle-save-doc-{}", std::process::id()));
/// let written = save_adapter(&dir, "default", &config, proj.adapter("default"))?;
/// assert!(written.join("adapter_model.safetensors").exists());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// Two adapters for the same module, an adapter named other than `name`, no adapter at all, and
/// [`oftq_layer::save_adapter`]'s errors (a config PEFT cannot represent, non-finite values, I/O).
pub fn save_adapter<'a>(
    dir: &Path,
    name: &str,
    config: &OftConfig,
    adapters: impl IntoIterator<Item = &'a OftAdapter>,
) -> Result<PathBuf> {
    let mut weights: BTreeMap<String, Mat<f32>> = BTreeMap::new();
    for a in adapters {
        if a.name() != name {
            candle_core::bail!(
                "oftq-candle: saving adapter {name:?}, but got adapter {:?} of {}",
                a.name(),
                a.module()
            );
        }
        if weights.insert(a.module().into(), a.weight()?).is_some() {
            candle_core::bail!(
                "oftq-candle: two adapters {name:?} for module {}",
                a.module()
            );
        }
    }
    if weights.is_empty() {
        candle_core::bail!("oftq-candle: no adapter {name:?} to save");
    }
    let views: BTreeMap<String, MatRef<'_, f32>> = weights
        .iter()
        .map(|(k, w)| (k.clone(), w.as_ref()))
        .collect();
    oftq_layer::save_adapter(dir, name, config, &views).map_err(candle_core::Error::wrap)
}
