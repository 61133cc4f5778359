//! `docs/bench/REPORT.md` and its SVG plots, from the measured estimates.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::criterion::Estimate;
use crate::machine::Machine;
use crate::rounds::{self, GroupRounds, Spread, Threads};
use crate::svg::{self, Series, fmt_seconds};
use crate::targets::{self, Compare};
use crate::{criterion, fsutil, keys};

/// Everything one `cargo xtask bench` run produced.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    /// Machine facts.
    pub(crate) machine: Machine,
    /// `--quick` mode.
    pub(crate) quick: bool,
    /// The `--filter` given.
    pub(crate) filter: Option<String>,
    /// Bench targets run, as `package/bench`.
    pub(crate) targets: Vec<String>,
    /// Bench targets skipped (by `--quick`).
    pub(crate) skipped: Vec<String>,
    /// Estimates with all threads.
    pub(crate) measured: Vec<Estimate>,
    /// Estimates with `RAYON_NUM_THREADS=1`.
    pub(crate) measured_1: Vec<Estimate>,
    /// Interleaved rounds per thread setting (0: none ran).
    pub(crate) rounds: usize,
    /// What the interleaved rounds measured, per group of targets and thread setting.
    pub(crate) interleaved: Vec<GroupRounds>,
    /// Captured stdout of the all-thread pass (workspace printouts).
    pub(crate) stdout: String,
    /// Captured stdout of the one-thread pass.
    pub(crate) stdout_1: String,
    /// Seconds spent building the benches.
    pub(crate) build_s: f64,
    /// Seconds spent in the interleaved rounds.
    pub(crate) rounds_s: f64,
    /// Seconds for the whole command.
    pub(crate) total_s: f64,
}

impl Run {
    /// What `--report-only` needs to rebuild the run (estimates, also those of the rounds, are
    /// re-read from criterion's folders under `target/xtask-bench/`).
    pub(crate) fn to_json(&self) -> Value {
        let m = &self.machine;
        json!({
            "machine": { "cpu": m.cpu, "threads": m.threads, "rustc": m.rustc, "commit": m.commit,
                         "date": m.date, "load": m.load },
            "quick": self.quick, "filter": self.filter, "targets": self.targets,
            "skipped": self.skipped, "stdout": self.stdout, "stdout_1": self.stdout_1,
            "build_s": self.build_s, "rounds_s": self.rounds_s, "total_s": self.total_s,
            "rounds": rounds::to_json(self.rounds, &self.interleaved),
        })
    }

    /// Inverse of [`Run::to_json`], re-reading the estimates below `root/target/xtask-bench/`.
    pub(crate) fn from_json(v: &Value, root: &Path) -> Result<Run> {
        let s = |x: &Value| x.as_str().map(String::from);
        let list = |x: &Value| -> Vec<String> {
            x.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let m = &v["machine"];
        let (count, interleaved) = rounds::from_json(&v["rounds"], &rounds::rounds_dir(root))
            .context("reading the interleaved rounds")?;
        Ok(Run {
            machine: Machine {
                cpu: s(&m["cpu"]).context("no machine.cpu")?,
                threads: m["threads"].as_u64().context("no machine.threads")? as usize,
                rustc: s(&m["rustc"]).unwrap_or_default(),
                commit: s(&m["commit"]).unwrap_or_default(),
                date: s(&m["date"]).unwrap_or_default(),
                load: m["load"].as_f64(),
            },
            quick: v["quick"].as_bool().unwrap_or(false),
            filter: s(&v["filter"]),
            targets: list(&v["targets"]),
            skipped: list(&v["skipped"]),
            measured: criterion::read_all(&crate::bench::pass_dir(root, "threads-all"))?,
            measured_1: criterion::read_all(&crate::bench::pass_dir(root, "threads-1"))?,
            rounds: count,
            interleaved,
            stdout: s(&v["stdout"]).unwrap_or_default(),
            stdout_1: s(&v["stdout_1"]).unwrap_or_default(),
            build_s: v["build_s"].as_f64().unwrap_or(0.0),
            rounds_s: v["rounds_s"].as_f64().unwrap_or(0.0),
            total_s: v["total_s"].as_f64().unwrap_or(0.0),
        })
    }
}

/// The area (report section) of a key.
pub(crate) fn area_of(key: &str) -> &'static str {
    if key.starts_with("aqlm.encode") {
        "encoder"
    } else if key.starts_with("ortho.") {
        "ortho"
    } else if key.starts_with("aqlm.") {
        "aqlm"
    } else if key.starts_with("layer.") {
        "layer"
    } else {
        "baselines"
    }
}

const AREAS: [(&str, &str); 5] = [
    ("ortho", "Rotations (oftq-ortho)"),
    ("aqlm", "AQLM kernels (oftq-aqlm), 4096×4096"),
    ("layer", "AqlmOftLinear training step (oftq-layer)"),
    ("encoder", "AQLM encoder"),
    ("baselines", "In-run baselines (faer)"),
];

/// A comparison value as text, e.g. `52% of GEMM FLOP/s`, `1.30× faster`.
pub(crate) fn fmt_value(c: Compare, v: f64) -> String {
    match c {
        Compare::FlopFraction => format!("{:.0}% of GEMM FLOP/s", v * 100.0),
        Compare::Speedup if v < 1.0 => format!("{:.2}× slower", 1.0 / v),
        Compare::Speedup => format!("{v:.2}× faster"),
        Compare::TimeRatio => format!("{v:.2}× the baseline time"),
    }
}

/// The interleaved figure of a target: the median as [`fmt_value`], then the range of the raw
/// values, e.g. `52% of GEMM FLOP/s (48–55%)`, `1.30× faster (speed-ups 1.21–1.38×)`.
pub(crate) fn fmt_spread(c: Compare, s: &Spread) -> String {
    let range = match c {
        Compare::FlopFraction => format!("{:.0}–{:.0}%", s.min * 100.0, s.max * 100.0),
        Compare::Speedup => format!("speed-ups {:.2}–{:.2}×", s.min, s.max),
        Compare::TimeRatio => format!("{:.2}–{:.2}×", s.min, s.max),
    };
    format!("{} ({range})", fmt_value(c, s.median))
}

/// `1 round`, `3 rounds`.
fn rounds_text(n: usize) -> String {
    if n == 1 {
        "1 round".into()
    } else {
        format!("{n} rounds")
    }
}

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / f64::from(1u32 << 20))
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

fn met_cell(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a (baseline not run)",
    }
}

/// One row of a workspace printout: `workspace 2x8 t1 lut: 1234 bytes (2 threads; auto = Lut)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Workspace {
    /// Scheme (`2x8`).
    pub(crate) scheme: String,
    /// Tokens.
    pub(crate) tokens: u64,
    /// Kernel name.
    pub(crate) kernel: String,
    /// Extra bytes.
    pub(crate) bytes: u64,
    /// The rest of the line (threads, auto kernel).
    pub(crate) note: String,
}

/// Parses the `workspace …` lines a bench printed; other lines are ignored.
pub(crate) fn parse_workspace(stdout: &str) -> Vec<Workspace> {
    stdout
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 6 || w[0] != "workspace" || w[5] != "bytes" {
                return None;
            }
            Some(Workspace {
                scheme: w[1].to_string(),
                tokens: w[2].strip_prefix('t')?.parse().ok()?,
                kernel: w[3].trim_end_matches(':').to_string(),
                bytes: w[4].parse().ok()?,
                note: w[6..]
                    .join(" ")
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .to_string(),
            })
        })
        .collect()
}

fn find<'a>(all: &'a [Estimate], key: &str) -> Option<&'a Estimate> {
    all.iter().find(|e| e.key == key)
}

/// The markdown text of the report (plots are referenced by file name).
pub(crate) fn markdown(run: &Run, plots: &[(String, String)]) -> String {
    let mut md = String::new();
    let threads = run.machine.threads;
    let default_rounds = rounds::default_rounds(run.quick);
    let cmd = format!(
        "cargo xtask bench{}{}{}",
        if run.quick { " --quick" } else { "" },
        run.filter
            .as_ref()
            .map(|f| format!(" --filter '{f}'"))
            .unwrap_or_default(),
        if run.rounds == default_rounds {
            String::new()
        } else {
            format!(" --rounds {}", run.rounds)
        }
    );
    let _ = writeln!(md, "# oftq benchmark report\n");
    let _ = writeln!(
        md,
        "Generated by `{cmd}`; do not edit by hand, re-run the command. Medians of criterion \
         estimates; the machine-readable medians (seconds) are in [`results.json`](results.json).\n"
    );
    let _ = writeln!(md, "- **Machine:** {}", run.machine.line());
    let mode = if run.quick {
        "quick (criterion `--quick`: no warm-up, stops at 5% spread; for development, noisy)"
    } else {
        "full (criterion defaults of each bench)"
    };
    let _ = writeln!(md, "- **Mode:** {mode}");
    let _ = writeln!(md, "- **Benches run:** {}", run.targets.join(", "));
    if !run.skipped.is_empty() {
        let _ = writeln!(
            md,
            "- **Skipped by `--quick`:** {} (run without `--quick` or with `--filter` to include)",
            run.skipped.join(", ")
        );
    }
    let rounds_time = if run.rounds > 0 {
        format!(", interleaved rounds {:.0} s", run.rounds_s)
    } else {
        String::new()
    };
    let _ = writeln!(
        md,
        "- **Wall time:** {:.0} s (of which building the benches {:.0} s{rounds_time})",
        run.total_s, run.build_s
    );
    let _ = writeln!(
        md,
        "- **Threads:** medians with all {threads} threads; the main kernels again with \
         `RAYON_NUM_THREADS=1` ({} results). Ratios compare a bench with its baseline from the \
         same pass. On a shared machine (see the load average) multi-threaded medians, the \
         faer baselines' in particular, can be much slower than single-threaded ones; the \
         one-thread columns are then the fairer comparison.",
        run.measured_1.len()
    );
    let n = run.rounds;
    if n > 0 {
        let _ = writeln!(
            md,
            "- **Interleaved rounds:** after the passes, every target compared with a baseline is \
             measured again in {} per thread setting, sandwiched between runs of its \
             baseline (baseline, targets, baseline, …, baseline; each run a separate bench \
             invocation), and each round compares the target with the geometric mean of the two \
             baseline runs around it, which cancels a linear drift of the machine's speed; the \
             Met columns use the median over the rounds where there is one.\n",
            rounds_text(n)
        );
    } else {
        let _ = writeln!(
            md,
            "- **Interleaved rounds:** none in this run (`--rounds 0`, the default with \
             `--quick`); the Met columns use the single-pass ratios.\n"
        );
    }

    // Target summary.
    let _ = writeln!(md, "## Targets from the issues\n");
    let interleaved = n > 0;
    let mut header = vec!["Bench", "Median", "Compared with", "Measured"];
    let mut align = vec!["---", "---:", "---", "---:"];
    let all_col = format!("Interleaved, {}: median (min – max)", rounds_text(n));
    let one_col = format!(
        "Interleaved, 1 thread, {}: median (min – max)",
        rounds_text(n)
    );
    if interleaved {
        header.push(&all_col);
        align.push("---:");
    }
    header.extend(["Target", "Met", "Measured, 1 thread"]);
    align.extend(["---", "---", "---:"]);
    if interleaved {
        header.push(&one_col);
        align.push("---:");
    }
    header.push("Met, 1 thread");
    align.push("---");
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "|{}|", align.join("|"));
    let mut any_target = false;
    for key in keys::RESULT_KEYS.iter().chain(&targets::EXTRA_TARGET_KEYS) {
        let Some(target) = targets::target_of(key) else {
            continue;
        };
        let base = targets::pick_baseline(key, &run.measured);
        let compare = base.as_ref().map_or(Compare::Speedup, |b| b.compare);
        let Some(e) = find(&run.measured, key) else {
            let mut cells = vec![format!("`{key}`"), "not run".into(), String::new()];
            cells.push(String::new());
            if interleaved {
                cells.push(String::new());
            }
            cells.extend([
                target.describe(compare),
                "n/a (bench not run)".into(),
                String::new(),
            ]);
            if interleaved {
                cells.push(String::new());
            }
            cells.push(String::new());
            let _ = writeln!(md, "| {} |", cells.join(" | "));
            continue;
        };
        any_target = true;
        let value = base
            .as_ref()
            .and_then(|b| targets::compare(e, b, &run.measured));
        let (with, measured) = match (&base, value) {
            (Some(b), Some(v)) => (base_name(b), fmt_value(b.compare, v)),
            (Some(b), None) => (base_name(b), "—".into()),
            (None, _) => ("absolute time".into(), fmt_seconds(e.median_s)),
        };
        // The interleaved median decides the verdict when there is one.
        let inter = rounds::summary(&run.interleaved, key, Threads::All);
        let verdict = inter.map(|(_, s)| s.median).or(value);
        // The same comparison within the one-thread pass (bench and baseline both on 1 thread).
        let one = find(&run.measured_1, key);
        let base_1 = targets::pick_baseline(key, &run.measured_1);
        let value_1 = one
            .zip(base_1.as_ref())
            .and_then(|(o, b)| targets::compare(o, b, &run.measured_1));
        let inter_1 = rounds::summary(&run.interleaved, key, Threads::One);
        let verdict_1 = inter_1.map(|(_, s)| s.median).or(value_1);
        let (measured_1, met_1) = match (one, &base_1, value_1) {
            (Some(o), Some(b), Some(v)) => (
                fmt_value(b.compare, v),
                met_cell(targets::met(target, verdict_1, o.median_s)),
            ),
            (Some(o), None, _) => (
                fmt_seconds(o.median_s),
                met_cell(targets::met(target, None, o.median_s)),
            ),
            _ => (String::new(), ""),
        };
        let spread =
            |x: Option<(Compare, Spread)>| x.map(|(c, s)| fmt_spread(c, &s)).unwrap_or_default();
        let mut cells = vec![format!("`{key}`"), fmt_seconds(e.median_s), with, measured];
        if interleaved {
            cells.push(spread(inter));
        }
        cells.extend([
            target.describe(compare),
            met_cell(targets::met(target, verdict, e.median_s)).into(),
            measured_1,
        ]);
        if interleaved {
            cells.push(spread(inter_1));
        }
        cells.push(met_1.into());
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    if !any_target {
        let _ = writeln!(md, "\nNo targeted bench ran in this run.");
    }
    let _ = writeln!(
        md,
        "\nEncoder quality (1024² Gaussian, 2x8, relative error ≤ 0.095) is measured by the \
         encoder's own report (`cargo test --release -p oftq-aqlm quality_table -- --ignored \
         --nocapture`), not by this bench.\n"
    );

    // Per-area tables.
    let by_area = {
        let mut m: BTreeMap<&str, Vec<&Estimate>> = BTreeMap::new();
        for e in &run.measured {
            m.entry(area_of(&e.key)).or_default().push(e);
        }
        m
    };
    for (area, title) in AREAS {
        let Some(rows) = by_area.get(area) else {
            continue;
        };
        let _ = writeln!(md, "## {title}\n");
        let _ = writeln!(
            md,
            "| Bench | Median ({threads} thr) | Median (1 thr) | Thread speed-up | GFLOP/s | vs baseline | vs baseline, 1 thr | Target | Met |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---|---|---|---|");
        for e in rows {
            let one = find(&run.measured_1, &e.key);
            let base = targets::pick_baseline(&e.key, &run.measured);
            let value = base
                .as_ref()
                .and_then(|b| targets::compare(e, b, &run.measured));
            let vs = match (&base, value) {
                (Some(b), Some(v)) => format!("{} ({})", fmt_value(b.compare, v), base_name(b)),
                (Some(b), None) => format!("{} not run", base_name(b)),
                (None, _) => String::new(),
            };
            let vs_1 = one
                .zip(targets::pick_baseline(&e.key, &run.measured_1))
                .and_then(|(o, b)| {
                    Some(fmt_value(
                        b.compare,
                        targets::compare(o, &b, &run.measured_1)?,
                    ))
                })
                .unwrap_or_default();
            let target = targets::target_of(&e.key);
            let compare = base.as_ref().map_or(Compare::Speedup, |b| b.compare);
            // As in the target summary: the interleaved median decides when there is one.
            let verdict = rounds::summary(&run.interleaved, &e.key, Threads::All)
                .map(|(_, s)| s.median)
                .or(value);
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} | {vs} | {vs_1} | {} | {} |",
                e.key,
                fmt_seconds(e.median_s),
                one.map(|o| fmt_seconds(o.median_s)).unwrap_or_default(),
                one.map(|o| format!("{:.2}×", o.median_s / e.median_s))
                    .unwrap_or_default(),
                e.elements
                    .map(|f| format!("{:.1}", f / e.median_s * 1e-9))
                    .unwrap_or_default(),
                target.map(|t| t.describe(compare)).unwrap_or_default(),
                target
                    .map(|t| met_cell(targets::met(t, verdict, e.median_s)))
                    .unwrap_or_default(),
            );
        }
        let _ = writeln!(md);
    }

    // Memory.
    let _ = writeln!(md, "## Peak extra memory of the forward paths\n");
    let ws = parse_workspace(&run.stdout);
    let ws1 = parse_workspace(&run.stdout_1);
    if ws.is_empty() {
        let _ = writeln!(
            md,
            "No `workspace …` printout in this run (the aqlm kernel bench prints \
             `AqlmLayer::workspace_bytes(kernel, tokens, threads)` for every path before it runs).\n"
        );
    } else {
        let _ = writeln!(
            md,
            "`AqlmLayer::workspace_bytes(kernel, tokens, threads)` as printed by the aqlm bench: \
             scratch memory beyond the input and output, 4096×4096 layer.\n"
        );
        let _ = writeln!(
            md,
            "| Scheme | Tokens | Kernel | {threads} threads | 1 thread | Note |"
        );
        let _ = writeln!(md, "|---|---:|---|---:|---:|---|");
        for w in &ws {
            let one = ws1
                .iter()
                .find(|o| o.scheme == w.scheme && o.tokens == w.tokens && o.kernel == w.kernel);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                w.scheme,
                w.tokens,
                w.kernel,
                fmt_bytes(w.bytes),
                one.map(|o| fmt_bytes(o.bytes)).unwrap_or_default(),
                w.note
            );
        }
        let _ = writeln!(md);
    }

    // Plots.
    let _ = writeln!(md, "## Plots\n");
    if plots.is_empty() {
        let _ = writeln!(md, "No series with two or more points in this run.\n");
    }
    for (file, title) in plots {
        let _ = writeln!(md, "![{title}]({file})\n");
    }
    if !plots.iter().any(|(f, _)| f == BLOCK_PLOT) {
        let _ = writeln!(
            md,
            "Time vs block size needs a block-size sweep (`ortho.rotate_fwd_bwd.neumann5.n512.d4096.b<B>` \
             for several B), which this run did not measure.\n"
        );
    }

    // Missing keys.
    let missing: Vec<&str> = keys::RESULT_KEYS
        .iter()
        .copied()
        .filter(|k| find(&run.measured, k).is_none())
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(
            md,
            "## Not measured in this run\n\nThese `results.json` keys are absent because their bench \
             did not run: {}.\n",
            missing
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        md,
        "## Reproduce\n\n```sh\ncargo xtask bench --quick   # development, < 3 min on 2 cores\n\
         cargo xtask bench           # full run (every bench incl. the encoder, 3 interleaved rounds; ~25 min on 2 cores)\n\
         cargo xtask bench --filter 'aqlm' --no-threads   # a subset\n```"
    );
    md
}

fn base_name(b: &targets::Baseline) -> String {
    if b.factor == 1.0 {
        format!("`{}`", b.key)
    } else {
        format!("{}× `{}`", b.factor, b.key)
    }
}

const TOKENS_PLOT: &str = "time-vs-tokens.svg";
const BLOCK_PLOT: &str = "time-vs-block.svg";

/// The plots that have data: (file name, title, svg text).
pub(crate) fn plots(run: &Run) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    // Time vs tokens: series keyed by the id with its `.t<N>` segment removed.
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (suffix, set) in [("", &run.measured), (" (1 thread)", &run.measured_1)] {
        for e in set.iter() {
            let is_dense = e.key.starts_with("baseline.dense_f32.") && e.key.contains(".4096");
            let is_aqlm = e.key.starts_with("aqlm.forward.") || e.key.starts_with("aqlm.backward.");
            if !(is_dense || is_aqlm) {
                continue;
            }
            let t = if is_dense && e.key.contains(".gemv.") {
                Some(1)
            } else {
                keys::tokens_of(&e.key)
            };
            let Some(t) = t else { continue };
            let name: String = if is_dense {
                "dense faer f32".into()
            } else {
                e.key
                    .trim_start_matches("aqlm.")
                    .split('.')
                    .filter(|s| *s != "4096" && keys::tokens_of(s).is_none())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            series
                .entry(format!("{name}{suffix}"))
                .or_default()
                .push((t as f64, e.median_s));
        }
    }
    let s: Vec<Series> = series
        .into_iter()
        .filter(|(_, p)| p.len() >= 2)
        .map(|(name, points)| Series {
            dashed: name.starts_with("dense") || name.ends_with("(1 thread)"),
            name,
            points,
        })
        .collect();
    if !s.is_empty() {
        let title = "AQLM 4096×4096 vs dense: time vs tokens";
        out.push((
            TOKENS_PLOT.into(),
            title.into(),
            svg::chart(title, "tokens", &s),
        ));
    }
    // Time vs block size: ortho ids with a `.b<N>` segment, grouped without it.
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for e in &run.measured {
        if !e.key.starts_with("ortho.") {
            continue;
        }
        let Some(b) = keys::block_of(&e.key) else {
            continue;
        };
        let name = e
            .key
            .split('.')
            .filter(|s| keys::block_of(s).is_none())
            .collect::<Vec<_>>()
            .join(".");
        series.entry(name).or_default().push((b as f64, e.median_s));
    }
    let s: Vec<Series> = series
        .into_iter()
        .filter(|(_, p)| p.len() >= 2)
        .map(|(name, points)| Series {
            name,
            points,
            dashed: false,
        })
        .collect();
    if !s.is_empty() {
        let title = "Rotations: time vs block size b";
        out.push((
            BLOCK_PLOT.into(),
            title.into(),
            svg::chart(title, "block size b", &s),
        ));
    }
    out
}

/// Writes REPORT.md and the plots into `dir`; returns the file names written.
pub(crate) fn write(dir: &Path, run: &Run) -> Result<Vec<String>> {
    let plots = plots(run);
    let mut files = Vec::new();
    for (file, _, svg) in &plots {
        fsutil::write_atomic(&dir.join(file), svg.as_bytes())?;
        files.push(format!("docs/bench/{file}"));
    }
    let names: Vec<(String, String)> = plots.into_iter().map(|(f, t, _)| (f, t)).collect();
    fsutil::write_atomic(&dir.join("REPORT.md"), markdown(run, &names).as_bytes())?;
    files.push("docs/bench/REPORT.md".into());
    files.push("docs/bench/results.json".into());
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(k: &str, s: f64) -> Estimate {
        Estimate::for_test(k, s, None)
    }

    fn run() -> Run {
        Run {
            machine: Machine {
                cpu: "Test CPU".into(),
                threads: 2,
                rustc: "rustc 1.95.0".into(),
                commit: "abc".into(),
                date: "2026-01-01".into(),
                load: Some(1.0),
            },
            quick: true,
            filter: None,
            targets: vec!["oftq-aqlm/aqlm".into()],
            skipped: vec!["oftq-aqlm/encode".into()],
            measured: vec![
                est("baseline.dense_f32.gemv.4096", 8e-3),
                est("baseline.dense_f32.gemm.4096.t16", 1e-2),
                est("aqlm.forward.2x8.4096.t1", 1e-3),
                est("aqlm.forward.2x8.4096.t16", 1e-2),
                est("aqlm.forward.2x8.4096.t16.lut", 2e-2),
            ],
            measured_1: vec![est("aqlm.forward.2x8.4096.t1", 2e-3)],
            rounds: 0,
            interleaved: Vec::new(),
            stdout:
                "noise\nworkspace 2x8 t1        lut:       1024 bytes (2 threads; auto = Lut)\n"
                    .into(),
            stdout_1: String::new(),
            build_s: 1.0,
            rounds_s: 0.0,
            total_s: 10.0,
        }
    }

    #[test]
    fn workspace_lines() {
        let w = parse_workspace(&run().stdout);
        assert_eq!(w.len(), 1);
        assert_eq!(
            (
                w[0].scheme.as_str(),
                w[0].tokens,
                w[0].kernel.as_str(),
                w[0].bytes
            ),
            ("2x8", 1, "lut", 1024)
        );
        assert_eq!(w[0].note, "2 threads; auto = Lut");
    }

    #[test]
    fn report_states_targets_and_missing_keys() {
        let md = markdown(&run(), &[]);
        assert!(md.contains("| `aqlm.forward.2x8.4096.t1` | 1.00 ms | `baseline.dense_f32.gemv.4096` | 8.00× faster | ≥ 8× faster | yes |"), "{md}");
        assert!(md.contains("| `aqlm.forward.2x8.4096.t16` | 10.0 ms |"));
        assert!(md.contains("1.00× faster"));
        assert!(md.contains("**no**"));
        assert!(md.contains("`aqlm.encode.2x8.1024`"));
        assert!(md.contains("Skipped by `--quick`"));
        assert!(md.contains("| 2x8 | 1 | lut | 1.0 KiB |"));
    }

    #[test]
    fn interleaved_rounds_decide_the_verdict() {
        let mut r = run();
        let (gemv, t1) = ("baseline.dense_f32.gemv.4096", "aqlm.forward.2x8.4096.t1");
        // Single pass: 8× faster (met). Rounds: 4×, 8× and 2× faster, median 4× (not met).
        r.rounds = 3;
        r.rounds_s = 42.0;
        r.interleaved = vec![GroupRounds {
            group: rounds::Group {
                threads: Threads::All,
                baseline: gemv.into(),
                targets: vec![t1.into()],
            },
            baseline: vec![est(gemv, 4e-3); 4],
            targets: vec![
                vec![est(t1, 1e-3)],
                vec![est(t1, 0.5e-3)],
                vec![est(t1, 2e-3)],
            ],
        }];
        let md = markdown(&r, &[]);
        assert!(
            md.contains(
                "| `aqlm.forward.2x8.4096.t1` | 1.00 ms | `baseline.dense_f32.gemv.4096` | \
                 8.00× faster | 4.00× faster (speed-ups 2.00–8.00×) | ≥ 8× faster | **no** |"
            ),
            "{md}"
        );
        assert!(md.contains("| Interleaved, 3 rounds: median (min – max) |"));
        assert!(md.contains("geometric mean of the two baseline runs"));
        assert!(md.contains("interleaved rounds 42 s"));
        assert!(md.contains("cargo xtask bench --quick --rounds 3"));
        // A target without rounds keeps its single-pass verdict; the row has every column.
        let row = md
            .lines()
            .find(|l| l.starts_with("| `aqlm.forward.2x8.4096.t16` |"))
            .unwrap();
        assert_eq!(row.matches('|').count(), 11, "{row}");
        // Without rounds, the table has no interleaved columns.
        let md = markdown(&run(), &[]);
        assert!(!md.contains("Interleaved, "));
        assert!(md.contains("none in this run"));
    }

    #[test]
    fn token_plot_needs_two_points() {
        let p = plots(&run());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, TOKENS_PLOT);
        // dense (2 points) and forward 2x8 (2 points); the lut variant has one point only.
        assert_eq!(p[0].2.matches("<polyline").count(), 2);
    }
}
