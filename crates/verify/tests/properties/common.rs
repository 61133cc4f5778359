//! Shared helpers: the case-count policy, the worst-error registry and report, conversions between
//! faer and nalgebra, and the strategies that build skew matrices with a prescribed spectrum.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeInclusive;
use std::sync::Mutex;

use faer::{Mat, MatRef};
use nalgebra::DMatrix;
use oftq_ortho::{CayleyConvention, NeumannFlavor, Parameterization, Real};
use oftq_verify::reference::{self, Convention, Flavor, Param};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};

/// Default cases per property, when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 32;
/// Default cases for heavy properties (large `b`).
const DEFAULT_HEAVY_CASES: u32 = 4;

/// `f64` unit roundoff·2 (machine epsilon).
pub(crate) const EPS64: f64 = f64::EPSILON;
/// `f32` machine epsilon, as `f64`.
pub(crate) const EPS32: f64 = f32::EPSILON as f64;

#[derive(Debug, Clone, Copy)]
struct Entry {
    cases: u64,
    worst: f64,
    bound: f64,
    ratio: f64,
}

static REGISTRY: Mutex<BTreeMap<&'static str, Entry>> = Mutex::new(BTreeMap::new());

/// Records one observation `error` against `bound` for `property` (keeps the case with the largest
/// `error/bound`; a zero bound with zero error counts as ratio 0).
pub(crate) fn record(property: &'static str, error: f64, bound: f64) {
    let ratio = if error == 0.0 {
        0.0
    } else if bound > 0.0 {
        error / bound
    } else {
        f64::INFINITY
    };
    let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let e = reg.entry(property).or_insert(Entry {
        cases: 0,
        worst: 0.0,
        bound,
        ratio: -1.0,
    });
    e.cases += 1;
    if ratio > e.ratio || ratio.is_nan() {
        e.worst = error;
        e.bound = bound;
        e.ratio = ratio;
    }
}

/// Records `error` against `bound` and fails the case if `error > bound` (or is NaN).
pub(crate) fn ensure(
    property: &'static str,
    what: &str,
    error: f64,
    bound: f64,
) -> Result<(), TestCaseError> {
    record(property, error, bound);
    if error <= bound {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "{property}: {what}: error {error:e} > bound {bound:e}"
        )))
    }
}

/// Fails the case unless `cond` (a yes/no fact, recorded as error 0 or 1 against bound 0).
pub(crate) fn ensure_that(
    property: &'static str,
    what: &str,
    cond: bool,
) -> Result<(), TestCaseError> {
    ensure(property, what, if cond { 0.0 } else { 1.0 }, 0.0)
}

fn cases(heavy: bool) -> u32 {
    match std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        Some(n) if heavy => (n / 8).max(1),
        Some(n) => n.max(1),
        None if heavy => DEFAULT_HEAVY_CASES,
        None => DEFAULT_CASES,
    }
}

/// Runs `test` on `cases(heavy)` values of `strategy`, replaying first the failures persisted for
/// the caller's source file (proptest's default `proptest-regressions/` files next to the test
/// crate's `main.rs`, where a new failure's seed is also saved); then reports the property.
#[track_caller]
fn run_with<S>(
    heavy: bool,
    name: &'static str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    // Config::default() reads PROPTEST_RNG_SEED etc. from the environment and persists failures.
    let config = Config {
        cases: cases(heavy),
        source_file: Some(std::panic::Location::caller().file()),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, test);
    report(name);
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, value)) => {
            panic!("{name} failed: {reason}\nminimal failing input: {value:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("{name} aborted: {reason}"),
    }
}

/// Runs a property with the default case count.
#[track_caller]
pub(crate) fn check<S>(
    name: &'static str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    run_with(false, name, strategy, test);
}

/// Runs a heavy property (large blocks) with the reduced case count.
#[track_caller]
pub(crate) fn check_heavy<S>(
    name: &'static str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    run_with(true, name, strategy, test);
}

const TABLE_HEADER: &str =
    "| property | cases | worst error | bound | worst error/bound |\n|---|---:|---:|---:|---:|\n";

fn table_row(name: &str, e: &Entry) -> String {
    format!(
        "| {name} | {} | {:.3e} | {:.3e} | {:.3} |\n",
        e.cases, e.worst, e.bound, e.ratio
    )
}

/// Reports a finished property: prints its worst error against its bound and, when
/// `OFTQ_VERIFY_REPORT` names a file, rewrites that file (atomically) with the table of every
/// property finished so far, sorted by name. The file is complete when the test binary exits,
/// whatever order the tests ran in and whichever of them a filter selected.
fn report(name: &'static str) {
    let reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = reg.get(name) {
        println!(
            "{name}: {} cases, worst error {:.3e}, bound {:.3e}, ratio {:.3}",
            e.cases, e.worst, e.bound, e.ratio
        );
    }
    if let Ok(path) = std::env::var("OFTQ_VERIFY_REPORT") {
        let mut out = String::from(TABLE_HEADER);
        for (n, e) in reg.iter() {
            out.push_str(&table_row(n, e));
        }
        // Written under the registry's lock, so the last writer holds every row.
        oftq_aqlm::checkpoint::write_atomic(std::path::Path::new(&path), out.as_bytes())
            .unwrap_or_else(|e| panic!("writing OFTQ_VERIFY_REPORT: {e}"));
    }
}

// ---------------------------------------------------------------- conversions

/// nalgebra `f64` → faer `T` (rounding for `f32`).
pub(crate) fn to_faer<T: Real>(m: &DMatrix<f64>) -> Mat<T> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| T::c(m[(i, j)]))
}

/// faer `T` → nalgebra `f64` (exact widening).
pub(crate) fn to_na<T: Real>(m: MatRef<'_, T>) -> DMatrix<f64> {
    DMatrix::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)].f64())
}

/// Max-abs entry.
pub(crate) fn max_abs(m: &DMatrix<f64>) -> f64 {
    m.amax()
}

/// `max|a − b|`.
pub(crate) fn max_diff(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    (a - b).amax()
}

// ---------------------------------------------------------------- parameterizations

/// Every parameterization exercised: exact in both conventions, Neumann `t = 0..=9` in both flavors,
/// paired with the reference's own description of it.
pub(crate) fn all_params() -> Vec<(Parameterization, Param)> {
    let mut v = vec![
        (
            Parameterization::Exact(CayleyConvention::Peft),
            Param::Exact(Convention::Peft),
        ),
        (
            Parameterization::Exact(CayleyConvention::Textbook),
            Param::Exact(Convention::Textbook),
        ),
    ];
    for terms in 0..=9 {
        v.push((
            Parameterization::Neumann {
                terms,
                flavor: NeumannFlavor::Peft,
            },
            Param::Neumann {
                terms,
                flavor: Flavor::Peft,
            },
        ));
        v.push((
            Parameterization::Neumann {
                terms,
                flavor: NeumannFlavor::OddPower,
            },
            Param::Neumann {
                terms,
                flavor: Flavor::OddPower,
            },
        ));
    }
    v
}

/// A strategy over indices into [`all_params`].
pub(crate) fn any_param() -> impl Strategy<Value = usize> {
    0..all_params().len()
}

// ---------------------------------------------------------------- strategies

/// A skew `Q = V·blockdiag([[0,θⱼ],[−θⱼ,0]])·Vᵀ` with random orthogonal `V` (nalgebra QR) and a
/// prescribed spectrum: `thetas[0] = θ_max`, the other `θⱼ = θ_max·uⱼ`, `uⱼ ∈ [0, 1]`.
#[derive(Clone)]
pub(crate) struct SkewCase {
    /// Block size.
    pub(crate) b: usize,
    /// The `⌊b/2⌋` angles `θⱼ`, `thetas[0] = θ_max` the largest.
    pub(crate) thetas: Vec<f64>,
    /// The skew matrix.
    pub(crate) q: DMatrix<f64>,
}

impl Debug for SkewCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SkewCase {{ b: {}, thetas: {:?}, packed: {:?} }}",
            self.b,
            self.thetas,
            reference::packed_from_skew(&self.q)
        )
    }
}

impl SkewCase {
    /// `θ_max = ‖Q‖₂`.
    pub(crate) fn theta_max(&self) -> f64 {
        self.thetas.iter().copied().fold(0.0, f64::max)
    }
    /// The packed PEFT row of `Q`.
    pub(crate) fn packed(&self) -> Vec<f64> {
        reference::packed_from_skew(&self.q)
    }
}

/// [`SkewCase`]s with `b` from `b` (≥ 2) and `θ_max` from `theta_max`.
pub(crate) fn skew_case(
    b: impl Strategy<Value = usize>,
    theta_max: impl Strategy<Value = f64> + Clone,
) -> impl Strategy<Value = SkewCase> {
    b.prop_flat_map(move |b| {
        (
            Just(b),
            vec(-1.0..1.0f64, b * b),
            theta_max.clone(),
            vec(0.0..=1.0f64, b / 2),
        )
    })
    .prop_map(|(b, a, tmax, fr)| {
        let v = reference::orthogonal_from(DMatrix::from_vec(b, b, a));
        let mut thetas: Vec<f64> = fr.iter().map(|u| tmax * u).collect();
        if let Some(t) = thetas.first_mut() {
            *t = tmax;
        }
        let q = reference::skew_with_angles(&v, &thetas).unwrap();
        SkewCase { b, thetas, q }
    })
}

/// A random `rows × cols` nalgebra matrix with entries uniform in `[−scale, scale]`.
pub(crate) fn matrix(rows: usize, cols: usize, scale: f64) -> impl Strategy<Value = DMatrix<f64>> {
    vec(-scale..=scale, rows * cols).prop_map(move |v| DMatrix::from_vec(rows, cols, v))
}

/// The skew blocks of packed rows, via the reference.
pub(crate) fn ref_skews(packed: &DMatrix<f64>, b: usize) -> Vec<DMatrix<f64>> {
    (0..packed.nrows())
        .map(|i| {
            let row: Vec<f64> = packed.row(i).iter().copied().collect();
            reference::skew_from_packed(&row, b).unwrap()
        })
        .collect()
}

/// Packed rows `[rows, b(b−1)/2]` whose skew blocks are [`SkewCase`]s with `θ_max ≤ theta`.
pub(crate) fn packed_rows(
    b: usize,
    rows: usize,
    theta: impl Strategy<Value = f64> + Clone,
) -> impl Strategy<Value = DMatrix<f64>> {
    vec(skew_case(Just(b), theta), rows).prop_map(move |cs| {
        let n = b * (b - 1) / 2;
        DMatrix::from_fn(rows, n, |i, k| cs[i].packed()[k])
    })
}

/// A block rotation to test: block size `b`, `r` positions, sharing, a parameterization (index
/// into [`all_params`]), packed rows (`1` with sharing, else `r`) whose blocks have `‖Q‖₂ ≤ theta`,
/// an input `x [tokens, b·r]` with entries in `[−x_scale, x_scale]` and an output gradient `dy` of
/// the same shape with entries in `[−1, 1]`.
#[derive(Debug, Clone)]
pub(crate) struct RotationCase {
    pub(crate) b: usize,
    pub(crate) r: usize,
    pub(crate) shared: bool,
    pub(crate) param: usize,
    pub(crate) packed: DMatrix<f64>,
    pub(crate) x: DMatrix<f64>,
    pub(crate) dy: DMatrix<f64>,
}

prop_compose! {
    /// [`RotationCase`]s with `b`, `r`, token counts and sharing from the given strategies.
    pub(crate) fn rotation_case(
        b: RangeInclusive<usize>,
        r: RangeInclusive<usize>,
        shared: BoxedStrategy<bool>,
        tokens: RangeInclusive<usize>,
        theta: f64,
        x_scale: f64,
    )(b in b, r in r, shared in shared, param in any_param(), tokens in tokens)(
        packed in packed_rows(b, if shared { 1 } else { r }, 0.0..=theta),
        x in matrix(tokens, b * r, x_scale),
        dy in matrix(tokens, b * r, 1.0),
        b in Just(b),
        r in Just(r),
        shared in Just(shared),
        param in Just(param),
    ) -> RotationCase {
        RotationCase { b, r, shared, param, packed, x, dy }
    }
}
