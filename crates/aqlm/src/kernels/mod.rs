//! Forward (`y = x·Wᵀ + bias`) and input-gradient (`dx = dy·W`) kernels of an [`AqlmLayer`].
//!
//! Every kernel is deterministic: work is split into chunks whose size depends only on the
//! layer shape and the token count (never on the thread count), each output element is
//! computed by exactly one task with a fixed summation order, so the result has identical bits
//! for 1, 2 or N rayon threads and across runs.
//!
//! Summation orders (all in `f32`):
//! - [`Kernel::Lut`] and [`Kernel::DecodeDot`]: `y[t, r] = s_o · Σ_{j ascending} Σ_{m ascending}
//!   ⟨cb_m[c], x_j⟩` (or the dot of the summed tile), scale last, then `+ bias`;
//! - [`Kernel::DecodeDot`] for `og = 1`, `ig = 8` from two tokens on: eight lanes of fused
//!   multiply-adds over the input groups ascending, added pairwise, scale last; its input gradient
//!   (always): sixteen lanes of fused multiply-adds over the rows ascending, `dy` scaled first;
//! - [`Kernel::TiledGemm`] and [`Kernel::Reference`]: the exactly decoded `W` (bit-identical to
//!   [`AqlmLayer::decode`]) times `x` with faer's sequential GEMM.

mod aligned;
mod decode_dot;
mod decode_fma;
mod lanes16;
mod layout;
mod lut;
mod reference;
pub(crate) mod simd;

pub use simd::clear_upper_simd_state;
mod tiled_gemm;

use faer::{Mat, MatMut, MatRef};

use crate::error::AqlmError;
use crate::layer::AqlmLayer;

/// Which kernel computes a forward or input-gradient product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Decode the whole `W [out, in]`, then one dense product. Memory `O(out·in)`; the oracle.
    Reference,
    /// Lookup tables of input·codeword dot products (best for `2^B ≤ 256`, few tokens).
    /// Forward: per input group `j`, `lut[m][c][t] = ⟨cb_m[c], x[t, j-group]⟩`, gathered by
    /// code. Input gradient: per input group, the scaled `dy` is scattered into per-code
    /// accumulators, which are then contracted with the codebooks.
    Lut,
    /// Decode one tile at a time and dot it with the input (or axpy it into the gradient):
    /// best for large codebooks (1x16) and few tokens.
    DecodeDot,
    /// Decode a cache-sized block of `W` at a time and multiply it with faer: best for many
    /// tokens; memory `O(tile)`.
    TiledGemm,
}

impl Kernel {
    /// All kernels, for tests and benches.
    pub const ALL: [Kernel; 4] = [
        Kernel::Reference,
        Kernel::Lut,
        Kernel::DecodeDot,
        Kernel::TiledGemm,
    ];
}

/// From this many tokens on, [`AqlmLayer::backward_input`] uses [`Kernel::TiledGemm`] for
/// layers without the vectorized `og = 1`, `ig = 8` decoder.
pub const TILED_GEMM_MIN_TOKENS: usize = 32;

/// From this many tokens on, [`AqlmLayer::forward`] uses [`Kernel::TiledGemm`] for layers
/// without the vectorized `og = 1`, `ig = 8` decoder.
pub const TILED_GEMM_MIN_TOKENS_FORWARD: usize = 12;

/// For `og = 1`, `ig = 8` layers (vectorized decoder), [`AqlmLayer::forward`] uses
/// [`Kernel::TiledGemm`] from this many tokens on, and [`Kernel::DecodeDot`] from 2 tokens up to
/// it (one token: [`Kernel::Lut`] where it suits the layer). Measured on 4096×4096 (2 cores,
/// criterion medians, two alternating runs), decode-dot against tiled: 2x8 2.7 against 4.8 ms
/// at 16 tokens, 4.6–4.8 against 6.2–9.2 at 24, 5.8–6.3 against 6.0–6.4 at 32, 7.5 against
/// 9.2–10.9 at 40, 9.0–9.4 against 7.8–7.9 at 48 (tiled is fastest at multiples of 16); 1x16
/// 6.1–7.2 against 8.7–9.7 at 24, 7.5–8.5 against 8.5–10.5 at 32.
pub const TILED_GEMM_MIN_TOKENS_FORWARD_G8: usize = 33;

/// For `og = 1`, `ig = 8` layers, [`AqlmLayer::backward_input`] uses [`Kernel::TiledGemm`] from
/// this many tokens on and [`Kernel::DecodeDot`] below: measured on 4096×4096 2x8, 1.3 against
/// 4.2 ms at 2 tokens, 2.5 against 4.1 at 16, 5.4 against 5.8 at 32, equal at 48.
pub const TILED_GEMM_MIN_TOKENS_G8: usize = 33;

/// Below this many tokens, large-codebook layers (no [`Kernel::Lut`]) use
/// [`Kernel::DecodeDot`] for the forward.
pub const DECODE_DOT_MAX_FORWARD_TOKENS: usize = 3;

/// Below this many tokens, large-codebook layers use [`Kernel::DecodeDot`] for the input
/// gradient.
pub const DECODE_DOT_MAX_BACKWARD_TOKENS: usize = 7;

impl AqlmLayer {
    /// Whether [`Kernel::Lut`] suits this layer: `2^B ≤ 256` and building the tables
    /// (`M·2^B·og` entries per input group and token) is cheaper than the dot products it
    /// replaces (`out` per input group and token).
    fn lut_suits(&self) -> bool {
        let s = &self.scheme;
        s.codebook_size() <= 256
            && s.num_codebooks * s.codebook_size() * s.out_group_size <= self.out_features
    }

    /// Whether the layer has the vectorized tile decoders (`og = 1`, `ig = 8`): decode-and-FMA
    /// for a few tokens, decode-then-GEMM for many.
    pub(crate) fn fast_decode(&self) -> bool {
        self.scheme.out_group_size == 1 && self.scheme.in_group_size == 8
    }

    /// The kernel [`AqlmLayer::forward`] uses for `tokens` rows. For `og = 1`, `ig = 8` layers:
    /// [`Kernel::TiledGemm`] from [`TILED_GEMM_MIN_TOKENS_FORWARD_G8`] tokens on,
    /// [`Kernel::DecodeDot`] from 2 tokens up to it, and for one token [`Kernel::Lut`] when it
    /// suits the layer (`2^B ≤ 256` and `M·2^B·og ≤ out`), else [`Kernel::DecodeDot`]. For the
    /// others: [`Kernel::TiledGemm`] from [`TILED_GEMM_MIN_TOKENS_FORWARD`] tokens on; below,
    /// [`Kernel::Lut`] when it suits the layer, else [`Kernel::DecodeDot`] up to
    /// [`DECODE_DOT_MAX_FORWARD_TOKENS`] tokens, else [`Kernel::TiledGemm`].
    pub fn auto_kernel(&self, tokens: usize) -> Kernel {
        if self.fast_decode() {
            return if tokens >= TILED_GEMM_MIN_TOKENS_FORWARD_G8 {
                Kernel::TiledGemm
            } else if tokens <= 1 && self.lut_suits() {
                Kernel::Lut
            } else {
                Kernel::DecodeDot
            };
        }
        Self::pick(
            self.lut_suits(),
            tokens,
            TILED_GEMM_MIN_TOKENS_FORWARD,
            DECODE_DOT_MAX_FORWARD_TOKENS,
        )
    }

    /// The kernel [`AqlmLayer::backward_input`] uses for `tokens` rows. For `og = 1`, `ig = 8`
    /// layers: [`Kernel::DecodeDot`] below [`TILED_GEMM_MIN_TOKENS_G8`] tokens, else
    /// [`Kernel::TiledGemm`]. For the others: as [`AqlmLayer::auto_kernel`] with
    /// [`TILED_GEMM_MIN_TOKENS`] and [`DECODE_DOT_MAX_BACKWARD_TOKENS`].
    pub fn auto_backward_kernel(&self, tokens: usize) -> Kernel {
        if self.fast_decode() {
            return if tokens >= TILED_GEMM_MIN_TOKENS_G8 {
                Kernel::TiledGemm
            } else {
                Kernel::DecodeDot
            };
        }
        Self::pick(
            self.lut_suits(),
            tokens,
            TILED_GEMM_MIN_TOKENS,
            DECODE_DOT_MAX_BACKWARD_TOKENS,
        )
    }

    /// The choice for layers without the vectorized decoder: [`Kernel::TiledGemm`] from
    /// `tiled_from` tokens on when the tables suit the layer or past `decode_dot_max` tokens;
    /// below, [`Kernel::Lut`] when they suit, else [`Kernel::DecodeDot`] up to `decode_dot_max`.
    fn pick(lut_suits: bool, tokens: usize, tiled_from: usize, decode_dot_max: usize) -> Kernel {
        if tokens >= tiled_from && (lut_suits || tokens > decode_dot_max) {
            Kernel::TiledGemm
        } else if lut_suits {
            Kernel::Lut
        } else if tokens <= decode_dot_max {
            Kernel::DecodeDot
        } else {
            Kernel::TiledGemm
        }
    }

    /// Forward `y = x·Wᵀ + bias` (`x [tokens, in]` → `y [tokens, out]`) with the kernel chosen
    /// by [`AqlmLayer::auto_kernel`].
    ///
    /// # Errors
    /// [`AqlmError::InputShape`] if `x.ncols() != in_features`.
    pub fn forward(&self, x: MatRef<'_, f32>) -> Result<Mat<f32>, AqlmError> {
        self.forward_with(x, self.auto_kernel(x.nrows()))
    }

    /// Forward with an explicit kernel (every kernel supports every scheme).
    ///
    /// # Errors
    /// [`AqlmError::InputShape`] if `x.ncols() != in_features`.
    pub fn forward_with(&self, x: MatRef<'_, f32>, kernel: Kernel) -> Result<Mat<f32>, AqlmError> {
        self.check_forward_input(x)?;
        if x.nrows() == 0 {
            return Ok(Mat::zeros(0, self.out_features));
        }
        let mut y = match kernel {
            Kernel::Reference => reference::forward(self, x),
            Kernel::Lut => lut::forward(self, x),
            Kernel::DecodeDot => decode_dot::forward(self, x),
            Kernel::TiledGemm => {
                let mut y = Mat::zeros(x.nrows(), self.out_features);
                tiled_gemm::forward_into(self, x, y.as_mut());
                y
            }
        };
        self.add_bias(y.as_mut());
        Ok(y)
    }

    /// Forward `y = x·Wᵀ + bias` written into `y` (`[tokens, out]`, any strides, every element
    /// overwritten) with the kernel chosen by [`AqlmLayer::auto_kernel`]: the caller picks the
    /// output's layout (a row-major `y` needs no transposing copy afterwards). The values are
    /// those of [`AqlmLayer::forward`].
    ///
    /// # Errors
    /// [`AqlmError::InputShape`] if `x.ncols() != in_features`; [`AqlmError::Shape`] unless `y`
    /// is `[x.nrows(), out_features]`.
    pub fn forward_into(&self, x: MatRef<'_, f32>, y: MatMut<'_, f32>) -> Result<(), AqlmError> {
        self.forward_into_with(x, y, self.auto_kernel(x.nrows()))
    }

    /// [`AqlmLayer::forward_into`] with an explicit kernel. The tiled product writes into `y`
    /// directly; the other kernels compute their result and copy it.
    ///
    /// # Errors
    /// As [`AqlmLayer::forward_into`].
    pub fn forward_into_with(
        &self,
        x: MatRef<'_, f32>,
        mut y: MatMut<'_, f32>,
        kernel: Kernel,
    ) -> Result<(), AqlmError> {
        self.check_forward_input(x)?;
        if y.nrows() != x.nrows() || y.ncols() != self.out_features {
            return Err(AqlmError::Shape {
                what: "forward output".into(),
                expected: format!("[{}, {}]", x.nrows(), self.out_features),
                got: format!("[{}, {}]", y.nrows(), y.ncols()),
            });
        }
        if x.nrows() == 0 {
            return Ok(());
        }
        if kernel == Kernel::TiledGemm {
            tiled_gemm::forward_into(self, x, y.as_mut());
            self.add_bias(y);
        } else {
            y.copy_from(self.forward_with(x, kernel)?);
        }
        Ok(())
    }

    /// Errors unless `x` has `in_features` columns.
    fn check_forward_input(&self, x: MatRef<'_, f32>) -> Result<(), AqlmError> {
        if x.ncols() != self.in_features {
            return Err(AqlmError::InputShape {
                op: "forward",
                what: "x",
                expected: self.in_features,
                got: x.ncols(),
            });
        }
        Ok(())
    }

    /// `y[:, r] += bias[r]` (nothing without a bias).
    fn add_bias(&self, mut y: MatMut<'_, f32>) {
        if let Some(b) = &self.bias {
            for (r, &bv) in b.iter().enumerate() {
                for v in y.as_mut().col_mut(r).iter_mut() {
                    *v += bv;
                }
            }
        }
    }

    /// Input gradient `dx = dy·W` (`dy [tokens, out]` → `dx [tokens, in]`) with the kernel
    /// chosen by [`AqlmLayer::auto_backward_kernel`].
    ///
    /// # Errors
    /// [`AqlmError::InputShape`] if `dy.ncols() != out_features`.
    pub fn backward_input(&self, dy: MatRef<'_, f32>) -> Result<Mat<f32>, AqlmError> {
        self.backward_input_with(dy, self.auto_backward_kernel(dy.nrows()))
    }

    /// Input gradient with an explicit kernel (every kernel supports every scheme).
    ///
    /// # Errors
    /// [`AqlmError::InputShape`] if `dy.ncols() != out_features`.
    pub fn backward_input_with(
        &self,
        dy: MatRef<'_, f32>,
        kernel: Kernel,
    ) -> Result<Mat<f32>, AqlmError> {
        if dy.ncols() != self.out_features {
            return Err(AqlmError::InputShape {
                op: "backward_input",
                what: "dy",
                expected: self.out_features,
                got: dy.ncols(),
            });
        }
        if dy.nrows() == 0 {
            return Ok(Mat::zeros(0, self.in_features));
        }
        Ok(match kernel {
            Kernel::Reference => reference::backward(self, dy),
            Kernel::Lut => lut::backward(self, dy),
            Kernel::DecodeDot => decode_dot::backward(self, dy),
            Kernel::TiledGemm => tiled_gemm::backward(self, dy),
        })
    }

    /// Peak extra memory in bytes (beyond the layer, the input and the returned output) of a
    /// forward or input-gradient with `kernel` on `tokens` rows, with `threads` tasks running
    /// concurrently (e.g. `rayon::current_num_threads()`).
    ///
    /// - Lut forward: one block of tables (≤ 1 MiB, at least one input group; a per-thread
    ///   scratch kept between calls, so it stays allocated at the largest block a thread used)
    ///   + the `[out, tokens]` accumulator + a feature-major copy of `x`;
    /// - Lut backward: the scaled `dy` + `threads ×` per-group accumulators (`M·2^B·og·tokens`);
    /// - DecodeDot: a copy of `x` (or scaled `dy`) + one tile per thread; for `og = 1`, `ig = 8`
    ///   from two tokens on (input gradient: from one) the decode-and-FMA kernel's padded copy,
    ///   its output buffer and per thread the lanes of 64 rows (forward) or 128 decoded rows;
    /// - TiledGemm: `threads ×` one decoded tile (≤ 512 KiB, at least one group);
    /// - Reference: the whole `W` (`out·in·4` bytes).
    pub fn workspace_bytes(&self, kernel: Kernel, tokens: usize, threads: usize) -> usize {
        let f = std::mem::size_of::<f32>();
        let s = &self.scheme;
        let (o, i, t) = (self.out_features, self.in_features, tokens);
        let threads = threads.max(1);
        let floats = match kernel {
            Kernel::Reference => o * i,
            Kernel::Lut => {
                let fwd =
                    lut::block_groups(self, t) * lut::lut_floats_per_group(self, t) + o * t + i * t;
                let bwd = o * t + threads * lut::lut_floats_per_group(self, t);
                fwd.max(bwd)
            }
            Kernel::DecodeDot => {
                let general = o.max(i) * t
                    + threads * (s.group_len() + s.out_group_size * t + s.in_group_size * t);
                if self.fast_decode() {
                    let fwd = if t > 1 {
                        decode_fma::workspace_floats(self, t, threads, false)
                    } else {
                        general
                    };
                    fwd.max(decode_fma::workspace_floats(self, t, threads, true))
                } else {
                    general
                }
            }
            Kernel::TiledGemm => {
                threads * tiled_gemm::tile_floats(self).max(tiled_gemm::col_tile_floats(self))
            }
        };
        floats * f
    }
}

#[cfg(test)]
pub(crate) mod tests;
