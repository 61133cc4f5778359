//! `docs/bench/REPORT.md` and its SVG plots, from what a run measured: one small function per
//! section, each writing its table with [`Table`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::criterion::{self, Estimate};
use crate::machine::Machine;
use crate::plot::{self, Series, fmt_seconds};
use crate::python::{self, Status};
use crate::roofline::{self, Probes, Rates};
use crate::rounds::{self, GroupRounds, Spread, Threads};
use crate::targets::{self, Baseline, Compare, Target};
use crate::{fsutil, keys};

/// What run.json keeps of a run; the estimates stay in criterion's folders and are re-read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Machine facts.
    pub(crate) machine: Machine,
    /// `--quick` mode.
    pub(crate) quick: bool,
    /// The `--filter` given.
    pub(crate) filter: Option<String>,
    /// `--no-threads` was given.
    pub(crate) no_threads: bool,
    /// Bench targets run, as `package/bench`.
    pub(crate) benches: Vec<String>,
    /// Captured stdout of the all-thread pass (workspace printouts).
    pub(crate) stdout: String,
    /// Captured stdout of the one-thread pass.
    pub(crate) stdout_1: String,
    /// Seconds spent building the benches.
    pub(crate) build_s: f64,
    /// Seconds spent in the interleaved rounds (and the vs-Python rounds).
    pub(crate) rounds_s: f64,
    /// Seconds for the whole command.
    pub(crate) total_s: f64,
    /// The interleaved rounds that ran.
    pub(crate) rounds: rounds::Record,
    /// The probes' readings (none: a run that did not probe).
    pub(crate) probes: Option<Probes>,
    /// The comparison with the Python reference.
    pub(crate) python: Status,
}

/// Everything one `cargo xtask bench` run produced.
#[derive(Debug, Clone, Default)]
pub(crate) struct Run {
    /// What run.json keeps.
    pub(crate) meta: Meta,
    /// Estimates with all threads.
    pub(crate) measured: Vec<Estimate>,
    /// Estimates with `RAYON_NUM_THREADS=1`.
    pub(crate) measured_1: Vec<Estimate>,
    /// What the interleaved rounds measured, per group of targets and thread setting.
    pub(crate) interleaved: Vec<GroupRounds>,
    /// The vs-Python rounds.
    pub(crate) python: Vec<python::Round>,
}

impl Run {
    /// Re-reads a run's estimates below its data folder ([`crate::bench::data_dir`]).
    pub(crate) fn load(meta: Meta, data: &Path) -> Result<Run> {
        let pass = |t: Threads| crate::bench::pass_dir(data, t);
        Ok(Run {
            measured: criterion::read_all(&pass(Threads::All))?,
            measured_1: criterion::read_all(&pass(Threads::One))?,
            interleaved: meta
                .rounds
                .load(&rounds::rounds_dir(data))
                .context("reading the interleaved rounds")?,
            python: python::load(&python::dir(data), &meta.python)?,
            meta,
        })
    }

    /// The estimates of a thread setting's pass.
    fn pass(&self, threads: Threads) -> &[Estimate] {
        match threads {
            Threads::All => &self.measured,
            Threads::One => &self.measured_1,
        }
    }

    /// The probe rates of a thread setting.
    fn rates(&self, threads: Threads) -> Option<&Rates> {
        let p = self.meta.probes.as_ref()?;
        Some(match threads {
            Threads::All => &p.all,
            Threads::One => &p.one,
        })
    }
}

/// A markdown table; a header cell ending in `>` is right-aligned (the `>` is dropped).
struct Table {
    head: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new<S: AsRef<str>>(head: &[S]) -> Table {
        let cells = head.iter().map(|h| {
            let h = h.as_ref();
            match h.strip_suffix('>') {
                Some(h) => (h.to_string(), true),
                None => (h.to_string(), false),
            }
        });
        let (head, right) = cells.unzip();
        Table {
            head,
            right,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn write(&self, md: &mut String) {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        md.push_str(&line(&self.head));
        let align: Vec<&str> = self
            .right
            .iter()
            .map(|&r| if r { "---:" } else { "---" })
            .collect();
        md.push_str(&format!("|{}|\n", align.join("|")));
        for r in &self.rows {
            md.push_str(&line(r));
        }
        md.push('\n');
    }
}

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

/// `2.31× (2.10–2.50×)`.
fn fmt_ratio_spread(s: &Spread) -> String {
    format!("{:.2}× ({:.2}–{:.2}×)", s.median, s.min, s.max)
}

/// `1.20 ms (1.10–1.30 ms)`.
fn fmt_time_spread(s: &Spread) -> String {
    format!(
        "{} ({}–{})",
        fmt_seconds(s.median),
        fmt_seconds(s.min),
        fmt_seconds(s.max)
    )
}

/// `1 round`, `3 rounds`.
fn rounds_text(n: usize) -> String {
    if n == 1 {
        "1 round".into()
    } else {
        format!("{n} rounds")
    }
}

fn fmt_bytes(b: f64) -> String {
    if b >= f64::from(1u32 << 20) {
        format!("{:.2} MiB", b / f64::from(1u32 << 20))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// `201 M`, `4.19 M`, `16.8 k`.
fn fmt_count(n: f64) -> String {
    let (v, unit) = if n >= 1e9 {
        (n / 1e9, " G")
    } else if n >= 1e6 {
        (n / 1e6, " M")
    } else if n >= 1e3 {
        (n / 1e3, " k")
    } else {
        (n, "")
    };
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$}{unit}")
}

/// Python's rounds of one work this many times apart (slowest over fastest) or more mark its
/// verdict as unsure in the vs-Python table: the reference was disturbed while it ran (the
/// fastest round of a quiet run is within a few tens of percent of the slowest).
const PYTHON_DISTURBED_SPREAD: f64 = 2.0;

fn met_cell(m: Option<bool>) -> String {
    match m {
        Some(true) => "yes".into(),
        Some(false) => "**no**".into(),
        None => "n/a (baseline not run)".into(),
    }
}

fn base_name(b: &Baseline) -> String {
    if b.factor == 1.0 {
        format!("`{}`", b.key)
    } else {
        format!("{}× `{}`", b.factor, b.key)
    }
}

fn find<'a>(all: &'a [Estimate], key: &str) -> Option<&'a Estimate> {
    all.iter().find(|e| e.key == key)
}

/// The markdown text of the report (plots are referenced by file name).
pub(crate) fn markdown(run: &Run, plots: &[(String, String)]) -> String {
    let mut md = String::new();
    header(&mut md, run);
    targets_table(&mut md, run, Threads::All);
    targets_table(&mut md, run, Threads::One);
    vs_python(&mut md, run);
    roofline_model(&mut md, run);
    area_tables(&mut md, run);
    memory_table(&mut md, run);
    plot_section(&mut md, plots);
    missing_keys(&mut md, run);
    md.push_str(REPRODUCE);
    md
}

/// The command that reproduces a run.
fn command(meta: &Meta) -> String {
    let mut cmd = String::from("cargo xtask bench");
    if meta.quick {
        cmd += " --quick";
    }
    if let Some(f) = &meta.filter {
        cmd += &format!(" --filter '{f}'");
    }
    if meta.no_threads {
        cmd += " --no-threads";
    }
    if meta.rounds.count != rounds::default_rounds(meta.quick) {
        cmd += &format!(" --rounds {}", meta.rounds.count);
    }
    if meta.python != Status::NotRequested {
        cmd += " --vs-python";
    }
    cmd
}

fn header(md: &mut String, run: &Run) {
    let m = &run.meta;
    let threads = m.machine.threads;
    let _ = writeln!(md, "# oftq benchmark report\n");
    let _ = writeln!(
        md,
        "Generated by `{}`; do not edit by hand, re-run the command. Medians of criterion \
         estimates; the machine-readable medians (seconds) are in [`results.json`](results.json); \
         how the figures are made: [README](README.md).\n",
        command(m)
    );
    let _ = writeln!(md, "- **Machine:** {}", m.machine.line());
    let mode = if m.quick {
        "quick (criterion `--quick`: no warm-up, stops at 5% spread; for development, noisy)"
    } else {
        "full (criterion defaults of each bench)"
    };
    let _ = writeln!(md, "- **Mode:** {mode}");
    let _ = writeln!(md, "- **Benches run:** {}", m.benches.join(", "));
    let rounds_time = if m.rounds_s > 0.0 {
        format!(", rounds {:.0} s", m.rounds_s)
    } else {
        String::new()
    };
    let _ = writeln!(
        md,
        "- **Wall time:** {:.0} s (of which building the benches {:.0} s{rounds_time})",
        m.total_s, m.build_s
    );
    let _ = writeln!(
        md,
        "- **Threads:** medians with all {threads} threads; the main kernels again with \
         `RAYON_NUM_THREADS=1` ({} results). Ratios compare a bench with its baseline from the \
         same pass or round.",
        run.measured_1.len()
    );
    let n = m.rounds.count;
    if n > 0 {
        let _ = writeln!(
            md,
            "- **Interleaved rounds:** after the passes, every target compared with a baseline is \
             measured again in {}, sandwiched between runs of its baseline (baseline, targets, \
             baseline, …, baseline; each run a separate bench invocation), and each round \
             compares the target with the geometric mean of the two baseline runs around it, \
             which cancels a linear drift of the machine's speed. The one-thread rounds of a \
             baseline run in lockstep with its all-thread rounds, so each round also gives a \
             thread speed-up from two runs seconds apart. The Met columns use the median over \
             the rounds where there is one.\n",
            rounds_text(n)
        );
    } else {
        let _ = writeln!(
            md,
            "- **Interleaved rounds:** none in this run (`--rounds 0`, the default with \
             `--quick`); the Met columns use the single-pass ratios, and there is no thread \
             speed-up (two passes minutes apart do not measure one).\n"
        );
    }
}

/// The time a target's "% of limit" refers to: its interleaved median if rounds ran, else its
/// pass median.
fn measured_time(run: &Run, key: &str, threads: Threads) -> Option<f64> {
    rounds::median_time(&run.interleaved, key, threads)
        .or_else(|| find(run.pass(threads), key).map(|e| e.median_s))
}

/// The limit and "% of limit" cells of a target row.
fn limit_cells(run: &Run, key: &str, threads: Threads) -> [String; 2] {
    let Some(work) = roofline::work_of(key) else {
        return ["—".into(), String::new()];
    };
    let Some(rates) = run.rates(threads) else {
        return ["not probed".into(), String::new()];
    };
    let Some((limit, bound)) = roofline::limit(&work, rates) else {
        return ["no probe for this CPU".into(), String::new()];
    };
    let pct = measured_time(run, key, threads)
        .map(|t| format!("{:.0}%", limit / t * 100.0))
        .unwrap_or_default();
    [format!("{} ({})", fmt_seconds(limit), bound.name()), pct]
}

/// The target table of one thread setting.
fn targets_table(md: &mut String, run: &Run, threads: Threads) {
    let all = threads == Threads::All;
    let measured = run.pass(threads);
    let title = if all {
        format!("all {} threads", run.meta.machine.threads)
    } else {
        "1 thread".into()
    };
    let _ = writeln!(md, "## Targets from the issues, {title}\n");
    if measured.is_empty() {
        let _ = writeln!(
            md,
            "No pass at this thread setting in this run (`--no-threads`, or one thread only).\n"
        );
        return;
    }
    let n = run.meta.rounds.count;
    let inter_col = format!("Interleaved, {}: median (min – max)>", rounds_text(n));
    let mut head = vec!["Bench", "Median>", "Compared with", "Single pass>"];
    if n > 0 {
        head.push(&inter_col);
    }
    head.extend(["Target", "Met", "Limit (bound)>", "% of limit>"]);
    if all && n > 0 {
        head.push("Thread speed-up, interleaved>");
    }
    let mut table = Table::new(&head);
    for key in keys::RESULT_KEYS {
        let Some(target) = targets::target_of(key) else {
            continue;
        };
        let mut row = target_row(run, key, threads);
        let met = verdict(run, key, target, threads);
        row.extend([target.describe(compare_of(key, measured)), met]);
        row.extend(limit_cells(run, key, threads));
        if all && n > 0 {
            let speedup = rounds::thread_speedup(&run.interleaved, key);
            row.push(speedup.map(|s| fmt_ratio_spread(&s)).unwrap_or_default());
        }
        table.row(row);
    }
    table.write(md);
    if all {
        let _ = writeln!(
            md,
            "Limit: the roofline lower bound of the row on this machine (see \"Roofline\" below); \
             % of limit: that bound over the interleaved median time (the single-pass median \
             without rounds). Encoder quality (1024² Gaussian, 2x8, relative error ≤ 0.095) is \
             measured by the encoder's own report (`cargo test --release -p oftq-aqlm \
             quality_table -- --ignored --nocapture`), not by this bench.\n"
        );
    }
}

/// How a key compares with its baseline (speed-up when it has none).
fn compare_of(key: &str, measured: &[Estimate]) -> Compare {
    targets::pick_baseline(key, measured).map_or(Compare::Speedup, |b| b.compare)
}

/// The first cells of a target row: bench, median, compared with, single-pass value, and the
/// interleaved spread when rounds ran.
fn target_row(run: &Run, key: &str, threads: Threads) -> Vec<String> {
    let measured = run.pass(threads);
    let with_rounds = run.meta.rounds.count > 0;
    let Some(e) = find(measured, key) else {
        let mut row = vec![
            format!("`{key}`"),
            "not run".into(),
            String::new(),
            String::new(),
        ];
        if with_rounds {
            row.push(String::new());
        }
        return row;
    };
    let base = targets::pick_baseline(key, measured);
    let value = base.as_ref().and_then(|b| targets::compare(e, b, measured));
    let (with, single) = match (&base, value) {
        (Some(b), Some(v)) => (base_name(b), fmt_value(b.compare, v)),
        (Some(b), None) => (format!("{} (not run)", base_name(b)), "—".into()),
        (None, _) => ("absolute time".into(), fmt_seconds(e.median_s)),
    };
    let mut row = vec![format!("`{key}`"), fmt_seconds(e.median_s), with, single];
    if with_rounds {
        let inter = rounds::summary(&run.interleaved, key, threads);
        row.push(inter.map(|(c, s)| fmt_spread(c, &s)).unwrap_or_default());
    }
    row
}

/// Whether a target is met: by the interleaved median when there is one, else the single pass.
fn verdict(run: &Run, key: &str, target: Target, threads: Threads) -> String {
    let measured = run.pass(threads);
    let Some(e) = find(measured, key) else {
        return "n/a (bench not run)".into();
    };
    let value =
        targets::pick_baseline(key, measured).and_then(|b| targets::compare(e, &b, measured));
    let inter = rounds::summary(&run.interleaved, key, threads).map(|(_, s)| s.median);
    met_cell(targets::met(target, inter.or(value), e.median_s))
}

/// The "vs Python" section.
fn vs_python(md: &mut String, run: &Run) {
    let _ = writeln!(md, "## Against the Python reference (`--vs-python`)\n");
    let status = &run.meta.python;
    match status {
        Status::NotRequested => {
            let _ = writeln!(
                md,
                "Not run: add `--vs-python` (needs the reference environment that \
                 `../shared/anchors/setup.sh` builds).\n"
            );
            return;
        }
        Status::Unavailable(why) => {
            let _ = writeln!(md, "Not run: {why}.\n");
            return;
        }
        Status::Failed { rounds, error } => {
            let _ = writeln!(
                md,
                "The Python reference failed after {} (shown below, if any): {error}\n",
                rounds_text(*rounds)
            );
        }
        Status::Ran { rounds, threads } => {
            let torch = run.python.first().map(|r| r.torch.as_str()).unwrap_or("");
            let _ = writeln!(
                md,
                "aqlm 1.1.7 and PEFT 0.21.2 on {torch} (`ref_bench.py --threads {threads}`, \
                 `ref_train_step.py {threads}`), alternating with oftq's benches of the same \
                 work in {} (oftq first in even rounds, Python first in odd ones); each column \
                 is the median over the rounds (min – max), and the ratio of round r is \
                 Python's time over oftq's in that round. A verdict is marked unsure when \
                 Python's rounds of that work are {PYTHON_DISTURBED_SPREAD}× or more apart (the \
                 reference was disturbed while it ran).\n",
                rounds_text(*rounds)
            );
        }
    }
    if run.python.is_empty() {
        return;
    }
    let mut table = Table::new(&[
        "Work",
        "oftq bench",
        "oftq>",
        "Python>",
        "Python / oftq>",
        "Target",
        "Met",
    ]);
    for s in python::summaries(&run.python) {
        let ratio = s.ratio.as_ref();
        // Python's slowest round over its fastest, when the spread says the reference was
        // disturbed while it ran: the verdict then stands on a median that is no reading.
        let disturbed = s
            .python
            .as_ref()
            .map(|p| p.max / p.min)
            .filter(|&x| x >= PYTHON_DISTURBED_SPREAD);
        let met = match (s.pair.target, ratio) {
            (Some(t), Some(r)) => {
                let cell = met_cell(Some(r.median >= t));
                match disturbed {
                    Some(x) => format!("{cell} (unsure: Python's rounds {x:.1}× apart)"),
                    None => cell,
                }
            }
            (Some(_), None) => "n/a (oftq bench not run)".into(),
            (None, _) => String::new(),
        };
        table.row(vec![
            format!("{} (`python.{}`)", s.pair.work, s.pair.name),
            s.pair.key.map(|k| format!("`{k}`")).unwrap_or("—".into()),
            s.oftq.as_ref().map(fmt_time_spread).unwrap_or_default(),
            s.python.as_ref().map(fmt_time_spread).unwrap_or_default(),
            ratio.map(fmt_ratio_spread).unwrap_or_default(),
            s.pair.target.map(|t| format!("≥ {t}×")).unwrap_or_default(),
            met,
        ]);
    }
    table.write(md);
    let counts: Vec<String> = run
        .python
        .iter()
        .filter_map(|r| r.nondeterministic.map(|n| n.to_string()))
        .collect();
    let _ = writeln!(
        md,
        "PEFT's rotation step builds R from its parameters inside the forward; oftq's bench \
         builds it once outside (`ortho.build_r…` measures that part). aqlm's 2x8 GEMV gave \
         answers differing from its first call in {} of 20 identical calls (per round); oftq's \
         results are bit-identical across runs and thread counts.\n",
        if counts.is_empty() {
            "?".into()
        } else {
            counts.join(", ")
        }
    );
}

/// The "Roofline" section: the probes' readings and every row's counts.
fn roofline_model(md: &mut String, run: &Run) {
    let _ = writeln!(md, "## Roofline: lower bounds on this machine\n");
    let _ = writeln!(
        md,
        "A row's limit is max(bytes / bandwidth, multiply-adds / FMA rate, look-ups / look-up \
         rate), with the rates measured by probes in this run (xtask's `roofline` module; best \
         of {} trials, probed before the passes and after the rounds, the better reading \
         kept): the bandwidth of every thread reading its share of a buffer of the row's size \
         (so data that stays in cache reads at the cache's speed, as in the bench), twelve \
         independent chains of vector FMAs per thread, and hardware gathers from a 256-entry \
         table in L1 (a kernel that looked up by other means could beat that rate and show \
         above 100%). The counts are those of the algorithm oftq runs for the shape, at the \
         smallest operation count known for it.\n",
        roofline::TRIALS
    );
    let mut table = Table::new(&[
        "Bench",
        "Bytes>",
        "Multiply-adds>",
        "Look-ups>",
        "Counted as",
    ]);
    for key in keys::RESULT_KEYS {
        if let Some(w) = roofline::work_of(key) {
            table.row(vec![
                format!("`{key}`"),
                fmt_bytes(w.bytes),
                fmt_count(w.fmas),
                if w.lookups > 0.0 {
                    fmt_count(w.lookups)
                } else {
                    String::new()
                },
                w.why.into(),
            ]);
        }
    }
    table.write(md);
    let Some(p) = &run.meta.probes else {
        let _ = writeln!(md, "No probe readings in this run.\n");
        return;
    };
    let per_s = |v: Option<f64>, unit: &str| {
        v.map(|v| format!("{}{unit}/s", fmt_count(v)))
            .unwrap_or("—".into())
    };
    let (a, o) = (&p.all, &p.one);
    let _ = writeln!(md, "Probes ({}):\n", p.isa);
    let all_col = format!("{} threads>", a.threads);
    let mut table = Table::new(&["Rate", all_col.as_str(), "1 thread>"]);
    table.row(vec![
        "multiply-adds".into(),
        per_s(a.fma_per_s, ""),
        per_s(o.fma_per_s, ""),
    ]);
    table.row(vec![
        "look-ups".into(),
        per_s(a.lookups_per_s, ""),
        per_s(o.lookups_per_s, ""),
    ]);
    for (size, bw) in &a.bandwidth {
        let one = o
            .bandwidth
            .iter()
            .find(|(s, _)| s == size)
            .map(|(_, b)| Some(*b));
        table.row(vec![
            format!("read bandwidth, {} buffer", fmt_bytes(*size as f64)),
            per_s(Some(*bw), "B"),
            per_s(one.flatten(), "B"),
        ]);
    }
    table.write(md);
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
    } else if key.starts_with("candle.") {
        "candle"
    } else {
        "baselines"
    }
}

const AREAS: [(&str, &str); 6] = [
    ("ortho", "Rotations (oftq-ortho)"),
    ("aqlm", "AQLM kernels (oftq-aqlm), 4096×4096"),
    ("layer", "AqlmOftLinear training step (oftq-layer)"),
    ("candle", "The same layer through candle (oftq-candle)"),
    ("encoder", "AQLM encoder"),
    ("baselines", "In-run baselines (faer)"),
];

/// One table per area: every bench the run measured.
fn area_tables(md: &mut String, run: &Run) {
    let threads = run.meta.machine.threads;
    let mut by_area: BTreeMap<&str, Vec<&Estimate>> = BTreeMap::new();
    for e in &run.measured {
        by_area.entry(area_of(&e.key)).or_default().push(e);
    }
    let all_col = format!("Median ({threads} thr)>");
    for (area, title) in AREAS {
        let Some(rows) = by_area.get(area) else {
            continue;
        };
        let _ = writeln!(md, "## {title}\n");
        let mut table = Table::new(&[
            "Bench",
            all_col.as_str(),
            "Median (1 thr)>",
            "GFLOP/s>",
            "vs baseline",
            "vs baseline, 1 thr",
            "Target",
        ]);
        for e in rows {
            table.row(area_row(run, e));
        }
        table.write(md);
    }
}

fn area_row(run: &Run, e: &Estimate) -> Vec<String> {
    let one = find(&run.measured_1, &e.key);
    let vs = |set: &[Estimate], est: Option<&Estimate>, name: bool| {
        let est = est?;
        let b = targets::pick_baseline(&est.key, set)?;
        Some(match targets::compare(est, &b, set) {
            Some(v) if name => format!("{} ({})", fmt_value(b.compare, v), base_name(&b)),
            Some(v) => fmt_value(b.compare, v),
            None => format!("{} not run", base_name(&b)),
        })
    };
    let compare = compare_of(&e.key, &run.measured);
    vec![
        format!("`{}`", e.key),
        fmt_seconds(e.median_s),
        one.map(|o| fmt_seconds(o.median_s)).unwrap_or_default(),
        e.elements
            .map(|f| format!("{:.1}", f / e.median_s * 1e-9))
            .unwrap_or_default(),
        vs(&run.measured, Some(e), true).unwrap_or_default(),
        vs(&run.measured_1, one, false).unwrap_or_default(),
        targets::target_of(&e.key)
            .map(|t| t.describe(compare))
            .unwrap_or_default(),
    ]
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

fn memory_table(md: &mut String, run: &Run) {
    let _ = writeln!(md, "## Peak extra memory of the forward paths\n");
    let ws = parse_workspace(&run.meta.stdout);
    let ws1 = parse_workspace(&run.meta.stdout_1);
    if ws.is_empty() {
        let _ = writeln!(
            md,
            "No `workspace …` printout in this run (the aqlm kernel bench prints \
             `AqlmLayer::workspace_bytes(kernel, tokens, threads)` for every path before it runs).\n"
        );
        return;
    }
    let _ = writeln!(
        md,
        "`AqlmLayer::workspace_bytes(kernel, tokens, threads)` as printed by the aqlm bench: \
         scratch memory beyond the input and output, 4096×4096 layer.\n"
    );
    let all_col = format!("{} threads>", run.meta.machine.threads);
    let mut table = Table::new(&[
        "Scheme",
        "Tokens>",
        "Kernel",
        all_col.as_str(),
        "1 thread>",
        "Note",
    ]);
    for w in &ws {
        let one = ws1
            .iter()
            .find(|o| o.scheme == w.scheme && o.tokens == w.tokens && o.kernel == w.kernel);
        table.row(vec![
            w.scheme.clone(),
            w.tokens.to_string(),
            w.kernel.clone(),
            fmt_bytes(w.bytes as f64),
            one.map(|o| fmt_bytes(o.bytes as f64)).unwrap_or_default(),
            w.note.clone(),
        ]);
    }
    table.write(md);
}

fn plot_section(md: &mut String, plots: &[(String, String)]) {
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
            "Time vs block size needs a block-size sweep \
             (`ortho.rotate_fwd_bwd.neumann5.n512.d4096.b<B>` for several B), which this run did \
             not measure.\n"
        );
    }
}

fn missing_keys(md: &mut String, run: &Run) {
    let missing: Vec<String> = keys::RESULT_KEYS
        .iter()
        .filter(|k| find(&run.measured, k).is_none())
        .map(|k| format!("`{k}`"))
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(
            md,
            "## Not measured in this run\n\nThese `results.json` keys are absent because their \
             bench did not run (or does not exist yet): {}.\n",
            missing.join(", ")
        );
    }
}

const REPRODUCE: &str = "## Reproduce

```sh
cargo xtask bench --quick   # development: every results key, no rounds (a few minutes on 2 cores)
cargo xtask bench           # full run (3 interleaved rounds; ~25 min on 2 cores)
cargo xtask bench --vs-python   # also against the Python reference, in rounds
cargo xtask bench --filter 'aqlm' --no-threads   # a subset
cargo xtask bench --report-only # rewrite the report from the last run's data
```
";

const TOKENS_PLOT: &str = "time-vs-tokens.svg";
const BLOCK_PLOT: &str = "time-vs-block.svg";

/// The time-vs-tokens series: the AQLM kernels and the dense baseline of each pass, keyed by the
/// id without its `.t<N>` segment.
fn token_series(run: &Run) -> Vec<Series> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (suffix, set) in [("", &run.measured), (" (1 thread)", &run.measured_1)] {
        for e in set {
            let is_dense = e.key.starts_with("baseline.dense_f32.") && e.key.contains(".4096");
            let is_aqlm = e.key.starts_with("aqlm.forward.") || e.key.starts_with("aqlm.backward.");
            let t = if is_dense && e.key.contains(".gemv.") {
                Some(1)
            } else {
                keys::tokens_of(&e.key)
            };
            let Some(t) = t.filter(|_| is_dense || is_aqlm) else {
                continue;
            };
            let name: String = if is_dense {
                "dense faer f32".into()
            } else {
                let parts = e.key.trim_start_matches("aqlm.").split('.');
                let parts = parts.filter(|s| *s != "4096" && keys::tokens_of(s).is_none());
                parts.collect::<Vec<_>>().join(" ")
            };
            let points = series.entry(format!("{name}{suffix}")).or_default();
            points.push((t as f64, e.median_s));
        }
    }
    series
        .into_iter()
        .filter(|(_, p)| p.len() >= 2)
        .map(|(name, points)| Series {
            dashed: name.starts_with("dense") || name.ends_with("(1 thread)"),
            name,
            points,
        })
        .collect()
}

/// The time-vs-block-size series: ortho ids with a `.b<N>` segment, grouped without it.
fn block_series(run: &Run) -> Vec<Series> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for e in run.measured.iter().filter(|e| e.key.starts_with("ortho.")) {
        let Some(b) = keys::block_of(&e.key) else {
            continue;
        };
        let name = e.key.split('.').filter(|s| keys::block_of(s).is_none());
        let name = name.collect::<Vec<_>>().join(".");
        series.entry(name).or_default().push((b as f64, e.median_s));
    }
    series
        .into_iter()
        .filter(|(_, p)| p.len() >= 2)
        .map(|(name, points)| Series {
            name,
            points,
            dashed: false,
        })
        .collect()
}

/// The plots that have data: (file name, title, svg text).
pub(crate) fn plots(run: &Run) -> Result<Vec<(String, String, String)>> {
    let specs = [
        (
            TOKENS_PLOT,
            "AQLM 4096×4096 vs dense: time vs tokens",
            "tokens",
            token_series(run),
        ),
        (
            BLOCK_PLOT,
            "Rotations: time vs block size b",
            "block size b",
            block_series(run),
        ),
    ];
    let mut out = Vec::new();
    for (file, title, x_label, series) in specs {
        if !series.is_empty() {
            let svg = plot::chart(title, x_label, &series)?;
            out.push((file.to_string(), title.to_string(), svg));
        }
    }
    Ok(out)
}

/// Writes REPORT.md and the plots into `dir`; returns the file names written.
pub(crate) fn write(dir: &Path, run: &Run) -> Result<Vec<String>> {
    let plots = plots(run)?;
    let mut files = Vec::new();
    for (file, _, svg) in &plots {
        fsutil::write_atomic(&dir.join(file), svg.as_bytes())?;
        files.push(format!("docs/bench/{file}"));
    }
    let names: Vec<(String, String)> = plots.into_iter().map(|(f, t, _)| (f, t)).collect();
    fsutil::write_atomic(&dir.join("REPORT.md"), markdown(run, &names).as_bytes())?;
    files.push("docs/bench/REPORT.md".into());
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
            meta: Meta {
                machine: Machine {
                    cpu: "Test CPU".into(),
                    threads: 2,
                    rustc: "rustc 1.95.0".into(),
                    commit: "abc".into(),
                    date: "2026-01-01".into(),
                    load: Some(1.0),
                },
                quick: true,
                benches: vec!["oftq-aqlm/aqlm".into()],
                stdout:
                    "noise\nworkspace 2x8 t1        lut:       1024 bytes (2 threads; auto = Lut)\n"
                        .into(),
                build_s: 1.0,
                total_s: 10.0,
                ..Meta::default()
            },
            measured: vec![
                est("baseline.dense_f32.gemv.4096", 8e-3),
                est("baseline.dense_f32.gemm.4096.t16", 1e-2),
                est("aqlm.forward.2x8.4096.t1", 1e-3),
                est("aqlm.forward.2x8.4096.t16", 1e-2),
                est("aqlm.forward.2x8.4096.t16.lut", 2e-2),
            ],
            measured_1: vec![est("aqlm.forward.2x8.4096.t1", 2e-3)],
            ..Run::default()
        }
    }

    fn row<'a>(md: &'a str, start: &str) -> &'a str {
        md.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no row `{start}` in\n{md}"))
    }

    #[test]
    fn workspace_lines() {
        let w = parse_workspace(&run().meta.stdout);
        assert_eq!(w.len(), 1);
        let w = &w[0];
        let got = (w.scheme.as_str(), w.tokens, w.kernel.as_str(), w.bytes);
        assert_eq!(got, ("2x8", 1, "lut", 1024));
        assert_eq!(w.note, "2 threads; auto = Lut");
    }

    #[test]
    fn table_aligns_and_keeps_columns() {
        let mut md = String::new();
        let mut t = Table::new(&["a", "b>"]);
        t.row(vec!["1".into(), "2".into()]);
        t.write(&mut md);
        assert_eq!(md, "| a | b |\n|---|---:|\n| 1 | 2 |\n\n");
    }

    #[test]
    fn report_states_targets_and_missing_keys() {
        let md = markdown(&run(), &[]);
        assert!(md.contains(
            "| `aqlm.forward.2x8.4096.t1` | 1.00 ms | `baseline.dense_f32.gemv.4096` | 8.00× \
             faster | ≥ 8× faster | yes | not probed |  |"
        ));
        assert!(md.contains("| `aqlm.forward.2x8.4096.t16` | 10.0 ms |"));
        assert!(md.contains("1.00× faster"));
        assert!(md.contains("**no**"));
        assert!(md.contains("`aqlm.encode.2x8.1024`"));
        assert!(md.contains("| 2x8 | 1 | lut | 1.0 KiB |"));
        // The candle target is listed as not run, and its key as missing.
        let candle = row(&md, "| `candle.fwd_bwd.2x8.4096.t64.b32` |");
        assert!(
            candle.contains("not run") && candle.contains("time ≤ 1.15×"),
            "{candle}"
        );
        assert!(md.contains("`candle.fwd_bwd.2x8.4096.t64.b32`."), "{md}");
        // No rounds: no thread speed-up; no --vs-python: one line says so.
        assert!(!md.contains("Thread speed-up"));
        assert!(md.contains("Not run: add `--vs-python`"));
        assert!(md.contains("cargo xtask bench --quick`"));
    }

    #[test]
    fn interleaved_rounds_decide_the_verdict_and_give_thread_speedups() {
        let mut r = run();
        let (gemv, t1) = ("baseline.dense_f32.gemv.4096", "aqlm.forward.2x8.4096.t1");
        // Single pass: 8× faster (met). Rounds: 4×, 8× and 2× faster, median 4× (not met).
        r.meta.rounds = rounds::Record {
            count: 3,
            groups: Vec::new(),
        };
        r.meta.rounds_s = 42.0;
        let group = |threads, times: [f64; 3]| GroupRounds {
            group: rounds::Group {
                threads,
                baseline: gemv.into(),
                targets: vec![t1.into()],
            },
            baseline: vec![est(gemv, 4e-3); 4],
            targets: times.iter().map(|&t| vec![est(t1, t)]).collect(),
        };
        r.interleaved = vec![
            group(Threads::All, [1e-3, 0.5e-3, 2e-3]),
            group(Threads::One, [2e-3, 1.5e-3, 3e-3]),
        ];
        let md = markdown(&r, &[]);
        let t1_row = row(&md, "| `aqlm.forward.2x8.4096.t1` |");
        assert!(
            t1_row.starts_with(
                "| `aqlm.forward.2x8.4096.t1` | 1.00 ms | `baseline.dense_f32.gemv.4096` | \
                 8.00× faster | 4.00× faster (speed-ups 2.00–8.00×) | ≥ 8× faster | **no** |"
            ),
            "{t1_row}"
        );
        // Thread speed-ups 2, 3 and 1.5 in the three rounds.
        assert!(t1_row.ends_with("| 2.00× (1.50–3.00×) |"), "{t1_row}");
        assert!(md.contains("| Interleaved, 3 rounds: median (min – max) |"));
        assert!(md.contains("geometric mean of the two baseline runs"));
        assert!(md.contains("rounds 42 s"));
        assert!(md.contains("cargo xtask bench --quick --rounds 3`"));
        // A target without rounds keeps its single-pass verdict; the row has every column.
        let t16 = row(&md, "| `aqlm.forward.2x8.4096.t16` |");
        let header = row(&md, "| Bench | Median | Compared with |");
        assert_eq!(
            t16.matches('|').count(),
            header.matches('|').count(),
            "{t16}"
        );
        let candle = row(&md, "| `candle.fwd_bwd.2x8.4096.t64.b32` |");
        assert_eq!(
            candle.matches('|').count(),
            header.matches('|').count(),
            "{candle}"
        );
    }

    #[test]
    fn roofline_percent_of_limit() {
        let mut r = run();
        let rates = Rates {
            threads: 2,
            fma_per_s: Some(1e11),
            lookups_per_s: Some(1e10),
            bandwidth: vec![(1 << 30, 1e11)],
        };
        r.meta.probes = Some(Probes {
            isa: "avx512f".into(),
            all: rates.clone(),
            one: rates,
        });
        let md = markdown(&r, &[]);
        // 2x8 GEMV: 4.19 M look-ups at 10 G/s = 419 µs, over 1 ms measured.
        let t1 = row(&md, "| `aqlm.forward.2x8.4096.t1` | 1.00 ms");
        assert!(t1.contains("| 419 µs (look-ups) | 42% |"), "{t1}");
        assert!(
            md.contains("| `aqlm.forward.2x8.4096.t1` | 4.06 MiB | 2.10 M | 4.19 M |"),
            "{md}"
        );
        assert!(md.contains("| multiply-adds | 100 G/s | 100 G/s |"), "{md}");
    }

    #[test]
    fn vs_python_table_and_status_lines() {
        let mut r = run();
        r.meta.python = Status::Unavailable("no Python reference environment at /x".into());
        let md = markdown(&r, &[]);
        assert!(
            md.contains("Not run: no Python reference environment at /x.\n"),
            "{md}"
        );
        r.meta.python = Status::Ran {
            rounds: 2,
            threads: 2,
        };
        let round = |py: f64, oftq: f64| python::Round {
            oftq: vec![est("aqlm.forward.2x8.4096.t1", oftq)],
            python: [("aqlm_2x8_gemv_4096".to_string(), py)].into(),
            torch: "torch 2.15.0, 2 threads".into(),
            nondeterministic: Some(19),
        };
        r.python = vec![round(12e-3, 1e-3), round(8e-3, 1e-3)];
        let md = markdown(&r, &[]);
        assert!(md.contains("cargo xtask bench --quick --vs-python`"));
        let gemv = row(&md, "| AQLM 2x8 4096², 1 token");
        assert!(
            gemv.ends_with(
                "| `aqlm.forward.2x8.4096.t1` | 1.00 ms (1.00 ms–1.00 ms) | 10.0 ms (8.00 ms–12.0 ms) \
                 | 10.00× (8.00–12.00×) | ≥ 10× | yes |"
            ),
            "{gemv}"
        );
        assert!(md.contains("in 19, 19 of 20 identical calls"));
        // A disturbed reference (rounds 2× apart or more): the verdict is flagged.
        r.python = vec![round(25e-3, 1e-3), round(9e-3, 1e-3)];
        let md = markdown(&r, &[]);
        let gemv = row(&md, "| AQLM 2x8 4096², 1 token");
        assert!(
            gemv.ends_with("| ≥ 10× | yes (unsure: Python's rounds 2.8× apart) |"),
            "{gemv}"
        );
        let step = row(&md, "| training step");
        assert!(
            step.ends_with("| ≥ 6× | n/a (oftq bench not run) |"),
            "{step}"
        );
    }

    #[test]
    fn token_plot_needs_two_points() {
        let p = plots(&run()).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, TOKENS_PLOT);
        // dense (2 points) and forward 2x8 (2 points); the lut variant has one point only.
        let names: Vec<String> = token_series(&run()).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["dense faer f32", "forward 2x8"]);
        assert!(p[0].2.contains("forward 2x8"));
    }
}
