//! Sixteen `f32` lanes with fused multiply-add, in three builds that give identical bits: one
//! AVX-512 register, two AVX2 registers, or a portable array with `f32::mul_add`.
//!
//! LLVM's auto-vectorizer, given the portable loops of [`decode_fma`](super::decode_fma), kept
//! the accumulators in memory and vectorized across them with gathers and scatters (measured
//! 12–200 ms where the explicit registers take 2–8 ms), so the many-token kernel is written
//! against this small interface instead. A backend value can only be obtained from run-time
//! detection ([`Isa`]), which makes its safe methods sound: each one runs instructions the CPU
//! was found to support.

use super::simd::{Isa, Level};

/// Sixteen `f32` lanes; `H` holds eight (one decoded input group).
pub(crate) trait Lanes16: Copy {
    /// A vector of sixteen lanes.
    type V: Copy;
    /// A vector of eight lanes.
    type H: Copy;
    /// Lanes `0..8` of `a` then `0..8` of `b`, read from memory.
    fn load_h(self, a: &[f32; 8]) -> Self::H;
    /// `a + b` per lane (one rounding).
    fn add_h(self, a: Self::H, b: Self::H) -> Self::H;
    /// Eight zero lanes.
    fn zero_h(self) -> Self::H;
    /// `lo` in lanes `0..8`, `hi` in lanes `8..16`.
    fn join(self, lo: Self::H, hi: Self::H) -> Self::V;
    /// `a` in lanes `0..8` and again in lanes `8..16`, read from memory.
    fn load_dup(self, a: &[f32; 8]) -> Self::V;
    /// `a + b` per lane (one rounding).
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `load_dup(&t0[c0]) + load_dup(&t1[c1])` (one rounding per lane): a decoded group of two
    /// byte-indexed codebooks, in both halves.
    #[inline(always)]
    fn table_sum_dup(self, t0: &[[f32; 8]; 256], c0: u8, t1: &[[f32; 8]; 256], c1: u8) -> Self::V {
        self.add(
            self.load_dup(&t0[usize::from(c0)]),
            self.load_dup(&t1[usize::from(c1)]),
        )
    }
    /// Sixteen lanes read from memory.
    fn load(self, p: &[f32; 16]) -> Self::V;
    /// Sixteen lanes written to memory.
    fn store(self, v: Self::V, p: &mut [f32; 16]);
    /// `v` in every lane.
    fn splat(self, v: f32) -> Self::V;
    /// `a·b + c` per lane, rounded once.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
}

/// The portable backend: arrays and `f32::mul_add` (a library call on CPUs without FMA).
#[derive(Clone, Copy)]
pub(crate) struct Portable;

impl Lanes16 for Portable {
    type V = [f32; 16];
    type H = [f32; 8];
    #[inline(always)]
    fn load_h(self, a: &[f32; 8]) -> [f32; 8] {
        *a
    }
    #[inline(always)]
    fn add_h(self, a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    fn zero_h(self) -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    fn join(self, lo: [f32; 8], hi: [f32; 8]) -> [f32; 16] {
        std::array::from_fn(|i| if i < 8 { lo[i] } else { hi[i - 8] })
    }
    #[inline(always)]
    fn load_dup(self, a: &[f32; 8]) -> [f32; 16] {
        self.join(*a, *a)
    }
    #[inline(always)]
    fn add(self, a: [f32; 16], b: [f32; 16]) -> [f32; 16] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    #[inline(always)]
    fn load(self, p: &[f32; 16]) -> [f32; 16] {
        *p
    }
    #[inline(always)]
    fn store(self, v: [f32; 16], p: &mut [f32; 16]) {
        *p = v;
    }
    #[inline(always)]
    fn splat(self, v: f32) -> [f32; 16] {
        [v; 16]
    }
    #[inline(always)]
    fn fma(self, a: [f32; 16], b: [f32; 16], c: [f32; 16]) -> [f32; 16] {
        std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, __m512, _mm256_add_ps, _mm256_castps_pd, _mm256_fmadd_ps, _mm256_loadu_pd,
        _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps, _mm512_add_ps,
        _mm512_broadcast_f64x4, _mm512_castpd_ps, _mm512_castps_pd, _mm512_castps256_ps512,
        _mm512_fmadd_ps, _mm512_insertf64x4, _mm512_loadu_ps, _mm512_set1_ps, _mm512_storeu_ps,
    };

    use super::{Isa, Lanes16, Level};

    /// The eight-lane half of both x86 backends: one 256-bit register (AVX, which both have).
    macro_rules! half_avx {
        () => {
            type H = __m256;
            #[inline(always)]
            fn load_h(self, a: &[f32; 8]) -> __m256 {
                unsafe { _mm256_loadu_ps(a.as_ptr()) }
            }
            #[inline(always)]
            fn add_h(self, a: __m256, b: __m256) -> __m256 {
                unsafe { _mm256_add_ps(a, b) }
            }
            #[inline(always)]
            fn zero_h(self) -> __m256 {
                unsafe { _mm256_setzero_ps() }
            }
        };
    }

    /// The AVX2 + FMA backend: two 256-bit registers. Only [`Avx2::detect`] makes one.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(());

    impl Avx2 {
        /// The backend, if this CPU has AVX2 and FMA.
        pub(crate) fn detect() -> Option<Self> {
            (Isa::detect().level() >= Level::Avx2).then_some(Self(()))
        }
    }

    // SAFETY (every method): a value of `Avx2` exists only if the CPU supports AVX2 and FMA
    // (`Avx2::detect`); the loads and stores go through references to arrays of the right size.
    impl Lanes16 for Avx2 {
        type V = (__m256, __m256);
        half_avx!();
        #[inline(always)]
        fn join(self, lo: __m256, hi: __m256) -> (__m256, __m256) {
            (lo, hi)
        }
        #[inline(always)]
        fn load_dup(self, a: &[f32; 8]) -> (__m256, __m256) {
            let h = self.load_h(a);
            (h, h)
        }
        #[inline(always)]
        fn add(self, a: (__m256, __m256), b: (__m256, __m256)) -> (__m256, __m256) {
            unsafe { (_mm256_add_ps(a.0, b.0), _mm256_add_ps(a.1, b.1)) }
        }
        #[inline(always)]
        fn load(self, p: &[f32; 16]) -> (__m256, __m256) {
            unsafe {
                (
                    _mm256_loadu_ps(p.as_ptr()),
                    _mm256_loadu_ps(p.as_ptr().add(8)),
                )
            }
        }
        #[inline(always)]
        fn store(self, v: (__m256, __m256), p: &mut [f32; 16]) {
            unsafe {
                _mm256_storeu_ps(p.as_mut_ptr(), v.0);
                _mm256_storeu_ps(p.as_mut_ptr().add(8), v.1);
            }
        }
        #[inline(always)]
        fn splat(self, v: f32) -> (__m256, __m256) {
            unsafe { (_mm256_set1_ps(v), _mm256_set1_ps(v)) }
        }
        #[inline(always)]
        fn fma(self, a: (__m256, __m256), b: (__m256, __m256), c: (__m256, __m256)) -> Self::V {
            unsafe {
                (
                    _mm256_fmadd_ps(a.0, b.0, c.0),
                    _mm256_fmadd_ps(a.1, b.1, c.1),
                )
            }
        }
    }

    /// `Avx512::table_sum_dup` in assembly: two `vbroadcastf64x4` loads addressed by table and
    /// byte offset, one 512-bit addition. Written with intrinsics, LLVM turns the two broadcasts
    /// and the addition into a 256-bit load, a 256-bit addition whose memory operand (indexed)
    /// issues as two micro-ops, and a `vinsertf64x4` on the port the multiply-adds use; one
    /// micro-op more per decoded group, which the few-token forward measured (see its notes).
    ///
    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sum_dup_asm(t0: &[[f32; 8]; 256], c0: u8, t1: &[[f32; 8]; 256], c1: u8) -> __m512 {
        let w: __m512;
        let _tmp: __m512;
        // SAFETY: the CPU has AVX-512F (the contract). Each load reads the 32 bytes of entry
        // `c < 256` of a table of 256 entries of 32 bytes (`byte offset = c·32`), borrowed for
        // the call; nothing is written but the two output registers, no flags, no stack.
        unsafe {
            std::arch::asm!(
                "vbroadcastf64x4 {w}, ymmword ptr [{t0} + {i0}]",
                "vbroadcastf64x4 {tmp}, ymmword ptr [{t1} + {i1}]",
                "vaddps {w}, {w}, {tmp}",
                w = out(zmm_reg) w,
                tmp = out(zmm_reg) _tmp,
                t0 = in(reg) t0.as_ptr(),
                i0 = in(reg) usize::from(c0) << 5,
                t1 = in(reg) t1.as_ptr(),
                i1 = in(reg) usize::from(c1) << 5,
                options(pure, readonly, nostack, preserves_flags)
            );
        }
        w
    }

    /// The AVX-512 backend: one 512-bit register. Only [`Avx512::detect`] makes one.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(());

    impl Avx512 {
        /// The backend, if this CPU has AVX-512F/VL, AVX2 and FMA.
        pub(crate) fn detect() -> Option<Self> {
            (Isa::detect().level() >= Level::Avx512).then_some(Self(()))
        }
    }

    // SAFETY (every method): a value of `Avx512` exists only if the CPU supports AVX-512F/VL,
    // AVX2 and FMA (`Avx512::detect`); the loads and stores go through references to arrays of
    // the right size.
    impl Lanes16 for Avx512 {
        type V = __m512;
        half_avx!();
        #[inline(always)]
        fn join(self, lo: __m256, hi: __m256) -> __m512 {
            unsafe {
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                    _mm512_castps_pd(_mm512_castps256_ps512(lo)),
                    _mm256_castps_pd(hi),
                ))
            }
        }
        /// A `vbroadcastf64x4` from memory (LLVM may instead load 256 bits and shuffle once
        /// after an addition of two of these: [`sum_dup_asm`]).
        #[inline(always)]
        fn load_dup(self, a: &[f32; 8]) -> __m512 {
            unsafe { _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(a.as_ptr().cast()))) }
        }
        #[inline(always)]
        fn add(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        /// The same additions in assembly ([`sum_dup_asm`]): one micro-op fewer.
        #[inline(always)]
        fn table_sum_dup(
            self,
            t0: &[[f32; 8]; 256],
            c0: u8,
            t1: &[[f32; 8]; 256],
            c1: u8,
        ) -> __m512 {
            unsafe { sum_dup_asm(t0, c0, t1, c1) }
        }
        #[inline(always)]
        fn load(self, p: &[f32; 16]) -> __m512 {
            unsafe { _mm512_loadu_ps(p.as_ptr()) }
        }
        #[inline(always)]
        fn store(self, v: __m512, p: &mut [f32; 16]) {
            unsafe { _mm512_storeu_ps(p.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn splat(self, v: f32) -> __m512 {
            unsafe { _mm512_set1_ps(v) }
        }
        #[inline(always)]
        fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
    }
}
