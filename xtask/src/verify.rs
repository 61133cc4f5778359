//! `cargo xtask verify [--cases N]`: the property suite of oftq-verify at N cases per property,
//! with its table (property, cases run, worst observed error, bound) printed and written to
//! `docs/verify/REPORT.md`.

use std::path::Path;

use anyhow::{Context, Result};

use crate::process;

/// Runs `cargo test --release -p oftq-verify --test properties` with `PROPTEST_CASES = cases` and
/// the report file set; the test binary prints the table itself.
pub(crate) fn run(root: &Path, cases: u64) -> Result<()> {
    let out_dir = root.join("docs/verify");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let report = out_dir.join("REPORT.md");
    let mut cmd = process::cargo(root);
    cmd.args([
        "test",
        "--release",
        "-p",
        "oftq-verify",
        "--test",
        "properties",
        "--",
        "--nocapture",
        "--test-threads",
        "2",
    ])
    .env("PROPTEST_CASES", cases.to_string())
    .env("OFTQ_VERIFY_REPORT", &report);
    process::run(&mut cmd)?;
    println!(
        "xtask verify: {cases} cases per property; table written to {}",
        report.display()
    );
    Ok(())
}
