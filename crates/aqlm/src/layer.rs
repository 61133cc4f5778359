//! [`AqlmLayer`]: one AQLM-quantized linear layer (codes, codebooks, scales, optional bias).

use std::sync::OnceLock;

use crate::codebook_buf::CodebookBuf;
use crate::error::AqlmError;
use crate::scheme::AqlmScheme;
use crate::storage::Storage;

/// An AQLM-quantized linear layer `y = x·Wᵀ + bias` with `W [out, in]` stored as
/// additive codes (aqlm 1.1.7 `QuantizedLinear`, see `aqlm.md` §1).
///
/// With `Og = out/og`, `Ig = in/ig`, `M` codebooks of `K = 2^B` entries:
/// - `codes [Og, Ig, M]` (row-major, unsigned values `< K`),
/// - `codebooks [M, K, og, ig]` (row-major),
/// - `scales [Og]` (one per output group, aqlm's `[Og, 1, 1, 1]`),
/// - `bias [out]` (optional).
///
/// The tile `W[o·og .. (o+1)·og, j·ig .. (j+1)·ig]` is
/// `(Σ_{m ascending} codebooks[m][codes[o][j][m]]) · scales[o]`, summed in `f32`.
///
/// ```
/// use oftq_aqlm::{AqlmLayer, AqlmScheme};
/// // 1 codebook of 2 bits, groups of 2 inputs: W is 1×4.
/// let scheme = AqlmScheme::builder(1, 2).in_group_size(2).build().unwrap();
/// let codebooks = vec![0.0, 0.0, 1.0, 2.0, 3.0, 4.0, -1.0, -2.0]; // [1, 4, 1, 2]
/// let layer = AqlmLayer::new(4, 1, scheme, vec![1, 3], codebooks, vec![2.0], None).unwrap();
/// let w = layer.decode();
/// assert_eq!((w[(0, 0)], w[(0, 1)], w[(0, 2)], w[(0, 3)]), (2.0, 4.0, -2.0, -4.0));
/// ```
#[derive(Debug, Clone)]
pub struct AqlmLayer {
    pub(crate) in_features: usize,
    pub(crate) out_features: usize,
    pub(crate) scheme: AqlmScheme,
    pub(crate) codes: Vec<u16>,
    pub(crate) codebooks: CodebookBuf,
    pub(crate) scales: Vec<f32>,
    pub(crate) bias: Option<Vec<f32>>,
    pub(crate) storage: Storage,
    /// Codes in aqlm's permuted layout `[Ig, Og, M]`, built on first use by the kernels that
    /// walk output groups for a fixed input group (input-gradient kernels).
    pub(crate) codes_by_input: OnceLock<Vec<u16>>,
    /// Codebooks transposed to `[M, og, ig, K]`, built on first use by the LUT kernel.
    pub(crate) codebooks_by_entry: OnceLock<Vec<f32>>,
    /// Codes as bytes (only for `2^B ≤ 256`) interleaved by blocks of eight output groups,
    /// built on first use by the LUT kernel for token counts that are multiples of 8 (see
    /// [`AqlmLayer::codes_u8_interleaved`]).
    pub(crate) codes_u8: OnceLock<Vec<u8>>,
    /// Codes as bytes (only for `2^B ≤ 256`) in passes of tables and groups of rows, built on
    /// first use by the one-token LUT kernel (see [`AqlmLayer::codes_u8_by_pass`]).
    pub(crate) codes_u8_by_pass: OnceLock<Vec<u8>>,
}

/// Output groups per block of [`AqlmLayer::codes_u8_interleaved`].
pub(crate) const ROW_INTERLEAVE: usize = 8;

/// Tables per pass of [`AqlmLayer::codes_u8_by_pass`].
pub(crate) const PASS_TABLES: usize = 32;

/// Output groups per row group of [`AqlmLayer::codes_u8_by_pass`].
pub(crate) const PASS_ROWS: usize = 32;

fn checked_product(what: &str, dims: &[usize]) -> Result<usize, AqlmError> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| AqlmError::Shape {
            what: what.to_string(),
            expected: "a size that fits in memory".into(),
            got: format!("{dims:?}"),
        })
}

impl AqlmLayer {
    /// Builds a layer from unpacked parts, validating every size and code.
    ///
    /// `codes` are unsigned `[Og, Ig, M]` row-major, `codebooks` `[M, 2^B, og, ig]`,
    /// `scales` `[Og]`, `bias` `[out_features]`. The storage dtypes default to
    /// [`Storage::hf_default`] (aqlm's `convert_to_hf.py`: signed int codes, `f16` floats); use
    /// [`AqlmLayer::with_storage`] to change them.
    ///
    /// # Errors
    /// [`AqlmError::InvalidScheme`] for a bad scheme or features not divisible by the group
    /// sizes, [`AqlmError::Shape`] for a wrong length, [`AqlmError::CodeOutOfRange`] for a code
    /// `≥ 2^B`, [`AqlmError::NonFinite`] for NaN/∞ in codebooks, scales or bias.
    pub fn new(
        in_features: usize,
        out_features: usize,
        scheme: AqlmScheme,
        codes: Vec<u16>,
        codebooks: Vec<f32>,
        scales: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self, AqlmError> {
        scheme.validate()?;
        let (ig, og) = (scheme.in_group_size, scheme.out_group_size);
        if in_features == 0 || out_features == 0 {
            return Err(AqlmError::InvalidScheme(format!(
                "in_features ({in_features}) and out_features ({out_features}) must be positive"
            )));
        }
        if !in_features.is_multiple_of(ig) || !out_features.is_multiple_of(og) {
            return Err(AqlmError::InvalidScheme(format!(
                "in_features {in_features} must be a multiple of in_group_size {ig} and \
                 out_features {out_features} a multiple of out_group_size {og}"
            )));
        }
        let (n_og, n_ig, m, k) = (
            out_features / og,
            in_features / ig,
            scheme.num_codebooks,
            scheme.codebook_size(),
        );
        let len_check = |what: &str, dims: &[usize], got: usize| -> Result<(), AqlmError> {
            let n = checked_product(what, dims)?;
            if n != got {
                return Err(AqlmError::Shape {
                    what: what.to_string(),
                    expected: format!("{dims:?} = {n} values"),
                    got: format!("{got} values"),
                });
            }
            Ok(())
        };
        len_check(
            "codes [out_groups, in_groups, num_codebooks]",
            &[n_og, n_ig, m],
            codes.len(),
        )?;
        len_check(
            "codebooks [num_codebooks, 2^nbits, out_group, in_group]",
            &[m, k, og, ig],
            codebooks.len(),
        )?;
        len_check("scales [out_groups]", &[n_og], scales.len())?;
        if let Some(b) = &bias {
            len_check("bias [out_features]", &[out_features], b.len())?;
        }
        if let Some((index, &v)) = codes
            .iter()
            .enumerate()
            .find(|&(_, &c)| usize::from(c) >= k)
        {
            return Err(AqlmError::CodeOutOfRange {
                what: "codes".into(),
                index,
                value: i64::from(v),
                codebook_size: k,
            });
        }
        for (what, values) in [
            ("codebooks", codebooks.as_slice()),
            ("scales", scales.as_slice()),
            ("bias", bias.as_deref().unwrap_or(&[])),
        ] {
            if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(AqlmError::NonFinite {
                    what: what.into(),
                    index,
                    value,
                });
            }
        }
        Ok(Self {
            in_features,
            out_features,
            scheme,
            codes,
            codebooks: CodebookBuf::new(codebooks),
            scales,
            bias,
            storage: Storage::hf_default(scheme.nbits),
            codes_by_input: OnceLock::new(),
            codebooks_by_entry: OnceLock::new(),
            codes_u8: OnceLock::new(),
            codes_u8_by_pass: OnceLock::new(),
        })
    }

    /// Sets the on-disk dtypes used by a checkpoint save.
    ///
    /// # Errors
    /// [`AqlmError::Storage`] if the code dtype cannot hold `nbits`-bit codes.
    pub fn with_storage(mut self, storage: Storage) -> Result<Self, AqlmError> {
        storage.codes.check_nbits(self.scheme.nbits)?;
        self.storage = storage;
        Ok(self)
    }

    /// Number of input features `I`.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Number of output features `O`.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// The quantization scheme (`M`, `B`, `ig`, `og`).
    pub fn scheme(&self) -> AqlmScheme {
        self.scheme
    }

    /// Number of output groups `Og = O / og`.
    pub fn out_groups(&self) -> usize {
        self.out_features / self.scheme.out_group_size
    }

    /// Number of input groups `Ig = I / ig`.
    pub fn in_groups(&self) -> usize {
        self.in_features / self.scheme.in_group_size
    }

    /// Unsigned codes `[Og, Ig, M]`, row-major.
    pub fn codes(&self) -> &[u16] {
        &self.codes
    }

    /// Codebooks `[M, 2^B, og, ig]`, row-major.
    pub fn codebooks(&self) -> &[f32] {
        &self.codebooks
    }

    /// Per-output-group scales `[Og]`.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The bias `[O]`, if any.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// The dtypes a checkpoint save writes (the loaded ones after a load).
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Bits per parameter of this layer (`aqlm.md` §5, `estimate_nbits_per_parameter` with
    /// `scale_nbits = 0` and 16-bit codebooks and scales):
    ///
    /// `bpp = M·B/(og·ig) + M·2^B·og·ig·16/(O·I) + 16/(I·og)` (codes + codebooks + scales;
    /// the bias is not counted, as in aqlm).
    pub fn bits_per_parameter(&self) -> f64 {
        let s = &self.scheme;
        let (m, b) = (s.num_codebooks as f64, f64::from(s.nbits));
        let (og, ig) = (s.out_group_size as f64, s.in_group_size as f64);
        let (o, i) = (self.out_features as f64, self.in_features as f64);
        m * b / (og * ig)
            + m * (s.codebook_size() as f64) * og * ig * 16.0 / (o * i)
            + 16.0 / (i * og)
    }

    /// Codes in aqlm's permuted layout `[Ig, Og, M]` (built once, then cached).
    pub(crate) fn codes_by_input(&self) -> &[u16] {
        self.codes_by_input.get_or_init(|| {
            let (n_og, n_ig, m) = (
                self.out_groups(),
                self.in_groups(),
                self.scheme.num_codebooks,
            );
            let mut t = vec![0u16; self.codes.len()];
            for o in 0..n_og {
                for j in 0..n_ig {
                    let src = (o * n_ig + j) * m;
                    let dst = (j * n_og + o) * m;
                    t[dst..dst + m].copy_from_slice(&self.codes[src..src + m]);
                }
            }
            t
        })
    }

    /// Codes as bytes in the layout `[⌈Og/8⌉, Ig·M, 8]` (built once, then cached): entry
    /// `(b, i, r)` is the code `i = j·M + m` of output group `8b + r` (0 past the last group).
    /// One 8-byte load gives the codes of eight rows for one table, and the codes of a block
    /// of rows are read sequentially. Only meaningful when `2^B ≤ 256`.
    pub(crate) fn codes_u8_interleaved(&self) -> &[u8] {
        self.codes_u8.get_or_init(|| {
            let n_tab = self.in_groups() * self.scheme.num_codebooks;
            let n_og = self.out_groups();
            let mut t = vec![0u8; n_og.div_ceil(ROW_INTERLEAVE) * n_tab * ROW_INTERLEAVE];
            for (o, row) in self.codes.chunks_exact(n_tab).enumerate() {
                let (b, r) = (o / ROW_INTERLEAVE, o % ROW_INTERLEAVE);
                for (i, &c) in row.iter().enumerate() {
                    t[(b * n_tab + i) * ROW_INTERLEAVE + r] = c as u8;
                }
            }
            t
        })
    }

    /// Codes as bytes in passes (built once, then cached): with `n = Ig·M` tables per row and
    /// `G = ⌈Og/32⌉` groups of 32 rows, pass `p` holds tables `32p .. 32p + len_p` (`len_p =
    /// min(32, n − 32p)`) and starts at byte `32p·G·32`; in it, row group `g` starts at
    /// `g·len_p·32`, and entry `(i, r)` at `i·32 + r` is code `32p + i` of output group `32g + r`
    /// (0 past the last group). One 32-byte load gives the codes of 32 rows for one table, and
    /// a pass's codes for consecutive row groups are contiguous, so the one-token gather reads
    /// them front to back. Only meaningful when `2^B ≤ 256`.
    pub(crate) fn codes_u8_by_pass(&self) -> &[u8] {
        self.codes_u8_by_pass.get_or_init(|| {
            let n_tab = self.in_groups() * self.scheme.num_codebooks;
            let groups = self.out_groups().div_ceil(PASS_ROWS);
            let mut t = vec![0u8; groups * PASS_ROWS * n_tab];
            for (o, row) in self.codes.chunks_exact(n_tab).enumerate() {
                let (g, r) = (o / PASS_ROWS, o % PASS_ROWS);
                for (i, &c) in row.iter().enumerate() {
                    let first = i / PASS_TABLES * PASS_TABLES;
                    let len = (n_tab - first).min(PASS_TABLES);
                    t[(first * groups + g * len + i - first) * PASS_ROWS + r] = c as u8;
                }
            }
            t
        })
    }

    /// Codebooks transposed to `[M, og, ig, K]` (built once, then cached).
    pub(crate) fn codebooks_by_entry(&self) -> &[f32] {
        self.codebooks_by_entry.get_or_init(|| {
            let s = &self.scheme;
            let (m, k, og, ig) = (
                s.num_codebooks,
                s.codebook_size(),
                s.out_group_size,
                s.in_group_size,
            );
            let mut t = vec![0f32; self.codebooks.len()];
            for mm in 0..m {
                for c in 0..k {
                    for a in 0..og {
                        for b in 0..ig {
                            t[((mm * og + a) * ig + b) * k + c] =
                                self.codebooks[((mm * k + c) * og + a) * ig + b];
                        }
                    }
                }
            }
            t
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme() -> AqlmScheme {
        AqlmScheme::new(2, 3, 2, 1).unwrap()
    }

    #[test]
    fn refuses_non_finite_values() {
        let s = scheme();
        let mut cb = vec![0f32; 2 * 8 * 2];
        cb[5] = f32::NAN;
        let e = AqlmLayer::new(4, 2, s, vec![0u16; 8], cb, vec![1.0; 2], None).unwrap_err();
        assert!(matches!(e, AqlmError::NonFinite { index: 5, .. }), "{e}");
        let e = AqlmLayer::new(
            4,
            2,
            s,
            vec![0u16; 8],
            vec![0.0; 32],
            vec![1.0, f32::INFINITY],
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("scales"), "{e}");
        let e = AqlmLayer::new(
            4,
            2,
            s,
            vec![0u16; 8],
            vec![0.0; 32],
            vec![1.0; 2],
            Some(vec![0.0, f32::NAN]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("bias"), "{e}");
    }

    #[test]
    fn validates_sizes() {
        let s = scheme();
        let ok = || (vec![0u16; 2 * 2 * 2], vec![0f32; 2 * 8 * 2], vec![1f32; 2]);
        let (c, cb, sc) = ok();
        assert!(AqlmLayer::new(4, 2, s, c, cb, sc, Some(vec![0.0; 2])).is_ok());
        let (c, cb, sc) = ok();
        assert!(matches!(
            AqlmLayer::new(5, 2, s, c, cb, sc, None),
            Err(AqlmError::InvalidScheme(_))
        ));
        let (_, cb, sc) = ok();
        assert!(matches!(
            AqlmLayer::new(4, 2, s, vec![0; 7], cb, sc, None),
            Err(AqlmError::Shape { .. })
        ));
        let (c, _, sc) = ok();
        assert!(matches!(
            AqlmLayer::new(4, 2, s, c, vec![0.0; 3], sc, None),
            Err(AqlmError::Shape { .. })
        ));
        let (c, cb, _) = ok();
        assert!(matches!(
            AqlmLayer::new(4, 2, s, c, cb, vec![1.0], None),
            Err(AqlmError::Shape { .. })
        ));
        let (c, cb, sc) = ok();
        assert!(matches!(
            AqlmLayer::new(4, 2, s, c, cb, sc, Some(vec![0.0; 3])),
            Err(AqlmError::Shape { .. })
        ));
        let (mut c, cb, sc) = ok();
        c[5] = 8;
        assert!(matches!(
            AqlmLayer::new(4, 2, s, c, cb, sc, None),
            Err(AqlmError::CodeOutOfRange {
                index: 5,
                value: 8,
                ..
            })
        ));
        let (c, cb, sc) = ok();
        assert!(matches!(
            AqlmLayer::new(0, 2, s, c, cb, sc, None),
            Err(AqlmError::InvalidScheme(_))
        ));
    }

    #[test]
    fn bits_per_parameter_matches_formula() {
        // Llama-2-7B q_proj 1x16 g8: 2 code bits + 2^16·8·16/4096² + 16/4096.
        let s = AqlmScheme::new(1, 16, 8, 1).unwrap();
        let (o, i) = (4096usize, 4096usize);
        let layer = AqlmLayer::new(
            i,
            o,
            s,
            vec![0; o * i / 8],
            vec![0.0; 65536 * 8],
            vec![1.0; o],
            None,
        )
        .unwrap();
        let want = 2.0 + 65536.0 * 8.0 * 16.0 / (4096.0 * 4096.0) + 16.0 / 4096.0;
        assert!((layer.bits_per_parameter() - want).abs() < 1e-12);
    }
}
