//! Property 7 / F3: every VJP against central finite differences (f64) and the reference's VJP.

use nalgebra::DMatrix;
use oftq_ortho::{
    BlockRotation, CayleyConvention, NeumannFlavor, Parameterization, RotationSpec, cayley_exact,
    cayley_exact_vjp, neumann_polynomial, neumann_vjp,
};
use oftq_verify::reference::{self, Convention, Flavor, Param, RefRotation};
use proptest::prelude::*;

use crate::common::*;

/// Central-difference step. The FD error is `h²/6·|L'''| + ε·|L|/h`; with `h = 1e-5`, `|L| ≲ 10²`
/// and `|L'''| ≲ 10³` (θ ≤ 1) both terms are `≲ 2e-7`, so we allow `1e-6·(1 + |fd|)`.
const H: f64 = 1e-5;

fn fd_tol(fd: f64) -> f64 {
    1e-6 * (1.0 + fd.abs())
}

fn dot(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    a.component_mul(b).sum()
}

/// VJP agreement with the reference: both are `O(b)`-deep products, `1e-12` relative-ish.
fn vjp_tol(b: usize, scale: f64) -> f64 {
    1e-12 * (b as f64).max(1.0) * scale.max(1.0)
}

#[test]
fn exact_vjp_vs_fd_and_reference() {
    let name = "7/F3 cayley_exact_vjp vs FD (packed) and reference, both conventions";
    let s = (2usize..=8).prop_flat_map(|b| (skew_case(Just(b), 0.0..=2.0f64), matrix(b, b, 1.0)));
    check(name, s, |(case, g)| {
        let b = case.b;
        for (conv, rconv) in [
            (CayleyConvention::Peft, Convention::Peft),
            (CayleyConvention::Textbook, Convention::Textbook),
        ] {
            let q = to_faer::<f64>(&case.q);
            let r = cayley_exact(q.as_ref(), conv).unwrap();
            let dq =
                to_na(cayley_exact_vjp(r.as_ref(), conv, to_faer::<f64>(&g).as_ref()).as_ref());
            let want = reference::cayley_exact_vjp(&case.q, rconv, &g).unwrap();
            ensure(
                name,
                &format!("{conv:?} vs reference"),
                max_diff(&dq, &want),
                vjp_tol(b, max_abs(&want)),
            )?;
            let packed_grad = reference::packed_grad(&dq);
            let v = case.packed();
            let loss = |v: &[f64]| {
                let q = reference::skew_from_packed(v, b).unwrap();
                let r = cayley_exact(to_faer::<f64>(&q).as_ref(), conv).unwrap();
                dot(&to_na(r.as_ref()), &g)
            };
            for k in 0..v.len() {
                let (mut vp, mut vm) = (v.clone(), v.clone());
                vp[k] += H;
                vm[k] -= H;
                let fd = (loss(&vp) - loss(&vm)) / (2.0 * H);
                ensure(
                    name,
                    &format!("{conv:?} ∂L/∂v[{k}]"),
                    (fd - packed_grad[k]).abs(),
                    fd_tol(fd),
                )?;
            }
        }
        Ok(())
    });
}

#[test]
fn neumann_vjp_vs_fd_and_reference() {
    let name = "7 neumann_vjp vs FD (all entries) and reference, both flavors, t≤9";
    let s = (2usize..=6).prop_flat_map(|b| {
        (
            skew_case(Just(b), 0.0..=1.0f64),
            matrix(b, b, 1.0),
            0usize..=9,
            any::<bool>(),
        )
    });
    check(name, s, |(case, g, terms, peft)| {
        let b = case.b;
        let (flavor, rflavor) = if peft {
            (NeumannFlavor::Peft, Flavor::Peft)
        } else {
            (NeumannFlavor::OddPower, Flavor::OddPower)
        };
        let coeffs = Parameterization::Neumann { terms, flavor }
            .neumann_coefficients()
            .unwrap();
        let dq = to_na(
            neumann_vjp(
                to_faer::<f64>(&case.q).as_ref(),
                &coeffs,
                to_faer::<f64>(&g).as_ref(),
            )
            .as_ref(),
        );
        let want = reference::neumann_vjp(
            &case.q,
            &reference::neumann_coefficients(terms, rflavor),
            &g,
        );
        ensure(
            name,
            "vs reference",
            max_diff(&dq, &want),
            vjp_tol(b, max_abs(&want)),
        )?;
        // The polynomial is defined for any square Q: differentiate along every entry.
        let loss = |q: &DMatrix<f64>| {
            dot(
                &to_na(neumann_polynomial(to_faer::<f64>(q).as_ref(), &coeffs).as_ref()),
                &g,
            )
        };
        for i in 0..b {
            for j in 0..b {
                let (mut qp, mut qm) = (case.q.clone(), case.q.clone());
                qp[(i, j)] += H;
                qm[(i, j)] -= H;
                let fd = (loss(&qp) - loss(&qm)) / (2.0 * H);
                ensure(
                    name,
                    &format!("∂L/∂Q[{i},{j}]"),
                    (fd - dq[(i, j)]).abs(),
                    fd_tol(fd),
                )?;
            }
        }
        Ok(())
    });
}

#[test]
fn block_rotation_backward_vs_fd_and_reference() {
    let name = "7 BlockRotation::backward vs FD and reference (every param, sharing)";
    let s = rotation_case(2..=5, 1..=3, any::<bool>().boxed(), 1..=3, 1.0, 1.0);
    check(name, s, |case| {
        let RotationCase {
            b,
            r,
            shared,
            param: idx,
            packed,
            x,
            dy,
        } = case;
        let (p, rp): (Parameterization, Param) = all_params()[idx];
        let spec = RotationSpec::new(b * r, b, shared, p).unwrap();
        let rot = BlockRotation::build(&spec, to_faer::<f64>(&packed).as_ref()).unwrap();
        let grad = rot
            .backward(to_faer::<f64>(&x).as_ref(), to_faer::<f64>(&dy).as_ref())
            .unwrap();
        let (gp, gx) = (to_na(grad.params.as_ref()), to_na(grad.input.as_ref()));
        let reff = RefRotation::build(&packed, b, r, rp)
            .unwrap()
            .backward(&x, &dy)
            .unwrap();
        ensure(
            name,
            "params vs reference",
            max_diff(&gp, &reff.params),
            vjp_tol(b * r, max_abs(&reff.params)),
        )?;
        ensure(
            name,
            "input vs reference",
            max_diff(&gx, &reff.input),
            vjp_tol(b * r, max_abs(&reff.input)),
        )?;
        let loss = |w: &DMatrix<f64>, x: &DMatrix<f64>| {
            let rot = BlockRotation::build(&spec, to_faer::<f64>(w).as_ref()).unwrap();
            dot(
                &to_na(rot.forward(to_faer::<f64>(x).as_ref()).unwrap().as_ref()),
                &dy,
            )
        };
        for i in 0..packed.nrows() {
            for k in 0..packed.ncols() {
                let (mut wp, mut wm) = (packed.clone(), packed.clone());
                wp[(i, k)] += H;
                wm[(i, k)] -= H;
                let fd = (loss(&wp, &x) - loss(&wm, &x)) / (2.0 * H);
                ensure(
                    name,
                    &format!("∂L/∂w[{i},{k}]"),
                    (fd - gp[(i, k)]).abs(),
                    fd_tol(fd),
                )?;
            }
        }
        for t in 0..x.nrows() {
            for f in 0..x.ncols() {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[(t, f)] += H;
                xm[(t, f)] -= H;
                let fd = (loss(&packed, &xp) - loss(&packed, &xm)) / (2.0 * H);
                ensure(
                    name,
                    &format!("∂L/∂x[{t},{f}]"),
                    (fd - gx[(t, f)]).abs(),
                    fd_tol(fd),
                )?;
            }
        }
        Ok(())
    });
}
