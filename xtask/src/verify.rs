//! `cargo xtask verify [--cases N]`: the property suite of oftq-verify at N cases per property,
//! with its table (property, cases run, worst observed error, bound) printed and written to
//! `docs/verify/REPORT.md`.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::process;

/// Parses `--cases N` (default 256).
pub(crate) fn parse_cases(args: &[String]) -> Result<u64> {
    match args {
        [] => Ok(256),
        [flag, n] if flag == "--cases" => {
            let n: u64 = n
                .parse()
                .with_context(|| format!("--cases expects a number, got `{n}`"))?;
            if n == 0 {
                bail!("--cases must be at least 1");
            }
            Ok(n)
        }
        _ => bail!("usage: cargo xtask verify [--cases N]"),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_flag() {
        assert_eq!(parse_cases(&[]).unwrap(), 256);
        assert_eq!(
            parse_cases(&["--cases".into(), "1000".into()]).unwrap(),
            1000
        );
        assert!(parse_cases(&["--cases".into(), "0".into()]).is_err());
        assert!(parse_cases(&["--cases".into()]).is_err());
        assert!(parse_cases(&["--x".into(), "3".into()]).is_err());
    }
}
