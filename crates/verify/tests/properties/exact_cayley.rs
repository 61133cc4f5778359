//! F1/F2: exact Cayley transform: orthogonality, det, eigen-angles, identities, sign conventions.

use nalgebra::DMatrix;
use oftq_ortho::{CayleyConvention, cayley_exact, orthogonality_error};
use oftq_verify::reference;
use proptest::prelude::*;

use crate::common::*;

fn textbook(q: &DMatrix<f64>) -> DMatrix<f64> {
    to_na(
        cayley_exact(to_faer::<f64>(q).as_ref(), CayleyConvention::Textbook)
            .unwrap()
            .as_ref(),
    )
}

/// f64 orthogonality bound: 1e-13 (the target) for `b ≤ 64`, scaled by `b/64` beyond
/// (LU backward error grows with `b`; `cond(I − Q) ≤ √5` for `θ ≤ 2`).
fn orth_tol64(b: usize) -> f64 {
    1e-13 * (b as f64 / 64.0).max(1.0)
}

fn orth_checks_f64(name: &'static str, case: &SkewCase) -> Result<(), TestCaseError> {
    let tol = orth_tol64(case.b);
    for conv in [CayleyConvention::Peft, CayleyConvention::Textbook] {
        let r = to_na(
            cayley_exact(to_faer::<f64>(&case.q).as_ref(), conv)
                .unwrap()
                .as_ref(),
        );
        ensure(name, "‖RᵀR−I‖₂", reference::orthogonality_error(&r), tol)?;
        ensure(name, "‖RRᵀ−I‖₂", reference::co_orthogonality_error(&r), tol)?;
    }
    Ok(())
}

#[test]
fn orthogonality_f64() {
    check(
        "F1 exact ‖RᵀR−I‖₂,‖RRᵀ−I‖₂ f64 b<=32 θ<=2",
        skew_case(2usize..=32, 0.0..=2.0f64),
        |case| orth_checks_f64("F1 exact ‖RᵀR−I‖₂,‖RRᵀ−I‖₂ f64 b<=32 θ<=2", &case),
    );
}

#[test]
fn orthogonality_f64_large_b() {
    check_heavy(
        "F1 exact orthogonality f64 b in 64..=256",
        skew_case(prop::sample::select(vec![64usize, 128, 256]), 0.0..=2.0f64),
        |case| orth_checks_f64("F1 exact orthogonality f64 b in 64..=256", &case),
    );
}

fn orth_checks_f32(name: &'static str, case: &SkewCase) -> Result<(), TestCaseError> {
    // The bound: 5e-6 for b ≤ 256, ‖Q‖₂ ≤ 2 (oft-numerics F6 measured 1.3e-6 in torch).
    // The f32 result is widened and its orthogonality measured in f64.
    for conv in [CayleyConvention::Peft, CayleyConvention::Textbook] {
        let r = to_na(
            cayley_exact(to_faer::<f32>(&case.q).as_ref(), conv)
                .unwrap()
                .as_ref(),
        );
        ensure(name, "‖RᵀR−I‖₂", reference::orthogonality_error(&r), 5e-6)?;
        ensure(
            name,
            "‖RRᵀ−I‖₂",
            reference::co_orthogonality_error(&r),
            5e-6,
        )?;
    }
    Ok(())
}

#[test]
fn orthogonality_f32() {
    check(
        "F1 exact orthogonality f32 b<=64 θ<=2",
        skew_case(2usize..=64, 0.0..=2.0f64),
        |case| orth_checks_f32("F1 exact orthogonality f32 b<=64 θ<=2", &case),
    );
}

#[test]
fn orthogonality_f32_large_b() {
    check_heavy(
        "F1 exact orthogonality f32 b in 128..=256",
        skew_case(prop::sample::select(vec![128usize, 256]), 0.0..=2.0f64),
        |case| orth_checks_f32("F1 exact orthogonality f32 b in 128..=256", &case),
    );
}

#[test]
fn diagnostics_orthogonality_error_agrees() {
    // oftq's own ‖RᵀR − I‖₂ (faer eigenvalues) vs the reference's (nalgebra), on perturbed R:
    // both evaluate RᵀR − I in f64, so they agree to a few b·ε.
    check(
        "diag orthogonality_error vs reference",
        (skew_case(2usize..=16, 0.0..=2.0f64), 0.0..0.3f64),
        |(case, s)| {
            let r = reference::cayley_exact(&case.q, reference::Convention::Peft).unwrap()
                + &case.q * s;
            let got = orthogonality_error(to_faer::<f64>(&r).as_ref());
            let want = reference::orthogonality_error(&r);
            ensure(
                "diag orthogonality_error vs reference",
                "|oftq − ref|",
                (got - want).abs(),
                16.0 * case.b as f64 * EPS64 * (1.0 + want),
            )
        },
    );
}

#[test]
fn determinant_and_eigen_angles() {
    let name = "F1 det=+1 and cos φⱼ = cos(2·atan θⱼ)";
    check(name, skew_case(2usize..=24, 0.0..=5.0f64), |case| {
        let c = textbook(&case.q);
        // det of an orthogonal matrix by LU: error ~ b·ε.
        let tol = 64.0 * case.b as f64 * EPS64;
        ensure(name, "|det − 1|", (c.determinant() - 1.0).abs(), tol)?;
        let mut want: Vec<f64> = reference::exact_eigen_angles(&case.thetas)
            .iter()
            .flat_map(|phi| [phi.cos(), phi.cos()])
            .collect();
        want.resize(case.b, 1.0); // zero angles of the unspecified pairs / odd b
        want.sort_by(f64::total_cmp);
        let got = reference::eigen_angle_cosines(&c);
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        ensure(name, "cos φ", err, tol)
    });
}

#[test]
fn f2_identities() {
    let name = "F2 identities (C=2(I−Q)⁻¹−I, ‖C−I‖₂, ‖C−I‖_F, inverse map)";
    check(name, skew_case(2usize..=16, 0.0..=3.0f64), |case| {
        let b = case.b;
        let id = DMatrix::<f64>::identity(b, b);
        let c = textbook(&case.q);
        let inv = (&id - &case.q).try_inverse().unwrap();
        // cond(I − Q) ≤ √(1+θ²) ≤ √10: entrywise errors ≲ b·ε·cond.
        let tol = 64.0 * b as f64 * EPS64 * (1.0 + case.theta_max().powi(2));
        ensure(
            name,
            "C = 2(I−Q)⁻¹ − I",
            max_diff(&c, &(inv * 2.0 - &id)),
            tol,
        )?;
        let t = case.theta_max();
        let cmi = &c - &id;
        ensure(
            name,
            "‖C−I‖₂ = 2θ/√(1+θ²)",
            (reference::spectral_norm(&cmi) - 2.0 * t / (1.0 + t * t).sqrt()).abs(),
            tol,
        )?;
        let fro2: f64 = case
            .thetas
            .iter()
            .map(|t| 8.0 * t * t / (1.0 + t * t))
            .sum();
        ensure(
            name,
            "‖C−I‖_F² closed form",
            (cmi.norm_squared() - fro2).abs(),
            tol * (1.0 + fro2),
        )?;
        // A separate row: the inequality is tight as θ → 0.
        ensure(
            "F2 ‖C−I‖_F² ≤ 4‖Q‖_F² (tight as θ→0)",
            "‖C−I‖_F² ≤ 4‖Q‖_F²",
            cmi.norm_squared(),
            4.0 * case.q.norm_squared() + tol,
        )?;
        let back = &cmi * (&c + &id).try_inverse().unwrap();
        ensure(
            name,
            "Q = (C−I)(C+I)⁻¹",
            max_diff(&back, &case.q),
            tol * (1.0 + t),
        )
    });
}

#[test]
fn sign_conventions() {
    // exact(PEFT)(Q) = textbook(−Q) = textbook(Q)ᵀ (peft-oft §3.3).
    let name = "F2 PEFT(Q) = textbook(−Q) = textbook(Q)ᵀ";
    check(name, skew_case(2usize..=16, 0.0..=2.0f64), |case| {
        let q = to_faer::<f64>(&case.q);
        let peft = to_na(
            cayley_exact(q.as_ref(), CayleyConvention::Peft)
                .unwrap()
                .as_ref(),
        );
        let tb = textbook(&case.q);
        let tb_neg = textbook(&(-&case.q));
        ensure(
            name,
            "PEFT(Q) vs textbook(Q)ᵀ",
            max_diff(&peft, &tb.transpose()),
            0.0,
        )?;
        ensure(
            name,
            "PEFT(Q) vs textbook(−Q)",
            max_diff(&peft, &tb_neg),
            1e-13,
        )?;
        // And the reference's own PEFT convention (a different formula: (I−Q)(I+Q)⁻¹).
        let want = reference::cayley_exact(&case.q, reference::Convention::Peft).unwrap();
        ensure(name, "PEFT(Q) vs reference", max_diff(&peft, &want), 1e-13)
    });
}
