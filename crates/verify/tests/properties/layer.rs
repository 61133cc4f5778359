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

/// A dense layer to test: `out × d` weight, a block size picked among the divisors of `d` by
/// `block_selector`, sharing, a parameterization (index into `all_params`), a token count, a bias
/// or not, the `[in, out]` layout or not; the values come from `seed`.
#[derive(Debug, Clone)]
struct DenseCase {
    out: usize,
    d: usize,
    block_selector: usize,
    shared: bool,
    param: usize,
    tokens: usize,
    bias: bool,
    fan_in_fan_out: bool,
    seed: u64,
}

prop_compose! {
    fn dense_case()(
        out in 1usize..=6,
        d in 1usize..=24,
        block_selector in any::<usize>(),
        shared in any::<bool>(),
        param in any_param(),
        tokens in 1usize..=5,
        bias in any::<bool>(),
        fan_in_fan_out in any::<bool>(),
        seed in any::<u64>(),
    ) -> DenseCase {
        DenseCase { out, d, block_selector, shared, param, tokens, bias, fan_in_fan_out, seed }
    }
}

#[test]
fn dense_zero_params_bit_for_bit() {
    let name =
        "L1. dense: Q=0 ⇒ layer output = base output bit for bit (every param, 1–2 adapters)";
    let s = (dense_case(), any_param());
    check(name, s, |(case, i2)| {
        let DenseCase {
            out,
            d,
            block_selector: bsel,
            shared,
            param: idx,
            tokens,
            bias,
            fan_in_fan_out: fifo,
            seed,
        } = case;
        let mut rng = SplitMix::new(seed);
        let (base, _) = dense_base(&mut rng, out, d, bias, fifo);
        let divs = divisors(d);
        let b = divs[bsel % divs.len()];
        let x = f32_mat(&rng.mat32(tokens, d, 3.0));
        let want = base.forward(x.as_ref()).unwrap();
        let mut layer =
            DenseOftLinear::with_adapter(base, "a", &config_for(b, shared, all_params()[idx].0))
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
    });
}

#[test]
fn dense_input_centric_equals_weight_centric() {
    let name = "L5. dense: forward = x·(W·R_bdᵀ)ᵀ + bias (reference R), f32";
    check(name, dense_case(), |case| {
        let DenseCase {
            out,
            d,
            block_selector: bsel,
            shared,
            param: idx,
            tokens,
            bias,
            fan_in_fan_out: fifo,
            seed,
        } = case;
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
    });
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
    check(name, (dense_case(), any::<bool>()), |(case, peft)| {
        let DenseCase {
            out,
            d,
            block_selector: bsel,
            shared,
            seed,
            ..
        } = case;
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
    check(name, (dense_case(), any_param()), |(case, ib)| {
        let DenseCase {
            out,
            d,
            block_selector: bsel,
            param: ia,
            tokens,
            seed,
            ..
        } = case;
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
    let s = (dense_case(), any_param(), any::<bool>());
    check(name, s, |(case, i2, two)| {
        let DenseCase {
            out,
            d,
            block_selector: bsel,
            shared,
            param: idx,
            tokens,
            bias,
            fan_in_fan_out: fifo,
            seed,
        } = case;
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
    });
}

/// One call on a dense layer with adapters `a`, `b`, `c` (indices 0, 1, 2).
#[derive(Debug, Clone)]
enum MergeCall {
    /// `merge(Some(names))`, the adapters in this order.
    Merge(Vec<usize>),
    /// `merge(None)`: every active adapter not merged yet.
    MergeActive,
    /// `unmerge()`.
    Unmerge,
}

fn merge_call() -> impl Strategy<Value = MergeCall> {
    prop_oneof![
        3 => (Just(vec![0usize, 1, 2]).prop_shuffle(), 1usize..=3)
            .prop_map(|(v, n)| MergeCall::Merge(v[..n].to_vec())),
        1 => Just(MergeCall::MergeActive),
        2 => Just(MergeCall::Unmerge),
    ]
}

/// A dense layer with three adapters (block sizes above 1 and parameterizations picked per
/// adapter) and a sequence of merge and unmerge calls (the test adds a final unmerge); the values
/// come from `seed`.
#[derive(Debug, Clone)]
struct MergeSequence {
    out: usize,
    d: usize,
    block_selectors: [usize; 3],
    params: [usize; 3],
    fan_in_fan_out: bool,
    calls: Vec<MergeCall>,
    seed: u64,
}

prop_compose! {
    fn merge_sequence()(
        out in 1usize..=5,
        d in 2usize..=16,
        block_selectors in any::<[usize; 3]>(),
        params in [any_param(), any_param(), any_param()],
        fan_in_fan_out in any::<bool>(),
        calls in proptest::collection::vec(merge_call(), 1..=6),
        seed in any::<u64>(),
    ) -> MergeSequence {
        MergeSequence { out, d, block_selectors, params, fan_in_fan_out, calls, seed }
    }
}

/// Largest absolute row sum of `m`: `max|E·mᵀ| ≤ max|E| · row_sum(m)`.
fn max_row_abs_sum(m: &DMatrix<f64>) -> f64 {
    m.row_iter()
        .map(|r| r.iter().map(|v| v.abs()).sum::<f64>())
        .fold(0.0, f64::max)
}

#[test]
fn dense_merge_unmerge_sequences() {
    let name =
        "L11b. dense merge/unmerge call sequences: W' = W·R_{f₁}ᵀ⋯ after merges, W after unmerge";
    check(name, merge_sequence(), |case| {
        let names = ["a", "b", "c"];
        let mut rng = SplitMix::new(case.seed);
        let (base, w) = dense_base(&mut rng, case.out, case.d, false, case.fan_in_fan_out);
        // Blocks of 1 are the identity, which commutes with everything: use larger ones.
        let divs: Vec<usize> = divisors(case.d).into_iter().filter(|b| *b > 1).collect();
        let mut layer = DenseOftLinear::new(base);
        let mut rot = Vec::new();
        let mut bmax = 1;
        for k in 0..3 {
            let b = divs[case.block_selectors[k] % divs.len()];
            bmax = bmax.max(b);
            let (p, rp) = all_params()[case.params[k]];
            // θ ≤ 0.7 keeps every Neumann R well conditioned (σ_min ≥ 1 − 0.7⁴, F5).
            let packed = rng.packed(case.d / b, b, 0.7);
            add(&mut layer, names[k], b, p, &packed);
            let r = ref_rotation(&packed, b, case.d, rp).dense().clone();
            let inv = r.clone().try_inverse().unwrap();
            rot.push((r, inv));
        }
        // Per product with an `f32` rotation: its own error (`rot_units`) and the product's.
        let units = rot_units(bmax) + 2.0 * (bmax + 2) as f64;
        // The expected weight, the factors in multiplication order, and a bound on max|W − want|
        // carried through every product (each `f32` product adds its rounding; an earlier error
        // `E` becomes `E·Mᵀ`, at most `max|E|·row_sum(M)`).
        let (mut want, mut factors, mut err) = (w.clone(), Vec::<usize>::new(), 0.0f64);
        let mut merged: Vec<usize> = Vec::new();
        // Every sequence ends with an unmerge, which must restore W.
        let calls = case.calls.iter().chain([&MergeCall::Unmerge]);
        for (step, call) in calls.enumerate() {
            let picked: Vec<usize> = match call {
                MergeCall::Merge(v) => v.clone(),
                MergeCall::MergeActive => (0..3).filter(|i| !merged.contains(i)).collect(),
                MergeCall::Unmerge => Vec::new(),
            };
            let before = to_na(layer.base().weight());
            match call {
                MergeCall::Merge(_) | MergeCall::MergeActive => {
                    let list: Vec<&str> = picked.iter().map(|&i| names[i]).collect();
                    let result = match call {
                        MergeCall::MergeActive => layer.merge(None, true),
                        _ => layer.merge(Some(&list), true),
                    };
                    if picked.iter().any(|i| merged.contains(i)) {
                        ensure_that(name, "re-merge refused", result.is_err())?;
                        ensure_that(
                            name,
                            "refused merge leaves W",
                            to_na(layer.base().weight()) == before,
                        )?;
                        continue;
                    }
                    ensure_that(name, "merge accepted", result.is_ok())?;
                    for &i in picked.iter().rev() {
                        let r = &rot[i].0;
                        err = err * max_row_abs_sum(r)
                            + EPS32 * units * abs_scale(&[&want, &r.transpose()]);
                        want = &want * r.transpose();
                        factors.push(i);
                    }
                    merged.extend(&picked);
                }
                MergeCall::Unmerge => {
                    ensure_that(name, "unmerge accepted", layer.unmerge().is_ok())?;
                    // Newest factor first: W'·R_{f_m}⁻ᵀ⋯R_{f₁}⁻ᵀ, each inverse computed in f32
                    // (error ≲ κ(R)·rounding relative to R⁻¹).
                    for &i in factors.iter().rev() {
                        let (r, inv) = &rot[i];
                        let kappa = max_row_abs_sum(r) * max_row_abs_sum(inv);
                        err = err * max_row_abs_sum(inv)
                            + EPS32 * kappa * units * abs_scale(&[&want, &inv.transpose()]);
                        want = &want * inv.transpose();
                    }
                    // `want` is now W up to the f64 rounding of the reference, far below `err`.
                    want = w.clone();
                    factors.clear();
                    merged.clear();
                }
            }
            let listed: Vec<&str> = merged.iter().map(|&i| names[i]).collect();
            ensure_that(
                name,
                "merged_adapters in merge order",
                layer.merged_adapters() == listed.as_slice(),
            )?;
            ensure(
                name,
                &format!("call {step} ({call:?}): W"),
                max_diff(&to_na(layer.base().weight()), &want),
                err,
            )?;
        }
        Ok(())
    });
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
