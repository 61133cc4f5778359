//! Block rotations: identity at Q = 0 (bit for bit), equality with the dense reference, norm
//! preservation, block sharing, sequential composition, parameter counts.

use faer::Mat;
use nalgebra::DMatrix;
use oftq_ortho::{BlockRotation, Parameterization, RotationSpec};
use oftq_verify::reference::{self, Param, RefRotation};
use proptest::prelude::*;

use crate::common::*;

/// A rotation with `b ≤ 8`, up to 4 positions, shared or not, `θ ≤ theta` per block, and an
/// input of up to 5 tokens.
fn setup(theta: f64) -> impl Strategy<Value = RotationCase> {
    rotation_case(2..=8, 1..=4, any::<bool>().boxed(), 1..=5, theta, 2.0)
}

fn build(
    b: usize,
    r: usize,
    shared: bool,
    p: Parameterization,
    packed: &DMatrix<f64>,
) -> BlockRotation<f64> {
    let spec = RotationSpec::new(b * r, b, shared, p).unwrap();
    BlockRotation::build(&spec, to_faer::<f64>(packed).as_ref()).unwrap()
}

#[test]
fn zero_params_identity_bit_for_bit() {
    let name = "1. Q=0 ⇒ output = input bit for bit (every param, f32+f64)";
    let s = (
        1usize..=8,
        1usize..=4,
        any::<bool>(),
        any_param(),
        matrix(3, 32, 3.0),
    );
    check(name, s, |(b, r, shared, idx, x)| {
        let (p, _) = all_params()[idx];
        let d = b * r;
        let x = x.columns(0, d.min(32)).into_owned();
        if x.ncols() != d {
            return Ok(());
        }
        let spec = RotationSpec::new(d, b, shared, p).unwrap();
        let rot64 = BlockRotation::<f64>::identity(&spec);
        let x64 = to_faer::<f64>(&x);
        ensure_that(
            name,
            "f64 forward",
            rot64.forward(x64.as_ref()).unwrap() == x64,
        )?;
        ensure_that(
            name,
            "f64 forward_transposed",
            rot64.forward_transposed(x64.as_ref()).unwrap() == x64,
        )?;
        ensure_that(
            name,
            "f64 to_dense = I",
            rot64.to_dense() == Mat::<f64>::identity(d, d),
        )?;
        let g = rot64.backward(x64.as_ref(), x64.as_ref()).unwrap();
        ensure_that(name, "f64 backward dx = dy", g.input == x64)?;
        let rot32 = BlockRotation::<f32>::identity(&spec);
        let x32 = to_faer::<f32>(&x);
        ensure_that(
            name,
            "f32 forward",
            rot32.forward(x32.as_ref()).unwrap() == x32,
        )?;
        // Also through build() with explicit zeros.
        let (rows, cols) = spec.param_shape();
        let built = BlockRotation::<f32>::build(&spec, Mat::zeros(rows, cols).as_ref()).unwrap();
        ensure_that(
            name,
            "f32 build(0) forward",
            built.forward(x32.as_ref()).unwrap() == x32,
        )
    });
}

#[test]
fn forward_equals_dense_reference() {
    let name = "5. forward = x·R_bd (dense reference), forward_transposed = x·R_bdᵀ, f64";
    check(name, setup(1.5), |case| {
        let RotationCase {
            b,
            r,
            shared,
            param,
            packed,
            x,
            ..
        } = case;
        let (p, rp) = all_params()[param];
        let rot = build(b, r, shared, p, &packed);
        let reff = RefRotation::build(&packed, b, r, rp).unwrap();
        let dense = reff.dense();
        // Entry of x·R: a length-b dot product: b·ε·‖x‖_max·‖R‖_max, plus the block agreement
        // (≤ 1e-12 relative, see agreement.rs).
        let tol = (2.0 * b as f64 * EPS64 + 1e-12)
            * max_abs(&x).max(1.0)
            * max_abs(dense).max(1.0)
            * b as f64;
        let y = to_na(rot.forward(to_faer::<f64>(&x).as_ref()).unwrap().as_ref());
        ensure(name, "forward", max_diff(&y, &reff.forward(&x)), tol)?;
        let yt = to_na(
            rot.forward_transposed(to_faer::<f64>(&x).as_ref())
                .unwrap()
                .as_ref(),
        );
        ensure(
            name,
            "forward_transposed",
            max_diff(&yt, &(&x * dense.transpose())),
            tol,
        )?;
        ensure(
            name,
            "to_dense",
            max_diff(&to_na(rot.to_dense().as_ref()), dense),
            tol,
        )
    });
}

#[test]
fn norm_preservation() {
    let name = "4. ‖x·R_bd‖ = ‖x‖ (exact), σ_min‖x‖ ≤ ‖x·R_bd‖ ≤ σ_max‖x‖ (Neumann)";
    check(name, setup(0.95), |case| {
        let RotationCase {
            b,
            r,
            shared,
            param,
            packed,
            x,
            ..
        } = case;
        let (p, rp) = all_params()[param];
        let rot = build(b, r, shared, p, &packed);
        let y = to_na(rot.forward(to_faer::<f64>(&x).as_ref()).unwrap().as_ref());
        let reff = RefRotation::build(&packed, b, r, rp).unwrap();
        let sv = reff.dense().clone().svd(false, false).singular_values;
        let (smin, smax) = (sv.min(), sv.max());
        for t in 0..x.nrows() {
            let (nx, ny) = (x.row(t).norm(), y.row(t).norm());
            // Rounding: ~b·ε relative per row.
            let tol = 8.0 * (b * r) as f64 * EPS64 * nx.max(1e-300);
            if matches!(rp, Param::Exact(_)) {
                ensure(name, "exact ‖y‖ = ‖x‖", (ny - nx).abs(), tol)?;
            } else {
                ensure(
                    name,
                    "‖y‖ ≤ σ_max‖x‖",
                    (ny - smax * nx).max(0.0),
                    tol * smax.max(1.0),
                )?;
                ensure(
                    name,
                    "‖y‖ ≥ σ_min‖x‖",
                    (smin * nx - ny).max(0.0),
                    tol * smax.max(1.0),
                )?;
            }
        }
        Ok(())
    });
}

#[test]
fn sharing_equals_equal_blocks() {
    let name = "8. block_share ≡ unshared with equal blocks; shared grad = Σ block grads";
    let s = rotation_case(2..=8, 2..=4, Just(true).boxed(), 1..=4, 1.5, 1.0);
    check(name, s, |case| {
        let RotationCase {
            b,
            r,
            param: idx,
            packed,
            x,
            dy,
            ..
        } = case;
        let (p, _) = all_params()[idx];
        let shared = build(b, r, true, p, &packed);
        let repeated = DMatrix::from_fn(r, packed.ncols(), |_, k| packed[(0, k)]);
        let plain = build(b, r, false, p, &repeated);
        let (xf, dyf) = (to_faer::<f64>(&x), to_faer::<f64>(&dy));
        let ya = to_na(shared.forward(xf.as_ref()).unwrap().as_ref());
        let yb = to_na(plain.forward(xf.as_ref()).unwrap().as_ref());
        // Same blocks, same per-block products: identical bits.
        ensure(name, "forward", max_diff(&ya, &yb), 0.0)?;
        let ga = shared.backward(xf.as_ref(), dyf.as_ref()).unwrap();
        let gb = plain.backward(xf.as_ref(), dyf.as_ref()).unwrap();
        ensure(
            name,
            "input grad",
            max_diff(&to_na(ga.input.as_ref()), &to_na(gb.input.as_ref())),
            0.0,
        )?;
        let pa = to_na(ga.params.as_ref());
        let pb = to_na(gb.params.as_ref());
        let sum = DMatrix::from_fn(1, pb.ncols(), |_, k| pb.column(k).sum());
        // Summation order differs (∂L/∂R summed before vs after the VJP): r·b·ε relative.
        let tol = 16.0 * (r * b) as f64 * EPS64 * max_abs(&pb).max(1.0) * r as f64;
        ensure(name, "param grad = Σ", max_diff(&pa, &sum), tol)
    });
}

#[test]
fn sequential_equals_product() {
    let name = "12. sequential rotations = x·(R_a·R_b); exact product orthogonal";
    let s = rotation_case(2..=8, 1..=3, Just(false).boxed(), 3..=3, 1.5, 1.0).prop_flat_map(|a| {
        let second = packed_rows(a.b, a.r, 0.0..=1.5f64);
        (Just(a), second, any_param())
    });
    check(name, s, |(a, pb, ib)| {
        let RotationCase {
            b,
            r,
            param: ia,
            packed: pa,
            x,
            ..
        } = a;
        let ((p1, rp1), (p2, rp2)) = (all_params()[ia], all_params()[ib]);
        let (ra, rb) = (build(b, r, false, p1, &pa), build(b, r, false, p2, &pb));
        let y = rb
            .forward(ra.forward(to_faer::<f64>(&x).as_ref()).unwrap().as_ref())
            .unwrap();
        let da = RefRotation::build(&pa, b, r, rp1).unwrap().dense().clone();
        let db = RefRotation::build(&pb, b, r, rp2).unwrap().dense().clone();
        let prod = &da * &db;
        let want = &x * &prod;
        let tol = 1e-12
            * (b as f64)
            * max_abs(&da).max(1.0)
            * max_abs(&db).max(1.0)
            * max_abs(&x).max(1.0);
        ensure(name, "x·R_a·R_b", max_diff(&to_na(y.as_ref()), &want), tol)?;
        if matches!((rp1, rp2), (Param::Exact(_), Param::Exact(_))) {
            let prod_oftq = to_na(ra.to_dense().as_ref()) * to_na(rb.to_dense().as_ref());
            ensure(
                name,
                "exact R_aR_b orthogonal",
                reference::orthogonality_error(&prod_oftq),
                1e-13,
            )?;
        }
        Ok(())
    });
}

#[test]
fn parameter_counts() {
    let name = "8. parameter counts r·b(b−1)/2 and b(b−1)/2";
    check(
        name,
        (1usize..=128, 1usize..=64, any::<bool>()),
        |(b, r, shared)| {
            let spec = RotationSpec::new(b * r, b, shared, Parameterization::default()).unwrap();
            let per = reference::packed_pairs(b).len();
            ensure_that(
                name,
                "n_elements",
                spec.n_elements() == per && oftq_ortho::n_elements(b) == per,
            )?;
            let stored = if shared { 1 } else { r };
            ensure_that(name, "param_shape", spec.param_shape() == (stored, per))?;
            ensure_that(name, "n_parameters", spec.n_parameters() == stored * per)?;
            ensure_that(
                name,
                "n_blocks",
                spec.n_blocks() == r && spec.stored_blocks() == stored,
            )?;
            ensure_that(
                name,
                "non-divisor rejected",
                b < 2
                    || RotationSpec::new(b * r + 1, b, shared, Parameterization::default())
                        .is_err(),
            )
        },
    );
}
