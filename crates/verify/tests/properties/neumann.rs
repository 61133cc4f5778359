//! F5: Cayley–Neumann closed forms, monotone decrease, the divergence guard, terms-for-eps.

use faer::Mat;
use oftq_ortho::{
    BlockRotation, DivergencePolicy, NeumannFlavor, Parameterization, RotationSpec,
    neumann_polynomial, neumann_terms_for,
};
use oftq_verify::reference::{self, Convention};
use proptest::prelude::*;

use crate::common::*;

/// Absolute bound for measured F5 quantities: forming `RᵀR − I` or `R − C` and their extreme
/// eigen/singular values costs `O(b)·ε·‖R‖²` in f64 (‖R‖ ≤ 1 + θᵖ ≤ 3 here).
fn f5_tol(b: usize) -> f64 {
    64.0 * b as f64 * EPS64
}

fn measured(case: &SkewCase, coeffs: &[f64]) -> (f64, f64, nalgebra::DMatrix<f64>) {
    let r = to_na(neumann_polynomial(to_faer::<f64>(&case.q).as_ref(), coeffs).as_ref());
    let c = reference::cayley_exact(&case.q, Convention::Textbook).unwrap();
    let orth = reference::orthogonality_error(&r);
    let dist = reference::spectral_norm(&(&r - &c));
    (orth, dist, r)
}

fn flavors() -> [NeumannFlavor; 2] {
    [NeumannFlavor::Peft, NeumannFlavor::OddPower]
}

#[test]
fn f5_closed_forms() {
    let name = "F5 ‖RᵀR−I‖₂, ‖R−C‖₂ = closed forms (θ≤0.95, t≤9)";
    check(name, skew_case(2usize..=16, 0.0..=0.95f64), |case| {
        let tol = f5_tol(case.b);
        for flavor in flavors() {
            for terms in 0..=9 {
                let coeffs = Parameterization::Neumann { terms, flavor }
                    .neumann_coefficients()
                    .unwrap();
                let (orth, dist, r) = measured(&case, &coeffs);
                let (orth_cf, dist_cf) =
                    reference::polynomial_spectrum_errors(&coeffs, &case.thetas);
                let what = format!("t={terms} {flavor:?}");
                ensure(name, &format!("{what} orth"), (orth - orth_cf).abs(), tol)?;
                ensure(name, &format!("{what} dist"), (dist - dist_cf).abs(), tol)?;
                // The R_p = (I+Q)S_{p−1} form (all but PEFT t = 2 and t ≤ 1): F5's parity formulas.
                let p = coeffs.len() - 1;
                if (p >= 2 && coeffs[1] == 2.0 && coeffs[p] == 1.0) || coeffs == [1.0, 1.0] {
                    let f5o = reference::f5_orthogonality_error(p, &case.thetas);
                    let f5d = reference::f5_distance(p, &case.thetas);
                    ensure(
                        name,
                        &format!("{what} orth F5 p={p}"),
                        (orth - f5o).abs(),
                        tol,
                    )?;
                    ensure(name, &format!("{what} dist = θᵖ"), (dist - f5d).abs(), tol)?;
                    // A separate row: the inequality is an equality (ratio 1 by design).
                    ensure(
                        "F5 ‖R_p−C‖₂ ≤ θᵖ + tol (equality)",
                        &format!("{what} dist ≤ θᵖ"),
                        dist,
                        f5d + tol,
                    )?;
                }
                // Singular values |P(iθⱼ)| (normal R): max and min against the closed form.
                if p >= 1 {
                    let sv = r.clone().svd(false, false).singular_values;
                    let smax = sv.max();
                    let smin = sv.min();
                    // A zero eigenvalue of Q exists only for odd b (σ = |P(0)| = 1 there).
                    let zero = if case.b % 2 == 1 { Some(&0.0) } else { None };
                    let sig: Vec<f64> = case
                        .thetas
                        .iter()
                        .chain(zero)
                        .map(|&t| poly_abs(&coeffs, t))
                        .collect();
                    let smax_cf = sig.iter().copied().fold(0.0, f64::max);
                    let smin_cf = sig.iter().copied().fold(f64::INFINITY, f64::min);
                    ensure(
                        name,
                        &format!("{what} σ_max = max|P(iθ)|"),
                        (smax - smax_cf).abs(),
                        tol,
                    )?;
                    ensure(
                        name,
                        &format!("{what} σ_min = min|P(iθ)|"),
                        (smin - smin_cf).abs(),
                        tol,
                    )?;
                }
            }
            // PEFT t = 2: R = I + 2Q, error 4θ², distance 2θ²/√(1+θ²).
            if flavor == NeumannFlavor::Peft {
                let (orth, dist, _) = measured(&case, &[1.0, 2.0]);
                let t = case.theta_max();
                ensure(name, "t=2 orth = 4θ²", (orth - 4.0 * t * t).abs(), tol)?;
                ensure(
                    name,
                    "t=2 dist",
                    (dist - 2.0 * t * t / (1.0 + t * t).sqrt()).abs(),
                    tol,
                )?;
            }
        }
        Ok(())
    });
}

fn poly_abs(coeffs: &[f64], theta: f64) -> f64 {
    let (mut re, mut im) = (0.0, 0.0);
    // (iθ)^k cycles 1, iθ, −θ², −iθ³.
    for (k, &c) in coeffs.iter().enumerate() {
        let m = c * theta.powi(k as i32);
        match k % 4 {
            0 => re += m,
            1 => im += m,
            2 => re -= m,
            _ => im -= m,
        }
    }
    (re * re + im * im).sqrt()
}

#[test]
fn general_closed_form_beyond_one() {
    // θ up to 2 (the series diverges beyond 1): the spectral closed form still holds, incl. the
    // non-monotone even-p case (θ_max = 1.2, p = 4 gives 0.99, oft-numerics F5).
    let name = "F5 spectral closed form, θ≤2";
    check(name, skew_case(2usize..=12, 0.0..=2.0f64), |case| {
        for flavor in flavors() {
            for terms in 0..=8 {
                let coeffs = Parameterization::Neumann { terms, flavor }
                    .neumann_coefficients()
                    .unwrap();
                let (orth, dist, r) = measured(&case, &coeffs);
                let (orth_cf, dist_cf) =
                    reference::polynomial_spectrum_errors(&coeffs, &case.thetas);
                // ‖R‖₂ ≤ Σ|cₖ|θᵏ ≤ 2·3⁸ at θ = 2; the rounding scales with ‖R‖₂².
                let tol = f5_tol(case.b) * (1.0 + reference::spectral_norm(&r).powi(2));
                let what = format!("t={terms} {flavor:?}");
                ensure(name, &format!("{what} orth"), (orth - orth_cf).abs(), tol)?;
                ensure(name, &format!("{what} dist"), (dist - dist_cf).abs(), tol)?;
            }
        }
        Ok(())
    });
}

#[test]
fn errors_decrease_with_terms() {
    let name = "F5 monotone decrease in t (θ<1)";
    check(name, skew_case(2usize..=16, 0.01..=0.95f64), |case| {
        let tol = f5_tol(case.b);
        // Distance to C decreases with t (PEFT t ≥ 4, p = t−1; odd-power t even).
        // Orthogonality error decreases along odd p (OddPower, t = 2, 4, 6, 8).
        let mut prev_dist = f64::INFINITY;
        for terms in 4..=10 {
            let coeffs = Parameterization::Neumann {
                terms,
                flavor: NeumannFlavor::Peft,
            }
            .neumann_coefficients()
            .unwrap();
            let (_, dist, _) = measured(&case, &coeffs);
            ensure(
                name,
                &format!("dist t={terms} ≤ dist t−1"),
                (dist - prev_dist).max(0.0),
                tol,
            )?;
            prev_dist = dist;
        }
        let (mut prev_orth, mut prev_dist) = (f64::INFINITY, f64::INFINITY);
        for terms in [2usize, 4, 6, 8, 10] {
            let coeffs = Parameterization::Neumann {
                terms,
                flavor: NeumannFlavor::OddPower,
            }
            .neumann_coefficients()
            .unwrap();
            let (orth, dist, _) = measured(&case, &coeffs);
            ensure(
                name,
                &format!("odd orth t={terms}"),
                (orth - prev_orth).max(0.0),
                tol,
            )?;
            ensure(
                name,
                &format!("odd dist t={terms}"),
                (dist - prev_dist).max(0.0),
                tol,
            )?;
            prev_orth = orth;
            prev_dist = dist;
        }
        Ok(())
    });
}

#[test]
fn divergence_guard() {
    let name = "F5 divergence guard ⇔ certified bound ≥ 1";
    let strat = (2usize..=12).prop_flat_map(|b| {
        (
            Just(b),
            prop::collection::vec(skew_case(Just(b), 0.0..=1.6f64), 1..=3),
        )
    });
    check(name, strat, |(b, cases)| {
        let packed = Mat::<f64>::from_fn(cases.len(), b * (b - 1) / 2, |i, k| cases[i].packed()[k]);
        let spec =
            RotationSpec::new(b * cases.len(), b, false, Parameterization::default()).unwrap();
        let rot = BlockRotation::build(&spec, packed.as_ref()).unwrap();
        let bounds = rot.skew_norm_bounds();
        for (i, case) in cases.iter().enumerate() {
            let true_norm = reference::spectral_norm(&case.q);
            // Certified: bound ≥ ‖Q‖₂ (the SVD value is accurate to a few ε·‖Q‖).
            ensure(
                name,
                "bound ≥ ‖Q‖₂",
                (true_norm * (1.0 - 8.0 * EPS64) - bounds[i]).max(0.0),
                0.0,
            )?;
            // Not absurdly loose: ≤ min(‖Q‖_F, √b·‖Q‖₂) up to the documented 1 + 4(b+1)ε inflation.
            let loose = case.q.norm().min((b as f64).sqrt() * true_norm)
                * (1.0 + 8.0 * (b as f64 + 1.0) * EPS64);
            ensure(name, "bound ≤ min(‖Q‖_F, √b‖Q‖₂)", bounds[i], loose)?;
            if true_norm >= 1.0 {
                ensure_that(name, "‖Q‖₂ ≥ 1 ⇒ bound ≥ 1", bounds[i] >= 1.0)?;
            }
        }
        let first = bounds.iter().position(|&x| x >= 1.0);
        let got = rot.check_convergence(DivergencePolicy::Ignore).unwrap();
        ensure_that(name, "fires exactly when a bound ≥ 1", got == first)?;
        ensure_that(
            name,
            "Error policy is Err iff it fires",
            rot.check_convergence(DivergencePolicy::Error).is_err() == first.is_some(),
        )?;
        let exact = BlockRotation::build(
            &spec
                .with_parameterization(Parameterization::Exact(oftq_ortho::CayleyConvention::Peft)),
            packed.as_ref(),
        )
        .unwrap();
        ensure_that(
            name,
            "exact never fires",
            exact
                .check_convergence(DivergencePolicy::Error)
                .unwrap()
                .is_none(),
        )
    });
}

#[test]
fn terms_for_eps_suffice() {
    let name = "F5 neumann_terms_for(eps, θ) terms suffice and are minimal";
    let strat = (-12.0..=-1.0f64, 0.01..=0.95f64, 0.5..=1.0f64).prop_flat_map(|(le, th, s)| {
        (
            Just(10f64.powf(le)),
            Just(th),
            skew_case(2usize..=12, Just(th * s)),
        )
    });
    check(name, strat, |(eps, theta, case)| {
        let t = neumann_terms_for(eps, theta).unwrap();
        let tol = f5_tol(case.b);
        ensure_that(name, "even t (odd p)", t.is_multiple_of(2) && t >= 2)?;
        for flavor in flavors() {
            let coeffs = Parameterization::Neumann { terms: t, flavor }
                .neumann_coefficients()
                .unwrap();
            let (orth, dist, _) = measured(&case, &coeffs);
            ensure(name, &format!("{flavor:?} orth ≤ eps"), orth, eps + tol)?;
            ensure(name, &format!("{flavor:?} dist ≤ eps"), dist, eps + tol)?;
        }
        // Minimal: the previous odd power p − 2 misses eps at θ_max = theta (closed form θ^{p−2}).
        let p = t - 1;
        if p >= 3 {
            let prev = theta.powi(p as i32 - 2);
            ensure_that(name, "t − 2 would not suffice", prev > eps)?;
        }
        Ok(())
    });
}

#[test]
fn terms_for_rejects_divergent() {
    let name = "F5 neumann_terms_for errors for θ ≥ 1 or eps ≤ 0";
    check(name, (1.0..10.0f64, -1.0..=0.0f64), |(theta, bad_eps)| {
        ensure_that(name, "θ ≥ 1", neumann_terms_for(1e-3, theta).is_err())?;
        ensure_that(name, "eps ≤ 0", neumann_terms_for(bad_eps, 0.5).is_err())?;
        ensure_that(name, "NaN", neumann_terms_for(1e-3, f64::NAN).is_err())
    });
}
