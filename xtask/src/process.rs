//! Running child processes with a printed command line and a checked exit status.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Renders `cmd` as a shell-like line for logs and error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let v = v.to_string_lossy().replace('\x1f', " ");
            s.push_str(&format!("{}={v:?} ", k.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A `cargo` command run from the workspace root.
pub(crate) fn cargo(root: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(root);
    c
}

/// Runs `cmd` with inherited stdio; fails unless it exits with status 0.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    eprintln!("xtask: $ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed with {status}");
    }
    Ok(())
}

/// Runs `cmd`, echoing its stdout line by line while also returning it; stderr is inherited.
pub(crate) fn run_tee(cmd: &mut Command) -> Result<String> {
    use std::io::{BufRead, BufReader};
    let line = describe(cmd);
    eprintln!("xtask: $ {line}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let mut out = String::new();
    if let Some(stdout) = child.stdout.take() {
        for l in BufReader::new(stdout).lines() {
            let l = l.with_context(|| format!("reading the output of `{line}`"))?;
            println!("{l}");
            out.push_str(&l);
            out.push('\n');
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed with {status}");
    }
    Ok(out)
}

/// Runs `cmd` and returns its trimmed stdout, or `None` if it cannot run or fails.
pub(crate) fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `cmd` and returns its stdout (stderr inherited); fails unless it exits with status 0.
pub(crate) fn run_capture(cmd: &mut Command) -> Result<String> {
    let line = describe(cmd);
    eprintln!("xtask: $ {line}");
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The part of `cargo metadata --no-deps --format-version 1` that xtask reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Metadata {
    /// Every package of the workspace (and with `--no-deps`, nothing else).
    pub(crate) packages: Vec<Package>,
    /// The package ids of the workspace members.
    pub(crate) workspace_members: Vec<String>,
    /// Cargo's target directory (`$CARGO_TARGET_DIR` when set, else `<workspace>/target`).
    pub(crate) target_directory: std::path::PathBuf,
}

/// A package of [`Metadata`].
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Package {
    /// Cargo's package id (matches the build messages).
    pub(crate) id: String,
    /// Package name.
    pub(crate) name: String,
    /// Its Cargo.toml.
    pub(crate) manifest_path: std::path::PathBuf,
    /// Its targets (lib, bins, benches, …).
    pub(crate) targets: Vec<Target>,
}

/// A target of a [`Package`].
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Target {
    /// Target name.
    pub(crate) name: String,
    /// Kinds (`lib`, `bin`, `bench`, …).
    pub(crate) kind: Vec<String>,
}

impl Target {
    /// Whether the target is of kind `kind`.
    pub(crate) fn is(&self, kind: &str) -> bool {
        self.kind.iter().any(|k| k == kind)
    }
}

/// Runs `cargo metadata --no-deps` in the workspace.
pub(crate) fn metadata(root: &Path) -> Result<Metadata> {
    let mut cmd = cargo(root);
    cmd.args(["metadata", "--no-deps", "--format-version", "1"]);
    let out = output_of(&mut cmd).context("`cargo metadata` failed")?;
    serde_json::from_str(&out).context("`cargo metadata` printed something else than its JSON")
}
