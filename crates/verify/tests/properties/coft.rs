//! F8: COFT projections (PEFT per-block, LyCORIS global) against the reference, radius conventions,
//! and the certificates a radius ρ < 1 gives.

use nalgebra::DMatrix;
use oftq_ortho::{
    BlockRotation, CoftRadius, DivergencePolicy, NeumannFlavor, Parameterization, RotationSpec,
    project_coft,
};
use oftq_verify::reference::{self, Convention};
use proptest::prelude::*;

use crate::common::*;

fn strat() -> impl Strategy<Value = (usize, DMatrix<f64>, f64, bool)> {
    (2usize..=10, 1usize..=4).prop_flat_map(|(b, rows)| {
        (
            Just(b),
            matrix(rows, b * (b - 1) / 2, 1.0),
            1e-3..=3.0f64,
            any::<bool>(),
        )
    })
}

#[test]
fn projection_matches_reference() {
    let name = "F8 COFT projection = reference, norm ≤ ρ, idempotent, identity inside";
    check(name, strat(), |(b, packed, rho, global)| {
        let radius = if global {
            CoftRadius::Global(rho)
        } else {
            CoftRadius::PerBlock(rho)
        };
        let mut w = to_faer::<f64>(&packed);
        project_coft(w.as_mut(), radius).unwrap();
        let got = to_na(w.as_ref());
        let skews = ref_skews(&packed, b);
        let want = if global {
            reference::project_global(&skews, rho)
        } else {
            reference::project_per_block(&skews, rho)
        };
        let got_skews = ref_skews(&got, b);
        // Both scale by ρ/‖Q‖_F: a few ε relative.
        for (g, r) in got_skews.iter().zip(&want) {
            ensure(
                name,
                "vs reference",
                max_diff(g, r),
                8.0 * EPS64 * (1.0 + max_abs(r)),
            )?;
        }
        // Output norm ≤ ρ (up to the rounding of one scaling, 4ε relative).
        let norms: Vec<f64> = got_skews.iter().map(|q| q.norm()).collect();
        let out = if global {
            norms.iter().map(|n| n * n).sum::<f64>().sqrt()
        } else {
            norms.iter().copied().fold(0.0, f64::max)
        };
        // A separate row: the bound is attained outside the ball (ratio 1 by design).
        ensure(
            "F8 COFT ‖P(Q)‖_F ≤ ρ(1+4ε) (attained)",
            "‖P(Q)‖_F ≤ ρ",
            out,
            rho * (1.0 + 4.0 * EPS64),
        )?;
        // Identity inside the ball: bit for bit.
        let inside: Vec<bool> = if global {
            let n = skews.iter().map(|q| q.norm_squared()).sum::<f64>().sqrt();
            vec![n < rho * (1.0 - 1e-12); skews.len()]
        } else {
            skews
                .iter()
                .map(|q| q.norm() < rho * (1.0 - 1e-12))
                .collect()
        };
        for (i, &ins) in inside.iter().enumerate() {
            if ins {
                ensure(
                    name,
                    "identity inside",
                    (got.row(i) - packed.row(i)).amax(),
                    0.0,
                )?;
            }
        }
        // Idempotent (the second projection may rescale by 1 ± ε).
        let mut w2 = w.clone();
        project_coft(w2.as_mut(), radius).unwrap();
        ensure(
            name,
            "idempotent",
            max_diff(&to_na(w2.as_ref()), &got),
            4.0 * EPS64 * max_abs(&got),
        )?;
        // Skew preserved: the packed form can only hold skew blocks; check Q + Qᵀ = 0 on unpacking.
        for q in &got_skews {
            ensure(name, "skew", (q + q.transpose()).amax(), 0.0)?;
        }
        Ok(())
    });
}

#[test]
fn radius_conventions() {
    let name = "F8 COFT radius conventions (PEFT ε/√r, official ε·b²/√r, LyCORIS c·out)";
    check(
        name,
        (1e-6..1.0f64, 1usize..=256, 1usize..=64, 1usize..=8192),
        |(eps, r, b, out)| {
            // PEFT computes in f32: ρ = fl32(fl32(1/√r)·fl32(eps)); within 3 f32 roundings of ε/√r.
            let peft = CoftRadius::peft(eps, r);
            let exact = eps / (r as f64).sqrt();
            ensure(
                name,
                "peft rel",
                (peft.radius() - exact).abs() / exact,
                3.0 * EPS32,
            )?;
            ensure_that(
                name,
                "peft per-block",
                matches!(peft, CoftRadius::PerBlock(_)),
            )?;
            let off = CoftRadius::official_oft(eps, b, r);
            let want = eps * (b * b) as f64 / (r as f64).sqrt();
            ensure(
                name,
                "official rel",
                (off.radius() - want).abs() / want,
                4.0 * EPS64,
            )?;
            let ly = CoftRadius::lycoris(eps, out);
            ensure(
                name,
                "lycoris rel",
                (ly.radius() - eps * out as f64).abs() / (eps * out as f64),
                2.0 * EPS64,
            )?;
            ensure_that(name, "lycoris global", matches!(ly, CoftRadius::Global(_)))
        },
    );
}

#[test]
fn radius_below_one_certifies() {
    let name = "F8 ρ<1 ⇒ Neumann certified, ‖C−I‖_F ≤ 2ρ, ‖C−I‖₂ ≤ 2ρ/√(1+ρ²), ‖R_p−C‖₂ ≤ ρᵖ";
    let s = (2usize..=10, 1usize..=3)
        .prop_flat_map(|(b, rows)| (Just(b), matrix(rows, b * (b - 1) / 2, 2.0), 1e-3..0.99f64));
    check(name, s, |(b, packed, rho)| {
        let rows = packed.nrows();
        let mut w = to_faer::<f64>(&packed);
        project_coft(w.as_mut(), CoftRadius::PerBlock(rho)).unwrap();
        let spec = RotationSpec::new(b * rows, b, false, Parameterization::default()).unwrap();
        let rot = BlockRotation::build(&spec, w.as_ref()).unwrap();
        ensure_that(
            name,
            "Neumann certified",
            rot.check_convergence(DivergencePolicy::Ignore)
                .unwrap()
                .is_none(),
        )?;
        let tol = 64.0 * b as f64 * EPS64;
        for q in ref_skews(&to_na(w.as_ref()), b) {
            let id = DMatrix::<f64>::identity(b, b);
            let c = reference::cayley_exact(&q, Convention::Textbook).unwrap();
            let cmi = &c - &id;
            ensure(name, "‖C−I‖_F ≤ 2ρ", cmi.norm(), 2.0 * rho + tol)?;
            ensure(
                name,
                "‖C−I‖₂ ≤ 2ρ/√(1+ρ²)",
                reference::spectral_norm(&cmi),
                2.0 * rho / (1.0 + rho * rho).sqrt() + tol,
            )?;
            for terms in [4usize, 5, 6, 7] {
                let p = Parameterization::Neumann {
                    terms,
                    flavor: NeumannFlavor::Peft,
                };
                let coeffs = p.neumann_coefficients().unwrap();
                let r = to_na(
                    oftq_ortho::neumann_polynomial(to_faer::<f64>(&q).as_ref(), &coeffs).as_ref(),
                );
                let dist = reference::spectral_norm(&(&r - &c));
                ensure(
                    name,
                    "‖R_p − C‖₂ ≤ ρᵖ",
                    dist,
                    rho.powi(coeffs.len() as i32 - 1) + tol,
                )?;
            }
        }
        Ok(())
    });
}
