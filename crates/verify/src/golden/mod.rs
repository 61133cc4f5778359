//! The golden harness of `shared/DESIGN.md`: every case folder and `rotations.safetensors` of a
//! folder produced by the real torch + PEFT + aqlm stack.

mod cases;
mod rotations;

use std::fmt;
use std::path::{Path, PathBuf};

pub use cases::{GRAD_TOL, PROJECTED_TOL, ROTATION_BLOCK_TOL, Y_TOL, check_case};
pub use rotations::check_rotations;

use crate::error::GoldenError;

/// Max abs tolerance for the f64 rotation checks.
pub const ROTATION_TOL: f64 = 1e-12;

/// The golden folder: `$OFTQ_GOLDEN_DIR` if set, else `../shared/golden` relative to the workspace root.
pub fn golden_dir() -> PathBuf {
    match std::env::var_os("OFTQ_GOLDEN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden"),
    }
}

/// What a run of the harness checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Layer case folders checked.
    pub layer_cases: usize,
    /// Keys of `rotations.safetensors` checked.
    pub rotation_keys: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "golden: {} layer cases, {} rotation keys checked",
            self.layer_cases, self.rotation_keys
        )
    }
}

/// Checks everything in `dir`: `rotations.safetensors` if present, and every sub-folder holding a
/// `case.json`.
///
/// # Errors
/// The first thing that cannot be read or does not match; [`GoldenError::Empty`] if the folder
/// holds neither.
pub fn check_folder(dir: &Path) -> Result<Summary, GoldenError> {
    let io = |source| GoldenError::Io {
        path: dir.into(),
        source,
    };
    let mut summary = Summary::default();
    let rotations = dir.join("rotations.safetensors");
    let mut found = false;
    if rotations.is_file() {
        found = true;
        summary.rotation_keys = check_rotations(&rotations)?;
    }
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("case.json").is_file())
        .collect();
    cases.sort();
    found |= !cases.is_empty();
    if !found {
        return Err(GoldenError::Empty(dir.into()));
    }
    for case in &cases {
        check_case(case)?;
        summary.layer_cases += 1;
    }
    Ok(summary)
}

/// Fails with [`GoldenError::Mismatch`] when `err > tol` (NaN counts as a mismatch).
pub(crate) fn ensure(what: impl FnOnce() -> String, err: f64, tol: f64) -> Result<(), GoldenError> {
    if err <= tol {
        Ok(())
    } else {
        Err(GoldenError::Mismatch {
            what: what(),
            err,
            tol,
        })
    }
}
