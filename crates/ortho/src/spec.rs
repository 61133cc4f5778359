//! The geometry of a block-diagonal rotation: feature count, block size, sharing, parameterization.

use crate::error::{OrthoError, Result};
use crate::packing::n_elements;
use crate::parameterization::Parameterization;

/// Geometry and parameterization of a block-diagonal rotation `R_bd = diag(R₁, …, R_r)` acting on
/// `in_features = r·b` input features.
///
/// With `block_share`, one stored block is used for all `r` positions (`R₁ = … = R_r`).
/// Build one with [`RotationSpec::builder`] (named options, PEFT's defaults) or
/// [`RotationSpec::new`] (every field, positionally).
///
/// ```
/// use oftq_ortho::{Parameterization, RotationSpec};
/// let spec = RotationSpec::builder(4096, 32).build()?; // PEFT's default: Neumann, 5 terms
/// assert_eq!((spec.n_blocks(), spec.stored_blocks(), spec.n_elements()), (128, 128, 496));
/// assert_eq!(spec.param_shape(), (128, 496));
/// let shared = RotationSpec::builder(4096, 32)
///     .shared()
///     .parameterization(Parameterization::exact())
///     .build()?;
/// assert_eq!(shared.param_shape(), (1, 496));
/// assert_eq!(shared, RotationSpec::new(4096, 32, true, Parameterization::exact())?);
/// # Ok::<(), oftq_ortho::OrthoError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RotationSpec {
    in_features: usize,
    block_size: usize,
    block_share: bool,
    parameterization: Parameterization,
}

impl RotationSpec {
    /// A builder for a rotation of `in_features` features in blocks of `block_size`: one block per
    /// position (no sharing) and [`Parameterization::default`] (PEFT's Cayley–Neumann, 5 terms)
    /// unless set otherwise; [`RotationSpecBuilder::build`] validates.
    pub fn builder(in_features: usize, block_size: usize) -> RotationSpecBuilder {
        RotationSpecBuilder {
            in_features,
            block_size,
            block_share: false,
            parameterization: Parameterization::default(),
        }
    }

    /// A rotation of `in_features` features in blocks of `block_size` (see also
    /// [`builder`](Self::builder), which names the options).
    ///
    /// # Errors
    /// [`OrthoError::InvalidGeometry`] if `block_size` is zero or does not divide `in_features`
    /// (PEFT's adjustment to the nearest divisor belongs to the caller, e.g. `oftq-layer`);
    /// [`OrthoError::InvalidOption`] for more than
    /// [`MAX_NEUMANN_TERMS`](crate::parameterization::MAX_NEUMANN_TERMS) Neumann terms.
    pub fn new(
        in_features: usize,
        block_size: usize,
        block_share: bool,
        parameterization: Parameterization,
    ) -> Result<Self> {
        if block_size == 0 || in_features == 0 || !in_features.is_multiple_of(block_size) {
            return Err(OrthoError::InvalidGeometry(format!(
                "block size {block_size} must be >= 1 and divide in_features {in_features}"
            )));
        }
        Ok(Self {
            in_features,
            block_size,
            block_share,
            parameterization,
        })
    }

    /// Number of input features `d = r·b`.
    pub fn in_features(&self) -> usize {
        self.in_features
    }
    /// Block size `b`.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// Whether one block is shared by all positions.
    pub fn block_share(&self) -> bool {
        self.block_share
    }
    /// The map from skew blocks to rotation blocks.
    pub fn parameterization(&self) -> Parameterization {
        self.parameterization
    }
    /// Number of diagonal blocks `r = d/b` the rotation applies.
    pub fn n_blocks(&self) -> usize {
        self.in_features / self.block_size
    }
    /// Number of stored blocks: 1 with sharing, else `r`.
    pub fn stored_blocks(&self) -> usize {
        if self.block_share { 1 } else { self.n_blocks() }
    }
    /// Packed parameters per block, `b(b−1)/2`.
    pub fn n_elements(&self) -> usize {
        n_elements(self.block_size)
    }
    /// Shape of the packed parameter matrix, `(stored blocks, b(b−1)/2)` (PEFT's `oft_R.weight`).
    pub fn param_shape(&self) -> (usize, usize) {
        (self.stored_blocks(), self.n_elements())
    }
    /// Total number of trainable parameters.
    pub fn n_parameters(&self) -> usize {
        self.stored_blocks() * self.n_elements()
    }
    /// Index of the stored block used at position `j`.
    pub fn stored_index(&self, position: usize) -> usize {
        if self.block_share { 0 } else { position }
    }
    /// The same geometry with another parameterization.
    pub fn with_parameterization(self, parameterization: Parameterization) -> Self {
        Self {
            parameterization,
            ..self
        }
    }
}

/// Named options for a [`RotationSpec`], from [`RotationSpec::builder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub struct RotationSpecBuilder {
    in_features: usize,
    block_size: usize,
    block_share: bool,
    parameterization: Parameterization,
}

impl RotationSpecBuilder {
    /// Whether one stored block serves every position (PEFT's `block_share`; default `false`).
    pub fn block_share(self, block_share: bool) -> Self {
        Self {
            block_share,
            ..self
        }
    }

    /// One stored block for every position: `block_share(true)`.
    pub fn shared(self) -> Self {
        self.block_share(true)
    }

    /// The map from skew blocks to rotation blocks (default: PEFT's Cayley–Neumann, 5 terms).
    pub fn parameterization(self, parameterization: Parameterization) -> Self {
        Self {
            parameterization,
            ..self
        }
    }

    /// The spec.
    ///
    /// # Errors
    /// As [`RotationSpec::new`].
    pub fn build(self) -> Result<RotationSpec> {
        RotationSpec::new(
            self.in_features,
            self.block_size,
            self.block_share,
            self.parameterization,
        )
    }
}
