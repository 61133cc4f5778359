//! The reference and oftq-ortho agree on the rotation blocks `R(Q)` for every parameterization.

use oftq_ortho::{Parameterization, rotation_block};
use oftq_verify::reference::{self, Param};
use proptest::prelude::*;

use crate::common::*;

/// Relative-ish agreement bound in f64: both sides round in `O(b)`-term sums and (exact) an LU
/// solve with `cond₂(I ∓ Q) ≤ √(1+θ²)` (F1), so `1e-12` at `b ≤ 16`, growing linearly in `b`, and
/// relative to the size of `R` (Neumann polynomials at `θ ≤ 2` reach `‖R‖_max ~ 2^{p+1}`).
fn tol64(b: usize, r_max: f64) -> f64 {
    1e-12 * (b as f64 / 16.0).max(1.0) * r_max.max(1.0)
}

/// f32: oftq in f32 on the f32-rounded `Q`, reference in f64 on the same rounded `Q`. The f32
/// forward error of an `O(b)`-deep computation with condition `≤ 1 + θ²` is about `b·u·(1+θ²)`;
/// we allow `4·√b·ε₃₂·(1+θ²)·‖R‖_max` (error accumulation is closer to `√b` than `b` for random data)
/// with a floor of `16·ε₃₂`.
fn tol32(b: usize, theta: f64, r_max: f64) -> f64 {
    (4.0 * (b as f64).sqrt()).max(16.0) * EPS32 * (1.0 + theta * theta) * r_max.max(1.0)
}

fn agree_f64(
    name: &'static str,
    case: &SkewCase,
    idx: usize,
) -> Result<(Parameterization, Param), TestCaseError> {
    let (p, rp) = all_params()[idx];
    let r = rotation_block(to_faer::<f64>(&case.q).as_ref(), p).unwrap();
    let want = reference::rotation_block(&case.q, rp).unwrap();
    let err = max_diff(&to_na(r.as_ref()), &want);
    ensure(name, &format!("{p:?}"), err, tol64(case.b, max_abs(&want)))?;
    Ok((p, rp))
}

#[test]
fn blocks_agree_f64() {
    check(
        "agree/R(Q) f64, b<=16, θ<=2",
        (skew_case(2usize..=16, 0.0..=2.0f64), any_param()),
        |(case, idx)| agree_f64("agree/R(Q) f64, b<=16, θ<=2", &case, idx).map(|_| ()),
    );
}

#[test]
fn blocks_agree_f64_every_param() {
    // Every parameterization on each case (not one sampled).
    check(
        "agree/R(Q) f64 all params",
        skew_case(2usize..=12, 0.0..=1.5f64),
        |case| {
            for idx in 0..all_params().len() {
                agree_f64("agree/R(Q) f64 all params", &case, idx)?;
            }
            Ok(())
        },
    );
}

#[test]
fn blocks_agree_f64_large_b() {
    check_heavy(
        "agree/R(Q) f64, b in 32..=128",
        (
            skew_case(prop::sample::select(vec![32usize, 64, 128]), 0.0..=2.0f64),
            0usize..4,
        ),
        |(case, idx)| agree_f64("agree/R(Q) f64, b in 32..=128", &case, idx).map(|_| ()),
    );
}

#[test]
fn blocks_agree_f32() {
    check(
        "agree/R(Q) f32, b<=64, θ<=2",
        (skew_case(2usize..=64, 0.0..=2.0f64), any_param()),
        |(case, idx)| {
            let (p, rp) = all_params()[idx];
            let q32 = to_faer::<f32>(&case.q);
            let q_rounded = to_na(q32.as_ref());
            let r = rotation_block(q32.as_ref(), p).unwrap();
            let want = reference::rotation_block(&q_rounded, rp).unwrap();
            let err = max_diff(&to_na(r.as_ref()), &want);
            let tol = tol32(case.b, case.theta_max(), max_abs(&want));
            ensure("agree/R(Q) f32, b<=64, θ<=2", &format!("{p:?}"), err, tol)
        },
    );
}

#[test]
fn neumann_coefficients_agree() {
    check(
        "agree/Neumann coefficients",
        (0usize..40, any::<bool>()),
        |(terms, peft)| {
            use oftq_ortho::NeumannFlavor;
            use oftq_verify::reference::Flavor;
            let (f, rf) = if peft {
                (NeumannFlavor::Peft, Flavor::Peft)
            } else {
                (NeumannFlavor::OddPower, Flavor::OddPower)
            };
            let got = Parameterization::Neumann { terms, flavor: f }
                .neumann_coefficients()
                .unwrap();
            let want = reference::neumann_coefficients(terms, rf);
            ensure_that(
                "agree/Neumann coefficients",
                &format!("t={terms} {f:?}"),
                got == want,
            )
        },
    );
}
