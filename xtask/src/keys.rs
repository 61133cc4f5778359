//! Bench ids and the fixed keys of `docs/bench/results.json` (shared/DESIGN.md).

use std::collections::BTreeMap;

use crate::criterion::Estimate;

/// The keys `docs/bench/results.json` may hold (DESIGN.md, "Benchmark results file"), in
/// report order; `--vs-python` adds `python.<name>` keys (see [`crate::python`]).
pub(crate) const RESULT_KEYS: [&str; 16] = [
    "baseline.dense_f32.gemv.4096",
    "baseline.dense_f32.gemm.4096.t16",
    "baseline.dense_f32.gemm.4096.t64",
    "ortho.build_r.neumann5.r128.b32",
    "ortho.build_r.exact.r128.b32",
    "ortho.rotate_fwd_bwd.neumann5.n512.d4096.b32",
    "aqlm.forward.2x8.4096.t1",
    "aqlm.forward.2x8.4096.t16",
    "aqlm.forward.2x8.4096.t64",
    "aqlm.forward.1x8.4096.t1",
    "aqlm.forward.1x16.4096.t1",
    "aqlm.backward.2x8.4096.t64",
    "layer.train_step.2x8.4096.t64.b32",
    "aqlm.encode.2x8.1024",
    "layer.fwd_bwd.2x8.4096.t64.b32",
    "candle.fwd_bwd.2x8.4096.t64.b32",
];

/// First id segments that mark a function id as already fully qualified.
const AREAS: [&str; 5] = ["baseline.", "ortho.", "aqlm.", "layer.", "candle."];

/// The dotted key of a criterion benchmark.
///
/// Our benches name functions with the full key (`ortho.build_r…` in group `ortho`); a function id
/// that does not start with an area prefix is qualified by its group (`aqlm.encode` + `2x8.1024`).
/// A parameter (`BenchmarkId::new(f, p)`) is appended after a dot.
pub(crate) fn key_of(group: &str, function: Option<&str>, value: Option<&str>) -> String {
    let mut key = match function {
        Some(f) if AREAS.iter().any(|a| f.starts_with(a)) => f.to_string(),
        Some(f) => format!("{group}.{f}"),
        None => group.to_string(),
    };
    if let Some(v) = value {
        key.push('.');
        key.push_str(v);
    }
    key
}

/// The `results.json` object: every fixed key that was measured, median in seconds.
pub(crate) fn results_map(measured: &[Estimate]) -> BTreeMap<String, f64> {
    measured
        .iter()
        .filter(|e| RESULT_KEYS.contains(&e.key.as_str()))
        .map(|e| (e.key.clone(), e.median_s))
        .collect()
}

/// The token count `t` of a key with a `.t<N>` segment, e.g. `aqlm.forward.2x8.4096.t16` → 16.
pub(crate) fn tokens_of(key: &str) -> Option<u64> {
    key.split('.')
        .find_map(|seg| seg.strip_prefix('t').and_then(|n| n.parse().ok()))
}

/// The block size `b` of a key with a `.b<N>` segment, e.g. `….d4096.b32` → 32.
pub(crate) fn block_of(key: &str) -> Option<u64> {
    key.split('.')
        .find_map(|seg| seg.strip_prefix('b').and_then(|n| n.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_our_bench_naming() {
        assert_eq!(
            key_of("ortho", Some("ortho.build_r.exact.r128.b32"), None),
            "ortho.build_r.exact.r128.b32"
        );
        assert_eq!(
            key_of("aqlm", Some("baseline.dense_f32.gemv.4096"), None),
            "baseline.dense_f32.gemv.4096"
        );
        assert_eq!(
            key_of("aqlm.encode", Some("2x8.1024"), None),
            "aqlm.encode.2x8.1024"
        );
        assert_eq!(
            key_of("baseline.dense_f32", Some("gemm.1024.1024.1024"), None),
            "baseline.dense_f32.gemm.1024.1024.1024"
        );
        assert_eq!(key_of("ortho.sweep", None, Some("b16")), "ortho.sweep.b16");
    }

    #[test]
    fn results_keep_only_fixed_keys() {
        let e = |k: &str| Estimate::for_test(k, 1.0, None);
        let m = results_map(&[
            e("aqlm.forward.2x8.4096.t1"),
            e("aqlm.forward.2x8.4096.t1.lut"),
            e("aqlm.encode.2x8.1024"),
        ]);
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            ["aqlm.encode.2x8.1024", "aqlm.forward.2x8.4096.t1"]
        );
    }

    /// Every key of DESIGN.md's results list is one of ours (checked when `../shared/DESIGN.md`
    /// is beside the workspace; the repository alone does not hold it).
    #[test]
    fn result_keys_are_design_keys() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let Ok(design) = std::fs::read_to_string(root.join("shared/DESIGN.md")) else {
            eprintln!("shared/DESIGN.md not found: key list not cross-checked");
            return;
        };
        let section = design
            .split("### Benchmark results file")
            .nth(1)
            .and_then(|s| s.split("```").nth(1))
            .unwrap();
        let mut design_keys: Vec<&str> = section
            .split_whitespace()
            .filter(|w| AREAS.iter().any(|a| w.starts_with(a)))
            .collect();
        let mut ours = RESULT_KEYS.to_vec();
        design_keys.sort_unstable();
        ours.sort_unstable();
        assert_eq!(design_keys, ours);
    }

    #[test]
    fn parses_tokens_and_blocks() {
        assert_eq!(tokens_of("aqlm.forward.2x8.4096.t16.lut"), Some(16));
        assert_eq!(tokens_of("baseline.dense_f32.gemv.4096"), None);
        assert_eq!(
            block_of("ortho.rotate_fwd_bwd.neumann5.n512.d4096.b32"),
            Some(32)
        );
        assert_eq!(block_of("layer.train_step.2x8.4096.t64.b32"), Some(32));
    }
}
