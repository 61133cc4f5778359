//! [`Llama`]: a Llama-family decoder on candle (RMSNorm, RoPE, grouped-query attention with a KV
//! cache, SwiGLU MLP, tied or untied head) whose seven projections per block are dense, AQLM or
//! AQLM + OFT modules.
//!
//! Activations are `[tokens, features]` (`tokens = batch · time`, batch-major); attention reshapes
//! to `[batch, heads, time, head_dim]`. All compute is `f32` on the CPU. Every op records a
//! backward, so with OFT `Var`s in the projections the logits are differentiable in them.

mod attention;
mod cached_attention;
mod dense;
mod head_q8;
pub mod ops;
mod projection;
pub(crate) mod vector_math;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use oftq_candle::candle_core::{DType, Device, Tensor};
use oftq_candle::candle_nn::VarMap;
use oftq_candle::layer::OftConfig;

use crate::config::LlamaConfig;
use crate::error::{LlmError, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::{ModelWeights, PROJECTIONS, projection_path};
use head_q8::Q8Rows;

pub use attention::causal_attention;
use cached_attention::cached_attention;
pub use dense::dense_product;
pub(crate) use dense::{after_parallel_product, product_t};
pub use ops::{Causal, RopeTables, rms_norm, rope, softmax, swiglu};
pub use projection::Projection;

/// One decoder block: pre-norm attention and pre-norm SwiGLU MLP, each added to the residual.
#[derive(Debug)]
pub struct Block {
    /// `input_layernorm.weight`.
    pub attn_norm: Tensor,
    /// `self_attn.{q,k,v,o}_proj`.
    pub q: Projection,
    /// Key projection.
    pub k: Projection,
    /// Value projection.
    pub v: Projection,
    /// Output projection.
    pub o: Projection,
    /// `post_attention_layernorm.weight`.
    pub mlp_norm: Tensor,
    /// `mlp.gate_proj`.
    pub gate: Projection,
    /// `mlp.up_proj`.
    pub up: Projection,
    /// `mlp.down_proj`.
    pub down: Projection,
}

impl Block {
    /// The block's projections in [`PROJECTIONS`] order.
    pub fn projections(&self) -> [&Projection; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
    }

    /// The block's projections in [`PROJECTIONS`] order, mutable.
    pub fn projections_mut(&mut self) -> [&mut Projection; 7] {
        [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.o,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }
}

/// Keys and values of the positions seen so far, per block (`[batch, kv_heads, len, head_dim]`),
/// in preallocated buffers written in place (candle-nn's `KvCache`, growing by 512 positions).
#[derive(Debug, Clone)]
pub struct KvCache {
    kv: Vec<oftq_candle::candle_nn::kv_cache::KvCache>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model of `blocks` blocks.
    pub fn new(blocks: usize) -> Self {
        Self {
            kv: (0..blocks)
                .map(|_| oftq_candle::candle_nn::kv_cache::KvCache::new(2, 512))
                .collect(),
            len: 0,
        }
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The shape of one forward call: `batch` sequences of `time` new tokens, after `start` cached
/// positions.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Sequences.
    pub batch: usize,
    /// New positions per sequence.
    pub time: usize,
    /// Positions already in the cache.
    pub start: usize,
    /// Training forward (module dropout in the OFT adapters).
    pub train: bool,
}

/// A Llama-family decoder.
#[derive(Debug)]
pub struct Llama {
    config: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    head: Option<Tensor>,
    /// The head as 8-bit codes when its values allow it exactly (see [`head_q8`]), made on the
    /// first call of [`head_logits`](Self::head_logits) (training and evaluation never hold it).
    head_q8: OnceLock<Option<Q8Rows>>,
    rope: Arc<RopeTables>,
    tokenizer: Tokenizer,
    source: PathBuf,
}

impl Llama {
    /// Builds the model from loaded weights: dense projections from the dense tensors, AQLM ones
    /// (without adapters) from the AQLM layers.
    ///
    /// # Errors
    /// A missing tensor (the loaders check shapes before).
    pub fn new(weights: ModelWeights) -> Result<Self> {
        let ModelWeights {
            config,
            mut dense,
            mut aqlm,
            tokenizer,
            source,
        } = weights;
        let missing = |name: &str| LlmError::malformed(&source, format!("missing tensor {name}"));
        let mut take = |name: &str| dense.remove(name).ok_or_else(|| missing(name));
        let embed = take("model.embed_tokens.weight")?;
        let norm = take("model.norm.weight")?;
        let head = if config.tie_word_embeddings {
            None
        } else {
            Some(take("lm_head.weight")?)
        };
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let mut proj = |p: &str| -> Result<Projection> {
                let module = projection_path(l, p);
                match aqlm.remove(&module) {
                    Some(layer) => Ok(Projection::aqlm(layer, &module)),
                    None => Ok(Projection::Dense(take(&format!("{module}.weight"))?)),
                }
            };
            let [q, k, v, o, gate, up, down] = [
                proj(PROJECTIONS[0])?,
                proj(PROJECTIONS[1])?,
                proj(PROJECTIONS[2])?,
                proj(PROJECTIONS[3])?,
                proj(PROJECTIONS[4])?,
                proj(PROJECTIONS[5])?,
                proj(PROJECTIONS[6])?,
            ];
            blocks.push(Block {
                attn_norm: take(&format!("model.layers.{l}.input_layernorm.weight"))?,
                q,
                k,
                v,
                o,
                mlp_norm: take(&format!("model.layers.{l}.post_attention_layernorm.weight"))?,
                gate,
                up,
                down,
            });
        }
        let rope = Arc::new(RopeTables::new(
            config.head_dim,
            config.rope_theta,
            config.max_position_embeddings,
        ));
        Ok(Self {
            config,
            embed,
            blocks,
            norm,
            head,
            head_q8: OnceLock::new(),
            rope,
            tokenizer,
            source,
        })
    }

    /// The file or folder the model was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Loads a GGUF file or a Hugging Face folder (see [`ModelWeights::load`]).
    ///
    /// # Errors
    /// Those of [`ModelWeights::load`].
    pub fn load(path: &Path) -> Result<Self> {
        Self::new(ModelWeights::load(path)?)
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The blocks, mutable (to replace projections).
    pub fn blocks_mut(&mut self) -> &mut [Block] {
        &mut self.blocks
    }

    /// The token embedding `[vocab, hidden]`.
    pub fn embedding(&self) -> &Tensor {
        &self.embed
    }

    /// The final norm weight.
    pub fn final_norm(&self) -> &Tensor {
        &self.norm
    }

    /// The untied output head `[vocab, hidden]`, if any (tied models use the embedding).
    pub fn untied_head(&self) -> Option<&Tensor> {
        self.head.as_ref()
    }

    /// A new KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.blocks.len())
    }

    /// Adds OFT adapter `name` (initialised from `config`) to every AQLM projection, its
    /// parameters registered in `varmap`; returns how many projections got one.
    ///
    /// # Errors
    /// An invalid config, an existing adapter.
    pub fn add_adapter(
        &mut self,
        name: &str,
        config: &OftConfig,
        varmap: &VarMap,
    ) -> Result<usize> {
        let mut n = 0;
        for b in &mut self.blocks {
            for p in b.projections_mut() {
                if let Projection::Quantized(m) = p {
                    m.add_adapter(name, config, varmap)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Token embeddings `[batch·time, hidden]` of `tokens [batch, time]` (`u32`).
    ///
    /// # Errors
    /// Ids out of the vocabulary, a tensor that is not `[batch, time]` `u32`.
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let ids = tokens.flatten_all()?;
        let max = ids.max(0)?.to_scalar::<u32>()? as usize;
        if b * t > 0 && max >= self.config.vocab_size {
            return Err(LlmError::Invalid(format!(
                "token id {max} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        Ok(self.embed.index_select(&ids, 0)?)
    }

    /// Runs block `l` on the residual stream `h [batch·time, hidden]`, appending its keys and
    /// values to `cache` when given.
    ///
    /// # Errors
    /// Shape errors.
    pub fn block_forward(
        &self,
        l: usize,
        h: &Tensor,
        step: Step,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let b = &self.blocks[l];
        let x = rms_norm(h, &b.attn_norm, self.config.rms_norm_eps)?;
        let a = self.attention(l, &x, step, cache)?;
        let h = (h + b.o.forward_t(&a, step.train)?)?;
        let x = rms_norm(&h, &b.mlp_norm, self.config.rms_norm_eps)?;
        let m = self.mlp_act(l, &x, step.train)?;
        Ok((&h + b.down.forward_t(&m, step.train)?)?)
    }

    /// `silu(gate(x)) ⊙ up(x)` of block `l` (the input of its down projection).
    ///
    /// # Errors
    /// Shape errors.
    pub fn mlp_act(&self, l: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        let b = &self.blocks[l];
        let g = b.gate.forward_t(x, train)?;
        let u = b.up.forward_t(x, train)?;
        Ok(swiglu(&g, &u)?)
    }

    /// Causal grouped-query self-attention of block `l` on its normed input `x [batch·time,
    /// hidden]`, before the output projection: `[batch·time, heads·head_dim]`.
    ///
    /// # Errors
    /// Shape errors; positions beyond `max_position_embeddings`.
    pub fn attention(
        &self,
        l: usize,
        x: &Tensor,
        step: Step,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let blk = &self.blocks[l];
        let (bsz, t, d) = (step.batch, step.time, c.head_dim);
        let (heads, kv_heads) = (c.num_attention_heads, c.num_key_value_heads);
        let rep = heads / kv_heads;
        let split = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((bsz, t, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        if cache.is_none() && step.start == 0 {
            // No cache: the fused op (no [heads, time, time] tensors kept for backward).
            let (q, k, v) = (
                blk.q.forward_t(x, step.train)?,
                blk.k.forward_t(x, step.train)?,
                blk.v.forward_t(x, step.train)?,
            );
            return Ok(causal_attention(
                &q,
                &k,
                &v,
                (bsz, t),
                (heads, kv_heads, d),
                &self.rope,
            )?);
        }
        let scale = 1.0 / (d as f64).sqrt();
        let q = split(blk.q.forward_t(x, step.train)?, heads)?;
        let q = (rope(&q, &self.rope, step.start)? * scale)?;
        let k = rope(
            &split(blk.k.forward_t(x, step.train)?, kv_heads)?,
            &self.rope,
            step.start,
        )?;
        let v = split(blk.v.forward_t(x, step.train)?, kv_heads)?;
        let (k, v) = match cache {
            Some(cache) => {
                let kv = cache.kv[l].append(&k, &v)?;
                if l + 1 == self.blocks.len() {
                    cache.len = step.start + t;
                }
                kv
            }
            None => (k, v),
        };
        // The `rep` query heads of one key/value head are stacked as rows of one matrix.
        let q = q.reshape((bsz, kv_heads, rep * t, d))?;
        let causal = Causal {
            offset: step.start,
            period: t,
        };
        // [b, kv, rep·t, d]; one op without a backward when nothing asks for gradients.
        let o = if q.track_op() || k.track_op() || v.track_op() {
            let scores = q.matmul(&k.t()?)?;
            let p = softmax(&scores, Some(causal))?;
            p.matmul(&v)?
        } else {
            cached_attention(&q, &k, &v, causal)?
        };
        Ok(o.reshape((bsz, heads, t, d))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((bsz * t, heads * d))?)
    }

    /// Logits `[batch·time, vocab]` of the residual stream `h [batch·time, hidden]` after the last
    /// block: the final norm, then the head.
    ///
    /// # Errors
    /// Shape errors.
    pub fn head(&self, h: &Tensor) -> Result<Tensor> {
        let x = rms_norm(h, &self.norm, self.config.rms_norm_eps)?;
        Ok(dense_product(&x, self.head_weight())?)
    }

    /// Logits `[rows, vocab]` of the same weights as [`head`](Self::head), without a backward:
    /// for at most four rows (a generated token of each sequence) by the head's lossless 8-bit
    /// copy when it has one — the same weight values at a quarter of the memory traffic, which
    /// bounds this product; the sums run in another order than `head`'s, so results agree to
    /// rounding, not bit for bit.
    ///
    /// # Errors
    /// Shape errors.
    pub fn head_logits(&self, h: &Tensor) -> Result<Tensor> {
        let rows = h.dim(0)?;
        let q8 = if rows <= head_q8::MAX_ROWS {
            self.head_q8()
        } else {
            None
        };
        match q8 {
            Some(q8) => {
                let x = rms_norm(&h.detach(), &self.norm, self.config.rms_norm_eps)?;
                let (vocab, hidden) = q8.shape();
                let xv = x.flatten_all()?.to_vec1::<f32>()?;
                if xv.len() != rows * hidden {
                    return Err(LlmError::Invalid(format!(
                        "head input of {} values for {rows} rows of {hidden}",
                        xv.len()
                    )));
                }
                let mut y = vec![0f32; rows * vocab];
                q8.product_t(&mut y, &xv, rows);
                Ok(Tensor::from_vec(y, (rows, vocab), h.device())?)
            }
            None => self.head(&h.detach()),
        }
    }

    /// Whether the head has the lossless 8-bit copy [`head_logits`](Self::head_logits) uses
    /// (its values are 8-bit integers times one scale per 32, as a GGUF `Q8_0` head's are).
    pub fn head_is_8bit(&self) -> bool {
        self.head_q8().is_some()
    }

    /// The 8-bit copy of the head, made on first use.
    fn head_q8(&self) -> Option<&Q8Rows> {
        self.head_q8
            .get_or_init(|| Q8Rows::from_tensor(self.head_weight()))
            .as_ref()
    }

    /// The output head `[vocab, hidden]` (the embedding when tied).
    pub fn head_weight(&self) -> &Tensor {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// The normed final hidden states `[batch·time, hidden]` of `tokens [batch, time]` (what the
    /// head multiplies), no cache; `train` turns module dropout on.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn final_hidden(&self, tokens: &Tensor, train: bool) -> Result<Tensor> {
        let (batch, time) = tokens.dims2()?;
        let step = Step {
            batch,
            time,
            start: 0,
            train,
        };
        let mut h = self.embed(tokens)?;
        for l in 0..self.blocks.len() {
            h = self.block_forward(l, &h, step, None)?;
        }
        Ok(rms_norm(&h, &self.norm, self.config.rms_norm_eps)?)
    }

    /// Logits `[batch, time, vocab]` of `tokens [batch, time]` (`u32`), continuing `cache` when
    /// given (positions after the cached ones) and appending to it.
    ///
    /// # Errors
    /// Ids outside the vocabulary, a cache of another batch size, more positions than the model
    /// supports.
    pub fn forward(
        &self,
        tokens: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let (batch, time) = tokens.dims2()?;
        let h = self.forward_hidden(tokens, cache, train)?;
        Ok(self
            .head(&h)?
            .reshape((batch, time, self.config.vocab_size))?)
    }

    /// The residual stream after the last block, `[batch·time, hidden]` (before the final norm
    /// and the head), continuing and extending `cache` as [`forward`](Self::forward) does.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn forward_hidden(
        &self,
        tokens: &Tensor,
        mut cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor> {
        let (batch, time) = tokens.dims2()?;
        let start = cache.as_ref().map_or(0, |c| c.len);
        if start + time > self.config.max_position_embeddings {
            return Err(LlmError::Invalid(format!(
                "{} positions exceed the model's maximum of {}",
                start + time,
                self.config.max_position_embeddings
            )));
        }
        let step = Step {
            batch,
            time,
            start,
            train,
        };
        let mut h = self.embed(tokens)?;
        for l in 0..self.blocks.len() {
            h = self.block_forward(l, &h, step, cache.as_deref_mut())?;
        }
        Ok(h)
    }

    /// Logits of one sequence of token ids, `[time, vocab]`, no cache.
    ///
    /// # Errors
    /// As [`forward`](Self::forward).
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor> {
        let tokens = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu)?;
        Ok(self.forward(&tokens, None, false)?.squeeze(0)?)
    }

    /// The AQLM projections with their module paths (for saving adapters or a checkpoint).
    pub fn quantized(&self) -> impl Iterator<Item = &oftq_candle::AqlmOftLinear> {
        self.blocks.iter().flat_map(|b| {
            b.projections().into_iter().filter_map(|p| match p {
                Projection::Quantized(m) => Some(m.as_ref()),
                Projection::Dense(_) => None,
            })
        })
    }

    /// Bytes of the weights held (dense tensors at 4 bytes per value, AQLM layers at their codes'
    /// and codebooks' in-memory size).
    pub fn weight_bytes(&self) -> usize {
        let t = |x: &Tensor| x.elem_count() * DType::F32.size_in_bytes();
        let mut n = t(&self.embed) + t(&self.norm) + self.head.as_ref().map_or(0, t);
        for b in &self.blocks {
            n += t(&b.attn_norm) + t(&b.mlp_norm);
            for p in b.projections() {
                n += p.weight_bytes();
            }
        }
        n
    }
}
