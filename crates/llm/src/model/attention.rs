//! Causal grouped-query self-attention with RoPE as one candle op (no KV cache): the forward pass
//! keeps nothing but its output, and the backward pass recomputes the attention probabilities
//! (as FlashAttention does), so training holds no `[heads, time, time]` tensors and no rotated
//! or transposed copies of q, k, v. The forward pass works in blocks of query rows, each against
//! the keys its rows see, so the masked part of the scores is never computed; the backward pass
//! works on whole heads (row blocks there measured no faster: 256-token training sequences save
//! a quarter of its products, and the smaller products cost that back).
//!
//! Layout: `q [batch·time, heads·d]`, `k`, `v [batch·time, kv_heads·d]` (the projections'
//! outputs, token-major), output `[batch·time, heads·d]`. Head `h` reads key/value head
//! `h / (heads / kv_heads)`. Per head, with `q̃ = RoPE(q)`, `k̃ = RoPE(k)` at positions `0…t−1`:
//! `S = q̃·k̃ᵀ/√d` masked causally, `P = softmax(S)` by rows, `O = P·v`. Backward:
//! `dV = Pᵀ·dO`, `dP = dO·vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))/√d`, `dq̃ = dS·k̃`, `dk̃ = dSᵀ·q̃`,
//! and RoPE's transpose (the rotation by the opposite angle) back to `dq`, `dk`.

use std::ops::Range;
use std::sync::Arc;

use oftq_candle::candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use oftq_candle::layer::aqlm::kernels::clear_upper_simd_state;
use oftq_candle::layer::faer::linalg::matmul::matmul;
use oftq_candle::layer::faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::ops::{RopeTables, slice};
use super::vector_math::softmax_in_place;

/// The geometry of one attention call.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    time: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
}

impl Geometry {
    fn rep(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// Query rows per task of the forward pass (see `cpu_fwd`).
const ROW_BLOCK: usize = 128;

/// The fused attention op.
struct Attention {
    g: Geometry,
    rope: Arc<RopeTables>,
}

/// Head `h` of batch `b` of a token-major `[batch·time, n·d]` buffer as a `[time, d]` matrix,
/// rotated by RoPE (`sign = -1`: the transpose) when `rope` is given.
fn gather(
    src: &[f32],
    g: &Geometry,
    n: usize,
    b: usize,
    h: usize,
    rope: Option<(&RopeTables, f32)>,
) -> Vec<f32> {
    gather_rows(src, g, n, (b, h), 0..g.time, rope)
}

/// Positions `rows` of head `h` of batch `b` (see [`gather`]) as a `[rows.len(), d]` matrix.
fn gather_rows(
    src: &[f32],
    g: &Geometry,
    n: usize,
    (b, h): (usize, usize),
    rows: Range<usize>,
    rope: Option<(&RopeTables, f32)>,
) -> Vec<f32> {
    let (t, d) = (g.time, g.d);
    let mut out = vec![0f32; rows.len() * d];
    for (dst, i) in out.chunks_exact_mut(d.max(1)).zip(rows) {
        let row = &src[((b * t + i) * n + h) * d..((b * t + i) * n + h + 1) * d];
        match rope {
            Some((tables, sign)) => tables.rotate(row, dst, i, sign),
            None => dst.copy_from_slice(row),
        }
    }
    out
}

/// Scatters a `[time, d]` matrix into head `h` of batch `b` of a token-major buffer, rotating it
/// back when `rope` is given.
fn scatter(
    m: &[f32],
    dst: &mut [f32],
    g: &Geometry,
    n: usize,
    b: usize,
    h: usize,
    rope: Option<&RopeTables>,
) {
    let (t, d) = (g.time, g.d);
    for i in 0..t {
        let out = &mut dst[((b * t + i) * n + h) * d..((b * t + i) * n + h + 1) * d];
        match rope {
            Some(tables) => tables.rotate(&m[i * d..(i + 1) * d], out, i, -1.0),
            None => out.copy_from_slice(&m[i * d..(i + 1) * d]),
        }
    }
}

/// `C (+)= α·op(A)·op(B)` for row-major slices, `C [m, n]`, inner dimension `k`; `op` transposes
/// when its flag is set (`A` is then stored `[k, m]`, `B` `[n, k]`).
fn gemm(
    c: &mut [f32],
    (m, n): (usize, usize),
    (a, trans_a): (&[f32], bool),
    k: usize,
    (b, trans_b): (&[f32], bool),
    alpha: f32,
    accumulate: bool,
) {
    let am = if trans_a {
        MatRef::from_row_major_slice(a, k, m).transpose()
    } else {
        MatRef::from_row_major_slice(a, m, k)
    };
    let bm = if trans_b {
        MatRef::from_row_major_slice(b, n, k).transpose()
    } else {
        MatRef::from_row_major_slice(b, k, n)
    };
    let acc = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    matmul(
        MatMut::from_row_major_slice_mut(c, m, n),
        acc,
        am,
        bm,
        alpha,
        Par::Seq,
    );
    // faer's kernels leave the AVX upper state dirty; the scalar code between products would
    // pay for it (see `clear_upper_simd_state`).
    clear_upper_simd_state();
}

/// The probabilities `P [rows, keys]` of query positions `first..first + rows` of one head
/// (`q̃`: their rotated rows, `rows·d` values) against the first `keys = first + rows` rotated
/// keys `k̃`: `S = q̃·k̃ᵀ/√d`, then a softmax of each row over the keys its position sees
/// (row `i` sees `0..=first + i`; the others are 0). `first = 0` with all `t` rows gives the
/// whole `[t, t]` matrix.
fn probabilities(q: &[f32], k: &[f32], g: &Geometry, first: usize) -> Vec<f32> {
    let rows = q.len() / g.d.max(1);
    let keys = first + rows;
    let mut s = vec![0f32; rows * keys];
    let scale = 1.0 / (g.d as f32).sqrt();
    gemm(
        &mut s,
        (rows, keys),
        (q, false),
        g.d,
        (&k[..keys * g.d], true),
        scale,
        false,
    );
    for (i, row) in s.chunks_exact_mut(keys.max(1)).enumerate() {
        let (seen, masked) = row.split_at_mut(first + i + 1);
        softmax_in_place(seen);
        masked.fill(0.0);
    }
    s
}

impl Attention {
    fn check(&self, q: &Layout, k: &Layout, v: &Layout) -> Result<()> {
        let g = &self.g;
        let bt = g.batch * g.time;
        let want = |l: &Layout, n: usize| l.dims() == [bt, n * g.d];
        if !want(q, g.heads) || !want(k, g.kv_heads) || !want(v, g.kv_heads) {
            bail!(
                "attention: q {:?}, k {:?}, v {:?} do not fit batch {} × time {} with {} heads and {} key/value heads of {}",
                q.dims(),
                k.dims(),
                v.dims(),
                g.batch,
                g.time,
                g.heads,
                g.kv_heads,
                g.d
            );
        }
        if g.time > self.rope.len() {
            bail!(
                "attention: {} positions, RoPE tables for {}",
                g.time,
                self.rope.len()
            );
        }
        Ok(())
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "oftq-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.check(l1, l2, l3)?;
        let (q, k, v) = (
            slice(s1, l1, "q")?,
            slice(s2, l2, "k")?,
            slice(s3, l3, "v")?,
        );
        let g = self.g;
        let rope = Some((&*self.rope, 1.0));
        let (t, d) = (g.time, g.d);
        // The rotated keys and the values of every (batch, key/value head), once.
        let kvs: Vec<(Vec<f32>, Vec<f32>)> = (0..g.batch * g.kv_heads)
            .into_par_iter()
            .map(|task| {
                let (b, kv) = (task / g.kv_heads, task % g.kv_heads);
                (
                    gather(k, &g, g.kv_heads, b, kv, rope),
                    gather(v, &g, g.kv_heads, b, kv, None),
                )
            })
            .collect();
        // One task per (batch, head, block of query rows): rows `i0..i1` see keys `0..i1` only,
        // so the masked part of `S` and of `P·V` is never computed (about 3/8 of both at 512
        // positions), and the tasks (36 for SmolLM2's 9 heads) keep both threads busy.
        let blocks = t.div_ceil(ROW_BLOCK);
        let parts: Vec<(usize, usize, usize, Vec<f32>)> = (0..g.batch * g.heads * blocks)
            .into_par_iter()
            .map(|task| {
                let (bh, blk) = (task / blocks, task % blocks);
                let (b, h) = (bh / g.heads, bh % g.heads);
                let (i0, i1) = (blk * ROW_BLOCK, ((blk + 1) * ROW_BLOCK).min(t));
                let (kr, vv) = &kvs[b * g.kv_heads + h / g.rep()];
                let qr = gather_rows(q, &g, g.heads, (b, h), i0..i1, rope);
                let p = probabilities(&qr, kr, &g, i0);
                let mut o = vec![0f32; (i1 - i0) * d];
                let vv = &vv[..i1 * d];
                gemm(
                    &mut o,
                    (i1 - i0, d),
                    (&p, false),
                    i1,
                    (vv, false),
                    1.0,
                    false,
                );
                (b, h, i0, o)
            })
            .collect();
        let mut y = vec![0f32; q.len()];
        for (b, h, i0, o) in parts {
            for (i, row) in o.chunks_exact(d.max(1)).enumerate() {
                let at = ((b * t + i0 + i) * g.heads + h) * d;
                y[at..at + d].copy_from_slice(row);
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.g;
        let (t, d) = (g.time, g.d);
        let vec = |x: &Tensor| x.contiguous()?.flatten_all()?.to_vec1::<f32>();
        let (qv, kv_, vv, dov) = (vec(q)?, vec(k)?, vec(v)?, vec(grad)?);
        let rope = Some((&*self.rope, 1.0f32));
        let scale = 1.0 / (d as f32).sqrt();
        type Grads = (usize, usize, Vec<(usize, Vec<f32>)>, Vec<f32>, Vec<f32>);
        let parts: Vec<Grads> = (0..g.batch * g.kv_heads)
            .into_par_iter()
            .map(|task| {
                let (b, kvh) = (task / g.kv_heads, task % g.kv_heads);
                let kr = gather(&kv_, &g, g.kv_heads, b, kvh, rope);
                let vm = gather(&vv, &g, g.kv_heads, b, kvh, None);
                let (mut dk, mut dv) = (vec![0f32; t * d], vec![0f32; t * d]);
                let mut dqs = Vec::with_capacity(g.rep());
                for r in 0..g.rep() {
                    let h = kvh * g.rep() + r;
                    let qr = gather(&qv, &g, g.heads, b, h, rope);
                    let dout = gather(&dov, &g, g.heads, b, h, None);
                    let p = probabilities(&qr, &kr, &g, 0);
                    // dV += Pᵀ·dO
                    gemm(&mut dv, (t, d), (&p, true), t, (&dout, false), 1.0, true);
                    // dP = dO·vᵀ, then dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale
                    let mut ds = vec![0f32; t * t];
                    gemm(&mut ds, (t, t), (&dout, false), d, (&vm, true), 1.0, false);
                    for i in 0..t {
                        let (pr, dr) = (&p[i * t..(i + 1) * t], &mut ds[i * t..(i + 1) * t]);
                        let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                        for (x, &pv) in dr.iter_mut().zip(pr) {
                            *x = pv * (*x - dot) * scale;
                        }
                    }
                    // dq̃ = dS·k̃ ; dk̃ += dSᵀ·q̃
                    let mut dq = vec![0f32; t * d];
                    gemm(&mut dq, (t, d), (&ds, false), t, (&kr, false), 1.0, false);
                    gemm(&mut dk, (t, d), (&ds, true), t, (&qr, false), 1.0, true);
                    dqs.push((h, dq));
                }
                (b, kvh, dqs, dk, dv)
            })
            .collect();
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; qv.len()],
            vec![0f32; kv_.len()],
            vec![0f32; vv.len()],
        );
        for (b, kvh, dqs, dkm, dvm) in parts {
            for (h, m) in dqs {
                scatter(&m, &mut dq, &g, g.heads, b, h, Some(&self.rope));
            }
            scatter(&dkm, &mut dk, &g, g.kv_heads, b, kvh, Some(&self.rope));
            scatter(&dvm, &mut dv, &g, g.kv_heads, b, kvh, None);
        }
        let t = |x: Vec<f32>, like: &Tensor| Tensor::from_vec(x, like.shape(), like.device());
        Ok((Some(t(dq, q)?), Some(t(dk, k)?), Some(t(dv, v)?)))
    }
}

/// Causal grouped-query attention with RoPE at positions `0…time−1` (no cache) on the
/// projections' outputs `q [batch·time, heads·d]`, `k`, `v [batch·time, kv_heads·d]`; returns
/// `[batch·time, heads·d]` (before the output projection). Differentiable in `q`, `k`, `v`.
///
/// # Errors
/// Shapes that do not fit, more positions than the RoPE tables cover, non-`f32` inputs.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (batch, time): (usize, usize),
    (heads, kv_heads, d): (usize, usize, usize),
    rope: &Arc<RopeTables>,
) -> Result<Tensor> {
    if kv_heads == 0 || heads % kv_heads != 0 || d % 2 != 0 {
        bail!("attention: {heads} heads, {kv_heads} key/value heads of width {d}");
    }
    let op = Attention {
        g: Geometry {
            batch,
            time,
            heads,
            kv_heads,
            d,
        },
        rope: rope.clone(),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use oftq_candle::candle_core::{Device, Var};

    use super::*;
    use crate::model::ops::{Causal, rope, softmax};
    use crate::tiny::max_abs_diff;

    fn t(n: usize, a: f32, shape: (usize, usize)) -> Tensor {
        let v: Vec<f32> = (0..n).map(|i| ((i as f32 + 1.0) * a).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The same attention from candle ops and the (tested) RoPE and causal softmax ops.
    fn composed(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (b, tm): (usize, usize),
        (h, kv, d): (usize, usize, usize),
        tables: &Arc<RopeTables>,
    ) -> Tensor {
        let split = |x: &Tensor, n| {
            x.reshape((b, tm, n, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let q = (rope(&split(q, h), tables, 0).unwrap() * (1.0 / (d as f64).sqrt())).unwrap();
        let k = rope(&split(k, kv), tables, 0).unwrap();
        let v = split(v, kv);
        let rep = h / kv;
        let q = q.reshape((b, kv, rep * tm, d)).unwrap();
        let p = softmax(
            &q.matmul(&k.t().unwrap()).unwrap(),
            Some(Causal {
                offset: 0,
                period: tm,
            }),
        )
        .unwrap();
        p.matmul(&v)
            .unwrap()
            .reshape((b, h, tm, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((b * tm, h * d))
            .unwrap()
    }

    /// The fused op against the composed ops: outputs and the gradients of `Σ out ⊙ w` in `q`,
    /// `k`, `v`; returns the variables for further checks.
    fn check_against_composed(
        (b, tm): (usize, usize),
        (h, kv, d): (usize, usize, usize),
        tables: &Arc<RopeTables>,
    ) -> [Var; 3] {
        let q = Var::from_tensor(&t(b * tm * h * d, 0.37, (b * tm, h * d))).unwrap();
        let k = Var::from_tensor(&t(b * tm * kv * d, 0.53, (b * tm, kv * d))).unwrap();
        let v = Var::from_tensor(&t(b * tm * kv * d, 0.71, (b * tm, kv * d))).unwrap();
        let w = t(b * tm * h * d, 1.3, (b * tm, h * d));
        let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let fused = causal_attention(qt, kt, vt, (b, tm), (h, kv, d), tables).unwrap();
        let reference = composed(qt, kt, vt, (b, tm), (h, kv, d), tables);
        let diff = |a: &Tensor, b: &Tensor| max_abs_diff(a, b).unwrap();
        assert!(diff(&fused, &reference) < 1e-5);
        let grads = |y: &Tensor| y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, gr) = (grads(&fused), grads(&reference));
        for x in [&q, &k, &v] {
            let (a, r) = (
                gf.get(x.as_tensor()).unwrap(),
                gr.get(x.as_tensor()).unwrap(),
            );
            assert!(diff(a, r) < 1e-5, "{}", diff(a, r));
        }
        [q, k, v]
    }

    /// More positions than one block of query rows: the forward's blocks see their keys only,
    /// and the backward agrees with them.
    #[test]
    fn row_blocks_match_composed_ops() {
        let tm = 2 * ROW_BLOCK + 37;
        let tables = Arc::new(RopeTables::new(8, 100.0, tm));
        check_against_composed((2, tm), (4, 2, 8), &tables);
    }

    #[test]
    fn matches_composed_ops_forward_and_backward() {
        let (b, tm, h, kv, d) = (2, 5, 4, 2, 6);
        let tables = Arc::new(RopeTables::new(d, 100.0, 16));
        let [q, _, v] = check_against_composed((b, tm), (h, kv, d), &tables);
        let bad = causal_attention(
            q.as_tensor(),
            q.as_tensor(),
            v.as_tensor(),
            (b, tm),
            (h, kv, d),
            &tables,
        );
        assert!(bad.is_err());
    }
}
