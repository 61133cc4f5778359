//! Conversions between safetensors byte buffers and the in-memory values of an AQLM layer.

use safetensors::Dtype;

use crate::storage::{CodeDtype, FloatDtype, pack_code, unpack_code};

/// A tensor kept exactly as it was read (dtype, shape, little-endian bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTensor {
    /// The safetensors dtype.
    pub dtype: Dtype,
    /// The shape (row-major).
    pub shape: Vec<usize>,
    /// The raw little-endian data, `shape.product() · dtype size` bytes.
    pub data: Vec<u8>,
}

/// The [`FloatDtype`] for a safetensors dtype, if it is one of F32/F16/BF16.
pub(crate) fn float_dtype(d: Dtype) -> Option<FloatDtype> {
    match d {
        Dtype::F32 => Some(FloatDtype::F32),
        Dtype::F16 => Some(FloatDtype::F16),
        Dtype::BF16 => Some(FloatDtype::BF16),
        _ => None,
    }
}

/// The [`CodeDtype`] for a safetensors dtype, if it is one of I8/I16/I32.
pub(crate) fn code_dtype(d: Dtype) -> Option<CodeDtype> {
    match d {
        Dtype::I8 => Some(CodeDtype::I8),
        Dtype::I16 => Some(CodeDtype::I16),
        Dtype::I32 => Some(CodeDtype::I32),
        _ => None,
    }
}

/// The safetensors dtype of a [`FloatDtype`].
pub(crate) fn st_float(d: FloatDtype) -> Dtype {
    match d {
        FloatDtype::F32 => Dtype::F32,
        FloatDtype::F16 => Dtype::F16,
        FloatDtype::BF16 => Dtype::BF16,
    }
}

/// The safetensors dtype of a [`CodeDtype`].
pub(crate) fn st_code(d: CodeDtype) -> Dtype {
    match d {
        CodeDtype::I8 => Dtype::I8,
        CodeDtype::I16 => Dtype::I16,
        CodeDtype::I32 => Dtype::I32,
    }
}

/// Decodes little-endian floats of dtype `d` to `f32` (exact for all three dtypes).
pub(crate) fn floats_from_bytes(d: FloatDtype, bytes: &[u8]) -> Vec<f32> {
    match d {
        FloatDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        FloatDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        FloatDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
    }
}

/// Converts little-endian bytes of any safetensors float dtype (F32, F16, BF16, F64) to `f32`:
/// exact except F64, which is rounded to nearest. `None` for non-float dtypes.
///
/// ```
/// use oftq_aqlm::checkpoint::{Dtype, floats_as_f32};
/// assert_eq!(floats_as_f32(Dtype::F64, &0.5f64.to_le_bytes()), Some(vec![0.5]));
/// assert!(floats_as_f32(Dtype::I32, &[0; 4]).is_none());
/// ```
pub fn floats_as_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    if dtype == Dtype::F64 {
        return Some(
            bytes
                .chunks_exact(8)
                .map(|c| {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
        );
    }
    float_dtype(dtype).map(|d| floats_from_bytes(d, bytes))
}

/// Encodes `f32` values as little-endian dtype `d` (round to nearest even for f16/bf16).
pub(crate) fn floats_to_bytes(d: FloatDtype, v: &[f32]) -> Vec<u8> {
    match d {
        FloatDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        FloatDtype::F16 => v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        FloatDtype::BF16 => v
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
    }
}

/// Reads stored codes and unpacks them (aqlm `unpack_int_data`). On a value aqlm could not
/// have written, returns `Err((flat index, stored value))`.
///
/// One pass into a vector of the exact size, with no check when the codes fill their storage.
/// (It used to collect every value as an `i64` first, then the codes into a growing vector:
/// 16% of the samples of a 512-token `oftq llm eval` of a 4x8 SmolLM2 folder.)
pub(crate) fn codes_from_bytes(
    d: CodeDtype,
    bytes: &[u8],
    nbits: u32,
) -> Result<Vec<u16>, (usize, i64)> {
    match (d, nbits) {
        // Codes as wide as their storage (2x8 and 4x8 in int8): every stored value is valid,
        // and the code is its two's-complement bits read as unsigned (`rem_euclid(2^nbits)`).
        (CodeDtype::I8, 8) => Ok(bytes.iter().map(|&b| u16::from(b)).collect()),
        (CodeDtype::I16, 16) => Ok(bytes
            .as_chunks::<2>()
            .0
            .iter()
            .map(|&c| u16::from_le_bytes(c))
            .collect()),
        (CodeDtype::I8, _) => unpack_all::<1>(bytes, nbits, |[b]| i64::from(b as i8)),
        (CodeDtype::I16, _) => unpack_all::<2>(bytes, nbits, |c| i64::from(i16::from_le_bytes(c))),
        (CodeDtype::I32, _) => unpack_all::<4>(bytes, nbits, |c| i64::from(i32::from_le_bytes(c))),
    }
}

/// [`codes_from_bytes`] for values of `W` bytes, read by `read`.
fn unpack_all<const W: usize>(
    bytes: &[u8],
    nbits: u32,
    read: impl Fn([u8; W]) -> i64,
) -> Result<Vec<u16>, (usize, i64)> {
    let (values, _) = bytes.as_chunks::<W>();
    let mut codes = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        let s = read(v);
        codes.push(unpack_code(s, nbits).ok_or((i, s))?);
    }
    Ok(codes)
}

/// Packs unsigned codes the aqlm way into little-endian dtype `d` (caller checked the width).
pub(crate) fn codes_to_bytes(d: CodeDtype, codes: &[u16], nbits: u32) -> Vec<u8> {
    let packed = codes.iter().map(|&c| pack_code(c, nbits));
    match d {
        CodeDtype::I8 => packed.map(|p| (p as i8) as u8).collect(),
        CodeDtype::I16 => packed.flat_map(|p| (p as i16).to_le_bytes()).collect(),
        CodeDtype::I32 => packed.flat_map(i32::to_le_bytes).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_and_code_round_trips() {
        let v = [1.0f32, -2.5, 0.1, 65504.0];
        for d in [FloatDtype::F32, FloatDtype::F16, FloatDtype::BF16] {
            let r: Vec<f32> = v.iter().map(|&x| d.round(x)).collect();
            assert_eq!(floats_from_bytes(d, &floats_to_bytes(d, &r)), r);
        }
        let codes = [0u16, 127, 128, 255];
        let b = codes_to_bytes(CodeDtype::I8, &codes, 8);
        assert_eq!(b, [0, 127, 128, 255]); // 128 → −128, 255 → −1 as i8
        assert_eq!(codes_from_bytes(CodeDtype::I8, &b, 8).unwrap(), codes);
        let codes = [0u16, 40000, 65535];
        let b = codes_to_bytes(CodeDtype::I16, &codes, 16);
        assert_eq!(i16::from_le_bytes([b[2], b[3]]), -25536);
        assert_eq!(codes_from_bytes(CodeDtype::I16, &b, 16).unwrap(), codes);
        let b = codes_to_bytes(CodeDtype::I32, &[5, 40], 6);
        assert_eq!(codes_from_bytes(CodeDtype::I32, &b, 6).unwrap(), [5, 40]);
        assert_eq!(codes_from_bytes(CodeDtype::I8, &[100], 6), Err((0, 100)));
        // Full-width storage (no check) agrees with the general rule on every value.
        let all8: Vec<u8> = (0..=255).collect();
        let want: Vec<u16> = all8
            .iter()
            .map(|&b| crate::storage::unpack_code(i64::from(b as i8), 8).unwrap())
            .collect();
        assert_eq!(codes_from_bytes(CodeDtype::I8, &all8, 8).unwrap(), want);
        let all16: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let got = codes_from_bytes(CodeDtype::I16, &all16, 16).unwrap();
        let want: Vec<u16> = all16
            .as_chunks::<2>()
            .0
            .iter()
            .map(|&c| crate::storage::unpack_code(i64::from(i16::from_le_bytes(c)), 16).unwrap())
            .collect();
        assert_eq!(got, want);
        // The first bad value is reported with its index.
        let b = [1i16, 2, 300, 400].map(i16::to_le_bytes).concat();
        assert_eq!(codes_from_bytes(CodeDtype::I16, &b, 8), Err((2, 300)));
        assert_eq!(codes_from_bytes(CodeDtype::I16, &b[..4], 8), Ok(vec![1, 2]));
    }
}
