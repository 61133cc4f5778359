//! `oftq forward`: one AQLM layer with PEFT adapters, forward (and backward) on tensors from a file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use oftq_aqlm::AqlmError;
use oftq_layer::LayerError;

use crate::tensor_io::{SafetensorsFile, Tensor, write_f32};

/// The name an adapter given without `NAME=` gets (PEFT's default adapter name).
pub(crate) const DEFAULT_ADAPTER: &str = "default";

/// Arguments of `oftq forward`.
#[derive(Debug, Clone)]
pub(crate) struct ForwardArgs {
    /// HF-style AQLM checkpoint folder.
    pub(crate) model: PathBuf,
    /// Module path of the layer (tensor prefix, e.g. `model.layers.0.mlp.down_proj`).
    pub(crate) module: String,
    /// `(name, folder)` of each adapter, in application order.
    pub(crate) adapters: Vec<(String, PathBuf)>,
    /// Input safetensors file with `x` and optionally `grad_y`.
    pub(crate) input: PathBuf,
    /// Output safetensors file.
    pub(crate) output: PathBuf,
}

/// Parses one `--adapter` value: `NAME=DIR` or `DIR` (named `default`).
///
/// A value is split at its first `=` only when the part before it is a plain name (no path
/// separator), so a folder such as `./runs/lr=1e-4` is taken as a folder.
pub(crate) fn parse_adapter(spec: &str) -> Result<(String, PathBuf), String> {
    if let Some((name, dir)) = spec.split_once('=') {
        let plain = !name.is_empty() && !name.contains(['/', '\\']);
        if plain {
            if dir.is_empty() {
                return Err(format!("adapter {name:?} has no folder after '='"));
            }
            return Ok((name.to_string(), PathBuf::from(dir)));
        }
    }
    if spec.is_empty() {
        return Err("empty adapter folder".into());
    }
    Ok((DEFAULT_ADAPTER.to_string(), PathBuf::from(spec)))
}

/// What a forward run wrote (for the summary line).
#[derive(Debug)]
pub(crate) struct ForwardReport {
    /// `(name, shape)` of each tensor written, in file order.
    pub(crate) written: Vec<(String, Vec<usize>)>,
}

/// Runs `oftq forward`.
pub(crate) fn run(args: &ForwardArgs) -> Result<ForwardReport> {
    for (i, (name, _)) in args.adapters.iter().enumerate() {
        if args.adapters[..i].iter().any(|(n, _)| n == name) {
            bail!("adapter name {name:?} is given twice (use NAME=DIR to name each adapter)");
        }
    }
    let input = SafetensorsFile::open(&args.input)?;
    let in_path = input.path().display().to_string();
    let Some(x) = input.float("x")? else {
        bail!(
            "{in_path}: no tensor named \"x\" (has {:?})",
            input.names()?
        );
    };
    let grad_y = input.float("grad_y")?;

    let layer = load_layer(&args.model, &args.module, &args.adapters)?;
    let base = layer.base();
    let (in_f, out_f) = (base.in_features(), base.out_features());
    if x.shape.last() != Some(&in_f) {
        bail!(
            "{in_path}: tensor \"x\" has shape {:?}, but layer {:?} of {} needs [..., {in_f}] (in_features)",
            x.shape,
            args.module,
            args.model.display()
        );
    }
    let xm = x
        .to_tokens()
        .with_context(|| format!("{in_path}: tensor \"x\""))?;
    let (y, cache) = layer
        .forward_cached(xm.as_ref(), None)
        .with_context(|| format!("{in_path}: forward of layer {:?}", args.module))?;
    let leading = x.leading();
    let mut out = vec![("y".to_string(), Tensor::from_tokens(y.as_ref(), leading))];

    if let Some(gy) = grad_y {
        let mut want = leading.to_vec();
        want.push(out_f);
        if gy.shape != want {
            bail!(
                "{in_path}: tensor \"grad_y\" has shape {:?}, expected {want:?} (the shape of y)",
                gy.shape
            );
        }
        let gym = gy
            .to_tokens()
            .with_context(|| format!("{in_path}: tensor \"grad_y\""))?;
        let grads = layer
            .backward(&cache, gym.as_ref())
            .with_context(|| format!("{in_path}: backward of layer {:?}", args.module))?;
        out.push((
            "grad_x".to_string(),
            Tensor::from_tokens(grads.input.as_ref(), leading),
        ));
        for (name, g) in &grads.adapters {
            let shape = vec![g.nrows(), g.ncols()];
            out.push((
                format!("grad.{name}"),
                Tensor::from_matrix(g.as_ref(), shape),
            ));
        }
    }
    write_f32(&args.output, &out)?;
    Ok(ForwardReport {
        written: out.into_iter().map(|(n, t)| (n, t.shape)).collect(),
    })
}

/// Loads the layer through `oftq_layer::load_aqlm_oft`, adding the model folder and, for an
/// unknown module, the modules that do exist to the error.
fn load_layer(
    model: &Path,
    module: &str,
    adapters: &[(String, PathBuf)],
) -> Result<oftq_layer::AqlmOftLinear> {
    match oftq_layer::load_aqlm_oft(model, module, adapters) {
        Ok(layer) => Ok(layer),
        Err(LayerError::Aqlm(e @ AqlmError::UnknownLayer { .. })) => Err(anyhow::Error::new(e)
            .context(
                model
                    .join(oftq_aqlm::checkpoint::WEIGHTS_FILE)
                    .display()
                    .to_string(),
            )),
        Err(
            e @ (LayerError::Io { .. }
            | LayerError::Malformed { .. }
            | LayerError::Aqlm(
                AqlmError::Io { .. }
                | AqlmError::Config { .. }
                | AqlmError::Safetensors { .. }
                | AqlmError::Tensor { .. },
            )),
        ) => {
            // These already name the file.
            Err(e.into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "loading layer {module:?} from {} with adapters {}",
            model.display(),
            adapters
                .iter()
                .map(|(n, d)| format!("{n}={}", d.display()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_specs() {
        assert_eq!(
            parse_adapter("a=dir/x").unwrap(),
            ("a".to_string(), PathBuf::from("dir/x"))
        );
        assert_eq!(
            parse_adapter("dir/x").unwrap(),
            ("default".to_string(), PathBuf::from("dir/x"))
        );
        assert_eq!(
            parse_adapter("./runs/lr=1e-4").unwrap(),
            ("default".to_string(), PathBuf::from("./runs/lr=1e-4"))
        );
        assert!(parse_adapter("a=").is_err());
        assert!(parse_adapter("").is_err());
    }
}
