//! The AQLM quantization scheme: how many codebooks, how many bits each, and the group shape.

use crate::error::AqlmError;

/// An AQLM scheme `MxB` with its group shape.
///
/// A weight `W [out, in]` is cut into tiles of `out_group_size × in_group_size`; each tile is
/// encoded by `num_codebooks` codes of `nbits` bits, one per codebook, and decoded as the sum of
/// the selected codebook entries times the scale of its output group (see `aqlm.md` §1.1).
///
/// Build one from its name (`"2x8"`, with aqlm's default groups `ig = 8`, `og = 1`), with
/// [`AqlmScheme::builder`] (named group sizes) or with [`AqlmScheme::new`] (every field,
/// positionally).
///
/// ```
/// use oftq_aqlm::AqlmScheme;
/// let s: AqlmScheme = "2x8".parse()?;
/// assert_eq!((s.num_codebooks, s.nbits, s.in_group_size, s.out_group_size), (2, 8, 8, 1));
/// assert_eq!(s.codebook_size(), 256);
/// let g = AqlmScheme::builder(2, 4).in_group_size(4).out_group_size(2).build()?;
/// assert_eq!(g, AqlmScheme::new(2, 4, 4, 2)?);
/// assert_eq!(g.to_string(), "2x4 (in_group 4, out_group 2)");
/// # Ok::<(), oftq_aqlm::AqlmError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AqlmScheme {
    /// `M`: number of additive codebooks.
    pub num_codebooks: usize,
    /// `B`: bits per code; each codebook has `2^B` entries (`1 ≤ B ≤ 16`).
    pub nbits: u32,
    /// `ig`: input features per group (columns of a tile).
    pub in_group_size: usize,
    /// `og`: output features per group (rows of a tile).
    pub out_group_size: usize,
}

impl AqlmScheme {
    /// Largest supported code width in bits.
    pub const MAX_NBITS: u32 = 16;

    /// A builder for the scheme `num_codebooks × nbits` (`MxB`) with aqlm's default groups
    /// (`in_group_size = 8`, `out_group_size = 1`) unless set; [`AqlmSchemeBuilder::build`]
    /// validates.
    pub fn builder(num_codebooks: usize, nbits: u32) -> AqlmSchemeBuilder {
        AqlmSchemeBuilder {
            scheme: Self {
                num_codebooks,
                nbits,
                in_group_size: 8,
                out_group_size: 1,
            },
        }
    }

    /// A scheme with `num_codebooks × nbits` and the given group sizes, validated (see also
    /// [`builder`](Self::builder), which names the group sizes).
    ///
    /// # Errors
    /// [`AqlmError::InvalidScheme`] if any count is zero or `nbits > 16`.
    pub fn new(
        num_codebooks: usize,
        nbits: u32,
        in_group_size: usize,
        out_group_size: usize,
    ) -> Result<Self, AqlmError> {
        let s = Self {
            num_codebooks,
            nbits,
            in_group_size,
            out_group_size,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the invariants documented on the fields.
    ///
    /// # Errors
    /// [`AqlmError::InvalidScheme`] naming the offending field.
    pub fn validate(&self) -> Result<(), AqlmError> {
        let bad = |why: String| Err(AqlmError::InvalidScheme(why));
        if self.num_codebooks == 0 {
            return bad("num_codebooks must be at least 1".into());
        }
        if self.nbits == 0 || self.nbits > Self::MAX_NBITS {
            return bad(format!(
                "nbits_per_codebook must be in 1..=16, got {}",
                self.nbits
            ));
        }
        if self.in_group_size == 0 || self.out_group_size == 0 {
            return bad(format!(
                "group sizes must be at least 1, got in_group_size {} and out_group_size {}",
                self.in_group_size, self.out_group_size
            ));
        }
        Ok(())
    }

    /// `K = 2^B`, the number of entries per codebook.
    pub fn codebook_size(&self) -> usize {
        1usize << self.nbits
    }

    /// Number of scalars in one codebook entry, `og · ig`.
    pub fn group_len(&self) -> usize {
        self.in_group_size * self.out_group_size
    }
}

/// Named group sizes for an [`AqlmScheme`], from [`AqlmScheme::builder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub struct AqlmSchemeBuilder {
    scheme: AqlmScheme,
}

impl AqlmSchemeBuilder {
    /// Input features per group, `ig` (columns of a tile; default 8).
    pub fn in_group_size(mut self, in_group_size: usize) -> Self {
        self.scheme.in_group_size = in_group_size;
        self
    }

    /// Output features per group, `og` (rows of a tile; default 1).
    pub fn out_group_size(mut self, out_group_size: usize) -> Self {
        self.scheme.out_group_size = out_group_size;
        self
    }

    /// The scheme.
    ///
    /// # Errors
    /// As [`AqlmScheme::new`].
    pub fn build(self) -> Result<AqlmScheme, AqlmError> {
        self.scheme.validate()?;
        Ok(self.scheme)
    }
}

impl std::fmt::Display for AqlmScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.num_codebooks, self.nbits)?;
        if self.in_group_size != 8 || self.out_group_size != 1 {
            write!(
                f,
                " (in_group {}, out_group {})",
                self.in_group_size, self.out_group_size
            )?;
        }
        Ok(())
    }
}

impl std::str::FromStr for AqlmScheme {
    type Err = AqlmError;

    /// Parses `"MxB"` (e.g. `"2x8"`, `"1x16"`) with the default groups `ig = 8`, `og = 1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err =
            || AqlmError::InvalidScheme(format!("expected MxB such as 2x8 or 1x16, got {s:?}"));
        let (m, b) = s.trim().split_once(['x', 'X']).ok_or_else(err)?;
        let m: usize = m.parse().map_err(|_| err())?;
        let b: u32 = b.parse().map_err(|_| err())?;
        Self::new(m, b, 8, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let s: AqlmScheme = "1x16".parse().unwrap();
        assert_eq!(s.codebook_size(), 65536);
        assert!("0x8".parse::<AqlmScheme>().is_err());
        assert!("2x17".parse::<AqlmScheme>().is_err());
        assert!("2by8".parse::<AqlmScheme>().is_err());
        assert!(AqlmScheme::new(2, 8, 0, 1).is_err());
        assert_eq!(
            AqlmScheme::new(4, 6, 8, 2).unwrap().to_string(),
            "4x6 (in_group 8, out_group 2)"
        );
    }
}
