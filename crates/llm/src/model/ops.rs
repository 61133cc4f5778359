//! The decoder's elementwise ops as candle custom ops with backward passes (candle-nn's fast
//! versions of RMSNorm, RoPE and softmax record no backward, so training through them needs
//! these): each forward is one pass over contiguous `f32` rows, parallel over rows.

use oftq_candle::candle_core::{
    CpuStorage, CustomOp1, CustomOp2, D, Layout, Result, Shape, Tensor, bail,
};
use rayon::prelude::*;

use super::vector_math::{softmax_in_place, swiglu_backward, swiglu_forward};
use std::sync::Arc;

/// Rows per rayon task (enough work per task to amortise the scheduling).
fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

/// The contiguous `f32` elements of a storage under `layout` (what every op here reads).
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    oftq_candle::storage_slice(s, l, what)
}

/// RMSNorm over the last dimension: `y = x / √(mean(x²) + ε) ⊙ w` (the weight frozen: no
/// gradient for it), in `f32` as transformers' Llama computes it for `f32` weights.
struct RmsNorm {
    eps: f32,
}

fn rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "oftq-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "rms_norm input")?;
        let w = slice(s2, l2, "rms_norm weight")?;
        let n = w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(n * rows_per_task(n))
            .zip(x.par_chunks(n * rows_per_task(n)))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(n).zip(xc.chunks(n)) {
                    let r = rms(xr, self.eps);
                    for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(w) {
                        *yv = xv * r * wv;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// `dx = r·(g⊙w) − x·r³·mean((g⊙w)⊙x)` per row, `r = 1/√(mean(x²)+ε)`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, g) = (x.contiguous()?, grad.contiguous()?);
        let n = w.dim(0)?;
        let w = w.to_vec1::<f32>()?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let gv = g.flatten_all()?.to_vec1::<f32>()?;
        let mut dx = vec![0f32; xv.len()];
        let eps = self.eps;
        dx.par_chunks_mut(n * rows_per_task(n))
            .zip(xv.par_chunks(n * rows_per_task(n)))
            .zip(gv.par_chunks(n * rows_per_task(n)))
            .for_each(|((dc, xc), gc)| {
                for ((dr, xr), gr) in dc.chunks_mut(n).zip(xc.chunks(n)).zip(gc.chunks(n)) {
                    let r = rms(xr, eps);
                    let dot = xr
                        .iter()
                        .zip(gr)
                        .zip(&w)
                        .map(|((a, b), c)| a * b * c)
                        .sum::<f32>()
                        / n as f32;
                    for (((d, xv), gv), wv) in dr.iter_mut().zip(xr).zip(gr).zip(&w) {
                        *d = r * gv * wv - xv * r * r * r * dot;
                    }
                }
            });
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), None))
    }
}

/// `x / √(mean(x²) + ε) ⊙ weight` over the last dimension of an `f32` tensor (Llama's RMSNorm),
/// differentiable in `x`.
///
/// # Errors
/// A weight that is not `[last dim]`, non-`f32` inputs.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if weight.dims() != [x.dim(D::Minus1)?] {
        bail!(
            "rms_norm: weight {:?} does not fit input {:?}",
            weight.dims(),
            x.dims()
        );
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

/// Rotary position embedding tables for positions `0..len`: `cos`, `sin` of `p·θ^(−2i/d)`,
/// `[len, d/2]` each, computed in `f64` then rounded.
#[derive(Debug, Clone)]
pub struct RopeTables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl RopeTables {
    /// Tables for `len` positions of heads of width `head_dim` and base `theta`.
    pub fn new(head_dim: usize, theta: f64, len: usize) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for p in 0..len {
            for i in 0..half {
                let inv = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
                let a = p as f64 * inv;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Self { cos, sin, half }
    }

    /// Rotates one head vector `x` (width `d`) at position `pos` into `y`: by the angle with
    /// `sign = 1`, by the opposite angle (the transpose) with `sign = -1`.
    pub(crate) fn rotate(&self, x: &[f32], y: &mut [f32], pos: usize, sign: f32) {
        let half = self.half;
        let (c, s) = (
            &self.cos[pos * half..(pos + 1) * half],
            &self.sin[pos * half..(pos + 1) * half],
        );
        for i in 0..half {
            let (a, b) = (x[i], x[i + half]);
            let si = sign * s[i];
            y[i] = a * c[i] - b * si;
            y[i + half] = b * c[i] + a * si;
        }
    }

    /// Positions covered.
    pub fn len(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Whether no position is covered.
    pub fn is_empty(&self) -> bool {
        self.cos.is_empty()
    }
}

/// RoPE in Hugging Face's half-split layout on `[b, heads, t, d]`, positions `start..start+t`:
/// `(x₁, x₂) ↦ (x₁·cos − x₂·sin, x₂·cos + x₁·sin)` per head. Its backward is the rotation by
/// the opposite angle.
struct Rope {
    tables: Arc<RopeTables>,
    start: usize,
    inverse: bool,
}

impl Rope {
    fn apply(&self, x: &[f32], t: usize, d: usize) -> Vec<f32> {
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(t * d)
            .zip(x.par_chunks(t * d))
            .for_each(|(yh, xh)| {
                for p in 0..t {
                    let (xr, yr) = (&xh[p * d..(p + 1) * d], &mut yh[p * d..(p + 1) * d]);
                    self.tables.rotate(xr, yr, self.start + p, sign);
                }
            });
        y
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "oftq-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "rope input")?;
        let (_, _, t, d) = l.shape().dims4()?;
        if self.start + t > self.tables.len() || d != 2 * self.tables.half {
            bail!(
                "rope: positions {}..{} with head width {d}, tables cover {} positions of width {}",
                self.start,
                self.start + t,
                self.tables.len(),
                2 * self.tables.half
            );
        }
        Ok((CpuStorage::F32(self.apply(x, t, d)), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Rope {
            tables: self.tables.clone(),
            start: self.start,
            inverse: !self.inverse,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

/// RoPE (Hugging Face's half-split layout) applied to `x [b, heads, t, d]` at positions
/// `start..start+t`, differentiable.
///
/// # Errors
/// Positions beyond the tables, a head width other than theirs.
pub fn rope(x: &Tensor, tables: &Arc<RopeTables>, start: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Rope {
        tables: tables.clone(),
        start,
        inverse: false,
    })
}

/// Softmax over the last dimension with an optional causal mask (see [`Causal`]).
/// Differentiable: `dx = y ⊙ (g − Σ g⊙y)`.
struct Softmax {
    causal: Option<Causal>,
}

/// A causal mask for [`softmax`]: the rows of each matrix (last two dimensions) are queries at
/// positions `offset + (row mod period)`; a query at position `p` sees columns `0..=p` only (the
/// others get probability 0). `period` lets several query heads sharing one key/value head be
/// stacked as one matrix (grouped-query attention).
#[derive(Debug, Clone, Copy)]
pub struct Causal {
    /// Position of the first query (the length of the KV cache before it).
    pub offset: usize,
    /// Queries per head (the rows repeat their positions with this period).
    pub period: usize,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "oftq-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "softmax input")?;
        let dims = l.dims();
        let n = *dims.last().unwrap_or(&1);
        let rows_per_matrix = if dims.len() >= 2 {
            dims[dims.len() - 2]
        } else {
            1
        };
        let mut y = vec![0f32; x.len()];
        let per = rows_per_task(n);
        y.par_chunks_mut(n * per)
            .zip(x.par_chunks(n * per))
            .enumerate()
            .for_each(|(c, (yc, xc))| {
                for (k, (yr, xr)) in yc.chunks_mut(n).zip(xc.chunks(n)).enumerate() {
                    let row = (c * per + k) % rows_per_matrix.max(1);
                    let visible = match self.causal {
                        Some(m) => (row % m.period.max(1) + m.offset + 1).min(n),
                        None => n,
                    };
                    let yr = &mut yr[..visible];
                    yr.copy_from_slice(&xr[..visible]);
                    softmax_in_place(yr);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * grad.broadcast_sub(&dot)?)?))
    }
}

/// Softmax over the last dimension of an `f32` tensor, causal under `causal` (see [`Causal`]),
/// differentiable.
///
/// # Errors
/// A non-`f32` input.
pub fn softmax(x: &Tensor, causal: Option<Causal>) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax { causal })
}

/// SwiGLU, `silu(g) ⊙ u` with `silu(g) = g·σ(g)`, as one op: the graph keeps `g` and `u` (the
/// projections' outputs) and not `silu(g)`. Backward: `du = dy ⊙ silu(g)`,
/// `dg = dy ⊙ u ⊙ σ(g)·(1 + g·(1 − σ(g)))`.
struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "oftq-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (slice(s1, l1, "swiglu gate")?, slice(s2, l2, "swiglu up")?);
        if l1.dims() != l2.dims() {
            bail!("swiglu: gate {:?} and up {:?} differ", l1.dims(), l2.dims());
        }
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(16_384)
            .zip(g.par_chunks(16_384).zip(u.par_chunks(16_384)))
            .for_each(|(yc, (gc, uc))| {
                swiglu_forward(yc, gc, uc);
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let vec = |x: &Tensor| x.contiguous()?.flatten_all()?.to_vec1::<f32>();
        let (gv, uv, dy) = (vec(g)?, vec(u)?, vec(grad)?);
        let (mut dg, mut du) = (vec![0f32; gv.len()], vec![0f32; gv.len()]);
        dg.par_chunks_mut(16_384)
            .zip(du.par_chunks_mut(16_384))
            .enumerate()
            .for_each(|(c, (dgc, duc))| {
                let r = c * 16_384..c * 16_384 + dgc.len();
                swiglu_backward(dgc, duc, &gv[r.clone()], &uv[r.clone()], &dy[r]);
            });
        let t = |x: Vec<f32>| Tensor::from_vec(x, g.shape(), g.device());
        Ok((Some(t(dg)?), Some(t(du)?)))
    }
}

/// `silu(g) ⊙ u` (Llama's MLP activation) for `f32` tensors of one shape, differentiable in both.
///
/// # Errors
/// Different shapes, non-`f32` inputs.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu)
}

#[cfg(test)]
mod tests {
    use oftq_candle::candle_core::{Device, Var};

    use super::*;
    use crate::tiny::max_abs_diff;

    fn t(v: Vec<f32>, s: &[usize]) -> Tensor {
        Tensor::from_vec(v, s, &Device::Cpu).unwrap()
    }

    fn seq(n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * a).sin()).collect()
    }

    /// `Σ w ⊙ f(x)` for the directional-derivative checks.
    fn check_grad(f: impl Fn(&Tensor) -> Tensor, shape: &[usize]) {
        let n: usize = shape.iter().product();
        let x = Var::from_tensor(&t(seq(n, 0.7), shape)).unwrap();
        let w = t(seq(n, 1.3), shape);
        let loss = |x: &Tensor| {
            f(x).mul(&w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let g = f(x.as_tensor())
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = g.get(x.as_tensor()).unwrap();
        let v = t(seq(n, 2.1), shape);
        let analytic = g
            .mul(&v)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let h = 1e-2;
        let xp = (x.as_tensor() + (&v * h).unwrap()).unwrap();
        let xm = (x.as_tensor() - (&v * h).unwrap()).unwrap();
        let numeric = (loss(&xp) - loss(&xm)) / (2.0 * h as f32);
        assert!(
            (analytic - numeric).abs() < 2e-3 * analytic.abs().max(1.0),
            "{analytic} vs {numeric}"
        );
    }

    #[test]
    fn rms_norm_matches_formula_and_gradient() {
        let x = t(seq(12, 0.7), &[3, 4]);
        let w = t(vec![1.0, 2.0, 0.5, -1.0], &[4]);
        let y = rms_norm(&x, &w, 1e-5).unwrap();
        let reference = candle_nn_rms(&x, &w);
        let d = max_abs_diff(&y, &reference).unwrap();
        assert!(d < 1e-6);
        check_grad(|x| rms_norm(x, &w, 1e-5).unwrap(), &[3, 4]);
    }

    fn candle_nn_rms(x: &Tensor, w: &Tensor) -> Tensor {
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        x.broadcast_div(&(ms + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(w)
            .unwrap()
    }

    #[test]
    fn rope_rotates_pairs_and_inverts() {
        let tables = Arc::new(RopeTables::new(4, 100.0, 8));
        let x = t(seq(2 * 3 * 4, 0.3), &[1, 2, 3, 4]);
        let y = rope(&x, &tables, 2).unwrap();
        // Position 2 of head 0: angle 2·θ^0 for the first pair.
        let (xv, yv) = (
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let (c, s) = (2f32.cos(), 2f32.sin());
        assert!((yv[0] - (xv[0] * c - xv[2] * s)).abs() < 1e-6);
        assert!((yv[2] - (xv[2] * c + xv[0] * s)).abs() < 1e-6);
        check_grad(|x| rope(x, &tables, 1).unwrap(), &[1, 2, 3, 4]);
        assert!(rope(&x, &tables, 6).is_err());
    }

    #[test]
    fn swiglu_matches_silu_times_up_and_gradient() {
        let g = t(seq(12, 0.9), &[3, 4]);
        let u = t(seq(12, 1.7), &[3, 4]);
        let y = swiglu(&g, &u).unwrap();
        let reference = (g.silu().unwrap() * &u).unwrap();
        let d = max_abs_diff(&y, &reference).unwrap();
        assert!(d < 1e-6);
        check_grad(|x| swiglu(x, &u).unwrap(), &[3, 4]);
        check_grad(|x| swiglu(&g, x).unwrap(), &[3, 4]);
    }

    #[test]
    fn causal_softmax_and_gradient() {
        let x = t(seq(2 * 3 * 3, 0.9), &[2, 3, 3]);
        let c = |offset| Some(Causal { offset, period: 3 });
        let y = softmax(&x, c(0)).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(y[0][0][1], 0.0);
        assert_eq!(y[1][1][2], 0.0);
        assert!((y[0][2].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((y[0][0][0] - 1.0).abs() < 1e-6);
        let full = softmax(&x, None).unwrap();
        let reference = oftq_candle::candle_nn::ops::softmax_last_dim(&x).unwrap();
        let d = max_abs_diff(&full, &reference).unwrap();
        assert!(d < 1e-6);
        check_grad(|x| softmax(x, c(1)).unwrap(), &[2, 3, 3]);
        // Two heads of 2 queries stacked: rows 0,1 then 0,1 again.
        let y = softmax(
            &t(seq(4 * 2, 0.4), &[4, 2]),
            Some(Causal {
                offset: 0,
                period: 2,
            }),
        )
        .unwrap();
        let y = y.to_vec2::<f32>().unwrap();
        assert_eq!((y[0][1], y[2][1]), (0.0, 0.0));
        assert!(y[1][1] > 0.0 && y[3][1] > 0.0);
    }
}
