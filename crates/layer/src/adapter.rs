//! [`OftAdapter`]: one named adapter's parameters, constraint and built rotation.

use faer::{Mat, MatRef};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use rand_distr::{Distribution, Normal};

use oftq_ortho::{
    BlockRotation, CoftRadius, DivergencePolicy, RotationSpec, block_size_from_n_elements,
    project_coft,
};

use crate::config::{BlockAdjustment, OftConfig};
use crate::error::{LayerError, Result, shape};

/// One OFT adapter on a layer with `in_features` inputs: the packed skew parameters
/// (PEFT's `oft_R.weight`, `[stored blocks, b(b−1)/2]`, `f32`), its COFT ball, module dropout, and
/// the rotation built from them.
///
/// Invariant: with COFT on, the stored parameters are always projected. PEFT projects them in
/// place at the start of every forward; projecting whenever they change (construction,
/// [`set_weight`](Self::set_weight), optimizer steps) gives the same values, since the projection
/// is idempotent, while keeping `forward` free of side effects.
#[derive(Debug, Clone)]
pub struct OftAdapter {
    spec: RotationSpec,
    coft: Option<CoftRadius>,
    module_dropout: f64,
    divergence: DivergencePolicy,
    weight: Mat<f32>,
    rotation: BlockRotation<f32>,
    adjusted: Option<BlockAdjustment>,
}

impl OftAdapter {
    /// A fresh adapter initialised as the config says: `Q = 0` (`R = I`) for `init_weights = true`,
    /// entries from `N(0, 0.1)` (seeded) otherwise.
    ///
    /// # Errors
    /// Invalid config ([`OftConfig::validate`]).
    pub fn new(config: &OftConfig, in_features: usize, seed: u64) -> Result<Self> {
        let (spec, adjusted) = spec_from_config(config, in_features)?;
        let (rows, cols) = spec.param_shape();
        let weight = if config.init_weights {
            Mat::zeros(rows, cols)
        } else {
            let normal = Normal::new(0.0f32, 0.1).map_err(|e| LayerError::Config(e.to_string()))?;
            let mut rng = StdRng::seed_from_u64(seed);
            let mut data: Vec<f32> = (0..rows * cols).map(|_| normal.sample(&mut rng)).collect();
            data.truncate(rows * cols);
            Mat::from_fn(rows, cols, |i, k| data[i * cols + k])
        };
        Self::from_parts(config, (spec, adjusted), weight)
    }

    /// An adapter with given parameters, checked against the config and the layer: the block size
    /// inferred from the tensor (`b(b−1)/2` columns) must be the one PEFT's rules give for
    /// `in_features`, and the row count `r` (or 1 with `block_share`).
    ///
    /// # Errors
    /// [`LayerError::Shape`] naming both geometries on any mismatch; invalid config; non-finite values.
    pub fn with_weight(config: &OftConfig, in_features: usize, weight: Mat<f32>) -> Result<Self> {
        let (spec, adjusted) = spec_from_config(config, in_features)?;
        let (rows, cols) = spec.param_shape();
        if weight.nrows() != rows || weight.ncols() != cols {
            let inferred = block_size_from_n_elements(weight.ncols())
                .map(|b| format!("block size {b}"))
                .unwrap_or_else(|_| "no block size".into());
            return Err(shape(
                "oft_R.weight",
                format!(
                    "[{rows}, {cols}] (in_features {in_features}, block size {}, block_share {})",
                    spec.block_size(),
                    spec.block_share()
                ),
                format!("[{}, {}] ({inferred})", weight.nrows(), weight.ncols()),
            ));
        }
        Self::from_parts(config, (spec, adjusted), weight)
    }

    fn from_parts(
        config: &OftConfig,
        (spec, adjusted): (RotationSpec, Option<BlockAdjustment>),
        weight: Mat<f32>,
    ) -> Result<Self> {
        let coft = config
            .coft
            .then(|| CoftRadius::peft(config.eps, spec.stored_blocks()));
        let rotation = BlockRotation::identity(&spec);
        let mut a = Self {
            spec,
            coft,
            module_dropout: config.module_dropout,
            divergence: config.oftq.divergence,
            weight: Mat::zeros(0, 0),
            rotation,
            adjusted,
        };
        a.set_weight(weight)?;
        Ok(a)
    }

    /// Replaces the parameters: checks the shape and finiteness, projects onto the COFT ball,
    /// rebuilds the rotation and checks Neumann convergence under the adapter's policy.
    ///
    /// On error the adapter keeps its previous parameters.
    ///
    /// # Errors
    /// [`LayerError::Shape`], [`LayerError::Ortho`] (non-finite, divergence under `Error`).
    pub fn set_weight(&mut self, weight: Mat<f32>) -> Result<()> {
        *self = self.updated(weight)?;
        Ok(())
    }

    /// A new adapter with this one's settings and the parameters `weight`, checked, projected
    /// and built as [`set_weight`](Self::set_weight) does; `self` is untouched. Cheaper than
    /// cloning and then setting: the old rotation is never copied.
    ///
    /// # Errors
    /// As [`set_weight`](Self::set_weight).
    pub fn updated(&self, mut weight: Mat<f32>) -> Result<Self> {
        let (rows, cols) = self.spec.param_shape();
        if weight.nrows() != rows || weight.ncols() != cols {
            return Err(shape(
                "oft_R.weight",
                format!("[{rows}, {cols}]"),
                format!("[{}, {}]", weight.nrows(), weight.ncols()),
            ));
        }
        if let Some(radius) = self.coft {
            project_coft(weight.as_mut(), radius)?;
        }
        let rotation = BlockRotation::build(&self.spec, weight.as_ref())?;
        rotation.check_convergence(self.divergence)?;
        Ok(Self {
            spec: self.spec,
            coft: self.coft,
            module_dropout: self.module_dropout,
            divergence: self.divergence,
            weight,
            rotation,
            adjusted: self.adjusted,
        })
    }

    /// The packed parameters `[stored blocks, b(b−1)/2]` (projected if COFT is on).
    pub fn weight(&self) -> MatRef<'_, f32> {
        self.weight.as_ref()
    }

    /// The geometry and parameterization.
    pub fn spec(&self) -> &RotationSpec {
        &self.spec
    }

    /// The change PEFT's rule made to the configured `oft_block_size` (or `r`) because it did not
    /// divide the layer's `in_features` (PEFT only logs a warning; so does oftq, through `log`).
    pub fn block_adjustment(&self) -> Option<BlockAdjustment> {
        self.adjusted
    }

    /// The COFT ball, if any.
    pub fn coft(&self) -> Option<CoftRadius> {
        self.coft
    }

    /// The rotation built from the current parameters.
    pub fn rotation(&self) -> &BlockRotation<f32> {
        &self.rotation
    }

    /// Module dropout probability.
    pub fn module_dropout(&self) -> f64 {
        self.module_dropout
    }

    /// What building a rotation does when its Cayley–Neumann series is not certified to converge.
    pub fn divergence(&self) -> DivergencePolicy {
        self.divergence
    }

    /// Number of trainable parameters.
    pub fn n_parameters(&self) -> usize {
        self.spec.n_parameters()
    }

    /// A module-dropout mask for one training forward: exactly `⌊p·r⌋` of the `r` positions,
    /// chosen uniformly, become the identity (`false`); `None` when nothing is dropped (`p = 0`, or
    /// block sharing, where the paper's and PEFT's layer leave the single block alone).
    pub fn dropout_mask(&self, rng: &mut StdRng) -> Option<Vec<bool>> {
        dropout_mask(&self.spec, self.module_dropout, rng)
    }
}

/// The module-dropout mask of [`OftAdapter::dropout_mask`] for a rotation of geometry `spec` and
/// dropout probability `p`, for callers that hold the parameters elsewhere (e.g. as a candle `Var`):
/// `⌊p·r⌋` of the `r` block positions, chosen uniformly from `rng`, become the identity (`false`);
/// `None` when nothing is dropped (`⌊p·r⌋ = 0`, or block sharing).
pub fn dropout_mask(spec: &RotationSpec, p: f64, rng: &mut StdRng) -> Option<Vec<bool>> {
    let n = spec.n_blocks();
    let drop = (p * n as f64).floor() as usize;
    if spec.block_share() || drop == 0 {
        return None;
    }
    let mut mask: Vec<bool> = (0..n).map(|i| i >= drop).collect();
    mask.shuffle(rng);
    Some(mask)
}

/// The spec PEFT's rules give for `config` on `in_features` inputs, with the block-size
/// adjustment made (also logged, as PEFT warns).
fn spec_from_config(
    config: &OftConfig,
    in_features: usize,
) -> Result<(RotationSpec, Option<BlockAdjustment>)> {
    let g = config.geometry(in_features)?;
    if let Some(a) = g.adjusted {
        log::warn!("{a}");
    }
    let spec = RotationSpec::builder(in_features, g.block_size)
        .block_share(config.block_share)
        .parameterization(config.parameterization())
        .build()?;
    Ok((spec, g.adjusted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_and_shapes() {
        let c = OftConfig {
            oft_block_size: 4,
            ..OftConfig::default()
        };
        let a = OftAdapter::new(&c, 16, 0).unwrap();
        assert_eq!((a.weight().nrows(), a.weight().ncols()), (4, 6));
        assert!(a.weight().norm_max() == 0.0);
        let b = OftAdapter::new(
            &OftConfig {
                init_weights: false,
                ..c.clone()
            },
            16,
            1,
        )
        .unwrap();
        let std = (b.weight().norm_l2() / (24f32).sqrt()).abs();
        assert!(std > 0.03 && std < 0.3);
        let err = OftAdapter::with_weight(&c, 16, Mat::zeros(4, 10)).unwrap_err();
        assert!(err.to_string().contains("block size 5"), "{err}");
        assert!(a.block_adjustment().is_none());
        let odd = OftAdapter::new(&c, 18, 0).unwrap();
        assert_eq!(odd.spec().block_size(), 3);
        let adj = odd.block_adjustment().unwrap();
        assert_eq!(
            (adj.field, adj.requested, adj.used),
            ("oft_block_size", 4, 3)
        );
    }

    #[test]
    fn coft_projects_and_dropout_counts() {
        let c = OftConfig {
            oft_block_size: 2,
            coft: true,
            eps: 1e-2,
            module_dropout: 0.5,
            ..OftConfig::default()
        };
        let a = OftAdapter::with_weight(&c, 8, Mat::from_fn(4, 1, |i, _| i as f32 + 1.0)).unwrap();
        for i in 0..4 {
            assert!((a.weight()[(i, 0)].abs() * 2f32.sqrt() - 5e-3).abs() < 1e-8);
        }
        let mut rng = StdRng::seed_from_u64(3);
        let mask = a.dropout_mask(&mut rng).unwrap();
        assert_eq!(mask.iter().filter(|k| !**k).count(), 2);
    }
}
