//! [`OftConfig`]: PEFT's `OFTConfig`, with its field names, defaults and validation.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use oftq_ortho::{CayleyConvention, DivergencePolicy, NeumannFlavor, Parameterization};

use crate::error::{LayerError, Result};

/// Which modules an adapter targets: a list (exact names or `.`-suffixes) or one regular
/// expression that must match the whole name, as in PEFT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// `re.fullmatch(pattern, name)`.
    Regex(String),
    /// `name == t or name.endswith("." + t)` for some `t`.
    List(Vec<String>),
}

impl TargetModules {
    /// Whether module `name` matches.
    ///
    /// # Errors
    /// [`LayerError::Config`] for an invalid regular expression.
    pub fn matches(&self, name: &str) -> Result<bool> {
        Ok(match self {
            Self::Regex(p) => regex::Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| LayerError::Config(format!("target_modules regex {p:?}: {e}")))?
                .is_match(name),
            Self::List(list) => list
                .iter()
                .any(|t| name == t || name.ends_with(&format!(".{t}"))),
        })
    }
}

impl std::fmt::Display for TargetModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Regex(p) => write!(f, "{p:?}"),
            Self::List(l) => write!(f, "{l:?}"),
        }
    }
}

/// PEFT's `bias` option: which biases become trainable and are saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bias {
    /// No bias is trained (the default).
    #[default]
    None,
    /// Every bias.
    All,
    /// Biases of the OFT-wrapped layers only.
    OftOnly,
}

/// Options of oftq that PEFT does not have. Not written to `adapter_config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OftqOptions {
    /// Sign convention of the exact Cayley transform (PEFT's by default).
    pub cayley_convention: CayleyConvention,
    /// Truncation rule of the Cayley–Neumann series (PEFT's by default).
    pub neumann_flavor: NeumannFlavor,
    /// What to do when the Neumann series is not certified to converge.
    pub divergence: DivergencePolicy,
}

/// PEFT's `OFTConfig` (0.16 → 0.21.2 field names and defaults).
///
/// Defaults: `r = 0`, `oft_block_size = 32`, `module_dropout = 0`, `init_weights = true`,
/// `coft = false`, `eps = 6e-5`, `block_share = false`, `fan_in_fan_out = false`,
/// `use_cayley_neumann = true`, `num_cayley_neumann_terms = 5`, `bias = "none"`.
///
/// ```
/// use oftq_layer::OftConfig;
/// let c = OftConfig::default();
/// assert_eq!((c.r, c.oft_block_size, c.num_cayley_neumann_terms), (0, 32, 5));
/// assert!(c.validate().is_ok());
/// assert!(OftConfig { r: 8, ..OftConfig::default() }.validate().is_err()); // both set, as in PEFT
/// assert_eq!(OftConfig::default().resolve(100).unwrap(), (4, 25)); // 32 does not divide 100
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OftConfig {
    /// Number of blocks per layer (not a LoRA rank); exclusive with `oft_block_size`.
    pub r: usize,
    /// Block size `b`; exclusive with `r`.
    pub oft_block_size: usize,
    /// Fraction of blocks replaced by the identity in training (paper semantics; PEFT ≥ 0.16
    /// builds this layer but never applies it — oftq applies it, see the docs).
    pub module_dropout: f64,
    /// Modules to wrap.
    pub target_modules: Option<TargetModules>,
    /// Modules never to wrap.
    pub exclude_modules: Option<TargetModules>,
    /// Whether dense weights are stored `[in, out]`.
    pub fan_in_fan_out: bool,
    /// Which biases are trained and saved.
    pub bias: Bias,
    /// `true`: `Q = 0` (`R = I`); `false`: `N(0, 0.1)` entries.
    pub init_weights: bool,
    /// Constrained OFT: project `Q` onto a Frobenius ball.
    pub coft: bool,
    /// COFT radius, `eps/√(stored blocks)` per block.
    pub eps: f64,
    /// One block shared by all positions.
    pub block_share: bool,
    /// Cayley–Neumann series instead of the exact Cayley transform.
    pub use_cayley_neumann: bool,
    /// Terms of the Cayley–Neumann series (PEFT does not validate it: `≤ 1` means `R = I`).
    pub num_cayley_neumann_terms: i64,
    /// PEFT's `layers_to_transform` (kept, not interpreted).
    pub layers_to_transform: Option<Value>,
    /// PEFT's `layers_pattern` (kept, not interpreted).
    pub layers_pattern: Option<Value>,
    /// PEFT's `modules_to_save` (kept, not interpreted).
    pub modules_to_save: Option<Value>,
    /// Always `"OFT"`.
    pub peft_type: String,
    /// PEFT's task type (kept).
    pub task_type: Option<String>,
    /// PEFT's base model name (kept).
    pub base_model_name_or_path: Option<String>,
    /// PEFT's revision (kept).
    pub revision: Option<String>,
    /// Written as `true` on save, as PEFT does.
    pub inference_mode: bool,
    /// PEFT's auto mapping (kept).
    pub auto_mapping: Option<Value>,
    /// The PEFT version that wrote the file (`None` before 0.18).
    pub peft_version: Option<String>,
    /// oftq-only options (not serialized).
    #[serde(skip)]
    pub oftq: OftqOptions,
}

impl Default for OftConfig {
    fn default() -> Self {
        Self {
            r: 0,
            oft_block_size: 32,
            module_dropout: 0.0,
            target_modules: None,
            exclude_modules: None,
            fan_in_fan_out: false,
            bias: Bias::None,
            init_weights: true,
            coft: false,
            eps: 6e-5,
            block_share: false,
            use_cayley_neumann: true,
            num_cayley_neumann_terms: 5,
            layers_to_transform: None,
            layers_pattern: None,
            modules_to_save: None,
            peft_type: "OFT".into(),
            task_type: None,
            base_model_name_or_path: None,
            revision: None,
            inference_mode: false,
            auto_mapping: None,
            peft_version: None,
            oftq: OftqOptions::default(),
        }
    }
}

/// How an adapter's blocks fit a layer: [`OftConfig::geometry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockGeometry {
    /// Blocks per layer, `in_features / block_size`.
    pub r: usize,
    /// Block size `b`.
    pub block_size: usize,
    /// The change PEFT's rule made to the configured value, if it did not divide `in_features`.
    pub adjusted: Option<BlockAdjustment>,
}

/// A configured `oft_block_size` (or `r`) replaced by the nearest divisor of `in_features`, as
/// PEFT's `update_layer` does (it only warns). `Display` is PEFT's warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockAdjustment {
    /// `"oft_block_size"` or `"r"`: the field that was set.
    pub field: &'static str,
    /// The configured value.
    pub requested: usize,
    /// The value used.
    pub used: usize,
}

impl std::fmt::Display for BlockAdjustment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Invalid `{0}` ({1})! Adjusted `{0}` to ({2}).",
            self.field, self.requested, self.used
        )
    }
}

/// PEFT's `adjust`: the divisor of `n` nearest to `p` (ties go down); `n` itself if `p ≥ n`.
///
/// ```
/// use oftq_layer::config::nearest_divisor;
/// assert_eq!((nearest_divisor(10, 3), nearest_divisor(12, 5), nearest_divisor(7, 4)), (2, 4, 1));
/// ```
pub fn nearest_divisor(n: usize, p: usize) -> usize {
    if p >= n {
        return n;
    }
    let mut hi = p.max(1);
    while hi <= n && !n.is_multiple_of(hi) {
        hi += 1;
    }
    let mut lo = p.max(1);
    while lo > 1 && !n.is_multiple_of(lo) {
        lo -= 1;
    }
    if p - lo <= hi - p { lo } else { hi }
}

impl OftConfig {
    /// PEFT's `__post_init__` checks.
    ///
    /// # Errors
    /// [`LayerError::Config`] with PEFT's message when both or neither of `r` and
    /// `oft_block_size` are set, when `layers_pattern` is set without `layers_to_transform`, or for
    /// a negative/non-finite `eps` or a `module_dropout` outside `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(LayerError::Config(m));
        if self.r == 0 && self.oft_block_size == 0 {
            return err("Either `r` or `oft_block_size` must be non-zero. Currently, r = 0 and oft_block_size = 0.".into());
        }
        if (self.r != 0) == (self.oft_block_size != 0) {
            return err(format!(
                "You can only specify either r ({}) or oft_block_size ({}), but not both simultaneously, because r x oft_block_size == in_features.",
                self.r, self.oft_block_size
            ));
        }
        if self.layers_pattern.as_ref().is_some_and(|v| !v.is_null())
            && self.layers_to_transform.as_ref().is_none_or(Value::is_null)
        {
            return err(
                "When `layers_pattern` is specified, `layers_to_transform` must also be specified."
                    .into(),
            );
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return err(format!("eps must be finite and >= 0, got {}", self.eps));
        }
        if !(self.module_dropout >= 0.0 && self.module_dropout < 1.0) {
            return err(format!(
                "module_dropout must be in [0, 1), got {}",
                self.module_dropout
            ));
        }
        if self.use_cayley_neumann {
            self.parameterization().validate()?;
        }
        if self.peft_type != "OFT" {
            return err(format!(
                "peft_type must be \"OFT\", got {:?}",
                self.peft_type
            ));
        }
        Ok(())
    }

    /// Resolves `(r, b)` for a layer with `in_features` inputs as PEFT's `update_layer` does:
    /// a block size (or `r`) that does not divide `in_features` is replaced by the nearest divisor
    /// (ties down) with a warning through the `log` facade. [`geometry`](Self::geometry) also
    /// returns the adjustment, for callers without a logger.
    ///
    /// # Errors
    /// Those of [`validate`](Self::validate); `in_features == 0`.
    pub fn resolve(&self, in_features: usize) -> Result<(usize, usize)> {
        let g = self.geometry(in_features)?;
        if let Some(a) = g.adjusted {
            log::warn!("{a}");
        }
        Ok((g.r, g.block_size))
    }

    /// [`resolve`](Self::resolve) without logging: the blocks per layer, the block size, and
    /// the adjustment PEFT's rule made, if any.
    ///
    /// ```
    /// use oftq_layer::OftConfig;
    /// use oftq_layer::config::BlockAdjustment;
    /// let g = OftConfig { oft_block_size: 32, ..OftConfig::default() }.geometry(100)?;
    /// assert_eq!((g.r, g.block_size), (4, 25));
    /// let a = g.adjusted.unwrap();
    /// assert_eq!(a, BlockAdjustment { field: "oft_block_size", requested: 32, used: 25 });
    /// assert_eq!(a.to_string(), "Invalid `oft_block_size` (32)! Adjusted `oft_block_size` to (25).");
    /// assert!(OftConfig::default().geometry(64)?.adjusted.is_none());
    /// # Ok::<(), oftq_layer::LayerError>(())
    /// ```
    ///
    /// # Errors
    /// Those of [`validate`](Self::validate); `in_features == 0`.
    pub fn geometry(&self, in_features: usize) -> Result<BlockGeometry> {
        self.validate()?;
        if in_features == 0 {
            return Err(LayerError::Config("in_features must be >= 1".into()));
        }
        let (field, requested) = if self.r == 0 {
            ("oft_block_size", self.oft_block_size)
        } else {
            ("r", self.r)
        };
        let used = if !in_features.is_multiple_of(requested) || requested > in_features {
            nearest_divisor(in_features, requested)
        } else {
            requested
        };
        let adjusted = (used != requested).then_some(BlockAdjustment {
            field,
            requested,
            used,
        });
        let (r, block_size) = if self.r == 0 {
            (in_features / used, used)
        } else {
            (used, in_features / used)
        };
        Ok(BlockGeometry {
            r,
            block_size,
            adjusted,
        })
    }

    /// The rotation parameterization these options select (PEFT's unless [`OftqOptions`] say otherwise).
    pub fn parameterization(&self) -> Parameterization {
        if self.use_cayley_neumann {
            Parameterization::Neumann {
                terms: usize::try_from(self.num_cayley_neumann_terms.max(0)).unwrap_or(0),
                flavor: self.oftq.neumann_flavor,
            }
        } else {
            Parameterization::Exact(self.oftq.cayley_convention)
        }
    }

    /// Whether the file was written by a PEFT older than 0.18, whose Cayley–Neumann polynomial
    /// differs (last coefficient 2 instead of 1).
    pub fn is_pre_018_neumann(&self) -> bool {
        if !self.use_cayley_neumann {
            return false;
        }
        let Some(v) = &self.peft_version else {
            return true;
        };
        let core = v.split('@').next().unwrap_or("");
        let mut parts = core.split('.').map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        });
        let major: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (major, minor) < (0, 18)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_adjustment_table() {
        // peft-oft.md §2, verified examples.
        let bs = |b| OftConfig {
            oft_block_size: b,
            ..OftConfig::default()
        };
        let r = |r| OftConfig {
            r,
            oft_block_size: 0,
            ..OftConfig::default()
        };
        assert_eq!(bs(3).resolve(10).unwrap(), (5, 2));
        assert_eq!(bs(32).resolve(12).unwrap(), (1, 12));
        assert_eq!(r(3).resolve(10).unwrap(), (2, 5));
        assert_eq!(r(5).resolve(12).unwrap(), (4, 3));
        assert_eq!(bs(5).resolve(12).unwrap(), (3, 4));
        assert_eq!(bs(4).resolve(7).unwrap(), (7, 1));
    }

    #[test]
    fn validation_messages() {
        let e = OftConfig {
            oft_block_size: 0,
            ..OftConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("Either `r` or `oft_block_size` must be non-zero")
        );
        let e = OftConfig {
            r: 8,
            ..OftConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("not both simultaneously"));
        assert!(
            OftConfig {
                eps: f64::NAN,
                ..OftConfig::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            OftConfig {
                module_dropout: 1.0,
                ..OftConfig::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn targets_and_versions() {
        let list = TargetModules::List(vec!["q_proj".into()]);
        assert!(list.matches("model.layers.0.self_attn.q_proj").unwrap());
        assert!(!list.matches("model.layers.0.self_attn.xq_proj").unwrap());
        let re = TargetModules::Regex(r".*\.(q|v)_proj".into());
        assert!(re.matches("a.v_proj").unwrap() && !re.matches("a.v_proj.x").unwrap());
        assert!(TargetModules::Regex("(".into()).matches("a").is_err());
        let v = |s: &str| OftConfig {
            peft_version: Some(s.into()),
            ..OftConfig::default()
        };
        assert!(v("0.17.1").is_pre_018_neumann() && !v("0.18.0").is_pre_018_neumann());
        assert!(
            !v("0.21.2.dev0@abc").is_pre_018_neumann() && OftConfig::default().is_pre_018_neumann()
        );
    }
}
