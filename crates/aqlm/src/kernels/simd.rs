//! Run-time SIMD dispatch for every hand-written loop of the crate (kernels, decoding, encoder):
//! one mechanism, an [`Isa`] token that only run-time detection creates, and [`multiversion!`],
//! which compiles a body once per instruction-set [`Level`] and runs the build the token allows.
//!
//! The levels and detection rules are those of `oftq-ortho`'s kernels (the crates share no code by
//! design, so each holds this small module): portable (the baseline target), AVX2 + FMA, and
//! AVX-512F/VL + AVX2 + FMA. The bodies never call `mul_add` and Rust never contracts `a * b + c`
//! on its own, so every build of a body gives identical bits; only the speed differs. (The
//! few-token decode-and-FMA kernel uses [`lanes16`](super::lanes16) instead: explicit registers,
//! fused multiply-adds in every backend, the same bits too. The one-token table build calls
//! `mul_add` on purpose: fused in hardware in the SIMD builds and by software in the portable
//! one, so its builds agree bit for bit as well.)

/// Clears the upper halves of the AVX vector registers of the calling thread (`vzeroupper`) when
/// the CPU has AVX; nothing otherwise.
///
/// faer's matrix products run assembly micro-kernels that return with the upper register halves
/// dirty. Until something clears them, every legacy-SSE instruction on that thread — the code
/// compiled for the baseline target, most of the Rust code around the kernels — pays a
/// state-transition penalty: measured here, a softmax loop over 128 × 49152 `f32` took 0.91 s
/// after a faer product on its thread and 0.025 s before it. Call this on every thread that ran a
/// faer product (for `Par::rayon`, on every worker: `rayon::broadcast`).
pub fn clear_upper_simd_state() {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx") {
        // SAFETY: AVX is available (checked above). `vzeroupper` only zeroes bits 128 and up of
        // the vector registers: code compiled without AVX never uses them, and code compiled with
        // AVX does not keep values in them across this call (the intrinsic is modelled as
        // clobbering them).
        unsafe { std::arch::x86_64::_mm256_zeroupper() }
    }
}

/// An instruction-set level, from the baseline up. Each level includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// Baseline target features.
    Portable,
    /// AVX2 and FMA (x86-64 only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// AVX-512F, AVX-512VL, AVX2 and FMA (x86-64 only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
}

/// A [`Level`] this CPU supports: obtainable only from run-time detection (the field is private
/// to this module), so holding one makes running that level's `target_feature` code sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Isa {
    level: Level,
}

impl Isa {
    /// The best level of this CPU (detection is cached by the standard library):
    /// [`Level::Avx512`] with AVX-512F, AVX-512VL, AVX2 and FMA; else [`Level::Avx2`] with AVX2
    /// and FMA; else [`Level::Portable`].
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
            {
                return Self {
                    level: Level::Avx512,
                };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Self { level: Level::Avx2 };
            }
        }
        Self {
            level: Level::Portable,
        }
    }

    /// The level this token proves.
    pub(crate) fn level(self) -> Level {
        self.level
    }
}

/// Defines `fn name(args) -> R` whose `#[inline(always)]` body is compiled for the portable
/// baseline and for every level up to `max` (`avx2` or `avx512`), and dispatched with
/// [`Isa::detect`]: the best build this CPU can run. `max = avx2` keeps a kernel that was
/// measured fastest with 256-bit vectors off AVX-512.
macro_rules! multiversion {
    (max = avx2; $(#[$m:meta])* $vis:vis fn $name:ident($($p:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])* $vis fn $name($($p: $t),*) $(-> $r)? {
            #[inline(always)]
            fn imp($($p: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($p: $t),*) $(-> $r)? {
                    imp($($p),*)
                }
                use $crate::kernels::simd::{Isa, Level};
                if Isa::detect().level() >= Level::Avx2 {
                    // SAFETY: the token proves the CPU supports AVX2 and FMA.
                    return unsafe { avx2($($p),*) };
                }
            }
            imp($($p),*)
        }
    };
    (max = avx512; $(#[$m:meta])* $vis:vis fn $name:ident($($p:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])* $vis fn $name($($p: $t),*) $(-> $r)? {
            #[inline(always)]
            fn imp($($p: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn avx512($($p: $t),*) $(-> $r)? {
                    imp($($p),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($p: $t),*) $(-> $r)? {
                    imp($($p),*)
                }
                use $crate::kernels::simd::{Isa, Level};
                match Isa::detect().level() {
                    // SAFETY: the token proves the CPU supports AVX-512F/VL, AVX2 and FMA.
                    Level::Avx512 => return unsafe { avx512($($p),*) },
                    // SAFETY: the token proves the CPU supports AVX2 and FMA.
                    Level::Avx2 => return unsafe { avx2($($p),*) },
                    Level::Portable => {}
                }
            }
            imp($($p),*)
        }
    };
}

pub(crate) use multiversion;
