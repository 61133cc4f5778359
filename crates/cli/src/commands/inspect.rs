//! `oftq inspect`: describes an AQLM checkpoint folder, a PEFT adapter folder or a safetensors file.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use oftq_aqlm::AqlmCheckpoint;
use oftq_aqlm::checkpoint::{CONFIG_FILE as MODEL_CONFIG, WEIGHTS_FILE as MODEL_WEIGHTS};
use oftq_layer::OftConfig;
use oftq_layer::peft_io::{CONFIG_FILE as ADAPTER_CONFIG, WEIGHTS_FILE as ADAPTER_WEIGHTS};
use oftq_ortho::{CayleyConvention, NeumannFlavor, Parameterization, block_size_from_n_elements};

use crate::tensor_io::{SafetensorsFile, dtype_name};

/// What kind of thing a path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A folder with `config.json` + `model.safetensors` (HF AQLM checkpoint).
    AqlmCheckpoint,
    /// A folder with `adapter_config.json` (PEFT adapter).
    PeftAdapter,
    /// A folder without its own adapter config whose sub-folders are PEFT adapters (what
    /// `save_pretrained` writes for adapters not named `default`).
    AdapterSet,
    /// A single safetensors file.
    Safetensors,
}

/// Decides what `path` holds from its contents.
pub(crate) fn detect(path: &Path) -> Result<Kind> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{}: cannot access", path.display()))?;
    if meta.is_file() {
        return Ok(Kind::Safetensors);
    }
    if path.join(ADAPTER_CONFIG).is_file() {
        return Ok(Kind::PeftAdapter);
    }
    if path.join(MODEL_CONFIG).is_file() {
        return Ok(Kind::AqlmCheckpoint);
    }
    if !adapter_subdirs(path)?.is_empty() {
        return Ok(Kind::AdapterSet);
    }
    bail!(
        "{}: not an AQLM checkpoint folder ({MODEL_CONFIG} + {MODEL_WEIGHTS}), a PEFT adapter folder \
         ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) or a safetensors file",
        path.display()
    )
}

/// Sub-folders of `dir` holding an adapter config, sorted by name.
fn adapter_subdirs(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    let mut subs: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(ADAPTER_CONFIG).is_file())
        .collect();
    subs.sort();
    Ok(subs)
}

/// Describes `path` as text (several lines, ending with a newline).
pub(crate) fn run(path: &Path) -> Result<String> {
    match detect(path)? {
        Kind::AqlmCheckpoint => describe_checkpoint(path),
        Kind::PeftAdapter => describe_adapter(path),
        Kind::AdapterSet => {
            let mut out = String::new();
            for sub in adapter_subdirs(path)? {
                out.push_str(&describe_adapter(&sub)?);
            }
            Ok(out)
        }
        Kind::Safetensors => describe_safetensors(path),
    }
}

fn describe_checkpoint(dir: &Path) -> Result<String> {
    let ckpt = AqlmCheckpoint::load(dir)?;
    let s = ckpt.config().scheme;
    let mut o = String::new();
    let _ = writeln!(o, "AQLM checkpoint {}", dir.display());
    let _ = writeln!(
        o,
        "scheme: {s} (num_codebooks {}, nbits_per_codebook {}, in_group_size {}, out_group_size {})",
        s.num_codebooks, s.nbits, s.in_group_size, s.out_group_size
    );
    let kept = &ckpt.config().linear_weights_not_to_quantize;
    if !kept.is_empty() {
        let _ = writeln!(o, "linear_weights_not_to_quantize: {}", kept.join(", "));
    }
    let _ = writeln!(o, "AQLM layers: {}", ckpt.layers().len());
    for (name, l) in ckpt.layers() {
        let st = l.storage();
        let _ = writeln!(
            o,
            "  {name}: [out {}, in {}], {:.4} bits/parameter, bias: {}, codes {:?}, codebooks {:?}, scales {:?}",
            l.out_features(),
            l.in_features(),
            l.bits_per_parameter(),
            if l.bias().is_some() { "yes" } else { "no" },
            st.codes,
            st.codebooks,
            st.scales,
        );
    }
    let _ = writeln!(o, "other tensors: {}", ckpt.tensors().len());
    for (name, t) in ckpt.tensors() {
        let _ = writeln!(o, "  {name}: {} {:?}", dtype_name(t.dtype), t.shape);
    }
    Ok(o)
}

fn parameterization_text(p: Parameterization) -> String {
    match p {
        Parameterization::Exact(CayleyConvention::Peft) => {
            "exact Cayley (I - Q)(I + Q)^-1 (PEFT)".into()
        }
        Parameterization::Exact(CayleyConvention::Textbook) => {
            "exact Cayley (I + Q)(I - Q)^-1 (textbook, not PEFT-compatible)".into()
        }
        Parameterization::Neumann {
            terms,
            flavor: NeumannFlavor::Peft,
        } => format!("Cayley-Neumann, {terms} terms (PEFT)"),
        Parameterization::Neumann {
            terms,
            flavor: NeumannFlavor::OddPower,
        } => format!("Cayley-Neumann, {terms} terms, odd highest power (not PEFT-compatible)"),
    }
}

fn describe_adapter(dir: &Path) -> Result<String> {
    let file = oftq_layer::load_adapter(dir)?;
    let c: &OftConfig = &file.config;
    let mut o = String::new();
    let _ = writeln!(o, "PEFT OFT adapter {}", dir.display());
    let size = if c.r == 0 {
        format!("oft_block_size {}", c.oft_block_size)
    } else {
        format!("r {} (blocks per layer)", c.r)
    };
    let _ = writeln!(
        o,
        "config: {size}, {}, coft: {}{}, block_share: {}, module_dropout: {}, bias: {:?}, peft_version: {}",
        parameterization_text(c.parameterization()),
        c.coft,
        if c.coft {
            format!(" (eps {})", c.eps)
        } else {
            String::new()
        },
        c.block_share,
        c.module_dropout,
        c.bias,
        c.peft_version.as_deref().unwrap_or("unknown (< 0.18)"),
    );
    if let Some(t) = &c.target_modules {
        let _ = writeln!(o, "target_modules: {t}");
    }
    let _ = writeln!(o, "modules: {}", file.weights.len());
    let path = dir.join(ADAPTER_WEIGHTS);
    let mut total = 0usize;
    for (module, w) in &file.weights {
        let (rows, cols) = (w.nrows(), w.ncols());
        let b = block_size_from_n_elements(cols).with_context(|| {
            format!(
                "{}: tensor for module {module:?} has {cols} columns, not b(b-1)/2 for any block size b",
                path.display()
            )
        })?;
        let layout = if c.block_share {
            format!("one shared block of {b}")
        } else {
            format!("{rows} blocks of {b} (in_features {})", rows * b)
        };
        let _ = writeln!(
            o,
            "  {module}: oft_R.weight [{rows}, {cols}], block size {b}, {layout}, {} parameters",
            rows * cols
        );
        total += rows * cols;
    }
    for (key, (shape, _)) in &file.other {
        let n: usize = shape.iter().product();
        let _ = writeln!(o, "  {key}: {shape:?}, {n} parameters");
        total += n;
    }
    let _ = writeln!(o, "trainable parameters: {total}");
    Ok(o)
}

fn describe_safetensors(path: &Path) -> Result<String> {
    let file = SafetensorsFile::open(path)?;
    let st = file.parse()?;
    let mut o = String::new();
    let names = file.names()?;
    let _ = writeln!(
        o,
        "safetensors file {} ({} tensors)",
        path.display(),
        names.len()
    );
    for name in &names {
        let view = st
            .tensor(name)
            .with_context(|| format!("{}: tensor {name:?}", path.display()))?;
        let _ = writeln!(
            o,
            "  {name}: {} {:?}",
            dtype_name(view.dtype()),
            view.shape()
        );
    }
    match file.metadata()? {
        Some(meta) if !meta.is_empty() => {
            let mut keys: Vec<_> = meta.into_iter().collect();
            keys.sort();
            let _ = writeln!(o, "metadata:");
            for (k, v) in keys {
                let _ = writeln!(o, "  {k}: {v}");
            }
        }
        _ => {
            let _ = writeln!(o, "metadata: none");
        }
    }
    Ok(o)
}
