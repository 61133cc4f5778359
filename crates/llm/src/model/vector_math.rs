//! Elementwise math for the softmax, SiLU and loss loops, written so that the compiler vectorizes
//! it: an `f32` exponential without a library call ([`exp`]), lane-split reductions ([`max`],
//! [`sum`]), and the slice loops built on them ([`exp_shifted`], [`softmax_in_place`],
//! [`swiglu_forward`], [`swiglu_backward`]), each compiled for AVX-512, AVX2 and the baseline
//! target and picked at run time (the `multiversion` crate).
//!
//! `f32::exp` calls the C library once per element (about 4–5 ns here), and a loop that calls it
//! cannot be vectorized: the 512-token forward of SmolLM2-135M computes about 60 M of them
//! (attention probabilities and SiLU), and a training step 25 M more in its loss.
//!
//! Results do not depend on the instruction set: [`exp`] is a fixed sequence of IEEE operations
//! (no fused multiply-add: Rust never contracts `a·b + c`, whatever the target features), and the
//! reductions combine their lanes in a fixed order.

/// `e^x` in single precision, within 2 units in the last place of the exact value for every
/// normal result (checked against `f64::exp` over `[−87.3, 88.7]` in the tests).
///
/// Method (Cody–Waite reduction, as in Cephes' `expf`): `n = round(x·log₂e)`,
/// `r = x − n·ln 2` with `ln 2` split in two parts so that `n·C₁` is exact, `|r| ≤ ½ln 2`;
/// `e^r ≈ 1 + r + r²·P(r)` with a degree-5 polynomial `P`; then `e^x = e^r · 2^⌊n/2⌋ · 2^(n − ⌊n/2⌋)`
/// (two exact power-of-two factors, so results near the overflow threshold and subnormal results
/// are rounded once, as a correctly scaled product).
///
/// Special values: `x` above about 88.72 gives `+∞`, below about −103.97 gives `0` (results in
/// between that are below `f32::MIN_POSITIVE` are subnormal), `e^0 = 1` exactly, `NaN` stays
/// `NaN`. Branch-free, so loops over slices vectorize.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    /// `ln 2 = C1 + C2`, `C1` with 9 significant bits (so `n·C1` is exact for `|n| ≤ 2^15`).
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    /// `1.5·2^23`: adding it rounds a float of magnitude below `2^22` to an integer, kept in the
    /// low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // The clamps keep `n` in [−150, 128]: every result outside them is 0 or +∞ anyway.
    let xc = x.clamp(-104.0, 88.8);
    let t = xc * LOG2E + ROUND;
    let n = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let nf = t - ROUND;
    let r = (xc - nf * C1) - nf * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * (r * r) + r + 1.0;
    let h = n >> 1;
    let s1 = f32::from_bits((h.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((n.wrapping_sub(h).wrapping_add(127) as u32) << 23);
    let y = er * s1 * s2;
    if x.is_nan() { x } else { y }
}

use multiversion::multiversion;

/// Lanes of the reductions: one AVX-512 register of `f32`.
const LANES: usize = 16;

/// `f` folded over `xs` in [`LANES`] lanes: lane `l` folds elements `l, l + 16, …` in ascending
/// order, starting from `init`. Written so that the compiler keeps the lanes in one register.
#[inline(always)]
fn fold_lanes<A: Copy>(xs: &[f32], init: A, f: impl Fn(A, f32) -> A) -> [A; LANES] {
    let mut acc = [init; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = f(*a, v);
    }
    acc
}

/// The partial sums `p` combined pairwise: `p[l] += p[l + N/2]` for `l < N/2`, then `N/4`, … down
/// to `p[0]` (`N` a power of two).
#[inline(always)]
pub(crate) fn combine_pairwise<const N: usize>(mut p: [f32; N]) -> f32 {
    let mut half = N / 2;
    while half > 0 {
        for l in 0..half {
            p[l] += p[l + half];
        }
        half /= 2;
    }
    p[0]
}

/// The largest element of `xs` (`−∞` for an empty slice), NaN-ignoring as [`f32::max`], by
/// [`fold_lanes`].
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let lanes = fold_lanes(xs, f32::NEG_INFINITY, f32::max);
    lanes.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// `Σ xs`: lane sums by [`fold_lanes`], combined by [`combine_pairwise`].
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    combine_pairwise(fold_lanes(xs, 0f32, |a, v| a + v))
}

/// Exponents below which [`exp_shifted`] flushes to 0: `e^−60 ≈ 8.8·10⁻²⁷`, far below any
/// probability that matters, and no result is subnormal (each subnormal costs a microcode assist).
const FLUSH_BELOW: f32 = -60.0;

#[inline(always)]
fn exp_shifted_imp(xs: &mut [f32]) -> f32 {
    let m = max(xs);
    for v in xs.iter_mut() {
        let d = *v - m;
        *v = if d < FLUSH_BELOW { 0.0 } else { exp(d) };
    }
    m
}

/// `xs[i] ← e^(xs[i] − m)` with `m = max(xs)` (returned), or 0 where `xs[i] − m < −60`: the
/// unnormalised probabilities of a softmax. Rows whose maximum is `+∞` or NaN give NaN.
/// Compiled for AVX-512 and AVX2 besides the baseline and dispatched at run time; the results
/// are the same in every build.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
pub(crate) fn exp_shifted(xs: &mut [f32]) -> f32 {
    exp_shifted_imp(xs)
}

/// Softmax in place: `xs[i] ← e^(xs[i] − m) / Σⱼ e^(xs[j] − m)`, `m = max(xs)`, with the terms
/// below `e^−60` flushed to 0 as in [`exp_shifted`] and the sum by [`sum`]. Dispatched as
/// [`exp_shifted`].
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
pub(crate) fn softmax_in_place(xs: &mut [f32]) {
    exp_shifted_imp(xs);
    let inv = 1.0 / sum(xs);
    for v in xs.iter_mut() {
        *v *= inv;
    }
}

/// `log Σᵢ e^xᵢ = m + log Σᵢ e^(xᵢ − m)`, `m = max(xs)`, in `f64`: the terms by [`exp`] in `f32`
/// (relative error below 2⁻²²), summed in 16 `f64` lanes combined in a fixed order. `−∞` for an
/// empty slice or all `−∞`, `+∞` if an element is, else NaN if one is NaN. Dispatched as [`exp_shifted`].
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
pub(crate) fn log_sum_exp(xs: &[f32]) -> f64 {
    let m = max(xs);
    if m.is_infinite() {
        // Empty or all −∞: −∞; some +∞: +∞.
        return f64::from(m);
    }
    let lanes = fold_lanes(xs, 0f64, |a, v| a + f64::from(exp(v - m)));
    // A NaN element makes its term, hence the sum, NaN.
    let s = lanes.iter().fold(0.0, |s, &a| s + a);
    f64::from(m) + s.ln()
}

/// `σ(x) = 1 / (1 + e^−x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// SwiGLU forward, `y[i] = g[i]·σ(g[i])·u[i]` (over the shortest of the three slices).
/// Dispatched as [`exp_shifted`].
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
pub(crate) fn swiglu_forward(y: &mut [f32], g: &[f32], u: &[f32]) {
    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
        *y = g * sigmoid(g) * u;
    }
}

/// SwiGLU backward for the output gradient `dy`: `du = dy·g·σ(g)` and
/// `dg = dy·u·σ(g)·(1 + g·(1 − σ(g)))` elementwise (over the shortest of the slices).
/// Dispatched as [`exp_shifted`].
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
pub(crate) fn swiglu_backward(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], dy: &[f32]) {
    let inputs = g.iter().zip(u).zip(dy);
    for ((dg, du), ((&x, &up), &d)) in dg.iter_mut().zip(du.iter_mut()).zip(inputs) {
        let s = sigmoid(x);
        *du = d * x * s;
        *dg = d * up * s * (1.0 + x * (1.0 - s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between `a` and the `f32` nearest to `want`.
    fn ulps(a: f32, want: f64) -> u32 {
        let w = want as f32;
        (a.to_bits() as i64 - w.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulps_on_the_normal_range() {
        let mut worst = (0u32, 0f32);
        let n = 2_000_003;
        for i in 0..=n {
            let x = -87.3f32 + (88.7 + 87.3) * i as f32 / n as f32;
            let u = ulps(exp(x), f64::from(x).exp());
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 2, "{} ulps at x = {}", worst.0, worst.1);
        // Near 0 the reduction is trivial; check densely.
        for i in -10_000..=10_000 {
            let x = i as f32 * 1e-5;
            assert!(ulps(exp(x), f64::from(x).exp()) <= 1, "x = {x}");
        }
    }

    #[test]
    fn exp_special_values_and_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(-110.0), 0.0);
        // The largest finite results and the subnormal range are scaled correctly.
        let top = exp(88.72);
        assert!(
            top.is_finite() && ulps(top, f64::from(88.72f32).exp()) <= 2,
            "{top}"
        );
        for x in [-88.0f32, -95.0, -100.0, -103.0] {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            // Subnormal results: absolute error within one subnormal step (2^-149) plus 2 ulps.
            assert!(
                (got - want).abs() <= 2f64.powi(-149) + 4.0 * want * f64::from(f32::EPSILON),
                "x = {x}: {got} vs {want}"
            );
        }
        assert!(exp(1.0) == std::f32::consts::E || ulps(exp(1.0), 1f64.exp()) <= 1);
    }

    #[test]
    fn reductions_match_sequential_results() {
        for len in [0usize, 1, 5, 16, 17, 100, 1000] {
            let xs: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 1013) as f32 * 0.01 - 3.0)
                .collect();
            let want_max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&xs), want_max, "len {len}");
            let want_sum: f64 = xs.iter().map(|&v| f64::from(v)).sum();
            let got = f64::from(sum(&xs));
            assert!(
                (got - want_sum).abs() <= 1e-4 * (1.0 + want_sum.abs()),
                "len {len}"
            );
        }
        assert_eq!(max(&[f32::NAN, 1.0]), 1.0);
    }

    /// The dispatched slice functions give the bits of the plain element-by-element code.
    #[test]
    fn slice_functions_match_the_scalar_code_bit_for_bit() {
        let xs: Vec<f32> = (0..999).map(|i| (i as f32 * 0.37).sin() * 40.0).collect();
        let m = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let want: Vec<f32> = xs
            .iter()
            .map(|&x| if x - m < -60.0 { 0.0 } else { exp(x - m) })
            .collect();
        let mut got = xs.clone();
        assert_eq!(exp_shifted(&mut got), m);
        assert_eq!(bits(&got), bits(&want));
        assert!(got.contains(&0.0), "some terms are flushed");

        let inv = 1.0 / sum(&want);
        let want_p: Vec<f32> = want.iter().map(|&v| v * inv).collect();
        let mut p = xs.clone();
        softmax_in_place(&mut p);
        assert_eq!(bits(&p), bits(&want_p));
        assert!((p.iter().map(|&v| f64::from(v)).sum::<f64>() - 1.0).abs() < 1e-5);

        let (g, u, dy) = (&xs[..333], &xs[333..666], &xs[666..]);
        let mut y = vec![0f32; 333];
        swiglu_forward(&mut y, g, u);
        let s = |x: f32| 1.0 / (1.0 + exp(-x));
        let want_y: Vec<f32> = g.iter().zip(u).map(|(&g, &u)| g * s(g) * u).collect();
        assert_eq!(bits(&y), bits(&want_y));
        let (mut dg, mut du) = (vec![0f32; 333], vec![0f32; 333]);
        swiglu_backward(&mut dg, &mut du, g, u, dy);
        for i in 0..333 {
            let sg = s(g[i]);
            assert_eq!(du[i].to_bits(), (dy[i] * g[i] * sg).to_bits());
            let want = dy[i] * u[i] * sg * (1.0 + g[i] * (1.0 - sg));
            assert_eq!(dg[i].to_bits(), want.to_bits());
        }
    }

    #[test]
    fn log_sum_exp_matches_f64_and_handles_edges() {
        for len in [1usize, 7, 16, 33, 49_152] {
            let xs: Vec<f32> = (0..len)
                .map(|i| ((i * 7919) % 4099) as f32 * 0.01 - 20.0)
                .collect();
            let m = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let want = f64::from(m)
                + xs.iter()
                    .map(|&x| (f64::from(x) - f64::from(m)).exp())
                    .sum::<f64>()
                    .ln();
            let got = log_sum_exp(&xs);
            assert!(
                (got - want).abs() < 1e-6 * want.abs().max(1.0),
                "len {len}: {got} vs {want}"
            );
        }
        assert_eq!(log_sum_exp(&[]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f64::NEG_INFINITY);
        assert_eq!(log_sum_exp(&[1.0, f32::INFINITY]), f64::INFINITY);
        assert!(log_sum_exp(&[1.0, f32::NAN, 2.0]).is_nan());
        assert_eq!(log_sum_exp(&[0.0]), 0.0);
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
