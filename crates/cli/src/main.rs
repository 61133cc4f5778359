#![doc = include_str!("../README.md")]

mod commands;
mod plot;
mod progress;
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
    /// The main job: quantize a model to ~2 bits with AQLM, attach OFT, train through the frozen
    /// quantized weights towards planted rotations, save files PEFT and aqlm load.
    Demo {
        /// Output folder.
        #[arg(long, default_value = "oftq-demo")]
        out: PathBuf,
        /// Training steps.
        #[arg(long, default_value_t = 300)]
        steps: usize,
        /// Random seed (teacher, planted rotations, data, encoder).
        #[arg(long, default_value_t = 20261126)]
        seed: u64,
        /// AQLM scheme `MxB` (in_group 8).
        #[arg(long, default_value = "2x8")]
        scheme: String,
        /// OFT block size.
        #[arg(long, default_value_t = 32)]
        block_size: usize,
        /// Exact Cayley instead of Cayley-Neumann.
        #[arg(long)]
        exact: bool,
        /// Layer widths, input first.
        #[arg(long, default_value = "512,1024,512,256")]
        dims: String,
        /// Inputs per training step.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Encoder rounds per layer.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
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
        #[arg(long, default_value_t = 8)]
        in_group: usize,
        /// Output group size.
        #[arg(long, default_value_t = 1)]
        out_group: usize,
        /// Quantize only the tensors whose names match this regular expression.
        #[arg(long)]
        tensors: Option<String>,
        /// Encoder rounds (code search + codebook update) per tensor.
        #[arg(long, default_value_t = 12)]
        rounds: usize,
        /// Encoder seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
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
    /// The real-LLM pipeline: fetch SmolLM2-135M, quantize it with calibrated AQLM, recover it
    /// with OFT by distillation, evaluate perplexity, generate.
    Llm {
        #[command(subcommand)]
        command: commands::llm::LlmCommand,
    },
    /// Fits OFT adapters on layers of an AQLM checkpoint from input/target tensors.
    Train {
        /// HF-style AQLM checkpoint folder.
        #[arg(long)]
        model: PathBuf,
        /// Modules to adapt (names or `.`-suffixes, comma-separated), as PEFT's target_modules.
        #[arg(long, value_delimiter = ',', required = true)]
        target_modules: Vec<String>,
        /// Safetensors file with `x` and `y` (one module) or `<module>.x` and `<module>.y`.
        #[arg(long)]
        data: PathBuf,
        /// Output PEFT adapter folder.
        #[arg(long)]
        out: PathBuf,
        /// OFT block size.
        #[arg(long, default_value_t = 32)]
        block_size: usize,
        /// Exact Cayley instead of Cayley-Neumann.
        #[arg(long)]
        exact: bool,
        /// Constrained OFT with this eps (PEFT's radius eps/sqrt(blocks)).
        #[arg(long)]
        coft_eps: Option<f64>,
        /// Training steps (full batch).
        #[arg(long, default_value_t = 200)]
        steps: usize,
        /// AdamW learning rate.
        #[arg(long, default_value_t = 3e-3)]
        lr: f64,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo {
            out,
            steps,
            seed,
            scheme,
            block_size,
            exact,
            dims,
            batch,
            rounds,
        } => {
            let scheme: oftq_aqlm::AqlmScheme = scheme.parse()?;
            let dims = commands::demo::parse_dims(&dims)
                .map_err(|e| anyhow::anyhow!("--dims: expected widths like 512,1024,256: {e}"))?;
            let args = commands::demo::DemoArgs {
                out,
                steps,
                seed,
                scheme,
                block_size,
                exact,
                dims,
                batch,
                rounds,
                quiet: cli.quiet,
            };
            commands::demo::run(&args)
        }
        Command::Quantize {
            input,
            output,
            scheme,
            in_group,
            out_group,
            tensors,
            rounds,
            seed,
        } => {
            let base: oftq_aqlm::AqlmScheme = scheme.parse()?;
            let scheme = oftq_aqlm::AqlmScheme::builder(base.num_codebooks, base.nbits)
                .in_group_size(in_group)
                .out_group_size(out_group)
                .build()?;
            let args = commands::quantize::QuantizeArgs {
                input,
                output,
                scheme,
                tensors,
                rounds,
                seed,
                quiet: cli.quiet,
            };
            let table = commands::quantize::run(&args)?;
            if !cli.quiet {
                print!("{table}");
                println!("wrote {}", args.output.display());
            }
            Ok(())
        }
        Command::Train {
            model,
            target_modules,
            data,
            out,
            block_size,
            exact,
            coft_eps,
            steps,
            lr,
            seed,
        } => {
            let config = oftq_layer::OftConfig {
                oft_block_size: block_size,
                use_cayley_neumann: !exact,
                coft: coft_eps.is_some(),
                eps: coft_eps.unwrap_or(6e-5),
                ..oftq_layer::OftConfig::default()
            };
            let args = commands::train::TrainArgs {
                model,
                target_modules,
                data,
                out,
                config,
                steps,
                lr,
                seed,
                quiet: cli.quiet,
            };
            let summary = commands::train::run(&args)?;
            if !cli.quiet {
                print!("{summary}");
            }
            Ok(())
        }
        Command::Llm { command } => commands::llm::run(command, cli.quiet),
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
            ExitCode::FAILURE
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
