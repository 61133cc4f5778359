//! `AqlmOftLinear` at the layer level (oft-numerics §7 tests 1, 5, 7, 8 and the AQLM exact merge):
//! identity at `Q = 0` bit for bit, input-centric ≡ weight-centric against the decoded `W` and the
//! reference rotation (and every kernel against decode-then-matmul), backward against the
//! reference VJPs and central finite differences, block sharing, and the codebook merge.

use faer::Mat;
use nalgebra::DMatrix;
use oftq_aqlm::{AqlmLayer, Kernel};
use oftq_layer::{AqlmOftLinear, OftConfig};
use oftq_ortho::Parameterization;
use proptest::prelude::*;

use crate::common::*;
use crate::fixtures::*;

/// Rounding budget of building one `f32` rotation block of size `b` (LU solve or up to 9 powers),
/// in units of `ε₃₂·‖R‖`; generous, the report shows the attained fraction.
fn rot_units(b: usize) -> f64 {
    16.0 * (b as f64 + 2.0)
}

/// Summation length of an AQLM kernel's output entry (`d·M` products, the scale, the bias).
fn kernel_units(layer: &AqlmLayer) -> f64 {
    let m = layer.scheme().num_codebooks;
    2.0 * (layer.in_features() * m + m + 4) as f64
}

fn bias_max(layer: &AqlmLayer) -> f64 {
    layer.bias().map_or(0.0, |b| {
        b.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())))
    })
}

/// One adapter `"a"` (block `b`, sharing, parameterization `p`) with the given packed weights.
fn attach(
    base: AqlmLayer,
    b: usize,
    shared: bool,
    p: Parameterization,
    packed: &DMatrix<f64>,
) -> AqlmOftLinear {
    let mut layer = AqlmOftLinear::with_adapter(base, "a", &config_for(b, shared, p)).unwrap();
    layer
        .adapter_mut("a")
        .unwrap()
        .set_weight(f32_mat(packed))
        .unwrap();
    layer
}

/// The adapters to attach to an AQLM case: a block size picked among the valid ones by
/// `block_selector`, sharing, one or two parameterizations (indices into `all_params`, the
/// second used when `two`), and a token count.
#[derive(Debug, Clone)]
struct AdapterChoice {
    block_selector: usize,
    shared: bool,
    param: usize,
    second_param: usize,
    two: bool,
    tokens: usize,
}

prop_compose! {
    /// [`AdapterChoice`]s with a token count from `tokens`.
    fn adapter_choice(tokens: std::ops::RangeInclusive<usize>)(
        block_selector in any::<usize>(),
        shared in any::<bool>(),
        param in any_param(),
        second_param in any_param(),
        two in any::<bool>(),
        tokens in tokens,
    ) -> AdapterChoice {
        AdapterChoice { block_selector, shared, param, second_param, two, tokens }
    }
}

#[test]
fn aqlm_zero_params_bit_for_bit() {
    let name = "L1. AQLM: Q=0 ⇒ layer output = base output bit for bit (every param, 1–2 adapters)";
    let s = (
        aqlm_case(prop_oneof![Just(1usize), Just(2), Just(4), Just(8)], 1..=4),
        adapter_choice(1..=40),
    );
    check(name, s, |(case, pick)| {
        let AdapterChoice {
            block_selector: bsel,
            shared,
            param: i1,
            second_param: i2,
            tokens,
            ..
        } = pick;
        let base = case.layer();
        let d = case.in_features();
        let divs = divisors(d);
        let b = divs[bsel % divs.len()];
        let mut rng = SplitMix::new(case.seed.wrapping_add(1));
        let x = f32_mat(&rng.mat32(tokens, d, 3.0));
        let want = base.forward(x.as_ref()).unwrap();
        // init_weights = true: Q = 0.
        let mut layer = AqlmOftLinear::with_adapter(
            base.clone(),
            "a",
            &config_for(b, shared, all_params()[i1].0),
        )
        .unwrap();
        ensure_that(
            name,
            "one adapter, init",
            same_bits(&layer.forward(x.as_ref()).unwrap(), &want),
        )?;
        let b2 = divs[(bsel / 7) % divs.len()];
        let c2: OftConfig = config_for(b2, !shared, all_params()[i2].0);
        layer.add_adapter("b", &c2).unwrap();
        let (rows, cols) = layer.adapter("b").unwrap().spec().param_shape();
        layer
            .adapter_mut("b")
            .unwrap()
            .set_weight(Mat::zeros(rows, cols))
            .unwrap();
        let (y, _) = layer.forward_cached(x.as_ref(), None).unwrap();
        ensure_that(name, "two adapters, explicit zeros", same_bits(&y, &want))
    });
}

#[test]
fn aqlm_input_centric_equals_weight_centric() {
    let name = "L5. AQLM: forward = x·(W_dec·R_bdᵀ)ᵀ + bias (reference R), f32";
    let s = (
        aqlm_case(prop_oneof![Just(1usize), Just(2), Just(4), Just(8)], 1..=4),
        adapter_choice(1..=5),
    );
    check(name, s, |(case, pick)| {
        let AdapterChoice {
            block_selector: bsel,
            shared,
            param: idx,
            tokens,
            ..
        } = pick;
        let base = case.layer();
        let d = case.in_features();
        let divs = divisors(d);
        let b = divs[bsel % divs.len()];
        let (p, rp) = all_params()[idx];
        let mut rng = SplitMix::new(case.seed.wrapping_add(2));
        let packed = rng.packed(if shared { 1 } else { d / b }, b, 0.9);
        let x = rng.mat32(tokens, d, 2.0);
        let (w, w_abs) = (to_na(base.decode().as_ref()), aqlm_abs_weight(&base));
        let units = kernel_units(&base);
        let bmax = bias_max(&base);
        let layer = attach(base, b, shared, p, &packed);
        let reff = ref_rotation(&packed, b, d, rp);
        let r = reff.dense();
        let want = affine(&(&x * r), &w, layer.base().bias());
        let y = to_na(layer.forward(f32_mat(&x).as_ref()).unwrap().as_ref());
        let tol =
            EPS32 * (rot_units(b) + units) * abs_scale(&[&x, r, &w_abs.transpose()]) + EPS32 * bmax;
        ensure(name, "layer forward", max_diff(&y, &want), tol)?;
        // Every kernel on the rotated input against decode-then-matmul.
        let (_, cache) = layer.forward_cached(f32_mat(&x).as_ref(), None).unwrap();
        let xr = to_na(cache.base_input());
        let want = affine(&xr, &w, layer.base().bias());
        let tol = EPS32 * units * abs_scale(&[&xr, &w_abs.transpose()]) + EPS32 * bmax;
        for k in Kernel::ALL {
            let yk = layer.base().forward_with(cache.base_input(), k).unwrap();
            ensure(
                name,
                &format!("kernel {k:?} vs decode·matmul"),
                max_diff(&to_na(yk.as_ref()), &want),
                tol,
            )?;
        }
        Ok(())
    });
}

/// `L = Σ y ⊙ dy` accumulated in `f64`.
fn loss(y: &Mat<f32>, dy: &DMatrix<f64>) -> f64 {
    to_na(y.as_ref()).component_mul(dy).sum()
}

#[test]
fn aqlm_backward_vs_reference() {
    let name = "L7. AQLM backward: grad_x and adapter grads (1–2 adapters) vs reference VJPs, f32";
    let s = (
        aqlm_case(prop_oneof![Just(1usize), Just(2), Just(4), Just(8)], 1..=3),
        adapter_choice(1..=4),
    );
    check(name, s, |(case, pick)| {
        let AdapterChoice {
            block_selector: bsel,
            shared,
            param: i1,
            second_param: i2,
            two,
            tokens,
        } = pick;
        let base = case.layer();
        let d = case.in_features();
        let divs = divisors(d);
        let (b1, b2) = (divs[bsel % divs.len()], divs[(bsel / 5) % divs.len()]);
        let ((p1, rp1), (p2, rp2)) = (all_params()[i1], all_params()[i2]);
        let mut rng = SplitMix::new(case.seed.wrapping_add(3));
        let pk1 = rng.packed(if shared { 1 } else { d / b1 }, b1, 0.7);
        let pk2 = rng.packed(d / b2, b2, 0.7);
        let x = rng.mat32(tokens, d, 1.0);
        let dy = rng.mat32(tokens, case.out_features(), 1.0);
        let (w, w_abs) = (to_na(base.decode().as_ref()), aqlm_abs_weight(&base));
        let units = kernel_units(&base);
        let mut layer = attach(base, b1, shared, p1, &pk1);
        if two {
            layer.add_adapter("b", &config_for(b2, false, p2)).unwrap();
            layer
                .adapter_mut("b")
                .unwrap()
                .set_weight(f32_mat(&pk2))
                .unwrap();
        }
        let (_, cache) = layer.forward_cached(f32_mat(&x).as_ref(), None).unwrap();
        let g = layer.backward(&cache, f32_mat(&dy).as_ref()).unwrap();
        // Reference chain: x₁ = x·R₁, x₂ = x₁·R₂, y = x₂·Wᵀ.
        let ref1 = ref_rotation(&pk1, b1, d, rp1);
        let ref2 = ref_rotation(&pk2, b2, d, rp2);
        let x1 = ref1.forward(&x);
        let g_base = &dy * &w;
        let (g_in, grads) = if two {
            let gb = ref2.backward(&x1, &g_base).unwrap();
            let ga = ref1.backward(&x, &gb.input).unwrap();
            (ga.input, vec![ga.params, gb.params])
        } else {
            let ga = ref1.backward(&x, &g_base).unwrap();
            (ga.input, vec![ga.params])
        };
        // Magnitudes: |dy|·|W| then through |R|ᵀ (≤ 2 adapters); params: tokens·|x|·|g|·b.
        let r_abs = if two {
            ref1.dense().abs() * ref2.dense().abs()
        } else {
            ref1.dense().abs()
        };
        let g_abs = dy.abs() * &w_abs;
        let gx_scale = abs_scale(&[&g_abs, &r_abs.transpose()]);
        let bmax = b1.max(b2) as f64;
        let units_all = units + 2.0 * rot_units(b1.max(b2)) + 4.0 * tokens as f64;
        ensure(
            name,
            "grad_x",
            max_diff(&to_na(g.input.as_ref()), &g_in),
            EPS32 * units_all * gx_scale,
        )?;
        ensure_that(name, "adapter count", g.adapters.len() == grads.len())?;
        let p_scale =
            tokens as f64 * x.amax().max(1.0) * r_abs.amax() * gx_scale.max(g_abs.amax()) * bmax;
        for ((n, got), want) in g.adapters.iter().zip(&grads) {
            ensure(
                name,
                &format!("adapter {n} grad"),
                max_diff(&to_na(got.as_ref()), want),
                EPS32 * units_all * p_scale,
            )?;
        }
        Ok(())
    });
}

#[test]
fn aqlm_backward_vs_finite_differences() {
    let name = "L7. AQLM backward vs central FD of the f32 layer (f64-accumulated loss)";
    let s = (
        aqlm_case(prop_oneof![Just(1usize), Just(2), Just(4)], 1..=2),
        adapter_choice(1..=2),
    );
    check(name, s, |(case, pick)| {
        let AdapterChoice {
            block_selector: bsel,
            shared,
            param: idx,
            tokens,
            ..
        } = pick;
        let base = case.layer();
        let d = case.in_features();
        let divs = divisors(d);
        let b = divs[bsel % divs.len()];
        let (p, rp) = all_params()[idx];
        let mut rng = SplitMix::new(case.seed.wrapping_add(4));
        let packed = rng.packed(if shared { 1 } else { d / b }, b, 0.5);
        let x = rng.mat32(tokens, d, 1.0);
        let dy = rng.mat32(tokens, case.out_features(), 1.0);
        let w_abs = aqlm_abs_weight(&base);
        let units = kernel_units(&base);
        let layer = attach(base.clone(), b, shared, p, &packed);
        let (_, cache) = layer.forward_cached(f32_mat(&x).as_ref(), None).unwrap();
        let g = layer.backward(&cache, f32_mat(&dy).as_ref()).unwrap();
        let r_abs = ref_rotation(&packed, b, d, rp).dense().abs();
        // Σ |x||R||W|ᵀ⊙|dy| + Σ |bias|⊙|dy|: the scale of L and of its rounding noise (the bias
        // term matters when it dominates the product, e.g. one input feature).
        let bias_scale: f64 = base.bias().map_or(0.0, |bias| {
            (0..dy.nrows())
                .map(|t| {
                    bias.iter()
                        .enumerate()
                        .map(|(o, v)| f64::from(v.abs()) * dy[(t, o)].abs())
                        .sum::<f64>()
                })
                .sum()
        });
        let l_scale = (x.abs() * &r_abs * w_abs.transpose())
            .component_mul(&dy.abs())
            .sum()
            + bias_scale;
        // The factor 2 covers the analytic gradient's own f32 rounding on top of the two noisy
        // forwards (observed worst case reached 0.58 of the bound without it).
        let noise = 2.0 * EPS32 * (units + rot_units(b)) * l_scale;
        // Step 2⁻⁶: truncation h²/6·|L'''| with |L'''| ≲ 50·l_scale for ‖Q‖ ≤ 0.5 and ≤ 9 terms.
        let h = 1.0 / 64.0;
        let fd_bound = |delta: f64| 2.0 * noise / delta + 10.0 * h * h * l_scale;
        let gp = to_na(g.adapters[0].1.as_ref());
        for i in 0..packed.nrows() {
            for k in 0..packed.ncols() {
                let (mut wp, mut wm) = (packed.clone(), packed.clone());
                wp[(i, k)] = f64::from((packed[(i, k)] + h) as f32);
                wm[(i, k)] = f64::from((packed[(i, k)] - h) as f32);
                let delta = wp[(i, k)] - wm[(i, k)];
                let lp = loss(
                    &attach(base.clone(), b, shared, p, &wp)
                        .forward(f32_mat(&x).as_ref())
                        .unwrap(),
                    &dy,
                );
                let lm = loss(
                    &attach(base.clone(), b, shared, p, &wm)
                        .forward(f32_mat(&x).as_ref())
                        .unwrap(),
                    &dy,
                );
                let fd = (lp - lm) / delta;
                ensure(
                    name,
                    &format!("∂L/∂w[{i},{k}]"),
                    (fd - gp[(i, k)]).abs(),
                    fd_bound(delta),
                )?;
            }
        }
        // L is linear in x: the FD is exact up to rounding.
        let gx = to_na(g.input.as_ref());
        for t in 0..tokens {
            for f in 0..d {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[(t, f)] = f64::from((x[(t, f)] + h) as f32);
                xm[(t, f)] = f64::from((x[(t, f)] - h) as f32);
                let delta = xp[(t, f)] - xm[(t, f)];
                let lp = loss(&layer.forward(f32_mat(&xp).as_ref()).unwrap(), &dy);
                let lm = loss(&layer.forward(f32_mat(&xm).as_ref()).unwrap(), &dy);
                let fd = (lp - lm) / delta;
                ensure(
                    name,
                    &format!("∂L/∂x[{t},{f}]"),
                    (fd - gx[(t, f)]).abs(),
                    2.0 * noise / delta,
                )?;
            }
        }
        Ok(())
    });
}

#[test]
fn aqlm_sharing_equals_equal_blocks() {
    let name = "L8. AQLM: block_share layer ≡ unshared with equal blocks; shared grad = Σ";
    let s = (
        aqlm_case(prop_oneof![Just(2usize), Just(4), Just(8)], 1..=3),
        adapter_choice(1..=4),
    );
    check(name, s, |(case, pick)| {
        let AdapterChoice {
            block_selector: bsel,
            param: idx,
            tokens,
            ..
        } = pick;
        let base = case.layer();
        let d = case.in_features();
        let divs = divisors(d);
        let b = divs[bsel % divs.len()];
        let p = all_params()[idx].0;
        let mut rng = SplitMix::new(case.seed.wrapping_add(5));
        let one = rng.packed(1, b, 1.5);
        let repeated = DMatrix::from_fn(d / b, one.ncols(), |_, k| one[(0, k)]);
        let x = f32_mat(&rng.mat32(tokens, d, 1.0));
        let dy = f32_mat(&rng.mat32(tokens, case.out_features(), 1.0));
        let shared = attach(base.clone(), b, true, p, &one);
        let plain = attach(base, b, false, p, &repeated);
        let (ya, ca) = shared.forward_cached(x.as_ref(), None).unwrap();
        let (yb, cb) = plain.forward_cached(x.as_ref(), None).unwrap();
        ensure_that(name, "forward bits", same_bits(&ya, &yb))?;
        let ga = shared.backward(&ca, dy.as_ref()).unwrap();
        let gb = plain.backward(&cb, dy.as_ref()).unwrap();
        ensure_that(name, "grad_x bits", same_bits(&ga.input, &gb.input))?;
        let pb = to_na(gb.adapters[0].1.as_ref());
        let sum = DMatrix::from_fn(1, pb.ncols(), |_, k| pb.column(k).sum());
        let pb_abs = DMatrix::from_fn(1, pb.ncols(), |_, k| pb.column(k).abs().sum());
        // Summation order of the r position gradients differs: (r + b)·ε₃₂ relative to Σ|·|.
        let tol = 4.0 * EPS32 * (d / b + b) as f64 * pb_abs.amax().max(f64::MIN_POSITIVE)
            + 16.0 * EPS32 * (b * b) as f64 * pb_abs.amax();
        ensure(
            name,
            "shared grad = Σ block grads",
            max_diff(&to_na(ga.adapters[0].1.as_ref()), &sum),
            tol,
        )
    });
}

#[test]
fn aqlm_exact_merge() {
    let name = "L11. AQLM exact merge (shared b divides in_group_size): merged forward = unmerged";
    let s = (
        aqlm_case(prop_oneof![Just(2usize), Just(4), Just(8)], 1..=3),
        adapter_choice(1..=4),
    );
    check(name, s, |(case, pick)| {
        let AdapterChoice {
            block_selector: bsel,
            param: idx,
            two,
            tokens,
            ..
        } = pick;
        let base = case.layer();
        let (d, ig) = (case.in_features(), case.in_group);
        let divs = divisors(ig);
        let (b1, b2) = (divs[bsel % divs.len()], divs[(bsel / 3) % divs.len()]);
        let (p, rp) = all_params()[idx];
        let mut rng = SplitMix::new(case.seed.wrapping_add(6));
        let (pk1, pk2) = (rng.packed(1, b1, 0.9), rng.packed(1, b2, 0.9));
        let x = rng.mat32(tokens, d, 1.0);
        let (w, w_abs) = (to_na(base.decode().as_ref()), aqlm_abs_weight(&base));
        let units = kernel_units(&base);
        let mut layer = attach(base, b1, true, p, &pk1);
        let mut r = ref_rotation(&pk1, b1, d, rp).dense().clone();
        if two {
            layer.add_adapter("b", &config_for(b2, true, p)).unwrap();
            layer
                .adapter_mut("b")
                .unwrap()
                .set_weight(f32_mat(&pk2))
                .unwrap();
            r = &r * ref_rotation(&pk2, b2, d, rp).dense();
        }
        let xf = f32_mat(&x);
        let before = to_na(layer.forward(xf.as_ref()).unwrap().as_ref());
        layer.merge(None).unwrap();
        let names = if two { vec!["a", "b"] } else { vec!["a"] };
        ensure_that(
            name,
            "merged list",
            layer
                .merged_adapters()
                .iter()
                .map(String::as_str)
                .eq(names.iter().copied()),
        )?;
        let after = to_na(layer.forward(xf.as_ref()).unwrap().as_ref());
        let scale = abs_scale(&[&x, &r.abs(), &w_abs.transpose()]);
        let tol = EPS32 * (units + 2.0 * rot_units(b1.max(b2))) * scale;
        ensure(name, "merged forward", max_diff(&after, &before), tol)?;
        let merged_w = to_na(layer.base().decode().as_ref());
        let want_w = &w * r.transpose();
        let tol_w = EPS32
            * (units + 2.0 * rot_units(b1.max(b2)))
            * abs_scale(&[&w_abs, &r.abs().transpose()]);
        ensure(
            name,
            "decode(merged) = W·R_bdᵀ",
            max_diff(&merged_w, &want_w),
            tol_w,
        )
    });
}

#[test]
fn aqlm_inexact_merge_refused() {
    let name =
        "L11. AQLM merge refused (unshared, or b not dividing in_group_size), layer unchanged";
    let s = (
        aqlm_case(prop_oneof![Just(1usize), Just(2), Just(4)], 2..=4),
        adapter_choice(1..=1),
    );
    check(name, s, |(case, pick)| {
        let AdapterChoice {
            block_selector: bsel,
            shared,
            param: idx,
            ..
        } = pick;
        let base = case.layer();
        let (d, ig) = (case.in_features(), case.in_group);
        let divs: Vec<usize> = divisors(d)
            .into_iter()
            .filter(|b| *b > 1 && (!shared || !ig.is_multiple_of(*b)))
            .collect();
        if divs.is_empty() {
            return Ok(());
        }
        let b = divs[bsel % divs.len()];
        let mut rng = SplitMix::new(case.seed.wrapping_add(7));
        let packed = rng.packed(if shared { 1 } else { d / b }, b, 0.5);
        let mut layer = attach(base, b, shared, all_params()[idx].0, &packed);
        let x = f32_mat(&rng.mat32(3, d, 1.0));
        let before = layer.forward(x.as_ref()).unwrap();
        let res = layer.merge(None);
        ensure_that(
            name,
            "typed Merge error",
            matches!(res, Err(oftq_layer::LayerError::Merge(_))),
        )?;
        ensure_that(name, "nothing merged", layer.merged_adapters().is_empty())?;
        ensure_that(
            name,
            "forward unchanged",
            same_bits(&layer.forward(x.as_ref()).unwrap(), &before),
        )
    });
}
