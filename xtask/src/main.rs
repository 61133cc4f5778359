//! Developer tasks for oftq, run as `cargo xtask <command>`.
//!
//! - `cargo xtask ci [--keep-going]` runs what `.ci/run` runs: `cargo fmt --check`, clippy with
//!   `-D warnings`, the release test suite (`--keep-going`: run every step, list the failures).
//! - `cargo xtask bench [--quick] [--filter REGEX] [--no-threads] [--rounds N] [--report-only]`
//!   runs every criterion bench of the workspace (all threads, then the main kernels again with
//!   `RAYON_NUM_THREADS=1`), then measures every issue target again in `N` interleaved rounds per
//!   thread setting, each between two runs of its baseline (default 3, 0 with `--quick`; 0
//!   disables), and writes `docs/bench/results.json`, `docs/bench/REPORT.md` and SVG plots.
//! - `cargo xtask verify [--cases N]` runs the property suite of oftq-verify at `N` cases per
//!   property and writes its worst-error table to `docs/verify/REPORT.md`.
//! - `cargo xtask docs` builds rustdoc (warnings and missing docs are errors, math rendered by a
//!   vendored KaTeX) and the narrative docs of `docs/` into one static site, `target/doc-site/`.

mod bench;
mod ci;
mod criterion;
mod docs;
mod fsutil;
mod keys;
mod machine;
mod process;
mod report;
mod rounds;
mod svg;
mod targets;
mod verify;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci [--keep-going]                    fmt --check, clippy -D warnings, tests (what .ci/run runs)
  bench [--quick] [--filter REGEX] [--no-threads] [--rounds N] [--report-only]
                                       run the criterion benches, write docs/bench/{results.json,REPORT.md,*.svg};
                                       --rounds N: N interleaved rounds per target and thread setting,
                                       each between two runs of its baseline (default 3, 0 with --quick)
  docs                                 rustdoc (+KaTeX) and docs/*.md into target/doc-site/
  verify [--cases N]                   the property suite at N cases per property (default 256),
                                       its worst-error table into docs/verify/REPORT.md
";

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root()?;
    match args.first().map(String::as_str) {
        Some("ci") => match args.get(1).map(String::as_str) {
            None => ci::run(&root, false),
            Some("--keep-going") => {
                no_more_args(&args[2..])?;
                ci::run(&root, true)
            }
            Some(a) => bail!("unexpected argument `{a}`\n{USAGE}"),
        },
        Some("bench") => bench::run(&root, &bench::Options::parse(&args[1..])?),
        Some("docs") => {
            no_more_args(&args[1..])?;
            docs::run(&root)
        }
        Some("verify") => verify::run(&root, verify::parse_cases(&args[1..])?),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n{USAGE}"),
    }
}

fn no_more_args(rest: &[String]) -> Result<()> {
    match rest.first() {
        Some(a) => bail!("unexpected argument `{a}`\n{USAGE}"),
        None => Ok(()),
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .context("xtask's manifest directory has no parent")
}
