//! Interleaved rounds: every issue target measured again between runs of its baseline, so that
//! the drift of a shared machine's speed (tens of percent within a minute) cancels out.
//!
//! The targets that share a baseline form a [`Group`]. For a group, `cargo xtask bench` runs
//! baseline, targets, baseline, targets, …, baseline: R target runs sandwiched between R + 1
//! baseline runs, each a separate invocation of a bench executable with its own criterion home,
//! `<target dir>/xtask-bench/rounds/<pass>/<baseline key>/{baseline,targets}-<r>/`. Round r compares
//! the targets of run r with a baseline whose median is the geometric mean of baseline runs r
//! and r + 1 (a drift linear in time cancels); the report gives the median, min and max over
//! the rounds ([`Spread`]).
//!
//! The all-thread and one-thread groups of a baseline run in lockstep (all-thread baseline and
//! targets of round r, then the one-thread ones, then round r + 1, …), so that the thread
//! speed-up of a target is measured from two runs seconds apart ([`thread_speedup`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::criterion::{self, Estimate};
use crate::keys;
use crate::targets::{self, Baseline, Compare, Target};

/// Rounds of a full run when `--rounds` is not given (a `--quick` run has none by default).
pub(crate) const DEFAULT_ROUNDS: usize = 3;

/// The rounds per thread setting when `--rounds` is not given: [`DEFAULT_ROUNDS`] for a full run,
/// none for a `--quick` one.
pub(crate) fn default_rounds(quick: bool) -> usize {
    if quick { 0 } else { DEFAULT_ROUNDS }
}

/// A thread setting of the passes and of the rounds (in run.json by its pass name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Threads {
    /// All threads (`RAYON_NUM_THREADS` left as it is).
    #[serde(rename = "threads-all")]
    All,
    /// `RAYON_NUM_THREADS=1`.
    #[serde(rename = "threads-1")]
    One,
}

impl Threads {
    /// The pass folder name under `<target dir>/xtask-bench/` (`threads-all`, `threads-1`), also the
    /// name used in run.json.
    pub(crate) fn pass(self) -> &'static str {
        match self {
            Threads::All => "threads-all",
            Threads::One => "threads-1",
        }
    }

    /// The `RAYON_NUM_THREADS` value to set, if any.
    pub(crate) fn rayon(self) -> Option<usize> {
        match self {
            Threads::All => None,
            Threads::One => Some(1),
        }
    }

    /// For progress lines: `all threads`, `1 thread`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Threads::All => "all threads",
            Threads::One => "1 thread",
        }
    }
}

/// Targets that share a baseline, measured together in interleaved rounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Group {
    /// The thread setting of the rounds.
    pub(crate) threads: Threads,
    /// The baseline's key.
    pub(crate) baseline: String,
    /// The targets' keys, in report order.
    pub(crate) targets: Vec<String>,
}

/// Whether a key has an issue target that compares it with a baseline (not an absolute time).
fn compares_with_baseline(key: &str) -> bool {
    matches!(
        targets::target_of(key),
        Some(Target::AtLeast(_) | Target::AtMost(_))
    ) && !targets::baseline_of(key).is_empty()
}

/// The groups of rounds for one pass: every target key (`results.json` keys, then the extra
/// target keys) compared with a baseline, whose bench and picked baseline were both measured in
/// the pass, grouped by that baseline (groups in the order of their first target).
pub(crate) fn plan(threads: Threads, measured: &[Estimate]) -> Vec<Group> {
    let ran = |k: &str| measured.iter().any(|e| e.key == k);
    let mut groups: Vec<Group> = Vec::new();
    for key in keys::RESULT_KEYS {
        if !compares_with_baseline(key) || !ran(key) {
            continue;
        }
        let Some(base) = targets::pick_baseline(key, measured) else {
            continue;
        };
        if !ran(&base.key) {
            continue;
        }
        match groups.iter_mut().find(|g| g.baseline == base.key) {
            Some(g) => g.targets.push(key.to_string()),
            None => groups.push(Group {
                threads,
                baseline: base.key,
                targets: vec![key.to_string()],
            }),
        }
    }
    groups
}

/// A criterion filter matching exactly the given criterion full ids: `^(id1|id2)$`, escaped.
pub(crate) fn filter_regex(full_ids: &[&str]) -> String {
    let alternatives: Vec<String> = full_ids.iter().map(|id| regex::escape(id)).collect();
    format!("^({})$", alternatives.join("|"))
}

/// The order in which the groups' rounds run: batches of groups that share a baseline (the
/// all-thread group first), each batch run round by round in lockstep (see the module doc).
pub(crate) fn schedule(groups: Vec<Group>) -> Vec<Vec<Group>> {
    let mut batches: Vec<Vec<Group>> = Vec::new();
    for g in groups {
        match batches.iter_mut().find(|b| b[0].baseline == g.baseline) {
            Some(b) => b.push(g),
            None => batches.push(vec![g]),
        }
    }
    for b in &mut batches {
        b.sort_by_key(|g| g.threads != Threads::All);
    }
    batches
}

/// Where the rounds of a run write their criterion data, in the run's data folder.
pub(crate) fn rounds_dir(data: &Path) -> PathBuf {
    data.join("rounds")
}

/// The folder of one group's rounds: `<rounds_dir>/<pass>/<baseline key>`.
pub(crate) fn group_dir(rounds_dir: &Path, group: &Group) -> PathBuf {
    rounds_dir.join(group.threads.pass()).join(&group.baseline)
}

/// What one run of a round measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The group's baseline.
    Baseline,
    /// The group's targets.
    Targets,
}

/// The criterion home of run `r` of a role in a group folder (`baseline-0`, `targets-0`, …).
pub(crate) fn run_home(group_dir: &Path, role: Role, r: usize) -> PathBuf {
    let name = match role {
        Role::Baseline => "baseline",
        Role::Targets => "targets",
    };
    group_dir.join(format!("{name}-{r}"))
}

/// Reads the estimates of `keys` (in that order) from one run's criterion home; fails if any is
/// missing or unreadable.
pub(crate) fn read_run(home: &Path, keys: &[String]) -> Result<Vec<Estimate>> {
    let all = criterion::read_all(home)?;
    keys.iter()
        .map(|k| {
            all.iter()
                .find(|e| &e.key == k)
                .cloned()
                .with_context(|| format!("no criterion result for `{k}` in {}", home.display()))
        })
        .collect()
}

/// What the rounds of one group measured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupRounds {
    /// The group.
    pub(crate) group: Group,
    /// The baseline's estimates of baseline runs 0..=R.
    pub(crate) baseline: Vec<Estimate>,
    /// The targets' estimates of target runs 0..R, each run in `group.targets` order.
    pub(crate) targets: Vec<Vec<Estimate>>,
}

/// Reads the `count` rounds of a group back from their criterion homes; fails if a run's
/// output is missing or unreadable.
pub(crate) fn read_group(rounds_dir: &Path, group: &Group, count: usize) -> Result<GroupRounds> {
    if count == 0 {
        bail!("a group of rounds needs at least one round");
    }
    let dir = group_dir(rounds_dir, group);
    let what = format!(
        "the rounds of `{}` ({})",
        group.baseline,
        group.threads.label()
    );
    let base_key = std::slice::from_ref(&group.baseline);
    let baseline = (0..=count)
        .map(|r| {
            read_run(&run_home(&dir, Role::Baseline, r), base_key)?
                .into_iter()
                .next()
                .context("no baseline estimate")
        })
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("reading {what}"))?;
    let targets = (0..count)
        .map(|r| read_run(&run_home(&dir, Role::Targets, r), &group.targets))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("reading {what}"))?;
    Ok(GroupRounds {
        group: group.clone(),
        baseline,
        targets,
    })
}

/// The geometric mean of two positive numbers.
pub(crate) fn geometric_mean(a: f64, b: f64) -> f64 {
    (a * b).sqrt()
}

/// The comparison values of the rounds: round r compares `target_runs[r]` with `base` whose
/// median is the geometric mean of `baseline_runs[r]` and `baseline_runs[r + 1]`. `None` unless
/// there is one more baseline run than target runs (and at least one target run), or if a
/// comparison is impossible (e.g. no throughput for a FLOP fraction).
pub(crate) fn sandwich(
    base: &Baseline,
    baseline_runs: &[Estimate],
    target_runs: &[&Estimate],
) -> Option<Vec<f64>> {
    if target_runs.is_empty() || baseline_runs.len() != target_runs.len() + 1 {
        return None;
    }
    target_runs
        .iter()
        .zip(baseline_runs.windows(2))
        .map(|(t, pair)| {
            let (before, after) = (pair.first()?, pair.last()?);
            let b = Estimate {
                median_s: geometric_mean(before.median_s, after.median_s),
                ..before.clone()
            };
            targets::compare(t, base, std::slice::from_ref(&b))
        })
        .collect()
}

/// The spread of the per-round values of one target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spread {
    /// Number of rounds.
    pub(crate) rounds: usize,
    /// Median over the rounds (mean of the middle two for an even count).
    pub(crate) median: f64,
    /// Smallest value.
    pub(crate) min: f64,
    /// Largest value.
    pub(crate) max: f64,
}

impl Spread {
    /// Median, min and max of `values`; `None` if empty.
    pub(crate) fn of(values: &[f64]) -> Option<Spread> {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let (min, max) = (*v.first()?, *v.last()?);
        let median = if n % 2 == 1 {
            *v.get(n / 2)?
        } else {
            (v.get(n / 2 - 1)? + v.get(n / 2)?) / 2.0
        };
        Some(Spread {
            rounds: n,
            median,
            min,
            max,
        })
    }
}

/// The per-round comparison values of `key` in a group's rounds, with the comparison rule.
pub(crate) fn values(rounds: &GroupRounds, key: &str) -> Option<(Compare, Vec<f64>)> {
    let i = rounds.group.targets.iter().position(|k| k == key)?;
    let base = targets::baseline_of(key)
        .into_iter()
        .find(|b| b.key == rounds.group.baseline)?;
    let runs = rounds
        .targets
        .iter()
        .map(|run| run.get(i))
        .collect::<Option<Vec<&Estimate>>>()?;
    let v = sandwich(&base, &rounds.baseline, &runs)?;
    Some((base.compare, v))
}

/// The interleaved figure of `key` at a thread setting: comparison rule and spread over rounds.
pub(crate) fn summary(
    all: &[GroupRounds],
    key: &str,
    threads: Threads,
) -> Option<(Compare, Spread)> {
    let (compare, v) = all
        .iter()
        .filter(|g| g.group.threads == threads)
        .find_map(|g| values(g, key))?;
    Some((compare, Spread::of(&v)?))
}

/// The thread speed-up of a target over the rounds: round r divides its one-thread time by its
/// all-thread time of the same round (runs seconds apart, see [`schedule`]).
pub(crate) fn thread_speedup(all: &[GroupRounds], key: &str) -> Option<Spread> {
    let times = |threads| {
        all.iter()
            .filter(|g| g.group.threads == threads)
            .find_map(|g| target_times(g, key))
    };
    let (many, one) = (times(Threads::All)?, times(Threads::One)?);
    let v: Vec<f64> = one.iter().zip(&many).map(|(o, m)| o / m).collect();
    Spread::of(&v)
}

/// The median time (seconds) of a target over its rounds at a thread setting.
pub(crate) fn median_time(all: &[GroupRounds], key: &str, threads: Threads) -> Option<f64> {
    let v = all
        .iter()
        .filter(|g| g.group.threads == threads)
        .find_map(|g| target_times(g, key))?;
    Some(Spread::of(&v)?.median)
}

/// The times (seconds) of `key` in each target run of a group's rounds.
fn target_times(rounds: &GroupRounds, key: &str) -> Option<Vec<f64>> {
    let i = rounds.group.targets.iter().position(|k| k == key)?;
    rounds
        .targets
        .iter()
        .map(|run| run.get(i).map(|e| e.median_s))
        .collect()
}

/// The run.json form of a run's rounds: the count and the groups (the estimates stay in the
/// criterion homes and are re-read by [`Record::load`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Rounds per group (0: none ran).
    pub(crate) count: usize,
    /// The groups that ran.
    pub(crate) groups: Vec<Group>,
}

impl Record {
    /// Re-reads every group's criterion homes below `rounds_dir`.
    pub(crate) fn load(&self, rounds_dir: &Path) -> Result<Vec<GroupRounds>> {
        if self.count == 0 && !self.groups.is_empty() {
            bail!("rounds have groups but a count of 0");
        }
        self.groups
            .iter()
            .map(|g| {
                if g.targets.is_empty() {
                    bail!("the group of `{}` has no targets", g.baseline);
                }
                read_group(rounds_dir, g, self.count)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn est(k: &str, s: f64, el: Option<f64>) -> Estimate {
        Estimate::for_test(k, s, el)
    }

    const FAER: &str = "baseline.faer_gemm.f32.1024";
    const ROT: &str = "ortho.rotate_fwd_bwd.neumann5.n512.d4096.b32";
    const GEMV: &str = "baseline.dense_f32.gemv.4096";
    const GEMM64: &str = "baseline.dense_f32.gemm.4096.t64";
    const TWO: &str = "layer.baseline.two_dense_gemms.4096.t64";

    #[test]
    fn plans_groups_by_baseline() {
        let measured = [
            est(FAER, 1.0, Some(1.0)),
            est("ortho.build_r.neumann5.r128.b32", 1.0, Some(1.0)),
            est("ortho.build_r.exact.r128.b32", 1.0, Some(1.0)),
            est(ROT, 1.0, Some(1.0)),
            est("ortho.rotate_fwd_bwd.neumann5.n512.d4096.b16", 1.0, None),
            est(GEMM64, 1.0, None),
            est("aqlm.forward.2x8.4096.t64", 1.0, None),
            est("aqlm.backward.2x8.4096.t64", 1.0, None),
            // Baseline not measured: no group.
            est("aqlm.forward.2x8.4096.t1", 1.0, None),
            // No baseline comparison (absolute time), no target (1x8): no group.
            est("aqlm.encode.2x8.1024", 1.0, None),
            est("aqlm.forward.1x8.4096.t1", 1.0, None),
            est(TWO, 1.0, None),
            est("layer.train_step.2x8.4096.t64.b32", 1.0, None),
            est("layer.fwd_bwd.2x8.4096.t64.b32", 1.0, None),
        ];
        let g = plan(Threads::One, &measured);
        let summary: Vec<(&str, Vec<&str>)> = g
            .iter()
            .map(|g| {
                (
                    g.baseline.as_str(),
                    g.targets.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    FAER,
                    vec![
                        "ortho.build_r.neumann5.r128.b32",
                        "ortho.build_r.exact.r128.b32",
                        ROT
                    ]
                ),
                (
                    GEMM64,
                    vec!["aqlm.forward.2x8.4096.t64", "aqlm.backward.2x8.4096.t64"]
                ),
                (
                    TWO,
                    vec![
                        "layer.train_step.2x8.4096.t64.b32",
                        "layer.fwd_bwd.2x8.4096.t64.b32"
                    ]
                ),
            ]
        );
        assert!(g.iter().all(|g| g.threads == Threads::One));
        // The layer targets fall back to 2× the aqlm bench's GEMM when their own baseline is absent.
        let g = plan(
            Threads::All,
            &[
                est(GEMM64, 1.0, None),
                est("layer.train_step.2x8.4096.t64.b32", 1.0, None),
            ],
        );
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].baseline, GEMM64);
        assert!(plan(Threads::All, &[]).is_empty());
    }

    #[test]
    fn filter_matches_exact_ids_only() {
        assert_eq!(
            filter_regex(&["ortho/ortho.build_r.exact.r128.b32", "baseline/x-y"]),
            r"^(ortho/ortho\.build_r\.exact\.r128\.b32|baseline/x\-y)$"
        );
        let re = regex::Regex::new(&filter_regex(&["g/a(b)|[c]*+?{d}^$#&~"])).unwrap();
        assert!(re.is_match("g/a(b)|[c]*+?{d}^$#&~"));
        assert!(!re.is_match("g/ab"));
    }

    #[test]
    fn sandwich_cancels_linear_drift() {
        // The machine slows down linearly: baseline 1.0, 1.2, 1.4 s; a target that takes half
        // the baseline's time, measured half-way between: 0.55 and 0.65 s.
        let base = targets::baseline_of("aqlm.forward.2x8.4096.t1")
            .into_iter()
            .next()
            .unwrap();
        let b = [
            est(GEMV, 1.0, None),
            est(GEMV, 1.2, None),
            est(GEMV, 1.4, None),
        ];
        let t = [
            est("aqlm.forward.2x8.4096.t1", 0.55, None),
            est("aqlm.forward.2x8.4096.t1", 0.65, None),
        ];
        let v = sandwich(&base, &b, &[&t[0], &t[1]]).unwrap();
        assert_eq!(v.len(), 2);
        assert!((v[0] - (1.2f64).sqrt() / 0.55).abs() < 1e-12);
        assert!(v.iter().all(|x| (x - 2.0).abs() < 0.01), "{v:?}");
        // Counts must sandwich: one more baseline run than target runs.
        assert!(sandwich(&base, &b[..2], &[&t[0], &t[1]]).is_none());
        assert!(sandwich(&base, &b[..1], &[]).is_none());
        // FLOP fractions use the baseline's throughput.
        let base = targets::baseline_of(ROT).into_iter().next().unwrap();
        let b = [est(FAER, 1.0, Some(100.0)), est(FAER, 4.0, Some(100.0))];
        let t = est(ROT, 1.0, Some(60.0));
        let v = sandwich(&base, &b, &[&t]).unwrap();
        assert!((v[0] - 1.2).abs() < 1e-12);
        let no_flops = est(ROT, 1.0, None);
        assert!(sandwich(&base, &b, &[&no_flops]).is_none());
    }

    #[test]
    fn spread_is_median_min_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.rounds, s.median, s.min, s.max), (3, 2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(Spread::of(&[]), None);
    }

    fn group() -> Group {
        Group {
            threads: Threads::All,
            baseline: GEMM64.into(),
            targets: vec![
                "aqlm.forward.2x8.4096.t64".into(),
                "aqlm.backward.2x8.4096.t64".into(),
            ],
        }
    }

    #[test]
    fn summaries_per_target_and_threads() {
        let g = group();
        let rounds = GroupRounds {
            baseline: vec![est(GEMM64, 1.0, None), est(GEMM64, 1.0, None)],
            targets: vec![vec![
                est(&g.targets[0], 0.5, None),
                est(&g.targets[1], 2.0, None),
            ]],
            group: g,
        };
        let all = [rounds];
        let (c, s) = summary(&all, "aqlm.backward.2x8.4096.t64", Threads::All).unwrap();
        assert_eq!((c, s.rounds, s.median), (Compare::Speedup, 1, 0.5));
        let (_, s) = summary(&all, "aqlm.forward.2x8.4096.t64", Threads::All).unwrap();
        assert_eq!(s.median, 2.0);
        assert!(summary(&all, "aqlm.forward.2x8.4096.t64", Threads::One).is_none());
        assert!(summary(&all, "aqlm.forward.2x8.4096.t16", Threads::All).is_none());
    }

    fn write_estimate(home: &Path, e: &Estimate) {
        use serde_json::json;
        let (group, function) = e.full_id.split_once('/').unwrap();
        let new = home.join(group).join(function).join("new");
        std::fs::create_dir_all(&new).unwrap();
        let b = json!({"group_id": group, "function_id": function, "value_str": null,
                       "throughput": null, "full_id": e.full_id});
        let m = json!({"median": {"point_estimate": e.median_s * 1e9}});
        std::fs::write(new.join("benchmark.json"), b.to_string()).unwrap();
        std::fs::write(new.join("estimates.json"), m.to_string()).unwrap();
    }

    #[test]
    fn reads_rounds_back_and_fails_on_missing_runs() {
        let dir = tempfile::tempdir().unwrap();
        let g = group();
        let gd = group_dir(dir.path(), &g);
        assert!(gd.ends_with("threads-all/baseline.dense_f32.gemm.4096.t64"));
        for r in 0..3 {
            write_estimate(
                &run_home(&gd, Role::Baseline, r),
                &est(GEMM64, 1.0 + r as f64, None),
            );
        }
        for r in 0..2 {
            for k in &g.targets {
                write_estimate(&run_home(&gd, Role::Targets, r), &est(k, 0.5, None));
            }
        }
        let rounds = read_group(dir.path(), &g, 2).unwrap();
        assert_eq!(rounds.baseline.len(), 3);
        assert_eq!(rounds.targets.len(), 2);
        assert_eq!(rounds.targets[1][1].key, g.targets[1]);
        assert!((rounds.baseline[2].median_s - 3.0).abs() < 1e-12);

        // run.json round trip.
        let record = Record {
            count: 2,
            groups: vec![g.clone()],
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains(r#""threads":"threads-all""#), "{text}");
        let back: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(back.load(dir.path()).unwrap(), vec![rounds]);
        assert!(Record::default().load(dir.path()).unwrap().is_empty());

        // Three rounds need a fourth baseline run and a third target run: missing.
        let err = read_group(dir.path(), &g, 3).unwrap_err();
        assert!(format!("{err:#}").contains("baseline-3"), "{err:#}");
        // A target missing from a run.
        std::fs::remove_dir_all(
            run_home(&gd, Role::Targets, 1)
                .join("g")
                .join(&g.targets[0]),
        )
        .unwrap();
        let err = read_group(dir.path(), &g, 2).unwrap_err();
        assert!(
            format!("{err:#}").contains("aqlm.forward.2x8.4096.t64"),
            "{err:#}"
        );
        assert!(read_group(dir.path(), &g, 0).is_err());
        let bad = r#"{"count": 2, "groups": [{"threads": "threads-7", "baseline": "x", "targets": ["y"]}]}"#;
        assert!(serde_json::from_str::<Record>(bad).is_err());
        let no_targets = Record {
            count: 2,
            groups: vec![Group {
                targets: Vec::new(),
                ..g.clone()
            }],
        };
        assert!(no_targets.load(dir.path()).is_err());
    }

    #[test]
    fn threads_names_round_trip() {
        for t in [Threads::All, Threads::One] {
            let text = serde_json::to_string(&t).unwrap();
            assert_eq!(text, format!("\"{}\"", t.pass()));
            assert_eq!(serde_json::from_str::<Threads>(&text).unwrap(), t);
        }
        assert_eq!(Threads::One.rayon(), Some(1));
        assert_eq!(Threads::All.rayon(), None);
    }

    #[test]
    fn schedule_pairs_thread_settings_by_baseline() {
        let g = |threads, baseline: &str| Group {
            threads,
            baseline: baseline.into(),
            targets: vec!["t".into()],
        };
        let batches = schedule(vec![
            g(Threads::One, GEMV),
            g(Threads::All, GEMM64),
            g(Threads::All, GEMV),
        ]);
        let names: Vec<Vec<(Threads, &str)>> = batches
            .iter()
            .map(|b| b.iter().map(|g| (g.threads, g.baseline.as_str())).collect())
            .collect();
        assert_eq!(
            names,
            [
                vec![(Threads::All, GEMV), (Threads::One, GEMV)],
                vec![(Threads::All, GEMM64)]
            ]
        );
    }

    #[test]
    fn thread_speedup_pairs_rounds() {
        let g = group();
        let key = &g.targets[0];
        let rounds = |threads, times: &[f64]| GroupRounds {
            group: Group {
                threads,
                ..g.clone()
            },
            baseline: vec![est(GEMM64, 1.0, None); times.len() + 1],
            targets: times
                .iter()
                .map(|&t| vec![est(key, t, None), est(&g.targets[1], 1.0, None)])
                .collect(),
        };
        let all = [
            rounds(Threads::All, &[1.0, 2.0, 1.0]),
            rounds(Threads::One, &[1.5, 2.0, 1.9]),
        ];
        let s = thread_speedup(&all, key).unwrap();
        assert_eq!((s.median, s.min, s.max), (1.5, 1.0, 1.9));
        assert_eq!(median_time(&all, key, Threads::One), Some(1.9));
        assert_eq!(median_time(&all, key, Threads::All), Some(1.0));
        assert!(thread_speedup(&all[..1], key).is_none());
    }
}
