//! Developer tasks for oftq, run as `cargo xtask <command>` (`cargo xtask help` lists them).
//!
//! - `cargo xtask ci [--keep-going]` runs what `.ci/run` runs ([`ci`]).
//! - `cargo xtask bench [--quick] [--filter REGEX] [--no-threads] [--rounds N] [--report-only]
//!   [--vs-python]` runs every criterion bench of the workspace and writes
//!   `docs/bench/{results.json, REPORT.md, *.svg}` ([`mod@bench`]; the pieces: [`criterion`] reads
//!   criterion's files, [`keys`] and [`targets`] name the results and their targets, [`rounds`]
//!   re-measures every target between runs of its baseline, [`python`] runs the Python reference,
//!   [`roofline`] bounds every target row by the machine's measured limits, [`report`] and
//!   [`plot`] write the report).
//! - `cargo xtask llm [--schemes 2x8,4x8] [--steps N] [--no-python] [--fresh]` runs the real-LLM
//!   pipeline (SmolLM2-135M: fetch, quantize data-free and calibrated, OFT distillation, eval,
//!   generation) beside the Python reference and writes `docs/llm.md` ([`llm`]).
//! - `cargo xtask verify [--cases N]` runs the property suite of oftq-verify at `N` cases per
//!   property and writes its worst-error table to `docs/verify/REPORT.md` ([`verify`]).
//! - `cargo xtask docs` builds rustdoc and the narrative docs of `docs/` into one static site,
//!   `target/doc-site/` ([`docs`]).

mod bench;
mod ci;
mod criterion;
mod docs;
mod fsutil;
mod keys;
mod llm;
mod machine;
mod plot;
mod process;
mod python;
mod report;
mod roofline;
mod rounds;
mod targets;
mod verify;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Developer tasks for oftq.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// fmt --check, clippy -D warnings, the release tests (what .ci/run runs).
    Ci {
        /// Run every step and list the failures at the end.
        #[arg(long)]
        keep_going: bool,
    },
    /// Run the criterion benches; write docs/bench/{results.json, REPORT.md, *.svg}.
    Bench(bench::Options),
    /// The real-LLM results: SmolLM2-135M quantized (2 and 4 bits, data-free and calibrated),
    /// recovered with OFT, evaluated, beside the Python reference; writes docs/llm.md.
    Llm(llm::Options),
    /// rustdoc (+KaTeX) and docs/*.md into target/doc-site/.
    Docs,
    /// The property suite at N cases per property, its worst-error table into
    /// docs/verify/REPORT.md.
    Verify {
        /// Cases per property.
        #[arg(long, default_value_t = 256, value_name = "N",
              value_parser = clap::value_parser!(u64).range(1..))]
        cases: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli.command) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> Result<()> {
    let root = workspace_root()?;
    match command {
        Command::Ci { keep_going } => ci::run(&root, keep_going),
        Command::Bench(opts) => bench::run(&root, &opts),
        Command::Llm(opts) => llm::run(&root, &opts),
        Command::Docs => docs::run(&root),
        Command::Verify { cases } => verify::run(&root, cases),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(["xtask"].iter().chain(args)).map(|c| c.command)
    }

    #[test]
    fn every_command_and_flag_parses() {
        assert!(matches!(
            parse(&["ci"]),
            Ok(Command::Ci { keep_going: false })
        ));
        assert!(matches!(
            parse(&["ci", "--keep-going"]),
            Ok(Command::Ci { keep_going: true })
        ));
        assert!(matches!(parse(&["docs"]), Ok(Command::Docs)));
        assert!(matches!(
            parse(&["verify"]),
            Ok(Command::Verify { cases: 256 })
        ));
        assert!(matches!(
            parse(&["verify", "--cases", "1000"]),
            Ok(Command::Verify { cases: 1000 })
        ));
        assert!(matches!(
            parse(&["bench", "--quick"]),
            Ok(Command::Bench(_))
        ));
        for bad in [
            &["verify", "--cases", "0"][..],
            &["verify", "--cases"],
            &["verify", "--x", "3"],
            &["ci", "--fast"],
            &["docs", "extra"],
            &["frobnicate"],
            &[],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
