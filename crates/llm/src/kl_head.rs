//! The distillation loss fused with the output head: `KL(p_T ‖ softmax(x·Wᵀ))` averaged over the
//! rows of `x`, without ever holding the `[rows, vocab]` logits.
//!
//! The forward pass works on chunks of rows: logits of the chunk (one GEMM), the loss of each
//! row, the gradient `∂L/∂z` written over the logits, and at once `∂L/∂x = (∂L/∂z)·W` (a second
//! GEMM), kept for the backward pass, which only scales it by the upstream gradient. Peak memory
//! is one chunk of logits (256 rows: 50 MB for a 49152-token vocabulary) instead of the
//! logits, their gradient and the head's weight gradient candle's own matmul backward would
//! allocate (it differentiates both operands, 3 × 100 MB and a third GEMM at 512 tokens).
//!
//! Per row, with the teacher's top-`k` tokens `K` (probabilities `p_i`) and tail mass `p_t`, and
//! the student's `q = softmax(z)`, `q_t = 1 − Σ_K q_i`:
//! `L = Σ_K p_i·ln(p_i/q_i) + p_t·ln(p_t/q_t)`, `∂L/∂z_j = q_j − p_j` for `j ∈ K` and
//! `q_j·(1 − p_t/q_t)` otherwise.

use std::sync::{Arc, Mutex};

use oftq_candle::candle_core::{CpuStorage, CustomOp2, Device, Layout, Shape, Tensor, bail};
use oftq_candle::layer::faer::linalg::matmul::matmul;
use oftq_candle::layer::faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::distill::TeacherTargets;
use crate::error::{LlmError, Result};
use crate::model::ops::slice;
use crate::model::vector_math::exp_shifted;
use crate::model::{after_parallel_product, product_t};

/// Rows of logits computed at a time (256 × 49152 floats: 50 MB; measured 0.40 s per 512-token
/// step against 0.45 s with 128 rows).
const CHUNK_ROWS: usize = 256;

/// The fused head + KL op over the normed hidden states `x [rows, hidden]` and the head
/// `W [vocab, hidden]` (read in place, never copied).
struct KlHead {
    targets: Arc<TeacherTargets>,
    /// `∂L/∂x` for a unit upstream gradient, from the forward pass.
    grad: Mutex<Option<Vec<f32>>>,
}

/// Loss and gradient of one row of logits `z` (overwritten by `∂L/∂z · scale`).
fn row(z: &mut [f32], ids: &[u32], p: &[f32], p_tail: f32, scale: f64) -> f64 {
    let zk: Vec<f32> = ids.iter().map(|&i| z[i as usize]).collect();
    // Probabilities below e^-60 of the largest are flushed to 0, so that the gradient below
    // (`q·scale`) never becomes subnormal (each one costs a microcode assist).
    let m = exp_shifted(z);
    let s: f64 = z.iter().map(|&v| f64::from(v)).sum();
    let lse = f64::from(m) + s.ln();
    let s_kept: f64 = ids.iter().map(|&i| f64::from(z[i as usize])).sum();
    let q_tail = ((s - s_kept) / s).max(1e-30);
    let mut loss = 0.0;
    for (&pi, &zi) in p.iter().zip(&zk) {
        if pi > 0.0 {
            let pi = f64::from(pi);
            loss += pi * (pi.ln() - (f64::from(zi) - lse));
        }
    }
    let ratio = if p_tail > 0.0 {
        let pt = f64::from(p_tail);
        loss += pt * (pt.ln() - q_tail.ln());
        pt / q_tail
    } else {
        0.0
    };
    let (inv, tail_factor) = (1.0 / s, 1.0 - ratio);
    for v in z.iter_mut() {
        *v = (f64::from(*v) * inv * tail_factor * scale) as f32;
    }
    for ((&i, &pi), &zi) in ids.iter().zip(p).zip(&zk) {
        let q = (f64::from(zi) - lse).exp();
        z[i as usize] = ((q - f64::from(pi)) * scale) as f32;
    }
    loss
}

impl CustomOp2 for KlHead {
    fn name(&self) -> &'static str {
        "oftq-kl-head"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> oftq_candle::candle_core::Result<(CpuStorage, Shape)> {
        let (x, weight) = (
            slice(s1, l1, "kl head input")?,
            slice(s2, l2, "kl head weight")?,
        );
        let (rows, hidden) = l1.shape().dims2()?;
        let (v, width) = l2.shape().dims2()?;
        let t = &self.targets;
        if t.len() != rows || width != hidden {
            bail!(
                "kl head: {rows} rows of width {hidden} for {} targets and a [{v}, {width}] head",
                t.len(),
            );
        }
        let w = MatRef::from_row_major_slice(weight, v, hidden);
        let scale = 1.0 / rows.max(1) as f64;
        let mut dx = vec![0f32; rows * hidden];
        let mut logits = vec![0f32; CHUNK_ROWS.min(rows) * v];
        let mut total = 0.0;
        for r0 in (0..rows).step_by(CHUNK_ROWS) {
            let n = CHUNK_ROWS.min(rows - r0);
            let z = &mut logits[..n * v];
            product_t(
                z,
                &x[r0 * hidden..(r0 + n) * hidden],
                weight,
                (n, hidden, v),
            );
            let k = t.k;
            total += z
                .par_chunks_mut(v)
                .enumerate()
                .map(|(i, zr)| {
                    let r = r0 + i;
                    row(
                        zr,
                        &t.ids[r * k..(r + 1) * k],
                        &t.probs[r * k..(r + 1) * k],
                        t.tail[r],
                        scale,
                    )
                })
                .sum::<f64>();
            matmul(
                MatMut::from_row_major_slice_mut(
                    &mut dx[r0 * hidden..(r0 + n) * hidden],
                    n,
                    hidden,
                ),
                Accum::Replace,
                MatRef::from_row_major_slice(z, n, v),
                w,
                1.0,
                Par::rayon(0),
            );
            after_parallel_product();
        }
        *self.grad.lock().unwrap_or_else(|p| p.into_inner()) = Some(dx);
        Ok((
            CpuStorage::F32(vec![(total * scale) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> oftq_candle::candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_scalar::<f32>()?;
        let dx = self.grad.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut dx) = dx else {
            bail!("kl head: backward called twice or before the forward pass");
        };
        if g != 1.0 {
            dx.iter_mut().for_each(|v| *v *= g);
        }
        Ok((Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?), None))
    }
}

/// The mean coarsened `KL(p_T ‖ softmax(x·Wᵀ))` over the rows of `x [rows, hidden]` (normed
/// hidden states) for the head `weight [vocab, hidden]` and one teacher target per row,
/// differentiable in `x` (not in the head, which is frozen). See the module docs.
///
/// # Errors
/// Shapes that do not fit, non-`f32` inputs.
pub fn kl_head_loss(x: &Tensor, weight: &Tensor, targets: Arc<TeacherTargets>) -> Result<Tensor> {
    let (vocab, hidden) = weight.dims2()?;
    let (rows, width) = x.dims2()?;
    if width != hidden || rows != targets.len() {
        return Err(LlmError::Invalid(format!(
            "kl head: x [{rows}, {width}], head [{vocab}, {hidden}], {} targets",
            targets.len()
        )));
    }
    Ok(x.contiguous()?.apply_op2(
        &weight.contiguous()?,
        KlHead {
            targets,
            grad: Mutex::new(None),
        },
    )?)
}

#[cfg(test)]
mod tests {
    use oftq_candle::candle_core::{D, Var};
    use oftq_candle::candle_nn::ops::log_softmax;

    use super::*;
    use crate::tiny::max_abs_diff;

    fn t(v: Vec<f32>, s: (usize, usize)) -> Tensor {
        Tensor::from_vec(v, s, &Device::Cpu).unwrap()
    }

    /// Against the same loss composed of candle ops (full logits, log-softmax, gathered terms).
    #[test]
    fn matches_the_composed_loss_and_gradient() {
        let (rows, hidden, vocab, k) = (300, 8, 50, 5);
        let x = Var::from_tensor(&t(
            (0..rows * hidden)
                .map(|i| ((i as f32) * 0.37).sin())
                .collect(),
            (rows, hidden),
        ))
        .unwrap();
        let w = t(
            (0..vocab * hidden)
                .map(|i| ((i as f32) * 0.11).cos())
                .collect(),
            (vocab, hidden),
        );
        let teacher = t(
            (0..rows * vocab)
                .map(|i| ((i as f32) * 0.05).sin() * 3.0)
                .collect(),
            (rows, vocab),
        );
        let tg = Arc::new(TeacherTargets::from_logits(&teacher, k).unwrap());
        let fused = kl_head_loss(x.as_tensor(), &w, tg.clone()).unwrap();
        let gf = fused
            .backward()
            .unwrap()
            .get(x.as_tensor())
            .unwrap()
            .clone();

        let logits = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let lq = log_softmax(&logits, D::Minus1).unwrap();
        let mut terms = Vec::new();
        for r in 0..rows {
            let lr = lq.get(r).unwrap();
            let ids = Tensor::from_slice(&tg.ids[r * k..(r + 1) * k], k, &Device::Cpu).unwrap();
            let lqk = lr.gather(&ids, 0).unwrap();
            let p = Tensor::from_slice(&tg.probs[r * k..(r + 1) * k], k, &Device::Cpu).unwrap();
            let kept = p
                .mul(&(p.log().unwrap() - &lqk).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let q_tail = (1.0 - lqk.exp().unwrap().sum_all().unwrap()).unwrap();
            let pt = f64::from(tg.tail[r]);
            let tail = ((q_tail.log().unwrap() * -pt).unwrap() + pt * pt.ln()).unwrap();
            terms.push((kept + tail).unwrap());
        }
        let composed =
            (Tensor::stack(&terms, 0).unwrap().sum_all().unwrap() / rows as f64).unwrap();
        let gc = composed
            .backward()
            .unwrap()
            .get(x.as_tensor())
            .unwrap()
            .clone();
        let (lf, lc) = (
            fused.to_scalar::<f32>().unwrap(),
            composed.to_scalar::<f32>().unwrap(),
        );
        assert!((lf - lc).abs() < 1e-5 * lc.abs().max(1.0), "{lf} vs {lc}");
        let d = max_abs_diff(&gf, &gc).unwrap();
        let m = gc
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-4 * m, "{d} vs {m}");
        assert!(kl_head_loss(x.as_tensor(), &w.narrow(1, 0, 4).unwrap(), tg).is_err());
    }
}
