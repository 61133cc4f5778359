//! Interleaved rounds: every issue target measured again between runs of its baseline, so that
//! the drift of a shared machine's speed (tens of percent within a minute) cancels out.
//!
//! The targets that share a baseline form a [`Group`]. For a group, `cargo xtask bench` runs
//! baseline, targets, baseline, targets, …, baseline: R target runs sandwiched between R + 1
//! baseline runs, each a separate invocation of a bench executable with its own criterion home,
//! `target/xtask-bench/rounds/<pass>/<baseline key>/{baseline,targets}-<r>/`. Round r compares
//! the targets of run r with a baseline whose median is the geometric mean of baseline runs r
//! and r + 1 (a drift linear in time cancels); the report gives the median, min and max over
//! the rounds ([`Spread`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

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

/// A thread setting of the passes and of the rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// All threads (`RAYON_NUM_THREADS` left as it is).
    All,
    /// `RAYON_NUM_THREADS=1`.
    One,
}

impl Threads {
    /// The pass folder name under `target/xtask-bench/` (`threads-all`, `threads-1`), also the
    /// name used in run.json.
    pub(crate) fn pass(self) -> &'static str {
        match self {
            Threads::All => "threads-all",
            Threads::One => "threads-1",
        }
    }

    /// Inverse of [`Threads::pass`].
    pub(crate) fn from_pass(pass: &str) -> Option<Threads> {
        [Threads::All, Threads::One]
            .into_iter()
            .find(|t| t.pass() == pass)
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
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Group {
    /// The thread setting of the rounds.
    pub(crate) threads: Threads,
    /// The baseline's key.
    pub(crate) baseline: String,
    /// The targets' keys, in report order.
    pub(crate) targets: Vec<String>,
}

impl Group {
    /// The run.json form of the group.
    pub(crate) fn to_json(&self) -> Value {
        json!({ "threads": self.threads.pass(), "baseline": self.baseline, "targets": self.targets })
    }

    /// Inverse of [`Group::to_json`].
    pub(crate) fn from_json(v: &Value) -> Result<Group> {
        let threads = v["threads"]
            .as_str()
            .context("group has no string `threads`")?;
        let targets = v["targets"]
            .as_array()
            .context("group has no array `targets`")?
            .iter()
            .map(|t| t.as_str().map(String::from))
            .collect::<Option<Vec<String>>>()
            .context("group `targets` holds a non-string")?;
        if targets.is_empty() {
            bail!("group has no targets");
        }
        Ok(Group {
            threads: Threads::from_pass(threads)
                .with_context(|| format!("unknown thread setting `{threads}`"))?,
            baseline: v["baseline"]
                .as_str()
                .context("group has no string `baseline`")?
                .to_string(),
            targets,
        })
    }
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
    let keys = keys::RESULT_KEYS.iter().chain(&targets::EXTRA_TARGET_KEYS);
    for &key in keys {
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

/// Characters with a meaning in a (Rust `regex` crate) regular expression.
const REGEX_META: &str = r"\.+*?()|[]{}^$#&-~";

/// `s` with every regex metacharacter escaped, so that it matches itself literally.
pub(crate) fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if REGEX_META.contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A criterion filter matching exactly the given criterion full ids: `^(id1|id2)$`, escaped.
pub(crate) fn filter_regex(full_ids: &[&str]) -> String {
    let alternatives: Vec<String> = full_ids.iter().map(|id| escape_regex(id)).collect();
    format!("^({})$", alternatives.join("|"))
}

/// `target/xtask-bench/rounds`: where the rounds of a run write their criterion data.
pub(crate) fn rounds_dir(root: &Path) -> PathBuf {
    root.join("target/xtask-bench/rounds")
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

/// The run.json form of a run's rounds: the count and the groups (the estimates stay in the
/// criterion homes and are re-read by [`from_json`]).
pub(crate) fn to_json(count: usize, rounds: &[GroupRounds]) -> Value {
    json!({
        "count": count,
        "groups": rounds.iter().map(|g| g.group.to_json()).collect::<Vec<_>>(),
    })
}

/// Inverse of [`to_json`], re-reading every group's criterion homes below `rounds_dir`. A
/// missing value (run.json of a run before rounds existed) means no rounds.
pub(crate) fn from_json(v: &Value, rounds_dir: &Path) -> Result<(usize, Vec<GroupRounds>)> {
    if v.is_null() {
        return Ok((0, Vec::new()));
    }
    let count = v["count"]
        .as_u64()
        .context("rounds have no integer `count`")?;
    let count = usize::try_from(count).context("rounds `count` is too large")?;
    let groups = v["groups"]
        .as_array()
        .context("rounds have no array `groups`")?;
    if count == 0 && !groups.is_empty() {
        bail!("rounds have groups but a count of 0");
    }
    let rounds = groups
        .iter()
        .map(|g| read_group(rounds_dir, &Group::from_json(g)?, count))
        .collect::<Result<Vec<_>>>()?;
    Ok((count, rounds))
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
        assert_eq!(
            escape_regex("a(b)|[c]*+?{d}^$#&~\\"),
            r"a\(b\)\|\[c\]\*\+\?\{d\}\^\$\#\&\~\\"
        );
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
        let v = to_json(2, std::slice::from_ref(&rounds));
        let (count, back) = from_json(&v, dir.path()).unwrap();
        assert_eq!((count, back), (2, vec![rounds]));
        assert_eq!(from_json(&Value::Null, dir.path()).unwrap().0, 0);

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
        let bad = json!({"count": 2, "groups": [{"threads": "threads-7", "baseline": GEMM64, "targets": ["x"]}]});
        assert!(from_json(&bad, dir.path()).is_err());
    }

    #[test]
    fn threads_names_round_trip() {
        for t in [Threads::All, Threads::One] {
            assert_eq!(Threads::from_pass(t.pass()), Some(t));
        }
        assert_eq!(Threads::One.rayon(), Some(1));
        assert_eq!(Threads::All.rayon(), None);
    }
}
