//! `DenseOftLinear` and adapters at the layer level (oft-numerics §7 tests 1, 5, 6, 8, 11, 12):
//! identity at `Q = 0` bit for bit, input-centric ≡ weight-centric, hyperspherical-energy
//! invariance of an exact merge, sequential adapters with different block sizes, merge/unmerge
//! round trips, and parameter counts with PEFT's block-size adjustment.

use faer::Mat;
use nalgebra::DMatrix;
use oftq_layer::{BaseLinear, DenseLinear, DenseOftLinear, OftAdapter, OftConfig};
use oftq_ortho::{CayleyConvention, Parameterization};
use oftq_verify::reference;
use proptest::prelude::*;

use crate::common::*;
use crate::fixtures::*;

/// Rounding budget of one `f32` rotation block of size `b`, in units of `ε₃₂·‖R‖` (as in aqlm.rs).
fn rot_units(b: usize) -> f64 {
    16.0 * (b as f64 + 2.0)
}

fn attach_dense(
    base: DenseLinear,
    b: usize,
    shared: bool,
    p: Parameterization,
    packed: &DMatrix<f64>,
) -> DenseOftLinear {
    let mut layer = DenseOftLinear::with_adapter(base, "a", &config_for(b, shared, p)).unwrap();
    layer
        .adapter_mut("a")
        .unwrap()
        .set_weight(f32_mat(packed))
        .unwrap();
    layer
}

fn add(
    layer: &mut DenseOftLinear,
    name: &str,
    b: usize,
    p: Parameterization,
    packed: &DMatrix<f64>,
) {
    layer.add_adapter(name, &config_for(b, false, p)).unwrap();
    layer
        .adapter_mut(name)
        .unwrap()
        .set_weight(f32_mat(packed))
        .unwrap();
}

fn bias_max(layer: &DenseLinear) -> f64 {
    layer.bias().map_or(0.0, |b| {
        b.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())))
    })
}

/// (out, d, block selector, shared, param, tokens, bias, fan_in_fan_out, seed).
fn dense_setup() -> impl Strategy<Value = (usize, usize, usize, bool, usize, usize, bool, bool, u64)>
{
    (
        1usize..=6,
        1usize..=24,
        any::<usize>(),
        any::<bool>(),
        any_param(),
        1usize..=5,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
}

#[test]
fn dense_zero_params_bit_for_bit() {
    let name =
        "L1. dense: Q=0 ⇒ layer output = base output bit for bit (every param, 1–2 adapters)";
    let s = (dense_setup(), any_param());
    check(
        name,
        s,
        |((out, d, bsel, shared, idx, tokens, bias, fifo, seed), i2)| {
            let mut rng = SplitMix::new(seed);
            let (base, _) = dense_base(&mut rng, out, d, bias, fifo);
            let divs = divisors(d);
            let b = divs[bsel % divs.len()];
            let x = f32_mat(&rng.mat32(tokens, d, 3.0));
            let want = base.forward(x.as_ref()).unwrap();
            let mut layer = DenseOftLinear::with_adapter(
                base,
                "a",
                &config_for(b, shared, all_params()[idx].0),
            )
            .unwrap();
            ensure_that(
                name,
                "one adapter, init",
                same_bits(&layer.forward(x.as_ref()).unwrap(), &want),
            )?;
            let b2 = divs[(bsel / 7) % divs.len()];
            let n2 = reference::packed_pairs(b2).len();
            add(
                &mut layer,
                "b",
                b2,
                all_params()[i2].0,
                &DMatrix::zeros(d / b2, n2),
            );
            ensure_that(
                name,
                "two adapters, explicit zeros",
                same_bits(&layer.forward(x.as_ref()).unwrap(), &want),
            )
        },
    );
}

#[test]
fn dense_input_centric_equals_weight_centric() {
    let name = "L5. dense: forward = x·(W·R_bdᵀ)ᵀ + bias (reference R), f32";
    check(
        name,
        dense_setup(),
        |(out, d, bsel, shared, idx, tokens, bias, fifo, seed)| {
            let mut rng = SplitMix::new(seed);
            let (base, w) = dense_base(&mut rng, out, d, bias, fifo);
            let divs = divisors(d);
            let b = divs[bsel % divs.len()];
            let (p, rp) = all_params()[idx];
            let packed = rng.packed(if shared { 1 } else { d / b }, b, 0.9);
            let x = rng.mat32(tokens, d, 2.0);
            let bmax = bias_max(&base);
            let layer = attach_dense(base, b, shared, p, &packed);
            let r = ref_rotation(&packed, b, d, rp).dense().clone();
            let merged = &w * r.transpose();
            let want = affine(&x, &merged, layer.base().bias());
            let y = to_na(layer.forward(f32_mat(&x).as_ref()).unwrap().as_ref());
            let tol = EPS32
                * (rot_units(b) + 2.0 * (b + d + 2) as f64)
                * abs_scale(&[&x, &r, &w.transpose()])
                + EPS32 * bmax;
            ensure(name, "forward", max_diff(&y, &want), tol)
        },
    );
}

/// Pairwise cosine similarities of the rows of `w` (neurons), `[out, out]`, and the row norms.
fn cosines(w: &DMatrix<f64>) -> (DMatrix<f64>, Vec<f64>) {
    let norms: Vec<f64> = w.row_iter().map(|r| r.norm()).collect();
    let n = w.nrows();
    let c = DMatrix::from_fn(n, n, |i, j| {
        if norms[i] == 0.0 || norms[j] == 0.0 {
            0.0
        } else {
            w.row(i).dot(&w.row(j)) / (norms[i] * norms[j])
        }
    });
    (c, norms)
}

#[test]
fn he_invariance_after_exact_merge() {
    let name =
        "L6. HE invariance: neuron cosines and norms unchanged by an exact-Cayley dense merge";
    let s = (
        1usize..=6,
        1usize..=24,
        any::<usize>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    );
    check(name, s, |(out, d, bsel, shared, peft, seed)| {
        let mut rng = SplitMix::new(seed);
        let (base, w) = dense_base(&mut rng, out, d, false, false);
        let divs = divisors(d);
        let b = divs[bsel % divs.len()];
        let p = Parameterization::Exact(if peft {
            CayleyConvention::Peft
        } else {
            CayleyConvention::Textbook
        });
        let packed = rng.packed(if shared { 1 } else { d / b }, b, 2.0);
        let mut layer = attach_dense(base, b, shared, p, &packed);
        // The f32 rotation's own orthogonality error bounds the change in angles (plus rounding).
        let orth = layer
            .adapter("a")
            .unwrap()
            .rotation()
            .blocks()
            .iter()
            .map(|m| reference::orthogonality_error(&to_na(m.as_ref())))
            .fold(0.0, f64::max);
        layer.merge(None, true).unwrap();
        let w2 = to_na(layer.base().weight());
        let (c1, n1) = cosines(&w);
        let (c2, n2) = cosines(&w2);
        // Rounding of W·Rᵀ: b·ε relative per entry; cosines: relative errors of the norms and dots.
        let rel = 4.0 * orth + EPS32 * (4.0 * b as f64 + 2.0 * d as f64 + 8.0);
        let norm_err = n1
            .iter()
            .zip(&n2)
            .map(|(a, b)| (a - b).abs() / a.max(f64::MIN_POSITIVE))
            .fold(0.0, f64::max);
        ensure(name, "row norms (relative)", norm_err, rel)?;
        // Cosine error: ≤ |Δdot|/(‖a‖‖b‖) + 2·|cos|·rel: bounded by 4·rel when rows are not tiny.
        ensure(
            name,
            "pairwise cosines",
            max_diff(&c1, &c2),
            4.0 * rel * (d as f64).sqrt(),
        )
    });
}

#[test]
fn sequential_adapters_equal_product() {
    let name = "L12. two adapters (different b) = x·R_a·R_b·Wᵀ, order as set_adapters";
    let s = (
        1usize..=4,
        2usize..=24,
        any::<usize>(),
        any_param(),
        any_param(),
        1usize..=4,
        any::<u64>(),
    );
    check(name, s, |(out, d, bsel, ia, ib, tokens, seed)| {
        let mut rng = SplitMix::new(seed);
        let (base, w) = dense_base(&mut rng, out, d, true, false);
        let divs = divisors(d);
        let (b1, b2) = (divs[bsel % divs.len()], divs[(bsel / 5) % divs.len()]);
        let ((p1, rp1), (p2, rp2)) = (all_params()[ia], all_params()[ib]);
        let (pk1, pk2) = (rng.packed(d / b1, b1, 0.9), rng.packed(d / b2, b2, 0.9));
        let x = rng.mat32(tokens, d, 1.0);
        let bmax = bias_max(&base);
        let mut layer = attach_dense(base, b1, false, p1, &pk1);
        add(&mut layer, "b", b2, p2, &pk2);
        let ra = ref_rotation(&pk1, b1, d, rp1).dense().clone();
        let rb = ref_rotation(&pk2, b2, d, rp2).dense().clone();
        let tol = EPS32
            * (2.0 * rot_units(b1.max(b2)) + 2.0 * (b1 + b2 + d + 2) as f64)
            * abs_scale(&[&x, &ra, &rb, &w.transpose()])
            + EPS32 * bmax;
        let xf = f32_mat(&x);
        let y = to_na(layer.forward(xf.as_ref()).unwrap().as_ref());
        let want = affine(&(&x * &ra * &rb), &w, layer.base().bias());
        ensure(name, "order a, b", max_diff(&y, &want), tol)?;
        layer.set_adapters(&["b", "a"]).unwrap();
        let y = to_na(layer.forward(xf.as_ref()).unwrap().as_ref());
        let want = affine(&(&x * &rb * &ra), &w, layer.base().bias());
        ensure(name, "order b, a", max_diff(&y, &want), tol)?;
        layer.enable_adapters(false);
        let y = to_na(layer.forward(xf.as_ref()).unwrap().as_ref());
        let want = affine(&x, &w, layer.base().bias());
        ensure(
            name,
            "disabled = base",
            max_diff(&y, &want),
            EPS32 * 2.0 * (d + 2) as f64 * abs_scale(&[&x, &w.transpose()]) + EPS32 * bmax,
        )
    });
}

#[test]
fn dense_merge_unmerge_round_trip() {
    let name = "L11. dense merge/unmerge (exact + Neumann, 1–2 adapters): forward kept, W restored";
    let s = (dense_setup(), any_param(), any::<bool>());
    check(
        name,
        s,
        |((out, d, bsel, shared, idx, tokens, bias, fifo, seed), i2, two)| {
            let mut rng = SplitMix::new(seed);
            let (base, w) = dense_base(&mut rng, out, d, bias, fifo);
            let divs = divisors(d);
            let (b1, b2) = (divs[bsel % divs.len()], divs[(bsel / 5) % divs.len()]);
            let ((p1, rp1), (p2, rp2)) = (all_params()[idx], all_params()[i2]);
            // θ ≤ 0.7 keeps every Neumann R well conditioned (σ_min ≥ 1 − 0.7⁴, F5).
            let pk1 = rng.packed(if shared { 1 } else { d / b1 }, b1, 0.7);
            let pk2 = rng.packed(d / b2, b2, 0.7);
            let x = f32_mat(&rng.mat32(tokens, d, 1.0));
            let mut layer = attach_dense(base, b1, shared, p1, &pk1);
            let mut r = ref_rotation(&pk1, b1, d, rp1).dense().clone();
            if two {
                add(&mut layer, "b", b2, p2, &pk2);
                r = &r * ref_rotation(&pk2, b2, d, rp2).dense();
            }
            let bmax = bias_max(layer.base());
            let before = to_na(layer.forward(x.as_ref()).unwrap().as_ref());
            layer.merge(None, true).unwrap();
            ensure_that(
                name,
                "merged list",
                layer.merged_adapters().len() == if two { 2 } else { 1 },
            )?;
            let after = to_na(layer.forward(x.as_ref()).unwrap().as_ref());
            let xs = to_na(x.as_ref());
            let bb = b1.max(b2);
            let tol = EPS32
                * (2.0 * rot_units(bb) + 2.0 * (bb + d + 2) as f64)
                * abs_scale(&[&xs, &r.abs(), &w.transpose()])
                + EPS32 * bmax;
            ensure(
                name,
                "merged forward = unmerged",
                max_diff(&after, &before),
                tol,
            )?;
            ensure(
                name,
                "merged W = W·R_bdᵀ",
                max_diff(&to_na(layer.base().weight()), &(&w * r.transpose())),
                tol,
            )?;
            layer.unmerge().unwrap();
            ensure_that(name, "unmerged list", layer.merged_adapters().is_empty())?;
            // W'' = W·Rᵀ·R⁻ᵀ: error ≲ κ(R)·(rounding of both products).
            let sv = r.clone().svd(false, false).singular_values;
            let kappa = sv.max() / sv.min();
            let tol_w = EPS32
                * kappa
                * (4.0 * rot_units(bb) + 4.0 * bb as f64)
                * abs_scale(&[&w, &r.abs().transpose()]);
            ensure(
                name,
                "unmerge(merge(W)) = W",
                max_diff(&to_na(layer.base().weight()), &w),
                tol_w,
            )?;
            let again = to_na(layer.forward(x.as_ref()).unwrap().as_ref());
            ensure(
                name,
                "forward after unmerge",
                max_diff(&again, &before),
                tol * kappa,
            )
        },
    );
}

/// PEFT's `adjust_oft_parameters`, written independently: the divisor of `n` nearest to `p`,
/// ties to the smaller; `n` when `p ≥ n`.
fn peft_adjust(n: usize, p: usize) -> usize {
    if p >= n {
        return n;
    }
    divisors(n)
        .into_iter()
        .min_by_key(|&k| (k.abs_diff(p), k))
        .unwrap()
}

#[test]
fn layer_parameter_counts() {
    let name = "L8. OftAdapter::n_parameters = r·b(b−1)/2 or b(b−1)/2 after PEFT's adjustment";
    let s = (1usize..=96, 1usize..=40, any::<bool>(), any::<bool>());
    check(name, s, |(d, k, by_r, shared)| {
        let config = OftConfig {
            r: if by_r { k } else { 0 },
            oft_block_size: if by_r { 0 } else { k },
            block_share: shared,
            ..OftConfig::default()
        };
        let (r, b) = if by_r {
            let r = peft_adjust(d, k);
            (r, d / r)
        } else {
            let b = peft_adjust(d, k);
            (d / b, b)
        };
        ensure_that(name, "resolve", config.resolve(d).unwrap() == (r, b))?;
        let a = OftAdapter::new(&config, d, 0).unwrap();
        let per = b * b.saturating_sub(1) / 2;
        let want = if shared { per } else { r * per };
        ensure_that(name, "n_parameters", a.n_parameters() == want)?;
        ensure_that(
            name,
            "weight shape",
            (a.weight().nrows(), a.weight().ncols()) == (if shared { 1 } else { r }, per),
        )?;
        // A tensor of the unadjusted (wrong) shape is refused with a typed error.
        let bad = Mat::<f32>::zeros(if shared { 1 } else { r }, per + 1);
        ensure_that(
            name,
            "wrong shape refused",
            OftAdapter::with_weight(&config, d, bad).is_err(),
        )
    });
}
