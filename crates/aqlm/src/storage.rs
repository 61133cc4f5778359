//! On-disk dtypes of an AQLM layer, so that a load → save round trip writes the same dtypes.

use crate::error::AqlmError;

/// Integer dtype of the stored `codes` tensor.
///
/// aqlm stores unsigned code values in *signed* integers: a value `v ≥ 2^(B−1)` is stored as
/// `v − 2^B` (`aqlm.utils.pack_int_data`) and read back as `stored mod 2^B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeDtype {
    /// `int8` (aqlm's choice for `B ≤ 8`).
    I8,
    /// `int16` (aqlm's choice for `8 < B ≤ 16`).
    I16,
    /// `int32`.
    I32,
}

impl CodeDtype {
    /// aqlm's `get_int_dtype(nbits)`: int8 for `B ≤ 8`, int16 for `B ≤ 16`, else int32.
    pub fn for_nbits(nbits: u32) -> Self {
        match nbits {
            0..=8 => Self::I8,
            9..=16 => Self::I16,
            _ => Self::I32,
        }
    }

    /// Width of the integer in bits.
    pub fn bits(self) -> u32 {
        match self {
            Self::I8 => 8,
            Self::I16 => 16,
            Self::I32 => 32,
        }
    }

    /// Checks that this dtype can hold `nbits`-bit codes in aqlm's signed packing.
    ///
    /// # Errors
    /// [`AqlmError::Storage`] if `nbits` exceeds the integer width.
    pub fn check_nbits(self, nbits: u32) -> Result<(), AqlmError> {
        if nbits > self.bits() {
            return Err(AqlmError::Storage(format!(
                "codes of {nbits} bits do not fit in {self:?} storage"
            )));
        }
        Ok(())
    }
}

/// Floating-point dtype of a stored codebook, scale or bias tensor.
///
/// Values are always held as `f32` in memory; `f16`/`bf16` convert to `f32` exactly, so
/// re-saving in the loaded dtype is lossless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatDtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16 (what `convert_to_hf.py` writes).
    F16,
    /// bfloat16.
    BF16,
}

impl FloatDtype {
    /// Rounds `v` to this dtype (round to nearest even) and back to `f32`.
    pub fn round(self, v: f32) -> f32 {
        match self {
            Self::F32 => v,
            Self::F16 => half::f16::from_f32(v).to_f32(),
            Self::BF16 => half::bf16::from_f32(v).to_f32(),
        }
    }
}

/// The dtypes each tensor of an [`crate::AqlmLayer`] is written with.
///
/// The default for a new layer is aqlm's `convert_to_hf.py` convention: codes by
/// [`CodeDtype::for_nbits`], codebooks/scales/bias `f16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Storage {
    /// dtype of `codes`.
    pub codes: CodeDtype,
    /// dtype of `codebooks`.
    pub codebooks: FloatDtype,
    /// dtype of `scales`.
    pub scales: FloatDtype,
    /// dtype of `bias` (ignored when there is no bias).
    pub bias: FloatDtype,
}

impl Storage {
    /// The `convert_to_hf.py` defaults for `nbits`-bit codes: signed int codes, `f16` floats.
    pub fn hf_default(nbits: u32) -> Self {
        Self {
            codes: CodeDtype::for_nbits(nbits),
            codebooks: FloatDtype::F16,
            scales: FloatDtype::F16,
            bias: FloatDtype::F16,
        }
    }

    /// Everything stored in `f32` (no rounding on save), codes by [`CodeDtype::for_nbits`].
    pub fn f32(nbits: u32) -> Self {
        Self {
            codes: CodeDtype::for_nbits(nbits),
            codebooks: FloatDtype::F32,
            scales: FloatDtype::F32,
            bias: FloatDtype::F32,
        }
    }
}

/// Packs an unsigned code the aqlm way: `v ≥ 2^(B−1)` becomes `v − 2^B`.
pub fn pack_code(v: u16, nbits: u32) -> i32 {
    let v = i32::from(v);
    if nbits >= 1 && v >= (1 << (nbits - 1)) {
        v - (1 << nbits)
    } else {
        v
    }
}

/// Unpacks a stored code (aqlm's `unpack_int_data`: `stored mod 2^B`), accepting exactly the
/// values aqlm can have written: the signed packing range `[−2^(B−1), 2^(B−1))` and the
/// unpacked range `[0, 2^B)`. Returns `None` for anything else.
pub fn unpack_code(stored: i64, nbits: u32) -> Option<u16> {
    let k = 1i64 << nbits;
    if stored < -(k / 2) || stored >= k {
        return None;
    }
    u16::try_from(stored.rem_euclid(k)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trip() {
        for nbits in 1..=16u32 {
            let k = 1u32 << nbits;
            for v in [0, 1, k / 2 - 1, k / 2, k - 1] {
                let v = v as u16;
                let p = pack_code(v, nbits);
                assert!(p >= -(1 << (nbits - 1)) && p < (1 << (nbits - 1)));
                assert_eq!(unpack_code(i64::from(p), nbits), Some(v));
                assert_eq!(unpack_code(i64::from(v), nbits), Some(v));
            }
            assert_eq!(unpack_code(i64::from(k), nbits), None);
            assert_eq!(unpack_code(-i64::from(k / 2) - 1, nbits), None);
        }
        // The aqlm doc example: 40000 in a 1x16 model is stored as −25536.
        assert_eq!(pack_code(40000, 16), -25536);
        assert_eq!(unpack_code(-25536, 16), Some(40000));
    }

    #[test]
    fn dtype_widths() {
        assert_eq!(CodeDtype::for_nbits(8), CodeDtype::I8);
        assert_eq!(CodeDtype::for_nbits(15), CodeDtype::I16);
        assert!(CodeDtype::I8.check_nbits(9).is_err());
        assert!(CodeDtype::I16.check_nbits(16).is_ok());
        assert_eq!(FloatDtype::F16.round(1.0 + 1e-5), 1.0);
    }
}
