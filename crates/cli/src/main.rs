//! The `oftq` command line: orthogonal fine-tuning (OFT) on AQLM-quantized linear layers.
//!
//! - `oftq forward`: one AQLM layer of an HF checkpoint folder with PEFT OFT adapters on top,
//!   forward (and backward when `grad_y` is given) on tensors from a safetensors file.
//! - `oftq inspect PATH`: describes an AQLM checkpoint folder, a PEFT adapter folder or a
//!   safetensors file.
//! - `oftq demo`, `oftq quantize`, `oftq train`: defined, not wired yet (exit code 2).
//!
//! Every failure prints one line `error: …` naming the file and the problem, and exits non-zero.

mod commands;
mod tensor_io;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::forward::{self, ForwardArgs};

/// OFT adapters on AQLM-quantized linear layers, numerically matched to PEFT and aqlm.
#[derive(Debug, Parser)]
#[command(name = "oftq", version, about, long_about = None)]
struct Cli {
    /// Suppress non-essential output (summaries, notes); errors are still printed.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the end-to-end demo (quantize, fine-tune with OFT, compare).
    Demo {
        /// Output folder.
        #[arg(long, default_value = "oftq-demo")]
        out: PathBuf,
        /// Training steps.
        #[arg(long)]
        steps: Option<usize>,
        /// Random seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Quantizes the 2-D float `.weight` tensors of a safetensors file into an HF-style AQLM folder.
    Quantize {
        /// Input safetensors file.
        #[arg(long)]
        input: PathBuf,
        /// Output checkpoint folder.
        #[arg(long)]
        output: PathBuf,
        /// AQLM scheme `MxB` (codebooks × bits), e.g. `2x8`.
        #[arg(long)]
        scheme: String,
        /// Input group size.
        #[arg(long)]
        in_group: Option<usize>,
        /// Output group size.
        #[arg(long)]
        out_group: Option<usize>,
        /// Quantize only the tensors whose names match this regular expression.
        #[arg(long)]
        tensors: Option<String>,
    },
    /// Describes an AQLM checkpoint folder, a PEFT adapter folder or a safetensors file.
    Inspect {
        /// Folder or file to describe.
        path: PathBuf,
    },
    /// Runs one AQLM layer with PEFT OFT adapters on `x` (and backward on `grad_y`) from a file.
    Forward {
        /// HF-style AQLM checkpoint folder (config.json + model.safetensors).
        #[arg(long)]
        model: PathBuf,
        /// Module path of the layer (tensor prefix before `.codes`).
        #[arg(long)]
        module: String,
        /// PEFT adapter folder, `NAME=DIR` or `DIR` (named `default`); repeat to stack adapters,
        /// applied in the order given (the first rotates x first).
        #[arg(long = "adapter", value_name = "[NAME=]DIR", value_parser = forward::parse_adapter)]
        adapters: Vec<(String, PathBuf)>,
        /// Safetensors file with `x` [..., in_features] and optionally `grad_y` [..., out_features].
        #[arg(long)]
        input: PathBuf,
        /// Safetensors file to write (`y`, and `grad_x`, `grad.<adapter>` with `grad_y`).
        #[arg(long)]
        output: PathBuf,
    },
    /// Fine-tunes OFT adapters on an AQLM layer.
    Train {
        /// HF-style AQLM checkpoint folder.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Output adapter folder.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// An error that is not a failure of the input but of the build: exit code 2.
#[derive(Debug)]
struct Unavailable(String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { .. } => Err(Unavailable(
            "oftq demo: not yet implemented: the demo lands with issue 7".into(),
        )
        .into()),
        Command::Quantize { .. } => {
            Err(Unavailable("oftq quantize: not yet available in this build".into()).into())
        }
        Command::Train { .. } => {
            Err(Unavailable("oftq train: not yet available in this build".into()).into())
        }
        Command::Inspect { path } => {
            print!("{}", commands::inspect::run(&path)?);
            Ok(())
        }
        Command::Forward {
            model,
            module,
            adapters,
            input,
            output,
        } => {
            let args = ForwardArgs {
                model,
                module,
                adapters,
                input,
                output,
            };
            let report = forward::run(&args)?;
            if !cli.quiet {
                let parts: Vec<String> = report
                    .written
                    .iter()
                    .map(|(n, s)| format!("{n} {s:?}"))
                    .collect();
                eprintln!("wrote {} to {}", parts.join(", "), args.output.display());
            }
            Ok(())
        }
    }
}

/// The error chain on one line, joined by ": ". A cause whose text already ends its parent's
/// message (error types that print `"{path}: {source}"` and also expose `source`) is skipped.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if line.ends_with(&msg) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&msg);
    }
    line.replace('\n', " ")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, like every other error: clap's message up to its usage block, joined.
            let text = e.to_string();
            let msg: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let msg = msg.join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            eprintln!("error: {msg} (see oftq --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = one_line(&e);
            eprintln!("error: {line}");
            if e.is::<Unavailable>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_is_one_line_without_repeats() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = anyhow::Error::new(oftq_aqlm::AqlmError::Io {
            path: "a/b.safetensors".into(),
            source: io,
        })
        .context("loading\nlayer");
        assert_eq!(one_line(&e), "loading layer: a/b.safetensors: gone");
    }
}
