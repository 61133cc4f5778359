//! `cargo xtask bench`: run every criterion bench of the workspace, then write the report.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{criterion, fsutil, keys, machine::Machine, process, report};

/// Bench targets skipped by `--quick` unless `--filter` is given: one iteration alone takes
/// seconds (the encoder quantizes a 1024² matrix per iteration, measurement time 60 s).
const QUICK_SKIP: [&str; 1] = ["encode"];

/// Criterion filter (a regex on `group/function`) of the main kernels re-run on one thread:
/// the fixed results keys and their baselines, not the per-kernel variants or the encoder.
const MAIN_KERNELS: &str = r"^[^/]*/(baseline\.(faer_gemm|dense_f32)\.[^/]*4096[^/]*|baseline\.faer_gemm\..*|ortho\..*|aqlm\.(forward|backward)\.[0-9x]+\.4096\.t[0-9]+|layer\..*)$";

/// Command-line options of `cargo xtask bench`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Options {
    /// Criterion's `--quick` mode (development runs, < 3 min on 2 cores).
    pub(crate) quick: bool,
    /// Criterion filter (regex on `group/function`), passed to every bench.
    pub(crate) filter: Option<String>,
    /// Skip the one-thread pass.
    pub(crate) no_threads: bool,
    /// Rewrite the outputs from the last run's data (`target/xtask-bench/`) without running.
    pub(crate) report_only: bool,
}

impl Options {
    /// Parses the arguments after `bench`.
    pub(crate) fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--no-threads" => o.no_threads = true,
                "--report-only" => o.report_only = true,
                "--filter" => {
                    let f = it
                        .next()
                        .context("--filter needs a value (a regex on bench ids)")?;
                    o.filter = Some(f.clone());
                }
                s if s.starts_with("--filter=") => {
                    o.filter = Some(s["--filter=".len()..].to_string());
                }
                other => bail!(
                    "bench: unexpected argument `{other}` (expected --quick, --filter REGEX, --no-threads, --report-only)"
                ),
            }
        }
        Ok(o)
    }
}

/// A criterion bench target of a workspace package.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BenchTarget {
    /// Package name (`oftq-ortho`).
    pub(crate) package: String,
    /// Bench target name (`ortho`).
    pub(crate) name: String,
    /// Cargo's package id (matches the build messages).
    pub(crate) package_id: String,
    /// The package folder (cargo runs benches from there).
    pub(crate) dir: PathBuf,
}

/// The bench targets of the workspace members, from `cargo metadata` JSON.
pub(crate) fn bench_targets(metadata: &Value) -> Vec<BenchTarget> {
    let members: Vec<&str> = metadata["workspace_members"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for p in metadata["packages"].as_array().into_iter().flatten() {
        let (Some(id), Some(pkg)) = (p["id"].as_str(), p["name"].as_str()) else {
            continue;
        };
        if !members.contains(&id) {
            continue;
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let is_bench = t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bench"));
            if let (true, Some(name)) = (is_bench, t["name"].as_str()) {
                let dir = p["manifest_path"]
                    .as_str()
                    .and_then(|m| Path::new(m).parent())
                    .map(PathBuf::from)
                    .unwrap_or_default();
                out.push(BenchTarget {
                    package: pkg.to_string(),
                    name: name.to_string(),
                    package_id: id.to_string(),
                    dir,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.package, &a.name).cmp(&(&b.package, &b.name)));
    out
}

/// Where one pass writes its criterion data.
pub(crate) fn pass_dir(root: &Path, pass: &str) -> PathBuf {
    root.join("target/xtask-bench").join(pass)
}

/// Runs the benches and writes `docs/bench/{results.json, REPORT.md, *.svg}`.
pub(crate) fn run(root: &Path, opts: &Options) -> Result<()> {
    let meta_path = root.join("target/xtask-bench/run.json");
    if opts.report_only {
        let text = std::fs::read_to_string(&meta_path).with_context(|| {
            format!(
                "cannot read {} (run `cargo xtask bench` first)",
                meta_path.display()
            )
        })?;
        let meta: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", meta_path.display()))?;
        let run = report::Run::from_json(&meta, root)
            .with_context(|| format!("in {}", meta_path.display()))?;
        return write_outputs(root, &run);
    }
    let start = Instant::now();
    let mut meta = process::cargo(root);
    meta.args(["metadata", "--no-deps", "--format-version", "1"]);
    let meta = process::output_of(&mut meta).context("`cargo metadata` failed")?;
    let meta: Value = serde_json::from_str(&meta).context("`cargo metadata` output is not JSON")?;
    let all_targets = bench_targets(&meta);
    let (targets, skipped): (Vec<_>, Vec<_>) = all_targets.into_iter().partition(|t| {
        !(opts.quick && opts.filter.is_none() && QUICK_SKIP.contains(&t.name.as_str()))
    });
    if targets.is_empty() {
        bail!("no criterion bench targets in the workspace");
    }
    let machine = Machine::probe(root);
    eprintln!("xtask: {}", machine.line());

    let exes = build(root, &targets)?;
    let built = start.elapsed().as_secs_f64();

    let all_dir = pass_dir(root, "threads-all");
    let one_dir = pass_dir(root, "threads-1");
    fsutil::remove_dir_if_exists(&all_dir)?;
    fsutil::remove_dir_if_exists(&one_dir)?;

    let mut stdout = String::new();
    for (t, exe) in &exes {
        stdout += &run_bench(t, exe, opts, &all_dir, opts.filter.as_deref(), None)?;
    }
    let one_thread = !opts.no_threads && machine.threads > 1;
    let mut stdout_1 = String::new();
    if one_thread {
        let filter = opts.filter.as_deref().unwrap_or(MAIN_KERNELS);
        for (t, exe) in &exes {
            stdout_1 += &run_bench(t, exe, opts, &one_dir, Some(filter), Some(1))?;
        }
    }
    let name = |t: &BenchTarget| format!("{}/{}", t.package, t.name);
    let run = report::Run {
        machine,
        quick: opts.quick,
        filter: opts.filter.clone(),
        targets: targets.iter().map(name).collect(),
        skipped: skipped.iter().map(name).collect(),
        measured: criterion::read_all(&all_dir)?,
        measured_1: criterion::read_all(&one_dir)?,
        stdout,
        stdout_1,
        build_s: built,
        total_s: start.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&run.to_json()).context("serializing run.json")?;
    fsutil::write_atomic(&meta_path, json.as_bytes())?;
    write_outputs(root, &run)
}

/// Writes `docs/bench/results.json`, REPORT.md and the plots for a run.
fn write_outputs(root: &Path, run: &report::Run) -> Result<()> {
    if run.measured.is_empty() {
        bail!("no bench results (did the filter match anything?)");
    }
    let results = keys::results_map(&run.measured);
    let out_dir = root.join("docs/bench");
    let json = serde_json::to_string_pretty(&results).context("serializing results.json")?;
    fsutil::write_atomic(
        &out_dir.join("results.json"),
        format!("{json}\n").as_bytes(),
    )?;
    let files = report::write(&out_dir, run)?;
    eprintln!(
        "xtask: bench done in {:.0} s (build {:.0} s): {} results keys, wrote {}",
        run.total_s,
        run.build_s,
        results.len(),
        files.join(", ")
    );
    Ok(())
}

/// Builds the bench executables once (`cargo bench --no-run`, the same package selection for all)
/// and returns each target with its executable, in `targets` order.
fn build(root: &Path, targets: &[BenchTarget]) -> Result<Vec<(BenchTarget, PathBuf)>> {
    let mut cmd = process::cargo(root);
    cmd.args([
        "bench",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for t in targets {
        cmd.args(["-p", &t.package, "--bench", &t.name]);
    }
    let out = process::run_capture(&mut cmd)?;
    let artifacts = bench_executables(&out);
    targets
        .iter()
        .map(|t| {
            artifacts
                .iter()
                .find(|(id, name, _)| id == &t.package_id && name == &t.name)
                .map(|(_, _, exe)| (t.clone(), exe.clone()))
                .with_context(|| {
                    format!(
                        "cargo built no executable for bench `{}` of `{}`",
                        t.name, t.package
                    )
                })
        })
        .collect()
}

/// `(package_id, target name, executable)` of every bench artifact in cargo's JSON messages.
pub(crate) fn bench_executables(messages: &str) -> Vec<(String, String, PathBuf)> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bench"))
        })
        .filter_map(|m| {
            Some((
                m["package_id"].as_str()?.to_string(),
                m["target"]["name"].as_str()?.to_string(),
                PathBuf::from(m["executable"].as_str()?),
            ))
        })
        .collect()
}

/// Runs one bench executable the way `cargo bench` does (`--bench`, package folder as cwd).
fn run_bench(
    t: &BenchTarget,
    exe: &Path,
    opts: &Options,
    home: &Path,
    filter: Option<&str>,
    threads: Option<usize>,
) -> Result<String> {
    let mut cmd = Command::new(exe);
    cmd.current_dir(&t.dir).arg("--bench");
    if opts.quick {
        cmd.arg("--quick");
    }
    cmd.arg("--noplot");
    if let Some(f) = filter {
        cmd.arg(f);
    }
    cmd.env("CRITERION_HOME", home);
    if let Some(n) = threads {
        cmd.env("RAYON_NUM_THREADS", n.to_string());
    }
    let t0 = Instant::now();
    let out = process::run_tee(&mut cmd)?;
    eprintln!(
        "xtask: {}/{} took {:.0} s",
        t.package,
        t.name,
        t0.elapsed().as_secs_f64()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_options() {
        assert_eq!(Options::parse(&[]).unwrap(), Options::default());
        let o = Options::parse(&s(&["--quick", "--filter", "ortho"])).unwrap();
        assert!(o.quick && o.filter.as_deref() == Some("ortho"));
        let o = Options::parse(&s(&["--filter=aqlm", "--no-threads", "--report-only"])).unwrap();
        assert!(o.no_threads && o.report_only && o.filter.as_deref() == Some("aqlm"));
        assert!(Options::parse(&s(&["--filter"])).is_err());
        assert!(Options::parse(&s(&["--fast"])).is_err());
    }

    #[test]
    fn finds_bench_targets_of_members_only() {
        let meta: Value = serde_json::from_str(
            r#"{"workspace_members":["a 0.1"],"packages":[
                {"id":"a 0.1","name":"oftq-ortho","manifest_path":"/w/crates/ortho/Cargo.toml","targets":[{"kind":["lib"],"name":"oftq_ortho"},{"kind":["bench"],"name":"ortho"}]},
                {"id":"b 0.1","name":"other","targets":[{"kind":["bench"],"name":"x"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            bench_targets(&meta),
            [BenchTarget {
                package: "oftq-ortho".into(),
                name: "ortho".into(),
                package_id: "a 0.1".into(),
                dir: PathBuf::from("/w/crates/ortho"),
            }]
        );
    }

    #[test]
    fn finds_bench_executables_in_cargo_messages() {
        let msgs = r#"{"reason":"compiler-artifact","package_id":"p#oftq-ortho@0.1.0","target":{"kind":["lib"],"name":"oftq_ortho"},"executable":null}
{"reason":"compiler-artifact","package_id":"p#oftq-ortho@0.1.0","target":{"kind":["bench"],"name":"ortho"},"executable":"/t/release/deps/ortho-abc"}
not json
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            bench_executables(msgs),
            [(
                "p#oftq-ortho@0.1.0".to_string(),
                "ortho".to_string(),
                PathBuf::from("/t/release/deps/ortho-abc")
            )]
        );
    }
}
