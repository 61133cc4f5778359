//! Hand-written, runtime-dispatched kernels.
//!
//! Every kernel body is generic over the scalar and over a `FMA` flag and is compiled three
//! times: portable (`a·b + c`, two roundings), AVX2 + FMA and AVX-512F/VL (`fma(a, b, c)`, one
//! rounding), picked per call with `is_x86_feature_detected!`. Each output element is one fixed
//! chain of operations whatever the vector width, so the AVX2 and AVX-512 versions give identical
//! bits; the portable version differs only by rounding. Nothing depends on the number of threads.
//!
//! The exception is [`transpose`]: 16 × 16 tile transposes of `f32` with AVX-512 shuffles, which
//! only move (or negate) values, so their callers' scalar fallbacks give the same bits.

pub(crate) mod block_gemm;
pub(crate) mod gauss_jordan;
pub(crate) mod transpose;

use crate::real::Real;

/// The instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Baseline target features, no fused multiply-add.
    Portable,
    /// AVX2 and FMA (x86-64 only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// AVX-512F and FMA (x86-64 only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

/// The best instruction set of this CPU (detection is cached by the standard library).
pub(crate) fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("fma")
        {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// Runs `f` inside a function compiled for the best instruction set of this CPU ([`isa`]), so
/// that what LLVM inlines into it (loads, stores, comparisons, copies) is vectorized with AVX-512
/// or AVX2 rather than the SSE2 baseline. Floating-point results do not change: Rust never fuses
/// `a·b + c` on its own (use [`madd`] in a kernel for that).
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    match isa() {
        // SAFETY: the instruction sets are only used if detected.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { run_avx512(f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { run_avx2(f) },
        _ => f(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
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
/// whatever `p` is.
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
