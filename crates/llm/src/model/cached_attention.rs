//! Attention of new queries against the KV cache as one op, forward only: what generation runs
//! for every block and token. The same computation as candle's `q·kᵀ`, [`softmax`](super::softmax)
//! and `p·v`, without their allocations and per-call set-up (candle's matrix product re-reads the
//! CPU's description from `/proc/cpuinfo` on every call): two of them per block and token took
//! about 10% of a generated token of SmolLM2.
//!
//! Shapes: `q [batch, kv_heads, rows, d]` (the `rep` query heads of one key/value head stacked,
//! already rotated and scaled by `1/√d`), `k`, `v [batch, kv_heads, len, d]` (the cache: any
//! strides for the first two dimensions, rows of `d` contiguous values `d` apart). Output
//! `[batch, kv_heads, rows, d]`. Row `r` is the query at position `offset + r mod period` and
//! sees the keys `0..=offset + r mod period` ([`Causal`]): `o_r = Σ_j p_j·v_j` with
//! `p = softmax(q_r·k_jᵀ)` over the visible `j`.

use oftq_candle::candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::ops::Causal;
use super::vector_math::softmax_in_place;

/// The op (see the module notes).
struct CachedAttention {
    causal: Causal,
}

/// A `[batch, heads, len, d]` operand: its values and where each `(batch, head)` matrix starts.
struct Heads<'a> {
    all: &'a [f32],
    start: usize,
    stride: [usize; 2],
    len: usize,
}

impl<'a> Heads<'a> {
    /// The operand of `s`/`l`, if its rows are `d` contiguous values, `d` apart.
    fn new(s: &'a CpuStorage, l: &Layout, dims: [usize; 4], what: &str) -> Result<Self> {
        let all = match s {
            CpuStorage::F32(v) => v.as_slice(),
            _ => bail!("cached attention: {what} must be f32"),
        };
        let (st, d) = (l.stride(), dims[3]);
        if l.dims() != dims || st.len() != 4 || (d > 1 && st[3] != 1) || (dims[2] > 1 && st[2] != d)
        {
            bail!(
                "cached attention: {what} is {:?} with strides {st:?}, expected {dims:?} with rows of {d} contiguous values",
                l.dims()
            );
        }
        let heads = Self {
            all,
            start: l.start_offset(),
            stride: [st[0], st[1]],
            len: dims[2],
        };
        let last = heads.start
            + (dims[0].saturating_sub(1)) * st[0]
            + (dims[1].saturating_sub(1)) * st[1]
            + dims[2] * d;
        if dims.iter().product::<usize>() > 0 && last > all.len() {
            bail!("cached attention: {what} reaches past its storage");
        }
        Ok(heads)
    }

    /// Matrix `(b, h)` as `len·d` values.
    fn matrix(&self, b: usize, h: usize, d: usize) -> &'a [f32] {
        let s = self.start + b * self.stride[0] + h * self.stride[1];
        &self.all[s..s + self.len * d]
    }
}

/// `Σ a_i·b_i` in eight interleaved partial sums (so it vectorizes), combined pairwise.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut p = [0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..8 {
            p[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        p[l] += x * y;
    }
    ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]))
}

impl CustomOp3 for CachedAttention {
    fn name(&self) -> &'static str {
        "oftq-cached-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Ok([batch, kv, rows, d]) = <[usize; 4]>::try_from(lq.dims()) else {
            bail!(
                "cached attention: q must be [batch, kv_heads, rows, d], got {:?}",
                lq.dims()
            );
        };
        let len = lk.dims().get(2).copied().unwrap_or(0);
        let q = Heads::new(sq, lq, [batch, kv, rows, d], "q")?;
        let k = Heads::new(sk, lk, [batch, kv, len, d], "k")?;
        let v = Heads::new(sv, lv, [batch, kv, len, d], "v")?;
        let c = self.causal;
        // The last position any row queries.
        let last = c.offset + rows.min(c.period.max(1));
        if rows > 0 && last > len {
            bail!(
                "cached attention: queries up to position {} for {len} cached keys",
                last - 1
            );
        }
        let mut out = vec![0f32; batch * kv * rows * d];
        let mut p = vec![0f32; len];
        for (bh, o) in out.chunks_exact_mut((rows * d).max(1)).enumerate() {
            let (b, h) = (bh / kv, bh % kv);
            let (qm, km, vm) = (q.matrix(b, h, d), k.matrix(b, h, d), v.matrix(b, h, d));
            for (r, orow) in o.chunks_exact_mut(d.max(1)).enumerate() {
                let visible = c.offset + r % c.period.max(1) + 1;
                let qr = &qm[r * d..(r + 1) * d];
                let p = &mut p[..visible];
                for (pj, kj) in p.iter_mut().zip(km.chunks_exact(d.max(1))) {
                    *pj = dot(qr, kj);
                }
                softmax_in_place(p);
                for (&w, vj) in p.iter().zip(vm.chunks_exact(d.max(1))) {
                    for (ov, vv) in orow.iter_mut().zip(vj) {
                        *ov += w * vv;
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, kv, rows, d))))
    }
}

/// Attention of `q [batch, kv_heads, rows, d]` (rotated, scaled) against the cached
/// `k`, `v [batch, kv_heads, len, d]` under `causal` (see the module notes). No backward: the
/// callers use it only for tensors that record no graph.
///
/// # Errors
/// Shapes that do not fit, non-`f32` tensors, queries past the cached positions.
pub(crate) fn cached_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: Causal,
) -> Result<Tensor> {
    q.contiguous()?
        .apply_op3_no_bwd(k, v, &CachedAttention { causal })
}

#[cfg(test)]
mod tests {
    use oftq_candle::candle_core::{Device, Tensor};

    use super::*;
    use crate::model::softmax;
    use crate::tiny::max_abs_diff;

    fn values(dims: &[usize], seed: u32) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n as u32)
            .map(|i| {
                ((i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32) / 16_777_216.0
            })
            .map(|u| u - 0.5)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    #[test]
    fn equals_candles_products_and_softmax_on_strided_caches() {
        // Two sequences, two key/value heads of three query heads each, two new positions after
        // five cached ones; the cache a narrow view of a longer buffer (as candle-nn's KvCache).
        let (b, kv, rep, t, d, start) = (2, 2, 3, 2, 16, 5);
        let len = start + t;
        let k = values(&[b, kv, 12, d], 1).narrow(2, 0, len).unwrap();
        let v = values(&[b, kv, 12, d], 2).narrow(2, 0, len).unwrap();
        assert!(!k.is_contiguous());
        let q = values(&[b, kv, rep * t, d], 3);
        let causal = Causal {
            offset: start,
            period: t,
        };
        let want = softmax(&q.matmul(&k.t().unwrap()).unwrap(), Some(causal))
            .unwrap()
            .matmul(&v)
            .unwrap();
        let got = cached_attention(&q, &k, &v, causal).unwrap();
        assert_eq!(got.dims(), want.dims());
        let diff = max_abs_diff(&got, &want).unwrap();
        assert!(diff < 1e-6, "{diff}");
        // Queries past the cached keys, a cache whose rows are not contiguous: errors.
        let late = Causal {
            offset: start + 1,
            period: t,
        };
        assert!(cached_attention(&q, &k, &v, late).is_err());
        let kt = values(&[b, kv, d, len], 4).transpose(2, 3).unwrap();
        assert!(cached_attention(&q, &kt, &v, causal).is_err());
    }
}
