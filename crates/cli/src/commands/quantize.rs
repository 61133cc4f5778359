//! `oftq quantize`: dense weights from a safetensors file → an HF-style AQLM checkpoint folder.

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use faer::Mat;
use regex::Regex;

use oftq_aqlm::{AqlmCheckpoint, AqlmScheme, QuantizationConfig, QuantizeOptions, RawTensor};

use crate::progress::bar;
use crate::tensor_io::SafetensorsFile;

/// Arguments of `oftq quantize`.
#[derive(Debug, Clone)]
pub(crate) struct QuantizeArgs {
    pub(crate) input: PathBuf,
    pub(crate) output: PathBuf,
    pub(crate) scheme: AqlmScheme,
    pub(crate) tensors: Option<String>,
    pub(crate) rounds: usize,
    pub(crate) seed: u64,
    pub(crate) quiet: bool,
}

/// Quantizes every 2-D float tensor named `*.weight` (or matching `--tensors`) and keeps every other
/// tensor as it is; returns the summary table (tensor, shape, scheme, bits per parameter, error).
pub(crate) fn run(args: &QuantizeArgs) -> Result<String> {
    let file = SafetensorsFile::open(&args.input)?;
    let pattern = args
        .tensors
        .as_deref()
        .map(|p| Regex::new(&format!("^(?:{p})$")).with_context(|| format!("--tensors {p:?}")))
        .transpose()?;
    let names = file.names()?;
    let st = file.parse()?;
    let mut config = QuantizationConfig::new(args.scheme);
    let mut ckpt_layers = Vec::new();
    let mut kept = Vec::new();
    for name in &names {
        let view = st
            .tensor(name)
            .with_context(|| format!("{}: tensor {name}", args.input.display()))?;
        let selected = match &pattern {
            Some(re) => re.is_match(name),
            None => name.ends_with(".weight"),
        };
        let is_float_matrix = view.shape().len() == 2
            && matches!(
                view.dtype(),
                safetensors::Dtype::F32
                    | safetensors::Dtype::F64
                    | safetensors::Dtype::F16
                    | safetensors::Dtype::BF16
            );
        if selected && is_float_matrix {
            ckpt_layers.push(name.clone());
        } else {
            if name.ends_with(".weight") {
                config.linear_weights_not_to_quantize.push(name.clone());
            }
            kept.push((
                name.clone(),
                RawTensor {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    data: view.data().to_vec(),
                },
            ));
        }
    }
    if ckpt_layers.is_empty() {
        bail!(
            "{}: no 2-D float tensor to quantize (names ending in .weight, or --tensors)",
            args.input.display()
        );
    }
    let mut ckpt = AqlmCheckpoint::new(config);
    let options = QuantizeOptions {
        max_rounds: args.rounds,
        seed: args.seed,
        ..QuantizeOptions::default()
    };
    let mut table =
        String::from("tensor | shape | scheme | bits/param | relative error | seconds\n");
    for name in &ckpt_layers {
        let t = file
            .float(name)?
            .with_context(|| format!("{}: tensor {name}", args.input.display()))?;
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let w = Mat::<f32>::from_fn(rows, cols, |i, j| t.data[i * cols + j]);
        let prefix = name.strip_suffix(".weight").unwrap_or(name);
        let bias_name = format!("{prefix}.bias");
        let bias = match kept.iter().position(|(n, _)| *n == bias_name) {
            Some(pos) => {
                let b = file
                    .float(&bias_name)?
                    .with_context(|| format!("tensor {bias_name}"))?;
                kept.remove(pos);
                Some(b.data)
            }
            None => None,
        };
        let start = Instant::now();
        let pb = bar(args.rounds as u64 + 1, prefix, args.quiet);
        let enc = oftq_aqlm::encode::quantize_with(w.as_ref(), None, args.scheme, &options, |s| {
            pb.set_position(s.round as u64 + 1);
            pb.set_message(format!("rel. error {:.4}", s.relative_error));
            ControlFlow::Continue(())
        })
        .with_context(|| {
            format!(
                "{}: quantizing {name} [{rows}, {cols}]",
                args.input.display()
            )
        })?;
        pb.finish_and_clear();
        let err = enc.relative_error;
        let layer = enc
            .rounded_to(oftq_aqlm::FloatDtype::F16)
            .into_layer(bias)
            .with_context(|| format!("{}: {bias_name}", args.input.display()))?;
        let _ = writeln!(
            table,
            "{name} | {rows}×{cols} | {} | {:.3} | {err:.4} | {:.1}",
            args.scheme,
            layer.bits_per_parameter(),
            start.elapsed().as_secs_f64()
        );
        ckpt.insert_layer(prefix, layer)?;
    }
    for (name, t) in kept {
        ckpt.insert_tensor(&name, t)?;
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    ckpt.save(&args.output)?;
    Ok(table)
}
