//! Merging adapters into base weights: dense layers always; AQLM layers in the one exact case.
//!
//! Merged weights satisfy `x·R₁·R₂⋯R_k·Wᵀ = x·W'ᵀ`, i.e. `W' = W·R_kᵀ⋯R₂ᵀ·R₁ᵀ`, so a merged layer
//! computes what the unmerged one did whatever the number of adapters. (PEFT merges adapters one at a
//! time in list order, `W ← W·R_aᵀ`, which for two non-commuting adapters gives `x·R₂·R₁·Wᵀ`.)
//! Unmerging uses the true inverse `R⁻¹`, not `Rᵀ`, since a Cayley–Neumann `R` is not exactly
//! orthogonal (PEFT ≥ 0.18 does the same), and undoes the factors newest first, as PEFT pops
//! `merged_adapters`: after `merge(["b"])` then `merge(["a"])`, `W' = W·R_bᵀ·R_aᵀ` and unmerging
//! multiplies by `R_a⁻ᵀ`, then `R_b⁻ᵀ`.

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, MatRef, Par};

use oftq_aqlm::AqlmLayer;
use oftq_ortho::BlockRotation;

use crate::base::BaseLinear;
use crate::dense::DenseLinear;
use crate::error::{LayerError, Result};
use crate::oft_linear::OftLinear;

/// `W·diag(M_j)ᵀ` for `W [rows, d]`, one `b × b` matrix per block position (`blocks[0]` for all when shared).
fn times_blocks_transposed(w: MatRef<'_, f32>, blocks: &[Mat<f32>], b: usize) -> Mat<f32> {
    let mut out = Mat::<f32>::zeros(w.nrows(), w.ncols());
    for j in 0..w.ncols() / b {
        let m = &blocks[if blocks.len() == 1 { 0 } else { j }];
        matmul(
            out.as_mut().subcols_mut(j * b, b),
            Accum::Replace,
            w.subcols(j * b, b),
            m.transpose(),
            1.0,
            Par::Seq,
        );
        oftq_aqlm::kernels::clear_upper_simd_state();
    }
    out
}

/// The blocks to multiply with: `R_j`, or `R_j⁻¹` (LU inverse) to undo a merge.
fn rotation_blocks(rot: &BlockRotation<f32>, inverse: bool) -> Result<Vec<Mat<f32>>> {
    if !inverse {
        return Ok(rot.blocks().to_vec());
    }
    rot.blocks()
        .iter()
        .map(|r| {
            let inv = r.as_ref().partial_piv_lu().inverse();
            if inv.as_ref().is_all_finite() {
                Ok(inv)
            } else {
                Err(LayerError::NonFinite(
                    "inverse of a rotation block (singular R)".into(),
                ))
            }
        })
        .collect()
}

/// Names to merge: the given ones, or every active adapter not merged yet (PEFT's
/// `check_adapters_to_merge`).
fn to_merge<B: BaseLinear>(layer: &OftLinear<B>, names: Option<&[&str]>) -> Result<Vec<String>> {
    let list: Vec<String> = match names {
        Some(n) => n.iter().map(|s| (*s).to_string()).collect(),
        None => layer
            .active_adapters()
            .iter()
            .filter(|n| !layer.merged_adapters().contains(n))
            .cloned()
            .collect(),
    };
    for n in &list {
        if layer.adapter(n).is_none() {
            return Err(LayerError::Adapter {
                name: n.clone(),
                why: "unknown".into(),
            });
        }
        if layer.merged_adapters().contains(n) {
            return Err(LayerError::Adapter {
                name: n.clone(),
                why: "already merged".into(),
            });
        }
        if list.iter().filter(|m| m == &n).count() > 1 {
            return Err(LayerError::Adapter {
                name: n.clone(),
                why: "named twice in one merge".into(),
            });
        }
    }
    Ok(list)
}

/// Records a merge of `names` (in the order given), whose rotations multiplied the base weight
/// last to first.
fn record_merge<B: BaseLinear>(layer: &mut OftLinear<B>, names: Vec<String>) {
    layer.factors.extend(names.iter().rev().cloned());
    layer.merged.extend(names);
}

impl OftLinear<DenseLinear> {
    /// Folds adapters `[1, …, k]` (default: the active ones not merged yet, in activation order)
    /// into the dense weight: `W' = W·R_kᵀ⋯R₁ᵀ`, so that `x·W'ᵀ = x·R₁⋯R_k·Wᵀ`. A later call
    /// multiplies on the right again: `merge(["b"])` then `merge(["a"])` gives `W·R_bᵀ·R_aᵀ`.
    ///
    /// With `safe_merge`, the result is checked for NaN/∞ before it replaces the weight (PEFT's
    /// `safe_merge`); without, non-finite weights are still refused — never written silently.
    ///
    /// # Errors
    /// Unknown or already merged adapters; [`LayerError::NonFinite`] (the layer is unchanged then).
    pub fn merge(&mut self, adapters: Option<&[&str]>, safe_merge: bool) -> Result<()> {
        let names = to_merge(self, adapters)?;
        let mut w = self.base().weight().to_owned();
        for n in names.iter().rev() {
            let a = self.adapter(n).ok_or_else(|| LayerError::Adapter {
                name: n.clone(),
                why: "unknown".into(),
            })?;
            w = times_blocks_transposed(
                w.as_ref(),
                &rotation_blocks(a.rotation(), false)?,
                a.spec().block_size(),
            );
        }
        if !w.as_ref().is_all_finite() {
            let why = if safe_merge {
                "NaNs detected in the merged weights"
            } else {
                "merged weights"
            };
            return Err(LayerError::NonFinite(format!("{why} (adapters {names:?})")));
        }
        self.base_mut().set_weight(w)?;
        record_merge(self, names);
        Ok(())
    }

    /// Undoes every merge, the factor multiplied last first (as PEFT pops `merged_adapters`):
    /// for `W' = W·R_{f₁}ᵀ⋯R_{f_m}ᵀ`, `W = W'·R_{f_m}⁻ᵀ⋯R_{f₁}⁻ᵀ` with the LU inverse of every block.
    ///
    /// # Errors
    /// [`LayerError::NonFinite`] if a rotation block is singular (the layer is unchanged then).
    pub fn unmerge(&mut self) -> Result<()> {
        let mut w = self.base().weight().to_owned();
        for n in self.factors.iter().rev() {
            let a = self.adapter(n).ok_or_else(|| LayerError::Adapter {
                name: n.clone(),
                why: "unknown".into(),
            })?;
            w = times_blocks_transposed(
                w.as_ref(),
                &rotation_blocks(a.rotation(), true)?,
                a.spec().block_size(),
            );
        }
        self.base_mut().set_weight(w)?;
        self.merged.clear();
        self.factors.clear();
        Ok(())
    }
}

impl OftLinear<AqlmLayer> {
    /// Folds adapters into the AQLM codebooks — possible exactly only when every adapter has one
    /// shared block whose size divides `in_group_size` (and the groups are aligned, which they
    /// are): then every `in_group_size` slice of every row is multiplied by the same `diag(R, …, R)ᵀ`,
    /// and by linearity `W·R_bdᵀ` is the decoding of the codebooks with each entry `E` replaced by
    /// `E·diag(R, …, R)ᵀ` (codes and scales unchanged). The merged codebooks are kept in `f32`.
    ///
    /// In every other case the rotation differs between input groups that share codebook entries,
    /// so no AQLM layer with the same codes represents `W·R_bdᵀ`: a typed error, as PEFT's
    /// "Merging/unmerging is not available" for AQLM.
    ///
    /// # Errors
    /// [`LayerError::Merge`] when not exact; unknown adapters; non-finite results.
    pub fn merge(&mut self, adapters: Option<&[&str]>) -> Result<()> {
        let names = to_merge(self, adapters)?;
        let ig = self.base().scheme().in_group_size;
        let mut layer = self.base().clone();
        for n in names.iter().rev() {
            let a = self.adapter(n).ok_or_else(|| LayerError::Adapter {
                name: n.clone(),
                why: "unknown".into(),
            })?;
            let b = a.spec().block_size();
            if !a.spec().block_share() || !ig.is_multiple_of(b) {
                return Err(LayerError::Merge(format!(
                    "adapter {n:?} (block size {b}, block_share {}) cannot be folded into AQLM codebooks exactly: \
                     only a shared block whose size divides in_group_size {ig} can; keep the adapter unmerged",
                    a.spec().block_share()
                )));
            }
            layer = rotate_codebooks(&layer, &rotation_blocks(a.rotation(), false)?, b)?;
        }
        *self.base_mut() = layer;
        record_merge(self, names);
        Ok(())
    }
}

/// Multiplies every codebook entry (`og × ig` tile, rows of length `ig`) by `diag(R, …, R)ᵀ`.
fn rotate_codebooks(layer: &AqlmLayer, blocks: &[Mat<f32>], b: usize) -> Result<AqlmLayer> {
    let s = layer.scheme();
    let ig = s.in_group_size;
    let rows = layer.codebooks().len() / ig;
    let cb = MatRef::from_row_major_slice(layer.codebooks(), rows, ig);
    let rotated = times_blocks_transposed(cb, blocks, b);
    if !rotated.as_ref().is_all_finite() {
        return Err(LayerError::NonFinite("merged codebooks".into()));
    }
    let flat: Vec<f32> = (0..rows)
        .flat_map(|r| (0..ig).map(move |c| (r, c)))
        .map(|(r, c)| rotated[(r, c)])
        .collect();
    let mut storage = layer.storage();
    storage.codebooks = oftq_aqlm::FloatDtype::F32;
    Ok(AqlmLayer::new(
        layer.in_features(),
        layer.out_features(),
        s,
        layer.codes().to_vec(),
        flat,
        layer.scales().to_vec(),
        layer.bias().map(<[f32]>::to_vec),
    )?
    .with_storage(storage)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OftConfig;
    use crate::oft_linear::{AqlmOftLinear, DenseOftLinear};

    fn config(b: usize, share: bool, exact: bool) -> OftConfig {
        OftConfig {
            oft_block_size: b,
            block_share: share,
            init_weights: false,
            use_cayley_neumann: !exact,
            ..OftConfig::default()
        }
    }

    #[test]
    fn dense_merge_unmerge_round_trip() {
        let w = Mat::<f32>::from_fn(6, 8, |i, j| ((i * 8 + j) as f32 * 0.37).sin());
        let base = DenseLinear::linear(w.clone(), Some(vec![0.1; 6])).unwrap();
        let mut layer = DenseOftLinear::with_adapter(base, "a", &config(4, false, false)).unwrap();
        layer.add_adapter("b", &config(2, false, true)).unwrap();
        let x = Mat::<f32>::from_fn(3, 8, |t, f| (t as f32 - f as f32) / 8.0);
        let before = layer.forward(x.as_ref()).unwrap();
        layer.merge(None, true).unwrap();
        assert_eq!(layer.merged_adapters(), ["a", "b"]);
        let merged = layer.forward(x.as_ref()).unwrap();
        assert!((&merged - &before).norm_max() < 1e-5);
        layer.unmerge().unwrap();
        assert!((layer.base().weight().to_owned() - &w).norm_max() < 1e-5);
        assert!((layer.forward(x.as_ref()).unwrap() - &before).norm_max() < 1e-5);
    }

    /// Two merge calls, then one unmerge: the factors are undone newest first (issue #19).
    #[test]
    fn dense_unmerge_after_two_merges_restores_the_weight() {
        let w = Mat::<f32>::from_fn(6, 8, |i, j| ((i * 8 + j) as f32 * 0.37).sin());
        let base = DenseLinear::linear(w.clone(), None).unwrap();
        let mut layer = DenseOftLinear::with_adapter(base, "a", &config(8, false, true)).unwrap();
        layer.add_adapter("b", &config(8, false, true)).unwrap();
        layer.merge(Some(&["b"]), true).unwrap();
        layer.merge(Some(&["a"]), true).unwrap();
        assert_eq!(layer.merged_adapters(), ["b", "a"]);
        assert!(layer.merge(Some(&["a"]), true).is_err());
        layer.unmerge().unwrap();
        assert!((layer.base().weight().to_owned() - &w).norm_max() < 1e-5);
        assert!(layer.merged_adapters().is_empty());
        // `None` merges only what is not merged yet.
        layer.merge(Some(&["a"]), true).unwrap();
        layer.merge(None, true).unwrap();
        assert_eq!(layer.merged_adapters(), ["a", "b"]);
        layer.unmerge().unwrap();
        assert!((layer.base().weight().to_owned() - &w).norm_max() < 1e-5);
    }

    fn aqlm(in_f: usize, out_f: usize) -> AqlmLayer {
        let scheme = oftq_aqlm::AqlmScheme::builder(2, 4)
            .out_group_size(2)
            .build()
            .unwrap();
        let codes: Vec<u16> = (0..(out_f / 2) * (in_f / 8) * 2)
            .map(|i| (i * 7 % 16) as u16)
            .collect();
        let cb: Vec<f32> = (0..2 * 16 * 2 * 8)
            .map(|i| ((i * 13 % 31) as f32 - 15.0) / 16.0)
            .collect();
        AqlmLayer::new(
            in_f,
            out_f,
            scheme,
            codes,
            cb,
            (0..out_f / 2).map(|o| 0.5 + o as f32 / 8.0).collect(),
            None,
        )
        .unwrap()
    }

    /// The exact AQLM merge: decode(merged codebooks) = W·R_bdᵀ and outputs agree.
    #[test]
    fn aqlm_shared_block_merge_is_exact() {
        for b in [8, 4, 2] {
            let mut layer =
                AqlmOftLinear::with_adapter(aqlm(32, 6), "s", &config(b, true, true)).unwrap();
            let x = Mat::<f32>::from_fn(4, 32, |t, f| ((t * 32 + f) as f32 * 0.11).cos());
            let before = layer.forward(x.as_ref()).unwrap();
            let want = layer
                .adapter("s")
                .unwrap()
                .rotation()
                .forward_transposed(layer.base().decode().as_ref())
                .unwrap();
            layer.merge(None).unwrap();
            assert!((layer.base().decode() - &want).norm_max() < 1e-5, "b = {b}");
            assert!((layer.forward(x.as_ref()).unwrap() - &before).norm_max() < 1e-4);
        }
    }

    #[test]
    fn aqlm_merge_refused_otherwise() {
        let mut layer =
            AqlmOftLinear::with_adapter(aqlm(32, 6), "u", &config(8, false, true)).unwrap();
        assert!(matches!(layer.merge(None), Err(LayerError::Merge(_))));
        let mut layer =
            AqlmOftLinear::with_adapter(aqlm(32, 6), "big", &config(16, true, true)).unwrap();
        assert!(matches!(layer.merge(None), Err(LayerError::Merge(_))));
        assert!(layer.merged_adapters().is_empty());
    }
}
