//! `cargo xtask bench --vs-python`: oftq against what users would run instead — aqlm's CPU
//! kernels and PEFT on torch — measured on the same machine in interleaved rounds.
//!
//! The reference environment is the virtual environment `../shared/anchors/setup.sh` builds:
//! `$OFTQ_REF/venv/bin/python`, else `<workspace>/../ref/venv/bin/python`. Each round runs
//! oftq's benches of the paired keys (criterion, same mode as the rest of the run),
//! `ref_bench.py --threads N` and `ref_train_step.py N` (N = the machine's threads), oftq first
//! in even rounds and Python first in odd ones, so that a drift of the machine's speed favours
//! neither side. Each round's raw output stays under `<target dir>/xtask-bench/python/round-<r>/` for
//! `--report-only`. The report compares medians over the rounds; round r's ratio is Python's time
//! over oftq's in that round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::criterion::{self, Estimate};
use crate::rounds::Spread;
use crate::{fsutil, process};

/// A Python reference figure and the oftq bench that does the same work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pair {
    /// The figure's name as the reference scripts print it (`python.<name>` in results.json).
    pub(crate) name: &'static str,
    /// The oftq bench key of the same work, if oftq benches it.
    pub(crate) key: Option<&'static str>,
    /// The issue's target for Python time / oftq time, if any.
    pub(crate) target: Option<f64>,
    /// What is measured, for the report.
    pub(crate) work: &'static str,
}

/// Every figure of the reference scripts, in report order.
pub(crate) const PAIRS: [Pair; 10] = [
    Pair {
        name: "aqlm_2x8_gemv_4096",
        key: Some("aqlm.forward.2x8.4096.t1"),
        target: Some(10.0),
        work: "AQLM 2x8 4096², 1 token (aqlm's numba kernel)",
    },
    Pair {
        name: "aqlm_2x8_16tok_4096",
        key: Some("aqlm.forward.2x8.4096.t16"),
        target: Some(70.0),
        work: "AQLM 2x8 4096², 16 tokens (aqlm)",
    },
    Pair {
        name: "aqlm_1x16_gemv_4096",
        key: Some("aqlm.forward.1x16.4096.t1"),
        target: Some(40.0),
        work: "AQLM 1x16 4096², 1 token (aqlm)",
    },
    Pair {
        name: "oft_rot_fwd_bwd_neumann5_N512_d4096_b32",
        key: Some("ortho.rotate_fwd_bwd.neumann5.n512.d4096.b32"),
        target: Some(4.0),
        work: "rotation fwd+bwd, Cayley–Neumann 5 terms, N 512, d 4096, b 32 (PEFT on torch)",
    },
    Pair {
        name: "oft_build_R_neumann5_r128_b32",
        key: Some("ortho.build_r.neumann5.r128.b32"),
        target: Some(2.0),
        work: "build R, Cayley–Neumann 5 terms, r 128, b 32 (PEFT on torch)",
    },
    Pair {
        name: TRAIN_STEP,
        key: Some("layer.train_step.2x8.4096.t64.b32"),
        target: Some(6.0),
        work: "training step, OFT on AQLM 2x8 4096², 64 tokens (PEFT + aqlm)",
    },
    Pair {
        name: "oft_build_R_exact_r128_b32",
        key: Some("ortho.build_r.exact.r128.b32"),
        target: None,
        work: "build R, exact Cayley, r 128, b 32 (PEFT on torch)",
    },
    Pair {
        name: "oft_rot_fwd_bwd_exact_N512_d4096_b32",
        key: None,
        target: None,
        work: "rotation fwd+bwd, exact Cayley, N 512, d 4096, b 32 (PEFT on torch)",
    },
    Pair {
        name: "dense_f32_gemv_4096",
        key: Some("baseline.dense_f32.gemv.4096"),
        target: None,
        work: "dense f32 GEMV 4096² (torch vs faer)",
    },
    Pair {
        name: "dense_f32_gemm64_4096",
        key: Some("baseline.dense_f32.gemm.4096.t64"),
        target: None,
        work: "dense f32 GEMM 64×4096×4096 (torch vs faer)",
    },
];

/// DESIGN.md's name for the figure of `ref_train_step.py`.
pub(crate) const TRAIN_STEP: &str = "oft_train_step_2x8_4096_t64";
/// The line `ref_train_step.py` prints: `<this> <milliseconds>`.
const TRAIN_STEP_LINE: &str = "peft_oft_aqlm2x8_train_step_N64_d4096_ms";
/// `ref_bench.py`'s count of differing answers among 20 identical aqlm GEMV calls.
const NONDETERMINISTIC: &str = "aqlm_2x8_gemv_nondeterministic_runs_of_20";

/// Why the reference environment cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum Unavailable {
    /// No interpreter where setup.sh puts it.
    #[error(
        "no Python reference environment at {0} (build it with ../shared/anchors/setup.sh, or set $OFTQ_REF)"
    )]
    NoPython(PathBuf),
    /// A reference script is missing.
    #[error("reference script {0} not found")]
    NoScript(PathBuf),
}

/// The reference interpreter and the folder of its scripts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reference {
    /// `<ref>/venv/bin/python`.
    pub(crate) python: PathBuf,
    /// `ref_bench.py`.
    pub(crate) bench: PathBuf,
    /// `ref_train_step.py`.
    pub(crate) train_step: PathBuf,
}

impl Reference {
    /// Finds the environment: `$OFTQ_REF` (given as `oftq_ref`) or `<root>/../ref`, and the
    /// scripts in `<root>/../shared/anchors/`.
    pub(crate) fn locate(root: &Path, oftq_ref: Option<PathBuf>) -> Result<Reference, Unavailable> {
        let parent = root.parent().unwrap_or(root);
        let env = oftq_ref.unwrap_or_else(|| parent.join("ref"));
        let python = env.join("venv/bin/python");
        if !python.is_file() {
            return Err(Unavailable::NoPython(python));
        }
        let anchors = parent.join("shared/anchors");
        let script = |name: &str| {
            let p = anchors.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Unavailable::NoScript(p))
            }
        };
        Ok(Reference {
            bench: script("ref_bench.py")?,
            train_step: script("ref_train_step.py")?,
            python,
        })
    }
}

/// What became of the comparison in a run (kept in run.json).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) enum Status {
    /// `--vs-python` was not given.
    #[default]
    NotRequested,
    /// No reference environment: the reason.
    Unavailable(String),
    /// A reference script failed after `rounds` complete rounds: the error.
    Failed { rounds: usize, error: String },
    /// Every round ran.
    Ran { rounds: usize, threads: usize },
}

impl Status {
    /// Complete rounds whose outputs are on disk.
    pub(crate) fn rounds(&self) -> usize {
        match self {
            Status::Failed { rounds, .. } | Status::Ran { rounds, .. } => *rounds,
            Status::NotRequested | Status::Unavailable(_) => 0,
        }
    }
}

/// What `ref_bench.py` prints (one JSON object, times in milliseconds).
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct RefBenchJson {
    /// The threads it ran on.
    threads: usize,
    /// torch's version.
    torch: String,
    /// Differing answers among 20 identical aqlm GEMV calls.
    #[serde(rename = "aqlm_2x8_gemv_nondeterministic_runs_of_20")]
    nondeterministic: Option<u64>,
    /// Every other figure: median milliseconds.
    #[serde(flatten)]
    figures_ms: BTreeMap<String, f64>,
}

/// One round of the comparison.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Round {
    /// oftq's estimates of the paired keys.
    pub(crate) oftq: Vec<Estimate>,
    /// The reference's figures, seconds.
    pub(crate) python: BTreeMap<String, f64>,
    /// torch's version.
    pub(crate) torch: String,
    /// Differing answers of aqlm's GEMV among 20 identical calls.
    pub(crate) nondeterministic: Option<u64>,
}

/// Parses `ref_bench.py`'s output (warnings before the JSON object are skipped).
pub(crate) fn parse_ref_bench(stdout: &str, round: &mut Round) -> Result<()> {
    let (Some(start), Some(end)) = (stdout.find('{'), stdout.rfind('}')) else {
        bail!("ref_bench.py printed no JSON object");
    };
    let json = stdout
        .get(start..=end)
        .context("ref_bench.py's output is cut")?;
    let parsed: RefBenchJson =
        serde_json::from_str(json).context("ref_bench.py's JSON is not the expected figures")?;
    round.torch = format!("torch {}, {} threads", parsed.torch, parsed.threads);
    round.nondeterministic = parsed.nondeterministic;
    for (name, ms) in parsed.figures_ms {
        round.python.insert(name, ms * 1e-3);
    }
    Ok(())
}

/// Parses `ref_train_step.py`'s line `peft_oft_aqlm2x8_train_step_N64_d4096_ms <ms>`.
pub(crate) fn parse_train_step(stdout: &str) -> Result<f64> {
    let value = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(TRAIN_STEP_LINE))
        .with_context(|| format!("ref_train_step.py printed no `{TRAIN_STEP_LINE}` line"))?;
    let ms: f64 = value
        .trim()
        .parse()
        .with_context(|| format!("ref_train_step.py: `{}` is not a number", value.trim()))?;
    Ok(ms * 1e-3)
}

/// The folder of the comparison's rounds in a run's data folder.
pub(crate) fn dir(data: &Path) -> PathBuf {
    data.join("python")
}

/// The folder of round `r`.
fn round_dir(dir: &Path, r: usize) -> PathBuf {
    dir.join(format!("round-{r}"))
}

/// The criterion home of oftq's runs in round `r`.
pub(crate) fn oftq_home(dir: &Path, r: usize) -> PathBuf {
    round_dir(dir, r).join("oftq")
}

const BENCH_OUT: &str = "ref_bench.out";
const TRAIN_OUT: &str = "ref_train_step.out";

/// Runs `rounds` rounds: oftq's runs through `run_oftq(home, what)`, the reference scripts on
/// `threads` threads. A failing reference script ends the comparison (reported, not fatal); a
/// failing oftq run is an error.
pub(crate) fn run(
    dir: &Path,
    reference: &Reference,
    rounds: usize,
    threads: usize,
    mut run_oftq: impl FnMut(&Path, &str) -> Result<()>,
) -> Result<Status> {
    fsutil::remove_dir_if_exists(dir)?;
    let n = threads.to_string();
    for r in 0..rounds {
        let what = format!("vs Python, round {}/{rounds}", r + 1);
        let python = || -> Result<()> {
            let mut bench = Command::new(&reference.python);
            bench.arg(&reference.bench).args(["--threads", &n]);
            let mut train = Command::new(&reference.python);
            train.arg(&reference.train_step).arg(&n);
            for (mut cmd, file) in [(bench, BENCH_OUT), (train, TRAIN_OUT)] {
                cmd.env("OMP_NUM_THREADS", &n);
                let out = process::run_capture(&mut cmd)?;
                fsutil::write_atomic(&round_dir(dir, r).join(file), out.as_bytes())?;
            }
            read_python(&round_dir(dir, r)).map(|_| ())
        };
        let python_first = r % 2 == 1;
        if !python_first {
            run_oftq(&oftq_home(dir, r), &format!("{what}: oftq"))?;
        }
        if let Err(e) = python() {
            eprintln!("xtask: {what}: the Python reference failed: {e:#}");
            return Ok(Status::Failed {
                rounds: r,
                error: format!("{e:#}"),
            });
        }
        if python_first {
            run_oftq(&oftq_home(dir, r), &format!("{what}: oftq"))?;
        }
    }
    Ok(Status::Ran { rounds, threads })
}

/// Reads the reference's figures of one round folder.
fn read_python(round_dir: &Path) -> Result<Round> {
    let read = |name: &str| {
        let p = round_dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    let mut round = Round::default();
    parse_ref_bench(&read(BENCH_OUT)?, &mut round)
        .with_context(|| format!("in {}", round_dir.join(BENCH_OUT).display()))?;
    let step = parse_train_step(&read(TRAIN_OUT)?)
        .with_context(|| format!("in {}", round_dir.join(TRAIN_OUT).display()))?;
    round.python.insert(TRAIN_STEP.to_string(), step);
    Ok(round)
}

/// Re-reads the complete rounds of a run.
pub(crate) fn load(dir: &Path, status: &Status) -> Result<Vec<Round>> {
    (0..status.rounds())
        .map(|r| {
            let mut round = read_python(&round_dir(dir, r))?;
            round.oftq = criterion::read_all(&oftq_home(dir, r))?;
            Ok(round)
        })
        .collect::<Result<_>>()
        .context("reading the vs-Python rounds")
}

/// One row of the comparison: spreads over the rounds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    /// The pair.
    pub(crate) pair: Pair,
    /// oftq's time, seconds.
    pub(crate) oftq: Option<Spread>,
    /// Python's time, seconds.
    pub(crate) python: Option<Spread>,
    /// Python time / oftq time of each round.
    pub(crate) ratio: Option<Spread>,
}

/// The comparison rows of a run's rounds, in [`PAIRS`] order.
pub(crate) fn summaries(rounds: &[Round]) -> Vec<Summary> {
    PAIRS
        .iter()
        .map(|&pair| {
            let python: Vec<Option<f64>> = rounds
                .iter()
                .map(|r| r.python.get(pair.name).copied())
                .collect();
            let oftq: Vec<Option<f64>> = rounds
                .iter()
                .map(|r| {
                    let key = pair.key?;
                    r.oftq.iter().find(|e| e.key == key).map(|e| e.median_s)
                })
                .collect();
            let ratio: Vec<f64> = python
                .iter()
                .zip(&oftq)
                .filter_map(|(p, o)| Some(p.as_ref()? / o.as_ref()?))
                .collect();
            let spread =
                |v: &[Option<f64>]| Spread::of(&v.iter().flatten().copied().collect::<Vec<_>>());
            Summary {
                pair,
                oftq: spread(&oftq),
                python: spread(&python),
                ratio: Spread::of(&ratio),
            }
        })
        .collect()
}

/// The `python.<name>` keys of results.json: the median over the rounds, seconds.
pub(crate) fn results(rounds: &[Round]) -> BTreeMap<String, f64> {
    let mut names: Vec<&String> = rounds.iter().flat_map(|r| r.python.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| n.as_str() != NONDETERMINISTIC)
        .filter_map(|name| {
            let v: Vec<f64> = rounds
                .iter()
                .filter_map(|r| r.python.get(name).copied())
                .collect();
            Some((format!("python.{name}"), Spread::of(&v)?.median))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ref_bench.py`'s output on this project's machine (2 threads, a busy run), with the
    /// warning numba prints before it.
    const REF_BENCH: &str = r#"some warning
{
 "threads": 2,
 "torch": "2.15.0+cu132",
 "aqlm_2x8_gemv_4096": 63.778,
 "aqlm_2x8_16tok_4096": 1204.046,
 "aqlm_1x16_gemv_4096": 253.471,
 "dense_f32_gemv_4096": 10.556,
 "dense_f32_gemm64_4096": 43.824,
 "oft_rot_fwd_bwd_neumann5_N512_d4096_b32": 72.182,
 "oft_build_R_neumann5_r128_b32": 0.458,
 "oft_rot_fwd_bwd_exact_N512_d4096_b32": 76.624,
 "oft_build_R_exact_r128_b32": 9.389,
 "aqlm_2x8_gemv_nondeterministic_runs_of_20": 19
}
"#;

    #[test]
    fn parses_the_reference_scripts() {
        let mut r = Round::default();
        parse_ref_bench(REF_BENCH, &mut r).unwrap();
        assert_eq!(r.torch, "torch 2.15.0+cu132, 2 threads");
        assert_eq!(r.nondeterministic, Some(19));
        assert_eq!(r.python.len(), 9);
        assert!((r.python["aqlm_2x8_gemv_4096"] - 0.063778).abs() < 1e-12);
        // Every printed figure is one of the pairs, and every pair but the train step is printed.
        for name in r.python.keys() {
            assert!(PAIRS.iter().any(|p| p.name == name), "{name}");
        }
        assert_eq!(PAIRS.len(), r.python.len() + 1);
        assert!(parse_ref_bench("no json", &mut r).is_err());
        assert!(parse_ref_bench(r#"{"threads": 2}"#, &mut r).is_err());
        let step = parse_train_step("warn\npeft_oft_aqlm2x8_train_step_N64_d4096_ms 171.5\n");
        assert!((step.unwrap() - 0.1715).abs() < 1e-12);
        assert!(parse_train_step("peft_oft_aqlm2x8_train_step_N64_d4096_ms x").is_err());
        assert!(parse_train_step("").is_err());
    }

    #[test]
    fn summaries_and_results_use_rounds() {
        let round = |py: f64, oftq: f64| Round {
            oftq: vec![Estimate::for_test("aqlm.forward.2x8.4096.t1", oftq, None)],
            python: [
                ("aqlm_2x8_gemv_4096".to_string(), py),
                (TRAIN_STEP.to_string(), 1.0),
            ]
            .into(),
            torch: String::new(),
            nondeterministic: Some(3),
        };
        let rounds = [round(10.0, 1.0), round(8.0, 2.0), round(12.0, 1.0)];
        let s = summaries(&rounds);
        assert_eq!(s.len(), PAIRS.len());
        let gemv = &s[0];
        assert_eq!(gemv.pair.name, "aqlm_2x8_gemv_4096");
        let ratio = gemv.ratio.unwrap();
        assert_eq!((ratio.median, ratio.min, ratio.max), (10.0, 4.0, 12.0));
        assert_eq!(gemv.python.unwrap().median, 10.0);
        assert_eq!(gemv.oftq.unwrap().median, 1.0);
        // The train step has a Python figure but no oftq run here.
        let step = s.iter().find(|s| s.pair.name == TRAIN_STEP).unwrap();
        assert!(step.oftq.is_none() && step.ratio.is_none());
        let keys = results(&rounds);
        assert_eq!(
            keys.keys().collect::<Vec<_>>(),
            [
                "python.aqlm_2x8_gemv_4096",
                "python.oft_train_step_2x8_4096_t64"
            ]
        );
        assert_eq!(keys["python.aqlm_2x8_gemv_4096"], 10.0);
    }

    #[test]
    fn locates_the_environment_or_says_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("main");
        std::fs::create_dir_all(&root).unwrap();
        let err = Reference::locate(&root, None).unwrap_err();
        assert_eq!(
            err,
            Unavailable::NoPython(dir.path().join("ref/venv/bin/python"))
        );
        assert!(err.to_string().contains("setup.sh"), "{err}");
        let other = dir.path().join("elsewhere");
        std::fs::create_dir_all(other.join("venv/bin")).unwrap();
        std::fs::write(other.join("venv/bin/python"), "").unwrap();
        let err = Reference::locate(&root, Some(other.clone())).unwrap_err();
        assert!(matches!(err, Unavailable::NoScript(_)), "{err}");
        let anchors = dir.path().join("shared/anchors");
        std::fs::create_dir_all(&anchors).unwrap();
        std::fs::write(anchors.join("ref_bench.py"), "").unwrap();
        std::fs::write(anchors.join("ref_train_step.py"), "").unwrap();
        let r = Reference::locate(&root, Some(other.clone())).unwrap();
        assert_eq!(r.python, other.join("venv/bin/python"));
        assert_eq!(r.bench, anchors.join("ref_bench.py"));
    }

    #[test]
    fn reads_rounds_back_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let rd = round_dir(dir.path(), 0);
        std::fs::create_dir_all(&rd).unwrap();
        std::fs::write(rd.join(BENCH_OUT), REF_BENCH).unwrap();
        std::fs::write(
            rd.join(TRAIN_OUT),
            "peft_oft_aqlm2x8_train_step_N64_d4096_ms 171.5\n",
        )
        .unwrap();
        let status = Status::Ran {
            rounds: 1,
            threads: 2,
        };
        let rounds = load(dir.path(), &status).unwrap();
        assert_eq!(rounds.len(), 1);
        assert_eq!(rounds[0].python.len(), 10);
        assert!(rounds[0].oftq.is_empty());
        let two = Status::Failed {
            rounds: 2,
            error: "x".into(),
        };
        assert!(load(dir.path(), &two).is_err());
        assert!(load(dir.path(), &Status::NotRequested).unwrap().is_empty());
    }
}
