//! `cargo xtask bench`: run every criterion bench of the workspace, then write the report.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::criterion::Estimate;
use crate::rounds::{self, GroupRounds, Role, Threads};
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
    /// Interleaved rounds per thread setting (`--rounds N`); `None`: the default, see
    /// [`Options::rounds`].
    pub(crate) rounds: Option<usize>,
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
                "--rounds" => {
                    let n = it
                        .next()
                        .context("--rounds needs a value (interleaved rounds, 0 disables)")?;
                    o.rounds = Some(parse_rounds(n)?);
                }
                s if s.starts_with("--rounds=") => {
                    o.rounds = Some(parse_rounds(&s["--rounds=".len()..])?);
                }
                other => bail!(
                    "bench: unexpected argument `{other}` (expected --quick, --filter REGEX, --no-threads, --rounds N, --report-only)"
                ),
            }
        }
        Ok(o)
    }

    /// Interleaved rounds per thread setting: `--rounds N` if given, else
    /// [`rounds::default_rounds`].
    pub(crate) fn rounds(&self) -> usize {
        self.rounds
            .unwrap_or_else(|| rounds::default_rounds(self.quick))
    }
}

/// Parses the value of `--rounds`: a non-negative integer.
fn parse_rounds(s: &str) -> Result<usize> {
    s.parse()
        .with_context(|| format!("--rounds: `{s}` is not a non-negative integer"))
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

/// The criterion home of one bench target within a pass folder (`<pass>/<package>/<bench>`), so
/// that every id of the pass can be traced to the executable that measured it.
pub(crate) fn target_home(pass: &Path, t: &BenchTarget) -> PathBuf {
    pass.join(&t.package).join(&t.name)
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

    let all_dir = pass_dir(root, Threads::All.pass());
    let one_dir = pass_dir(root, Threads::One.pass());
    let rounds_dir = rounds::rounds_dir(root);
    fsutil::remove_dir_if_exists(&all_dir)?;
    fsutil::remove_dir_if_exists(&one_dir)?;
    fsutil::remove_dir_if_exists(&rounds_dir)?;

    let mut stdout = String::new();
    for (t, exe) in &exes {
        let home = target_home(&all_dir, t);
        let what = format!("{}/{}", t.package, t.name);
        stdout += &run_bench(
            t,
            exe,
            opts.quick,
            &home,
            opts.filter.as_deref(),
            None,
            &what,
        )?;
    }
    let one_thread = !opts.no_threads && machine.threads > 1;
    let mut stdout_1 = String::new();
    if one_thread {
        let filter = opts.filter.as_deref().unwrap_or(MAIN_KERNELS);
        for (t, exe) in &exes {
            let home = target_home(&one_dir, t);
            let what = format!("{}/{} (1 thread)", t.package, t.name);
            stdout_1 += &run_bench(t, exe, opts.quick, &home, Some(filter), Some(1), &what)?;
        }
    }
    let count = opts.rounds();
    let rounds_start = Instant::now();
    let mut interleaved = Vec::new();
    let settings = [
        (Threads::All, &all_dir, true),
        (Threads::One, &one_dir, one_thread),
    ];
    for (threads, pass, ran) in settings {
        if count > 0 && ran {
            let quick = opts.quick;
            interleaved.extend(run_rounds(&exes, pass, threads, count, quick, &rounds_dir)?);
        }
    }
    let rounds_s = rounds_start.elapsed().as_secs_f64();
    let name = |t: &BenchTarget| format!("{}/{}", t.package, t.name);
    let run = report::Run {
        machine,
        quick: opts.quick,
        filter: opts.filter.clone(),
        targets: targets.iter().map(name).collect(),
        skipped: skipped.iter().map(name).collect(),
        measured: criterion::read_all(&all_dir)?,
        measured_1: criterion::read_all(&one_dir)?,
        rounds: count,
        interleaved,
        stdout,
        stdout_1,
        build_s: built,
        rounds_s,
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
fn locate(exes: &[(BenchTarget, PathBuf)], pass: &Path) -> Result<Vec<(usize, Estimate)>> {
    let mut out = Vec::new();
    for (i, (t, _)) in exes.iter().enumerate() {
        let found = criterion::read_all(&target_home(pass, t))?;
        out.extend(found.into_iter().map(|e| (i, e)));
    }
    Ok(out)
}

/// Runs the interleaved rounds of every group planned from a pass (see [`rounds::plan`]).
fn run_rounds(
    exes: &[(BenchTarget, PathBuf)],
    pass: &Path,
    threads: Threads,
    count: usize,
    quick: bool,
    rounds_dir: &Path,
) -> Result<Vec<GroupRounds>> {
    let located = locate(exes, pass)?;
    let measured: Vec<Estimate> = located.iter().map(|(_, e)| e.clone()).collect();
    let groups = rounds::plan(threads, &measured);
    if groups.is_empty() {
        eprintln!(
            "xtask: no interleaved rounds ({}): no target was measured with its baseline",
            threads.label()
        );
    }
    groups
        .iter()
        .map(|g| run_group(exes, &located, g, count, quick, rounds_dir))
        .collect()
}

/// One invocation of a round: which bench executable, which criterion full ids.
#[derive(Debug)]
struct Invocation<'a> {
    /// The bench target and its executable.
    exe: &'a (BenchTarget, PathBuf),
    /// The criterion full ids to run.
    ids: Vec<&'a str>,
}

/// The invocations that run `keys` (one per bench executable holding some, in `exes` order).
fn invocations<'a>(
    exes: &'a [(BenchTarget, PathBuf)],
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

/// Runs the rounds of one group (baseline, targets, …, baseline), each run into its own
/// criterion home, checking every run's output as it comes; returns what they measured.
fn run_group(
    exes: &[(BenchTarget, PathBuf)],
    located: &[(usize, Estimate)],
    group: &rounds::Group,
    count: usize,
    quick: bool,
    rounds_dir: &Path,
) -> Result<GroupRounds> {
    let base = invocations(
        exes,
        located,
        std::slice::from_ref(&group.baseline),
        group.threads,
    )?;
    let targets = invocations(exes, located, &group.targets, group.threads)?;
    let dir = rounds::group_dir(rounds_dir, group);
    let t0 = Instant::now();
    for r in 0..=count {
        let home = rounds::run_home(&dir, Role::Baseline, r);
        let what = format!(
            "rounds of `{}` ({}): baseline run {}/{}",
            group.baseline,
            group.threads.label(),
            r + 1,
            count + 1
        );
        run_invocations(&base, quick, &home, group.threads, &what)?;
        rounds::read_run(&home, std::slice::from_ref(&group.baseline))
            .with_context(|| format!("after {what}"))?;
        if r == count {
            break;
        }
        let home = rounds::run_home(&dir, Role::Targets, r);
        let what = format!(
            "rounds of `{}` ({}): targets run {}/{count}",
            group.baseline,
            group.threads.label(),
            r + 1
        );
        run_invocations(&targets, quick, &home, group.threads, &what)?;
        rounds::read_run(&home, &group.targets).with_context(|| format!("after {what}"))?;
    }
    let measured = rounds::read_group(rounds_dir, group, count)?;
    for key in &group.targets {
        if let Some((c, s)) = rounds::summary(std::slice::from_ref(&measured), key, group.threads) {
            eprintln!(
                "xtask: interleaved ({}) `{key}`: {}",
                group.threads.label(),
                report::fmt_spread(c, &s)
            );
        }
    }
    eprintln!(
        "xtask: rounds of `{}` ({}) took {:.0} s",
        group.baseline,
        group.threads.label(),
        t0.elapsed().as_secs_f64()
    );
    Ok(measured)
}

/// Runs the invocations of one run of a round into the criterion home `home`.
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
        let what = format!("{what} ({}/{})", t.package, t.name);
        run_bench(t, exe, quick, home, Some(&filter), threads.rayon(), &what)?;
    }
    Ok(())
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
        assert_eq!(Options::default().rounds(), rounds::DEFAULT_ROUNDS);
        let o = Options::parse(&s(&["--quick", "--filter", "ortho"])).unwrap();
        assert!(o.quick && o.filter.as_deref() == Some("ortho"));
        let o = Options::parse(&s(&["--filter=aqlm", "--no-threads", "--report-only"])).unwrap();
        assert!(o.no_threads && o.report_only && o.filter.as_deref() == Some("aqlm"));
        assert!(Options::parse(&s(&["--filter"])).is_err());
        // --rounds: default 3, 0 with --quick unless given.
        assert_eq!(Options::parse(&s(&["--quick"])).unwrap().rounds(), 0);
        let o = Options::parse(&s(&["--quick", "--rounds", "2"])).unwrap();
        assert_eq!((o.rounds, o.rounds()), (Some(2), 2));
        assert_eq!(Options::parse(&s(&["--rounds=0"])).unwrap().rounds(), 0);
        assert!(Options::parse(&s(&["--rounds"])).is_err());
        assert!(Options::parse(&s(&["--rounds", "-1"])).is_err());
        assert!(Options::parse(&s(&["--rounds=x"])).is_err());
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
        assert_eq!(
            target_home(Path::new("/x/threads-all"), &exes[1].0),
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
}
