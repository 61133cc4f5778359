//! Small deterministic layers and inputs shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use oftq_candle::candle_core::{DType, Device, Tensor};
use oftq_candle::layer::aqlm::AqlmLayer;
use oftq_candle::layer::faer::Mat;

/// A deterministic pseudo-random stream in [-1, 1).
pub(crate) fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// An AQLM layer `in → out` of `scheme` (`MxB`, groups of 8 inputs) with pseudo-random codes and
/// codebooks scaled so that `W` has entries of order `1/√in`.
pub(crate) fn aqlm(in_f: usize, out_f: usize, scheme: &str, seed: u64) -> AqlmLayer {
    let scheme: oftq_candle::layer::aqlm::AqlmScheme = scheme.parse().unwrap();
    let k = scheme.codebook_size();
    let m = scheme.num_codebooks;
    let (og, ig) = (scheme.out_group_size, scheme.in_group_size);
    let n_codes = (out_f / og) * (in_f / ig) * m;
    let codes: Vec<u16> = uniform(n_codes, seed)
        .iter()
        .map(|v| (((v + 1.0) / 2.0 * k as f32) as usize).min(k - 1) as u16)
        .collect();
    let codebooks: Vec<f32> = uniform(m * k * og * ig, seed + 1)
        .iter()
        .map(|v| v / (in_f as f32).sqrt())
        .collect();
    AqlmLayer::new(
        in_f,
        out_f,
        scheme,
        codes,
        codebooks,
        vec![1.0; out_f / og],
        None,
    )
    .unwrap()
}

/// A `[rows, cols]` f32 tensor of pseudo-random values in [-1, 1).
pub(crate) fn tensor(rows: usize, cols: usize, seed: u64) -> Tensor {
    Tensor::from_vec(uniform(rows * cols, seed), (rows, cols), &Device::Cpu).unwrap()
}

/// A tensor's values as a faer matrix (2-D, any float dtype).
pub(crate) fn mat(t: &Tensor) -> Mat<f32> {
    let (r, c) = t.dims2().unwrap();
    let v = t
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    Mat::from_fn(r, c, |i, j| v[i * c + j])
}

/// The bits of a tensor's f32 values.
pub(crate) fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// `max |a − b| / max |b|`.
pub(crate) fn rel_max(a: &Mat<f32>, b: &Mat<f32>) -> f32 {
    assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()));
    (a - b).norm_max() / b.norm_max().max(f32::MIN_POSITIVE)
}
