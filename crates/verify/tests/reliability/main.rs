//! Reliability tests (issue 9): no panics on mutated files, load-time shape errors, non-finite and
//! divergence handling, thread-count determinism, and atomic saves under `kill`.
//!
//! Sizes are modest so the whole binary runs in well under a minute in release mode on 2 cores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test binary

mod determinism;
mod fuzz_parsers;
mod kill_save;
mod load_errors;
mod mutate;
mod non_finite;

use std::path::{Path, PathBuf};

use oftq_aqlm::{AqlmLayer, AqlmScheme};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The golden folder (realistic seed files), as the golden harness finds it.
pub(crate) fn golden() -> PathBuf {
    oftq_verify::golden::golden_dir()
}

/// One golden layer case as seed material: the model folder, the module name and its adapter folders.
#[derive(Debug, Clone)]
pub(crate) struct SeedCase {
    pub model: PathBuf,
    pub module: String,
    pub adapters: Vec<(String, PathBuf)>,
    /// Size of `model.safetensors` in bytes.
    pub model_bytes: u64,
}

/// Every layer case in the golden folder (any folder holding a `case.json`), sorted by name.
pub(crate) fn seed_cases() -> Vec<SeedCase> {
    let dir = golden();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("golden folder {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    entries.sort();
    entries.iter().map(|p| load_case(p)).collect()
}

fn load_case(case: &Path) -> SeedCase {
    let text = std::fs::read_to_string(case.join("case.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let module = json["module"].as_str().unwrap().to_string();
    let dirs = json["adapter_dirs"].as_object().unwrap();
    let adapters = json["active_adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let n = n.as_str().unwrap();
            (n.to_string(), case.join(dirs[n].as_str().unwrap()))
        })
        .collect();
    let model = case.join("model");
    let model_bytes = std::fs::metadata(model.join("model.safetensors"))
        .unwrap()
        .len();
    SeedCase {
        model,
        module,
        adapters,
        model_bytes,
    }
}

/// A random AQLM layer with `in_f` inputs.
pub(crate) fn aqlm_layer(
    scheme: &str,
    in_f: usize,
    out_f: usize,
    bias: bool,
    seed: u64,
) -> AqlmLayer {
    let s: AqlmScheme = scheme.parse().unwrap();
    aqlm_layer_scheme(s, in_f, out_f, bias, seed)
}

pub(crate) fn aqlm_layer_scheme(
    s: AqlmScheme,
    in_f: usize,
    out_f: usize,
    bias: bool,
    seed: u64,
) -> AqlmLayer {
    let mut rng = StdRng::seed_from_u64(seed);
    let n_codes = (out_f / s.out_group_size) * (in_f / s.in_group_size) * s.num_codebooks;
    let k = s.codebook_size();
    let codes: Vec<u16> = (0..n_codes)
        .map(|_| rng.random_range(0..k) as u16)
        .collect();
    let cb: Vec<f32> = (0..s.num_codebooks * k * s.out_group_size * s.in_group_size)
        .map(|_| rng.random::<f32>() - 0.5)
        .collect();
    let scales: Vec<f32> = (0..out_f / s.out_group_size)
        .map(|_| 0.5 + rng.random::<f32>())
        .collect();
    let bias = bias.then(|| (0..out_f).map(|_| rng.random::<f32>()).collect());
    AqlmLayer::new(in_f, out_f, s, codes, cb, scales, bias).unwrap()
}
