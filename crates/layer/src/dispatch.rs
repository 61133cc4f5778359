//! Dispatch (PEFT's `dispatch_aqlm` and default dispatcher) and model injection.

use std::collections::BTreeMap;

use oftq_aqlm::{AqlmCheckpoint, AqlmLayer};

use crate::adapter::OftAdapter;
use crate::base::BaseLinear;
use crate::config::OftConfig;
use crate::dense::DenseLinear;
use crate::error::{LayerError, Result};
use crate::oft_linear::{AqlmOftLinear, DenseOftLinear, OftLinear, name_seed};

/// A module of a model, as far as OFT is concerned.
#[derive(Debug, Clone)]
pub enum Module {
    /// A frozen AQLM-quantized linear layer.
    Aqlm(AqlmLayer),
    /// A dense linear layer.
    Dense(DenseLinear),
    /// An AQLM layer already wrapped with OFT adapters.
    OftAqlm(AqlmOftLinear),
    /// A dense layer already wrapped with OFT adapters.
    OftDense(DenseOftLinear),
}

/// Placeholder used while a module is moved out and back in place.
fn take(target: &mut Module) -> Module {
    std::mem::replace(target, Module::Dense(DenseLinear::empty()))
}

/// PEFT's `dispatch_aqlm`: wraps an AQLM layer in place with a new adapter `name`, or adds the
/// adapter to a target that is already an AQLM OFT layer (PEFT unwraps the tuner layer's base).
/// Returns the wrapper, or `None` — leaving `target` untouched — when the target is not AQLM.
///
/// # Errors
/// Invalid config, or an adapter name that exists already.
pub fn dispatch_aqlm<'a>(
    target: &'a mut Module,
    name: &str,
    config: &OftConfig,
) -> Result<Option<&'a mut AqlmOftLinear>> {
    match target {
        Module::OftAqlm(layer) => layer.add_adapter(name, config)?,
        Module::Aqlm(base) => {
            // Build the adapter first, so that an invalid config leaves the target untouched.
            let adapter = OftAdapter::new(config, base.in_features(), name_seed(name))?;
            let Module::Aqlm(base) = take(target) else {
                return Ok(None);
            };
            let mut w = OftLinear::new(base);
            w.insert_adapter(name, adapter)?;
            *target = Module::OftAqlm(w);
        }
        _ => return Ok(None),
    }
    Ok(match target {
        Module::OftAqlm(w) => Some(w),
        _ => None,
    })
}

/// The default dispatcher for dense `Linear` layers (PEFT's `oft.Linear`), in place, as
/// [`dispatch_aqlm`]. `fan_in_fan_out` is forced to the layer's own layout, with a warning if the
/// config disagrees (PEFT forces it to `False` for `nn.Linear`).
///
/// # Errors
/// Invalid config, or an adapter name that exists already.
pub fn dispatch_dense<'a>(
    target: &'a mut Module,
    name: &str,
    config: &OftConfig,
) -> Result<Option<&'a mut DenseOftLinear>> {
    match target {
        Module::OftDense(layer) => layer.add_adapter(name, config)?,
        Module::Dense(d) => {
            if config.fan_in_fan_out != d.fan_in_fan_out() {
                log::warn!(
                    "fan_in_fan_out is set to {} but the target layer stores its weight with fan_in_fan_out = {}; using the layer's",
                    config.fan_in_fan_out,
                    d.fan_in_fan_out()
                );
            }
            let adapter = OftAdapter::new(config, d.in_features(), name_seed(name))?;
            let Module::Dense(base) = take(target) else {
                return Ok(None);
            };
            let mut w = OftLinear::new(base);
            w.insert_adapter(name, adapter)?;
            *target = Module::OftDense(w);
        }
        _ => return Ok(None),
    }
    Ok(match target {
        Module::OftDense(w) => Some(w),
        _ => None,
    })
}

/// Tries the dispatchers in PEFT's order (AQLM, then the default dense one); `true` if one took
/// the target.
///
/// # Errors
/// Those of the dispatcher that took it.
pub fn dispatch(target: &mut Module, name: &str, config: &OftConfig) -> Result<bool> {
    if dispatch_aqlm(target, name, config)?.is_some() {
        return Ok(true);
    }
    Ok(dispatch_dense(target, name, config)?.is_some())
}

/// Named modules of a model (e.g. every layer of an HF AQLM checkpoint), with OFT injection.
#[derive(Debug, Clone, Default)]
pub struct OftModel {
    /// Modules by full name.
    pub modules: BTreeMap<String, Module>,
}

impl OftModel {
    /// Every AQLM layer of a checkpoint, by prefix.
    pub fn from_checkpoint(ckpt: &AqlmCheckpoint) -> Self {
        Self {
            modules: ckpt
                .layers()
                .iter()
                .map(|(k, l)| (k.clone(), Module::Aqlm(l.clone())))
                .collect(),
        }
    }

    /// Wraps every module whose name matches `config.target_modules` and not
    /// `config.exclude_modules` with adapter `name` (PEFT's `inject_adapter`). Returns the names wrapped.
    ///
    /// # Errors
    /// [`LayerError::Config`] without `target_modules`; [`LayerError::NoTarget`] when nothing matches;
    /// dispatch errors (nothing is changed then).
    pub fn inject(&mut self, name: &str, config: &OftConfig) -> Result<Vec<String>> {
        config.validate()?;
        let targets = config.target_modules.as_ref().ok_or_else(|| {
            LayerError::Config("target_modules must be set to inject adapters".into())
        })?;
        let mut chosen = Vec::new();
        for key in self.modules.keys() {
            let excluded = match &config.exclude_modules {
                Some(ex) => ex.matches(key)?,
                None => false,
            };
            if targets.matches(key)? && !excluded {
                chosen.push(key.clone());
            }
        }
        if chosen.is_empty() {
            let available: Vec<&str> = self.modules.keys().take(5).map(String::as_str).collect();
            return Err(LayerError::NoTarget {
                targets: targets.to_string(),
                available: available.join(", "),
            });
        }
        let mut updated = self.modules.clone();
        for key in &chosen {
            if let Some(m) = updated.get_mut(key) {
                dispatch(m, name, config)?;
            }
        }
        self.modules = updated;
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TargetModules;
    use faer::Mat;

    fn aqlm() -> AqlmLayer {
        let scheme = "1x8".parse().unwrap();
        AqlmLayer::new(
            16,
            4,
            scheme,
            vec![1; 8],
            vec![0.25; 256 * 8],
            vec![1.0; 4],
            None,
        )
        .unwrap()
    }

    #[test]
    fn dispatch_wraps_and_unwraps() {
        let c = OftConfig {
            oft_block_size: 4,
            ..OftConfig::default()
        };
        let mut m = Module::Aqlm(aqlm());
        assert!(dispatch_aqlm(&mut m, "a", &c).unwrap().is_some());
        let w = dispatch_aqlm(&mut m, "b", &c).unwrap().unwrap();
        assert_eq!(w.adapter_names(), ["a", "b"]);
        assert_eq!(w.qweight().len(), 8);
        assert!(dispatch_aqlm(&mut m, "b", &c).is_err());
        let mut d = Module::Dense(DenseLinear::new(Mat::zeros(3, 16), None, false).unwrap());
        assert!(dispatch_aqlm(&mut d, "a", &c).unwrap().is_none());
        assert!(matches!(d, Module::Dense(_)));
        assert!(dispatch(&mut d, "a", &c).unwrap());
        assert!(matches!(d, Module::OftDense(_)));
        let bad = OftConfig { r: 3, ..c };
        let mut m = Module::Aqlm(aqlm());
        assert!(dispatch_aqlm(&mut m, "x", &bad).is_err());
        assert!(matches!(m, Module::Aqlm(_)));
    }

    #[test]
    fn injection_by_suffix_regex_and_exclusion() {
        let mut model = OftModel::default();
        for n in [
            "layers.0.q_proj",
            "layers.0.v_proj",
            "layers.1.q_proj",
            "lm_head",
        ] {
            model.modules.insert(n.into(), Module::Aqlm(aqlm()));
        }
        let mut c = OftConfig {
            oft_block_size: 4,
            ..OftConfig::default()
        };
        c.target_modules = Some(TargetModules::List(vec!["q_proj".into()]));
        c.exclude_modules = Some(TargetModules::Regex(r"layers\.1\..*".into()));
        assert_eq!(model.clone().inject("d", &c).unwrap(), ["layers.0.q_proj"]);
        c.target_modules = Some(TargetModules::Regex(r".*_proj".into()));
        c.exclude_modules = None;
        assert_eq!(model.clone().inject("d", &c).unwrap().len(), 3);
        c.target_modules = Some(TargetModules::List(vec!["k_proj".into()]));
        assert!(matches!(
            model.inject("d", &c),
            Err(LayerError::NoTarget { .. })
        ));
    }
}
