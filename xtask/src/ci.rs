//! `cargo xtask ci`: the checks of `.ci/run`, runnable locally.

use std::path::Path;

use anyhow::Result;

use crate::process;

/// The cargo invocations of `.ci/run`, in order (kept in sync by a unit test).
pub(crate) const STEPS: [&[&str]; 3] = [
    &["fmt", "--all", "--", "--check"],
    &[
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ],
    &["test", "--release", "--workspace"],
];

/// Runs every CI step, stopping at the first failure unless `keep_going` (then every step runs and
/// the failures are listed at the end).
pub(crate) fn run(root: &Path, keep_going: bool) -> Result<()> {
    let start = std::time::Instant::now();
    let mut failed = Vec::new();
    for step in STEPS {
        let mut cmd = process::cargo(root);
        cmd.args(step).env("CARGO_TERM_COLOR", "never");
        match process::run(&mut cmd) {
            Ok(()) => {}
            Err(e) if keep_going => failed.push(format!("{e:#}")),
            Err(e) => return Err(e),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} CI steps failed:\n  {}",
            failed.len(),
            STEPS.len(),
            failed.join("\n  ")
        );
    }
    eprintln!(
        "xtask: ci passed ({} steps, {:.0} s)",
        STEPS.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_match_ci_script() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let script = std::fs::read_to_string(root.join(".ci/run")).unwrap();
        let lines: Vec<String> = script
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("cargo "))
            .map(String::from)
            .collect();
        let ours: Vec<String> = STEPS
            .iter()
            .map(|s| format!("cargo {}", s.join(" ")))
            .collect();
        assert_eq!(lines, ours, ".ci/run and xtask ci disagree");
    }
}
