//! `cargo xtask bench`: run every criterion bench of the workspace, then write the report.
//!
//! A run: probe the machine ([`crate::roofline`]), build the bench executables once, run every
//! bench with all threads, the main kernels again on one thread, the interleaved rounds of every
//! target ([`crate::rounds`]), with `--vs-python` the rounds against the Python reference
//! ([`crate::python`]), probe again; then write `<target dir>/xtask-bench/run.json` (what
//! `--report-only` re-reads) and `docs/bench/{results.json, REPORT.md, *.svg}`. Every criterion
//! home of a run is a folder below `<target dir>/xtask-bench/` ([`data_dir`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::criterion::Estimate;
use crate::process::Metadata;
use crate::python::{self, Reference, Status};
use crate::report::{Meta, Run};
use crate::roofline::Probes;
use crate::rounds::{self, Group, Role, Threads};
use crate::{criterion, fsutil, keys, machine::Machine, process, report};

/// Criterion filter (a regex on `group/function`) of the main kernels re-run on one thread:
/// the fixed results keys and their baselines, not the per-kernel variants or the encoder.
const MAIN_KERNELS: &str = r"^[^/]*/(baseline\.(faer_gemm|dense_f32)\.[^/]*4096[^/]*|baseline\.faer_gemm\..*|ortho\..*|aqlm\.(forward|backward)\.[0-9x]+\.4096\.t[0-9]+|layer\..*|candle\..*)$";

/// Command-line options of `cargo xtask bench`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub(crate) struct Options {
    /// Criterion's `--quick` mode: every results key, fewer samples, no rounds by default
    /// (development runs, a few minutes on 2 cores).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Criterion filter (a regex on `group/function`), passed to every bench.
    #[arg(long, value_name = "REGEX", value_parser = parse_filter)]
    pub(crate) filter: Option<String>,
    /// Skip the one-thread pass (and its rounds).
    #[arg(long)]
    pub(crate) no_threads: bool,
    /// Interleaved rounds per target and thread setting, each between two runs of its baseline
    /// (default 3, 0 with --quick; 0 disables).
    #[arg(long, value_name = "N")]
    pub(crate) rounds: Option<usize>,
    /// Rewrite the outputs from the last run's data (`<target dir>/xtask-bench/`) without running.
    #[arg(long)]
    pub(crate) report_only: bool,
    /// Also run the Python reference (aqlm, PEFT on torch) in rounds alternating with oftq's
    /// runs of the same work (as many rounds as --rounds, at least one).
    #[arg(long)]
    pub(crate) vs_python: bool,
}

impl Options {
    /// Interleaved rounds per thread setting: `--rounds N` if given, else
    /// [`rounds::default_rounds`].
    pub(crate) fn rounds(&self) -> usize {
        self.rounds
            .unwrap_or_else(|| rounds::default_rounds(self.quick))
    }

    /// Rounds against the Python reference: as many as the interleaved rounds, at least one.
    pub(crate) fn python_rounds(&self) -> usize {
        self.rounds().max(1)
    }
}

/// `--filter` must be a regular expression (criterion would reject it only after the build).
fn parse_filter(s: &str) -> Result<String, regex::Error> {
    regex::Regex::new(s).map(|_| s.to_string())
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

impl BenchTarget {
    /// `package/bench`, for logs and the report.
    pub(crate) fn label(&self) -> String {
        format!("{}/{}", self.package, self.name)
    }
}

/// The bench targets of the workspace members, sorted by package and name.
pub(crate) fn bench_targets(metadata: &Metadata) -> Vec<BenchTarget> {
    let mut out: Vec<BenchTarget> = metadata
        .packages
        .iter()
        .filter(|p| metadata.workspace_members.contains(&p.id))
        .flat_map(|p| {
            p.targets
                .iter()
                .filter(|t| t.is("bench"))
                .map(move |t| BenchTarget {
                    package: p.name.clone(),
                    name: t.name.clone(),
                    package_id: p.id.clone(),
                    dir: p
                        .manifest_path
                        .parent()
                        .map(PathBuf::from)
                        .unwrap_or_default(),
                })
        })
        .collect();
    out.sort_by(|a, b| (&a.package, &a.name).cmp(&(&b.package, &b.name)));
    out
}

/// Where a run keeps its data: `xtask-bench` in cargo's target directory.
pub(crate) fn data_dir(metadata: &Metadata) -> PathBuf {
    metadata.target_directory.join("xtask-bench")
}

/// Where one pass writes its criterion data.
pub(crate) fn pass_dir(data: &Path, threads: Threads) -> PathBuf {
    data.join(threads.pass())
}

/// The criterion home of one bench target within a pass folder (`<pass>/<package>/<bench>`), so
/// that every id of the pass can be traced to the executable that measured it.
pub(crate) fn target_home(pass: &Path, t: &BenchTarget) -> PathBuf {
    pass.join(&t.package).join(&t.name)
}

/// A bench target with its built executable.
type Exe = (BenchTarget, PathBuf);

/// Runs the benches and writes `docs/bench/{results.json, REPORT.md, *.svg}`.
pub(crate) fn run(root: &Path, opts: &Options) -> Result<()> {
    let metadata = process::metadata(root)?;
    let data = data_dir(&metadata);
    let meta_path = data.join("run.json");
    if opts.report_only {
        let text = std::fs::read_to_string(&meta_path).with_context(|| {
            format!(
                "cannot read {} (run `cargo xtask bench` first)",
                meta_path.display()
            )
        })?;
        let meta: Meta = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a run record of this xtask (run `cargo xtask bench` again)",
                meta_path.display()
            )
        })?;
        let run = Run::load(meta, &data).with_context(|| format!("in {}", meta_path.display()))?;
        return write_outputs(root, &run);
    }
    let start = Instant::now();
    let targets = bench_targets(&metadata);
    if targets.is_empty() {
        bail!("no criterion bench targets in the workspace");
    }
    let machine = Machine::probe(root);
    eprintln!("xtask: {}", machine.line());
    let exes = build(root, &targets)?;
    let build_s = start.elapsed().as_secs_f64();
    eprintln!("xtask: probing the machine (bandwidth, FMA and look-up rates)");
    let probes = Probes::measure(machine.threads);

    let all_dir = pass_dir(&data, Threads::All);
    let one_dir = pass_dir(&data, Threads::One);
    for dir in [&all_dir, &one_dir, &rounds::rounds_dir(&data)] {
        fsutil::remove_dir_if_exists(dir)?;
    }
    let filter = opts.filter.as_deref();
    let mut stdout = String::new();
    for (t, exe) in &exes {
        let home = target_home(&all_dir, t);
        stdout += &run_bench(t, exe, opts.quick, &home, filter, None, &t.label())?;
    }
    let one_thread = !opts.no_threads && machine.threads > 1;
    let mut stdout_1 = String::new();
    if one_thread {
        let filter = filter.unwrap_or(MAIN_KERNELS);
        for (t, exe) in &exes {
            let home = target_home(&one_dir, t);
            let what = format!("{} (1 thread)", t.label());
            stdout_1 += &run_bench(t, exe, opts.quick, &home, Some(filter), Some(1), &what)?;
        }
    }

    let rounds_start = Instant::now();
    let count = opts.rounds();
    let mut passes = vec![(Threads::All, all_dir.as_path())];
    if one_thread {
        passes.push((Threads::One, one_dir.as_path()));
    }
    let groups = run_rounds(&data, &exes, &passes, count, opts.quick)?;
    let python = if opts.vs_python {
        vs_python(root, &data, &exes, opts, machine.threads)?
    } else {
        Status::NotRequested
    };
    let rounds_s = rounds_start.elapsed().as_secs_f64();
    eprintln!("xtask: probing the machine again (the better reading counts)");
    let probes = probes.best(&Probes::measure(machine.threads));

    let meta = Meta {
        machine,
        quick: opts.quick,
        filter: opts.filter.clone(),
        no_threads: opts.no_threads,
        benches: targets.iter().map(BenchTarget::label).collect(),
        stdout,
        stdout_1,
        build_s,
        rounds_s,
        total_s: start.elapsed().as_secs_f64(),
        rounds: rounds::Record { count, groups },
        probes: Some(probes),
        python,
    };
    let json = serde_json::to_string_pretty(&meta).context("serializing run.json")?;
    fsutil::write_atomic(&meta_path, json.as_bytes())?;
    write_outputs(root, &Run::load(meta, &data)?)
}

/// Writes `docs/bench/results.json`, REPORT.md and the plots for a run.
fn write_outputs(root: &Path, run: &Run) -> Result<()> {
    if run.measured.is_empty() {
        bail!("no bench results (did the filter match anything?)");
    }
    let mut results: BTreeMap<String, f64> = keys::results_map(&run.measured);
    results.extend(python::results(&run.python));
    let out_dir = root.join("docs/bench");
    let json = serde_json::to_string_pretty(&results).context("serializing results.json")?;
    fsutil::write_atomic(
        &out_dir.join("results.json"),
        format!("{json}\n").as_bytes(),
    )?;
    let mut files = report::write(&out_dir, run)?;
    files.push("docs/bench/results.json".into());
    eprintln!(
        "xtask: bench done in {:.0} s (build {:.0} s): {} results keys, wrote {}",
        run.meta.total_s,
        run.meta.build_s,
        results.len(),
        files.join(", ")
    );
    Ok(())
}

/// One line of cargo's `--message-format=json` output, as far as we read it.
#[derive(Debug, Deserialize)]
struct Message {
    reason: String,
    package_id: Option<String>,
    target: Option<process::Target>,
    executable: Option<PathBuf>,
}

/// `(package_id, target name, executable)` of every bench artifact in cargo's JSON messages.
pub(crate) fn bench_executables(messages: &str) -> Vec<(String, String, PathBuf)> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<Message>(l).ok())
        .filter(|m| m.reason == "compiler-artifact")
        .filter_map(|m| {
            let target = m.target.filter(|t| t.is("bench"))?;
            Some((m.package_id?, target.name, m.executable?))
        })
        .collect()
}

/// Builds the bench executables once (`cargo bench --no-run`, the same package selection for all)
/// and returns each target with its executable, in `targets` order.
fn build(root: &Path, targets: &[BenchTarget]) -> Result<Vec<Exe>> {
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
                .with_context(|| format!("cargo built no executable for bench `{}`", t.label()))
        })
        .collect()
}

/// Runs one bench executable the way `cargo bench` does (`--bench`, package folder as cwd), with
/// its criterion data in `home`; prints `xtask: <what> took N s`.
fn run_bench(
    t: &BenchTarget,
    exe: &Path,
    quick: bool,
    home: &Path,
    filter: Option<&str>,
    threads: Option<usize>,
    what: &str,
) -> Result<String> {
    let mut cmd = Command::new(exe);
    cmd.current_dir(&t.dir).arg("--bench");
    if quick {
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
    eprintln!("xtask: {what} took {:.0} s", t0.elapsed().as_secs_f64());
    Ok(out)
}

/// The estimates of a pass, each with the index (into `exes`) of the bench that measured it.
fn locate(exes: &[Exe], pass: &Path) -> Result<Vec<(usize, Estimate)>> {
    let mut out = Vec::new();
    for (i, (t, _)) in exes.iter().enumerate() {
        let found = criterion::read_all(&target_home(pass, t))?;
        out.extend(found.into_iter().map(|e| (i, e)));
    }
    Ok(out)
}

/// One invocation of a run: which bench executable, which criterion full ids.
#[derive(Debug)]
struct Invocation<'a> {
    /// The bench target and its executable.
    exe: &'a Exe,
    /// The criterion full ids to run.
    ids: Vec<&'a str>,
}

/// The invocations that run `keys` (one per bench executable holding some, in `exes` order).
fn invocations<'a>(
    exes: &'a [Exe],
    located: &'a [(usize, Estimate)],
    keys: &[String],
    threads: Threads,
) -> Result<Vec<Invocation<'a>>> {
    let mut by_exe: Vec<(usize, Vec<&'a str>)> = Vec::new();
    for key in keys {
        let (i, e) = located
            .iter()
            .find(|(_, e)| &e.key == key)
            .with_context(|| format!("`{key}` was not measured in the {} pass", threads.pass()))?;
        match by_exe.iter_mut().find(|(j, _)| j == i) {
            Some((_, ids)) => ids.push(&e.full_id),
            None => by_exe.push((*i, vec![&e.full_id])),
        }
    }
    by_exe.sort_by_key(|(i, _)| *i);
    by_exe
        .into_iter()
        .map(|(i, ids)| {
            let exe = exes
                .get(i)
                .with_context(|| format!("no bench executable #{i}"))?;
            Ok(Invocation { exe, ids })
        })
        .collect()
}

/// Runs the invocations of one run into the criterion home `home`.
fn run_invocations(
    invocations: &[Invocation<'_>],
    quick: bool,
    home: &Path,
    threads: Threads,
    what: &str,
) -> Result<()> {
    for inv in invocations {
        let (t, exe) = inv.exe;
        let filter = rounds::filter_regex(&inv.ids);
        let what = format!("{what} ({})", t.label());
        run_bench(t, exe, quick, home, Some(&filter), threads.rayon(), &what)?;
    }
    Ok(())
}

/// Runs the interleaved rounds of every group planned from the passes (see [`rounds::plan`]),
/// the groups of a baseline at both thread settings in lockstep ([`rounds::schedule`]); returns
/// the groups that ran (their data stays in `<data>/rounds/`).
fn run_rounds(
    data: &Path,
    exes: &[Exe],
    passes: &[(Threads, &Path)],
    count: usize,
    quick: bool,
) -> Result<Vec<Group>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut located = Vec::new();
    let mut groups = Vec::new();
    for &(threads, pass) in passes {
        let found = locate(exes, pass)?;
        let measured: Vec<Estimate> = found.iter().map(|(_, e)| e.clone()).collect();
        let planned = rounds::plan(threads, &measured);
        if planned.is_empty() {
            eprintln!(
                "xtask: no interleaved rounds ({}): no target was measured with its baseline",
                threads.label()
            );
        }
        groups.extend(planned);
        located.push((threads, found));
    }
    let rounds_dir = rounds::rounds_dir(data);
    for batch in rounds::schedule(groups.clone()) {
        let t0 = Instant::now();
        // The baseline and target invocations of each group of the batch.
        let mut plans = Vec::new();
        for g in &batch {
            let (_, found) = located
                .iter()
                .find(|(t, _)| *t == g.threads)
                .with_context(|| format!("no {} pass", g.threads.pass()))?;
            let base = invocations(exes, found, std::slice::from_ref(&g.baseline), g.threads)?;
            let targets = invocations(exes, found, &g.targets, g.threads)?;
            plans.push((g, base, targets));
        }
        for r in 0..=count {
            for (g, base, targets) in &plans {
                let dir = rounds::group_dir(&rounds_dir, g);
                let what = |role: &str, n: usize| {
                    format!(
                        "rounds of `{}` ({}): {role} run {}/{n}",
                        g.baseline,
                        g.threads.label(),
                        r + 1
                    )
                };
                let home = rounds::run_home(&dir, Role::Baseline, r);
                let w = what("baseline", count + 1);
                run_invocations(base, quick, &home, g.threads, &w)?;
                rounds::read_run(&home, std::slice::from_ref(&g.baseline))
                    .with_context(|| format!("after {w}"))?;
                if r < count {
                    let home = rounds::run_home(&dir, Role::Targets, r);
                    let w = what("targets", count);
                    run_invocations(targets, quick, &home, g.threads, &w)?;
                    rounds::read_run(&home, &g.targets).with_context(|| format!("after {w}"))?;
                }
            }
        }
        for g in &batch {
            let got = rounds::read_group(&rounds_dir, g, count)?;
            for key in &g.targets {
                let s = rounds::summary(std::slice::from_ref(&got), key, g.threads);
                if let Some((c, s)) = s {
                    let label = g.threads.label();
                    eprintln!(
                        "xtask: interleaved ({label}) `{key}`: {}",
                        report::fmt_spread(c, &s)
                    );
                }
            }
        }
        eprintln!(
            "xtask: rounds of `{}` took {:.0} s",
            batch.first().map_or("", |g| g.baseline.as_str()),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(groups)
}

/// The rounds against the Python reference (all threads), if its environment exists.
fn vs_python(
    root: &Path,
    data: &Path,
    exes: &[Exe],
    opts: &Options,
    threads: usize,
) -> Result<Status> {
    let oftq_ref = std::env::var_os("OFTQ_REF").map(PathBuf::from);
    let reference = match Reference::locate(root, oftq_ref) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("xtask: vs Python not run: {why}");
            return Ok(Status::Unavailable(why.to_string()));
        }
    };
    let located = locate(exes, &pass_dir(data, Threads::All))?;
    let paired: Vec<String> = python::PAIRS
        .iter()
        .filter_map(|p| p.key)
        .filter(|k| located.iter().any(|(_, e)| e.key == *k))
        .map(String::from)
        .collect();
    let oftq = invocations(exes, &located, &paired, Threads::All)?;
    let rounds = opts.python_rounds();
    python::run(
        &python::dir(data),
        &reference,
        rounds,
        threads,
        |home, what| run_invocations(&oftq, opts.quick, home, Threads::All, what),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cli;
    use clap::Parser;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        let argv = ["xtask", "bench"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            crate::Command::Bench(o) => Ok(o),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn parses_options() {
        assert_eq!(parse(&[]).unwrap(), Options::default());
        assert_eq!(Options::default().rounds(), rounds::DEFAULT_ROUNDS);
        let o = parse(&["--quick", "--filter", "ortho"]).unwrap();
        assert!(o.quick && o.filter.as_deref() == Some("ortho"));
        let o = parse(&["--filter=aqlm", "--no-threads", "--report-only"]).unwrap();
        assert!(o.no_threads && o.report_only && o.filter.as_deref() == Some("aqlm"));
        assert!(parse(&["--filter"]).is_err());
        assert!(parse(&["--filter", "a("]).is_err());
        // --rounds: default 3, 0 with --quick unless given.
        assert_eq!(parse(&["--quick"]).unwrap().rounds(), 0);
        let o = parse(&["--quick", "--rounds", "2"]).unwrap();
        assert_eq!((o.rounds, o.rounds()), (Some(2), 2));
        assert_eq!(parse(&["--rounds=0"]).unwrap().rounds(), 0);
        assert!(parse(&["--rounds"]).is_err());
        assert!(parse(&["--rounds", "-1"]).is_err());
        assert!(parse(&["--rounds=x"]).is_err());
        assert!(parse(&["--fast"]).is_err());
        // --vs-python: at least one round, else as many as --rounds.
        let o = parse(&["--quick", "--vs-python"]).unwrap();
        assert!(o.vs_python);
        assert_eq!(o.python_rounds(), 1);
        assert_eq!(parse(&["--vs-python"]).unwrap().python_rounds(), 3);
    }

    #[test]
    fn finds_bench_targets_of_members_only() {
        let meta: Metadata = serde_json::from_str(
            r#"{"workspace_members":["a 0.1"],"target_directory":"/t","packages":[
                {"id":"a 0.1","name":"oftq-ortho","manifest_path":"/w/crates/ortho/Cargo.toml","targets":[{"kind":["lib"],"name":"oftq_ortho"},{"kind":["bench"],"name":"ortho"}]},
                {"id":"b 0.1","name":"other","manifest_path":"/x/Cargo.toml","targets":[{"kind":["bench"],"name":"x"}]}]}"#,
        )
        .unwrap();
        assert_eq!(data_dir(&meta), Path::new("/t/xtask-bench"));
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
    fn invocations_group_ids_by_executable() {
        let t = |name: &str| {
            (
                BenchTarget {
                    package: "p".into(),
                    name: name.into(),
                    package_id: "p 0.1".into(),
                    dir: PathBuf::from("/w"),
                },
                PathBuf::from(format!("/t/{name}")),
            )
        };
        let exes = [t("aqlm"), t("layer")];
        let e = |k: &str, g: &str| Estimate {
            key: k.into(),
            full_id: format!("{g}/{k}"),
            median_s: 1.0,
            elements: None,
        };
        let located = [
            (1, e("layer.fwd_bwd.x", "layer")),
            (0, e("aqlm.forward.x", "aqlm")),
            (1, e("layer.train_step.x", "layer")),
        ];
        let keys = s(&["layer.train_step.x", "aqlm.forward.x", "layer.fwd_bwd.x"]);
        let inv = invocations(&exes, &located, &keys, Threads::All).unwrap();
        let got: Vec<(&str, Vec<&str>)> = inv
            .iter()
            .map(|i| (i.exe.0.name.as_str(), i.ids.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("aqlm", vec!["aqlm/aqlm.forward.x"]),
                (
                    "layer",
                    vec!["layer/layer.train_step.x", "layer/layer.fwd_bwd.x"]
                )
            ]
        );
        let err = invocations(&exes, &located, &s(&["missing"]), Threads::One).unwrap_err();
        assert!(err.to_string().contains("threads-1"), "{err}");
        let pass = pass_dir(Path::new("/x"), Threads::All);
        assert_eq!(
            target_home(&pass, &exes[1].0),
            Path::new("/x/threads-all/p/layer")
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

    #[test]
    fn main_kernels_filter_selects_fixed_keys() {
        let re = regex::Regex::new(MAIN_KERNELS).unwrap();
        for id in [
            "aqlm/aqlm.forward.2x8.4096.t1",
            "layer/layer.fwd_bwd.2x8.4096.t64.b32",
            "candle/candle.fwd_bwd.2x8.4096.t64.b32",
            "aqlm/baseline.dense_f32.gemv.4096",
        ] {
            assert!(re.is_match(id), "{id}");
        }
        assert!(!re.is_match("aqlm/aqlm.forward.2x8.4096.t1.lut"));
        assert!(!re.is_match("aqlm.encode/2x8.1024"));
    }
}
