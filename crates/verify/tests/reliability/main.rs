//! Reliability tests (issue 9): no panics on mutated files, load-time shape errors, non-finite and
//! divergence handling, thread-count determinism, and atomic saves under `kill`.
//!
//! Sizes are modest so the whole binary runs in well under a minute in release mode on 2 cores.

mod determinism;
mod fuzz_parsers;
mod kill_save;
mod load_errors;
mod mutate;
mod non_finite;

use std::path::{Path, PathBuf};

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
