//! Layer case folders: an AQLM layer with PEFT adapters, checked through the public loading API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use faer::{Mat, MatRef};
use oftq_layer::load_aqlm_oft;
use serde::Deserialize;

use super::ensure;
use crate::error::GoldenError;
use crate::tensors::{TensorFile, max_abs_diff, rel_fro_err};

/// Relative Frobenius tolerance of `y`.
pub const Y_TOL: f64 = 1e-5;
/// Relative Frobenius tolerance of `grad_x` and every `grad.<adapter>`.
pub const GRAD_TOL: f64 = 1e-4;
/// Relative Frobenius tolerance of COFT-projected weights.
pub const PROJECTED_TOL: f64 = 1e-6;
/// Max abs tolerance of the rotation blocks PEFT built (f32 arithmetic).
pub const ROTATION_BLOCK_TOL: f64 = 1e-5;

#[derive(Debug, Deserialize)]
struct CaseJson {
    module: String,
    active_adapters: Vec<String>,
    adapter_dirs: BTreeMap<String, String>,
}

/// Checks one case folder; see `shared/golden/README.md` for its layout.
///
/// # Errors
/// The first unreadable file, unknown tensor or mismatch.
pub fn check_case(dir: &Path) -> Result<(), GoldenError> {
    let case_path = dir.join("case.json");
    let malformed = |path: &Path, why: String| GoldenError::Malformed {
        path: path.into(),
        why,
    };
    let text = std::fs::read_to_string(&case_path).map_err(|source| GoldenError::Io {
        path: case_path.clone(),
        source,
    })?;
    let case: CaseJson =
        serde_json::from_str(&text).map_err(|e| malformed(&case_path, e.to_string()))?;
    if case.active_adapters.is_empty() {
        return Err(malformed(&case_path, "active_adapters is empty".into()));
    }
    let mut adapters: Vec<(String, PathBuf)> = Vec::new();
    for name in &case.active_adapters {
        let rel = case.adapter_dirs.get(name).ok_or_else(|| {
            malformed(
                &case_path,
                format!("adapter {name:?} has no entry in adapter_dirs"),
            )
        })?;
        adapters.push((name.clone(), dir.join(rel)));
    }
    let layer = load_aqlm_oft(&dir.join("model"), &case.module, &adapters)
        .map_err(|e| malformed(dir, format!("loading through oftq-layer: {e}")))?;
    let io_path = dir.join("io.safetensors");
    let io = TensorFile::read(&io_path)?;
    let what = |t: &str| format!("{}: {t}", io_path.display());
    let layer_err = |t: &str| {
        let w = what(t);
        move |e: oftq_layer::LayerError| malformed(Path::new(&w), e.to_string())
    };

    // Every tensor must be one we check.
    let names: Vec<&str> = case.active_adapters.iter().map(String::as_str).collect();
    for key in io.tensors.keys() {
        let known = matches!(
            key.as_str(),
            "x" | "y" | "grad_y" | "grad_x" | "weight_dequant"
        ) || ["grad.", "rotation.", "projected."]
            .iter()
            .any(|p| key.strip_prefix(p).is_some_and(|a| names.contains(&a)));
        if !known {
            return Err(malformed(&io_path, format!("unknown tensor {key}")));
        }
    }

    // Decoded weight, bit for bit.
    let w_ref = io.get("weight_dequant")?.to_mat();
    let w = layer.base().decode();
    let w64 = Mat::<f64>::from_fn(w.nrows(), w.ncols(), |i, j| f64::from(w[(i, j)]));
    ensure(
        || what("weight_dequant (bit-exact)"),
        max_abs_diff(w64.as_ref(), w_ref.as_ref()),
        0.0,
    )?;

    // Forward and backward in f32, compared in f64.
    let to32 = |m: &Mat<f64>| Mat::<f32>::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] as f32);
    let to64 =
        |m: MatRef<'_, f32>| Mat::<f64>::from_fn(m.nrows(), m.ncols(), |i, j| f64::from(m[(i, j)]));
    let x = to32(&io.get("x")?.to_mat());
    let (y, cache) = layer
        .forward_cached(x.as_ref(), None)
        .map_err(layer_err("y"))?;
    ensure(
        || what("y"),
        rel_fro_err(to64(y.as_ref()).as_ref(), io.get("y")?.to_mat().as_ref()),
        Y_TOL,
    )?;
    let gy = to32(&io.get("grad_y")?.to_mat());
    let grads = layer
        .backward(&cache, gy.as_ref())
        .map_err(layer_err("grad_x"))?;
    ensure(
        || what("grad_x"),
        rel_fro_err(
            to64(grads.input.as_ref()).as_ref(),
            io.get("grad_x")?.to_mat().as_ref(),
        ),
        GRAD_TOL,
    )?;
    for (name, g) in &grads.adapters {
        let key = format!("grad.{name}");
        ensure(
            || what(&key),
            rel_fro_err(to64(g.as_ref()).as_ref(), io.get(&key)?.to_mat().as_ref()),
            GRAD_TOL,
        )?;
    }
    for name in &names {
        let adapter = layer
            .adapter(name)
            .ok_or_else(|| malformed(dir, format!("adapter {name} not loaded")))?;
        let key = format!("projected.{name}");
        if let Some(t) = io.tensors.get(&key) {
            let ours = adapter.weight().to_owned();
            ensure(
                || what(&key),
                rel_fro_err(to64(ours.as_ref()).as_ref(), t.to_mat().as_ref()),
                PROJECTED_TOL,
            )?;
        }
        let key = format!("rotation.{name}");
        if let Some(t) = io.tensors.get(&key) {
            let blocks = adapter.rotation().blocks();
            if t.shape.len() != 3 || t.shape[0] != blocks.len() {
                return Err(malformed(
                    &io_path,
                    format!(
                        "{key} has shape {:?}, expected [{}, b, b]",
                        t.shape,
                        blocks.len()
                    ),
                ));
            }
            let mut err = 0.0f64;
            for (k, blk) in blocks.iter().enumerate() {
                let reference = t.block(k).unwrap_or_else(|| Mat::zeros(0, 0));
                err = err.max(max_abs_diff(to64(blk).as_ref(), reference.as_ref()));
            }
            ensure(|| what(&key), err, ROTATION_BLOCK_TOL)?;
        }
    }
    Ok(())
}
