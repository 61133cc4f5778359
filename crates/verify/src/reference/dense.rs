//! The dense block-diagonal rotation `R_bd` and its forward and backward passes, all dense.

use nalgebra::DMatrix;

use super::param::{Param, rotation_block, rotation_block_vjp};
use super::skew::{packed_grad, skew_from_packed};

/// The dense `(r·b) × (r·b)` matrix `diag(B₁, …, B_r)`; a single given block is repeated at every
/// one of the `positions` positions (block sharing), otherwise `blocks.len()` must equal
/// `positions` (`None` if not, or if the blocks are not square of one size).
pub fn block_diag(blocks: &[DMatrix<f64>], positions: usize) -> Option<DMatrix<f64>> {
    let b = blocks.first()?.nrows();
    if !(blocks.len() == 1 || blocks.len() == positions)
        || blocks.iter().any(|m| m.nrows() != b || m.ncols() != b)
    {
        return None;
    }
    let d = b * positions;
    let mut out = DMatrix::<f64>::zeros(d, d);
    for j in 0..positions {
        let m = if blocks.len() == 1 {
            &blocks[0]
        } else {
            &blocks[j]
        };
        out.view_mut((j * b, j * b), (b, b)).copy_from(m);
    }
    Some(out)
}

/// Gradients of [`RefRotation::backward`].
#[derive(Debug, Clone)]
pub struct RefGrad {
    /// `∂L/∂x = ∂L/∂y · R_bdᵀ`, `[tokens, d]`.
    pub input: DMatrix<f64>,
    /// `∂L/∂(packed parameters)`, `[stored blocks, b(b−1)/2]`.
    pub params: DMatrix<f64>,
}

/// A reference block-diagonal rotation: skew blocks, rotation blocks, and the dense `R_bd`.
#[derive(Debug, Clone)]
pub struct RefRotation {
    block_size: usize,
    positions: usize,
    param: Param,
    skews: Vec<DMatrix<f64>>,
    blocks: Vec<DMatrix<f64>>,
    dense: DMatrix<f64>,
}

impl RefRotation {
    /// Builds from packed rows `[stored blocks, b(b−1)/2]` (one row = shared block) for `positions`
    /// diagonal positions. `None` on inconsistent shapes or a failed solve.
    pub fn build(
        packed: &DMatrix<f64>,
        block_size: usize,
        positions: usize,
        param: Param,
    ) -> Option<Self> {
        let skews = (0..packed.nrows())
            .map(|i| {
                let row: Vec<f64> = packed.row(i).iter().copied().collect();
                skew_from_packed(&row, block_size)
            })
            .collect::<Option<Vec<_>>>()?;
        let blocks = skews
            .iter()
            .map(|q| rotation_block(q, param))
            .collect::<Option<Vec<_>>>()?;
        let dense = block_diag(&blocks, positions)?;
        Some(Self {
            block_size,
            positions,
            param,
            skews,
            blocks,
            dense,
        })
    }

    /// The rotation blocks `R(Qᵢ)` of the stored blocks.
    pub fn blocks(&self) -> &[DMatrix<f64>] {
        &self.blocks
    }

    /// The stored skew blocks `Qᵢ`.
    pub fn skews(&self) -> &[DMatrix<f64>] {
        &self.skews
    }

    /// The dense `R_bd`.
    pub fn dense(&self) -> &DMatrix<f64> {
        &self.dense
    }

    /// `y = x · R_bd` by one dense product.
    pub fn forward(&self, x: &DMatrix<f64>) -> DMatrix<f64> {
        x * &self.dense
    }

    /// Backward of `L(y)` with `y = x · R_bd` and `dy = ∂L/∂y`: `∂L/∂x = dy · R_bdᵀ`;
    /// `∂L/∂R_bd = xᵀ·dy`, whose diagonal `b × b` blocks are `∂L/∂R_j` (summed over positions when
    /// shared), pulled back through [`rotation_block_vjp`] and the packing.
    /// `None` on a failed solve.
    pub fn backward(&self, x: &DMatrix<f64>, dy: &DMatrix<f64>) -> Option<RefGrad> {
        let input = dy * self.dense.transpose();
        let full = x.transpose() * dy;
        let b = self.block_size;
        let shared = self.blocks.len() == 1;
        let mut dr = vec![DMatrix::<f64>::zeros(b, b); self.blocks.len()];
        for j in 0..self.positions {
            let blk = full.view((j * b, j * b), (b, b));
            dr[if shared { 0 } else { j }] += blk;
        }
        let n = b * b.saturating_sub(1) / 2;
        let mut params = DMatrix::<f64>::zeros(self.blocks.len(), n);
        for (i, g) in dr.iter().enumerate() {
            let dq = rotation_block_vjp(&self.skews[i], self.param, g)?;
            for (k, v) in packed_grad(&dq).into_iter().enumerate() {
                params[(i, k)] = v;
            }
        }
        Some(RefGrad { input, params })
    }
}
