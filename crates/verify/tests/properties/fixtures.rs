//! Layer-level fixtures: a seeded generator, random AQLM and dense base layers, adapter configs for
//! every parameterization, random packed adapter weights with a certified `‖Q‖₂` bound, and the
//! scale helpers the layer tolerances are built from.

use faer::Mat;
use nalgebra::DMatrix;
use oftq_aqlm::{AqlmLayer, AqlmScheme};
use oftq_layer::{DenseLinear, OftConfig, OftqOptions};
use oftq_ortho::{DivergencePolicy, Parameterization};
use oftq_verify::reference::{Param, RefRotation};
use proptest::prelude::*;

use crate::common::*;

/// SplitMix64: everything random in a layer case comes from one `u64` seed, so a failing case
/// prints as its structure plus a seed.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`.
    pub(crate) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// A `rows × cols` matrix, entries uniform in `[−scale, scale)`, rounded to `f32` and widened
    /// back (so the `f64` reference sees exactly the library's inputs).
    pub(crate) fn mat32(&mut self, rows: usize, cols: usize, scale: f64) -> DMatrix<f64> {
        DMatrix::from_fn(rows, cols, |_, _| {
            f64::from(self.uniform(-scale, scale) as f32)
        })
    }
    /// Packed PEFT rows `[rows, b(b−1)/2]` (rounded to `f32`) whose skew blocks have
    /// `‖Q‖₂ ≤ ‖Q‖_F ≤ theta` (`‖Q‖_F = √2·‖v‖₂`), each at a random fraction of `theta` in
    /// `[0.3, 1]`.
    pub(crate) fn packed(&mut self, rows: usize, b: usize, theta: f64) -> DMatrix<f64> {
        let n = b * b.saturating_sub(1) / 2;
        let mut out = DMatrix::<f64>::zeros(rows, n);
        for i in 0..rows {
            let v: Vec<f64> = (0..n).map(|_| self.uniform(-1.0, 1.0)).collect();
            let norm = (2.0 * v.iter().map(|a| a * a).sum::<f64>()).sqrt();
            if norm == 0.0 {
                continue;
            }
            // Slightly inside the ball so the f32 rounding cannot push it out.
            let s = theta * self.uniform(0.3, 1.0) * (1.0 - 1e-6) / norm;
            for (k, a) in v.iter().enumerate() {
                out[(i, k)] = f64::from((a * s) as f32);
            }
        }
        out
    }
}

/// `nalgebra` `f64` → faer `f32` (the values are already `f32`-representable in our fixtures).
pub(crate) fn f32_mat(m: &DMatrix<f64>) -> Mat<f32> {
    to_faer::<f32>(m)
}

/// Divisors of `n`, ascending.
pub(crate) fn divisors(n: usize) -> Vec<usize> {
    (1..=n).filter(|k| n.is_multiple_of(*k)).collect()
}

// ---------------------------------------------------------------- AQLM base

/// The structure of a random AQLM layer; the values come from `seed`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AqlmCase {
    pub(crate) num_codebooks: usize,
    pub(crate) nbits: u32,
    pub(crate) in_group: usize,
    pub(crate) out_group: usize,
    pub(crate) in_groups: usize,
    pub(crate) out_groups: usize,
    pub(crate) bias: bool,
    pub(crate) seed: u64,
}

impl AqlmCase {
    pub(crate) fn in_features(&self) -> usize {
        self.in_group * self.in_groups
    }
    pub(crate) fn out_features(&self) -> usize {
        self.out_group * self.out_groups
    }
    /// Codes uniform, codebook entries uniform in `[−1, 1)`, scales uniform in `±[0.25, 1.5)`,
    /// bias in `[−1, 1)`; all `f32`.
    pub(crate) fn layer(&self) -> AqlmLayer {
        let mut rng = SplitMix::new(self.seed);
        let scheme = AqlmScheme::new(
            self.num_codebooks,
            self.nbits,
            self.in_group,
            self.out_group,
        )
        .unwrap();
        let k = scheme.codebook_size();
        let codes: Vec<u16> = (0..self.out_groups * self.in_groups * self.num_codebooks)
            .map(|_| rng.below(k) as u16)
            .collect();
        let codebooks: Vec<f32> = (0..self.num_codebooks * k * self.out_group * self.in_group)
            .map(|_| rng.uniform(-1.0, 1.0) as f32)
            .collect();
        let scales: Vec<f32> = (0..self.out_groups)
            .map(|_| {
                let s = rng.uniform(0.25, 1.5) as f32;
                if rng.below(2) == 0 { s } else { -s }
            })
            .collect();
        let bias = self.bias.then(|| {
            (0..self.out_features())
                .map(|_| rng.uniform(-1.0, 1.0) as f32)
                .collect()
        });
        AqlmLayer::new(
            self.in_features(),
            self.out_features(),
            scheme,
            codes,
            codebooks,
            scales,
            bias,
        )
        .unwrap()
    }
}

/// Small AQLM layers: `M ∈ 1..=2`, `B ∈ 1..=4`, `ig ∈ in_group`, `og ∈ 1..=2`, up to 4 groups
/// each way, with or without bias.
pub(crate) fn aqlm_case(
    in_group: impl Strategy<Value = usize>,
    in_groups: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = AqlmCase> {
    (
        1usize..=2,
        1u32..=4,
        in_group,
        1usize..=2,
        in_groups,
        1usize..=4,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(m, nbits, ig, og, nig, nog, bias, seed)| AqlmCase {
            num_codebooks: m,
            nbits,
            in_group: ig,
            out_group: og,
            in_groups: nig,
            out_groups: nog,
            bias,
            seed,
        })
}

/// `|W|` bound of an AQLM layer: `|s_o|·Σ_m |cb_m[code]|` entrywise, `[out, in]` — the magnitude
/// every kernel's summation error is relative to (the decoded `W` may cancel).
pub(crate) fn aqlm_abs_weight(layer: &AqlmLayer) -> DMatrix<f64> {
    let s = layer.scheme();
    let (ig, og, m, k) = (
        s.in_group_size,
        s.out_group_size,
        s.num_codebooks,
        s.codebook_size(),
    );
    let (cb, codes, scales) = (layer.codebooks(), layer.codes(), layer.scales());
    let n_ig = layer.in_groups();
    DMatrix::from_fn(layer.out_features(), layer.in_features(), |r, c| {
        let (o, a, j, bb) = (r / og, r % og, c / ig, c % ig);
        let sum: f64 = (0..m)
            .map(|mm| {
                let code = usize::from(codes[(o * n_ig + j) * m + mm]);
                f64::from(cb[((mm * k + code) * og + a) * ig + bb]).abs()
            })
            .sum();
        sum * f64::from(scales[o]).abs()
    })
}

/// The base output `x·Wᵀ + bias` in `f64`.
pub(crate) fn affine(x: &DMatrix<f64>, w: &DMatrix<f64>, bias: Option<&[f32]>) -> DMatrix<f64> {
    let mut y = x * w.transpose();
    if let Some(b) = bias {
        for mut row in y.row_iter_mut() {
            for (v, bv) in row.iter_mut().zip(b) {
                *v += f64::from(*bv);
            }
        }
    }
    y
}

// ---------------------------------------------------------------- dense base

/// A dense base layer with `W [out, in]` (entries in `[−1, 1)`), optional bias, stored
/// `[in, out]` when `fan_in_fan_out`. Returns the layer and `W` as `f64`.
pub(crate) fn dense_base(
    rng: &mut SplitMix,
    out: usize,
    d: usize,
    bias: bool,
    fan_in_fan_out: bool,
) -> (DenseLinear, DMatrix<f64>) {
    let w = rng.mat32(out, d, 1.0);
    let b = bias.then(|| (0..out).map(|_| rng.uniform(-1.0, 1.0) as f32).collect());
    let stored = if fan_in_fan_out {
        f32_mat(&w.transpose())
    } else {
        f32_mat(&w)
    };
    (DenseLinear::new(stored, b, fan_in_fan_out).unwrap(), w)
}

// ---------------------------------------------------------------- adapters

/// An `OftConfig` with block size `b`, sharing, and the parameterization `p` (PEFT's flags plus
/// oftq's convention/flavor options); divergence is ignored (the tests bound `‖Q‖` themselves).
pub(crate) fn config_for(b: usize, shared: bool, p: Parameterization) -> OftConfig {
    let mut c = OftConfig {
        oft_block_size: b,
        block_share: shared,
        ..OftConfig::default()
    };
    c.oftq = OftqOptions {
        divergence: DivergencePolicy::Ignore,
        ..OftqOptions::default()
    };
    match p {
        Parameterization::Exact(conv) => {
            c.use_cayley_neumann = false;
            c.oftq.cayley_convention = conv;
        }
        Parameterization::Neumann { terms, flavor } => {
            c.use_cayley_neumann = true;
            c.num_cayley_neumann_terms = terms as i64;
            c.oftq.neumann_flavor = flavor;
        }
    }
    c
}

/// The reference rotation of packed rows (block size `b` on `d` features).
pub(crate) fn ref_rotation(packed: &DMatrix<f64>, b: usize, d: usize, p: Param) -> RefRotation {
    RefRotation::build(packed, b, d / b, p).unwrap()
}

/// `max (|A₁|·|A₂|⋯)`: the magnitude a product's rounding error is relative to.
pub(crate) fn abs_scale(parts: &[&DMatrix<f64>]) -> f64 {
    let mut it = parts.iter();
    let first = it.next().unwrap().abs();
    it.fold(first, |acc, m| acc * m.abs()).amax()
}

/// Whether two `f32` matrices are identical bit for bit (`-0.0 ≠ 0.0`, NaN payloads compared).
pub(crate) fn same_bits(a: &Mat<f32>, b: &Mat<f32>) -> bool {
    a.nrows() == b.nrows()
        && a.ncols() == b.ncols()
        && (0..a.nrows())
            .all(|i| (0..a.ncols()).all(|j| a[(i, j)].to_bits() == b[(i, j)].to_bits()))
}
