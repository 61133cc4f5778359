//! Hand-written, runtime-dispatched kernels.
//!
//! Every kernel body is generic over the scalar and over a `FMA` flag and is compiled three
//! times: portable (`a·b + c`, two roundings), AVX2 + FMA and AVX-512F/VL (`fma(a, b, c)`, one
//! rounding), picked per call by an [`Isa`] token, which only run-time detection creates
//! ([`isa`]). Each output element is one fixed chain of operations whatever the vector width, so
//! the AVX2 and AVX-512 versions give identical bits; the portable version differs only by
//! rounding. Nothing depends on the number of threads.
//!
//! The exception is [`transpose`]: 16 × 16 tile transposes of `f32` with AVX-512 shuffles, which
//! only move (or negate) values, so their callers' scalar fallbacks give the same bits.

pub(crate) mod block_gemm;
pub(crate) mod gauss_jordan;
pub(crate) mod isa;
pub(crate) mod row_product;
pub(crate) mod transpose;

pub(crate) use isa::{Isa, Level};

use crate::real::Real;

/// Runs `f` inside a function compiled for the best instruction set of this CPU
/// ([`Isa::detect`], [`Isa::run`]).
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    Isa::detect().run(f)
}

/// `a·b + c`: fused (one rounding) when `FMA`, else a product and a sum.
#[inline(always)]
pub(crate) fn madd<T: Real, const FMA: bool>(a: T, b: T, c: T) -> T {
    if FMA {
        num_traits::Float::mul_add(a, b, c)
    } else {
        a * b + c
    }
}

/// Hints the CPU to bring the cache line holding `p` into L1 (a no-op off x86-64). Never faults,
/// whatever `p` is. (oftq-aqlm has its own copy: the two crates share no code by design.)
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it does not access memory architecturally and never
    // faults, for any address; SSE is part of the x86-64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
