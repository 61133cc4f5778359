//! Reading criterion's output folder: every `<id>/new/{benchmark,estimates}.json`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::keys;

/// One measured benchmark.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Estimate {
    /// The results key (see [`keys::key_of`]).
    pub(crate) key: String,
    /// Criterion's full id (`group/function[/value]`), what a criterion filter matches.
    pub(crate) full_id: String,
    /// Median time per iteration in seconds.
    pub(crate) median_s: f64,
    /// Criterion `Throughput::Elements` per iteration, if declared (FLOP in our benches).
    pub(crate) elements: Option<f64>,
}

#[cfg(test)]
impl Estimate {
    /// A test estimate of `key` (criterion id `g/<key>`).
    pub(crate) fn for_test(key: &str, median_s: f64, elements: Option<f64>) -> Estimate {
        Estimate {
            key: key.into(),
            full_id: format!("g/{key}"),
            median_s,
            elements,
        }
    }
}

/// The fields of criterion's `benchmark.json` that we use.
#[derive(Debug, Deserialize)]
struct BenchmarkJson {
    group_id: String,
    function_id: Option<String>,
    value_str: Option<String>,
    throughput: Option<Throughput>,
    /// Criterion writes all three; older versions lack `full_id`.
    full_id: Option<String>,
    directory_name: Option<String>,
    title: Option<String>,
}

/// Criterion's `Throughput`, as it serializes it.
#[derive(Debug, Deserialize)]
#[expect(
    dead_code,
    reason = "every variant is criterion's; only the element counts are read"
)]
enum Throughput {
    Bits(u64),
    Bytes(u64),
    BytesDecimal(u64),
    Elements(u64),
    ElementsAndBytes { elements: u64, bytes: u64 },
}

/// The part of criterion's `estimates.json` that we use: `median.point_estimate` (ns).
#[derive(Debug, Deserialize)]
struct EstimatesJson {
    median: PointEstimate,
}

#[derive(Debug, Deserialize)]
struct PointEstimate {
    point_estimate: f64,
}

/// Parses one `benchmark.json` and its `estimates.json` into an [`Estimate`].
pub(crate) fn parse(benchmark_json: &str, estimates_json: &str) -> Result<Estimate> {
    let b: BenchmarkJson =
        serde_json::from_str(benchmark_json).context("benchmark.json is not criterion's")?;
    let e: EstimatesJson =
        serde_json::from_str(estimates_json).context("estimates.json is not criterion's")?;
    let key = keys::key_of(
        &b.group_id,
        b.function_id.as_deref(),
        b.value_str.as_deref(),
    );
    let full_id = b
        .full_id
        .or(b.directory_name)
        .or(b.title)
        .with_context(|| {
            format!("benchmark.json of `{key}` has no `full_id`, `directory_name` or `title`")
        })?;
    let median_ns = e.median.point_estimate;
    if !(median_ns.is_finite() && median_ns > 0.0) {
        bail!("estimates.json of `{key}`: median {median_ns} ns is not a positive time");
    }
    let elements = match b.throughput {
        Some(Throughput::Elements(n) | Throughput::ElementsAndBytes { elements: n, .. }) => {
            Some(n as f64)
        }
        Some(Throughput::Bits(_) | Throughput::Bytes(_) | Throughput::BytesDecimal(_)) | None => {
            None
        }
    };
    Ok(Estimate {
        key,
        full_id,
        median_s: median_ns * 1e-9,
        elements,
    })
}

/// Reads every benchmark under a criterion home folder, sorted by key. A missing folder is empty.
pub(crate) fn read_all(home: &Path) -> Result<Vec<Estimate>> {
    let mut out = Vec::new();
    if home.is_dir() {
        walk(home, &mut out)?;
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<Estimate>) -> Result<()> {
    let new = dir.join("new");
    let (bj, ej) = (new.join("benchmark.json"), new.join("estimates.json"));
    if bj.is_file() && ej.is_file() {
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let est =
            parse(&read(&bj)?, &read(&ej)?).with_context(|| format!("in {}", new.display()))?;
        out.push(est);
    }
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let p = entry.path();
        let name = entry.file_name();
        if p.is_dir() && name != "new" && name != "report" && name != "base" {
            walk(&p, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BENCH: &str = r#"{"group_id":"ortho","function_id":"ortho.build_r.exact.r128.b32","value_str":null,"throughput":{"Elements":11184768},"full_id":"ortho/ortho.build_r.exact.r128.b32","directory_name":"ortho/ortho.build_r.exact.r128.b32","title":"ortho/ortho.build_r.exact.r128.b32"}"#;
    const EST: &str = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":2449855.2,"standard_error":1.0},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":2352365.75,"standard_error":1.0}}"#;

    #[test]
    fn parses_real_criterion_files() {
        let e = parse(BENCH, EST).unwrap();
        assert_eq!(e.key, "ortho.build_r.exact.r128.b32");
        assert_eq!(e.full_id, "ortho/ortho.build_r.exact.r128.b32");
        assert!((e.median_s - 2.35236575e-3).abs() < 1e-12);
        assert_eq!(e.elements, Some(11184768.0));
    }

    #[test]
    fn rejects_missing_or_bad_median() {
        assert!(parse(BENCH, "{}").is_err());
        assert!(parse(BENCH, r#"{"median":{"point_estimate":-1.0}}"#).is_err());
        assert!(parse("[]", EST).is_err());
    }

    #[test]
    fn throughput_variants() {
        let with = |t: &str| BENCH.replace(r#"{"Elements":11184768}"#, t);
        let e = parse(
            &with(r#"{"ElementsAndBytes":{"elements":7,"bytes":9}}"#),
            EST,
        )
        .unwrap();
        assert_eq!(e.elements, Some(7.0));
        assert_eq!(parse(&with(r#"{"Bytes":7}"#), EST).unwrap().elements, None);
        assert_eq!(parse(&with("null"), EST).unwrap().elements, None);
    }

    #[test]
    fn full_id_falls_back_to_directory_name_then_title() {
        let strip = |fields: &[&str]| {
            let mut b: serde_json::Value = serde_json::from_str(BENCH).unwrap();
            for f in fields {
                b.as_object_mut().unwrap().remove(*f);
            }
            b.to_string()
        };
        let e = parse(&strip(&["full_id"]), EST).unwrap();
        assert_eq!(e.full_id, "ortho/ortho.build_r.exact.r128.b32");
        let e = parse(&strip(&["full_id", "directory_name"]), EST).unwrap();
        assert_eq!(e.full_id, "ortho/ortho.build_r.exact.r128.b32");
        assert!(parse(&strip(&["full_id", "directory_name", "title"]), EST).is_err());
    }

    #[test]
    fn walks_a_criterion_home() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("ortho/ortho.build_r.exact.r128.b32/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("benchmark.json"), BENCH).unwrap();
        std::fs::write(new.join("estimates.json"), EST).unwrap();
        // A stale "base" copy must not be read twice.
        let base = dir.path().join("ortho/ortho.build_r.exact.r128.b32/base");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("benchmark.json"), BENCH).unwrap();
        let all = read_all(dir.path()).unwrap();
        assert_eq!(all.len(), 1);
        assert!(read_all(&dir.path().join("missing")).unwrap().is_empty());
    }
}
