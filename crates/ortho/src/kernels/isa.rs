//! [`Isa`]: the instruction set a kernel may use, as a token that only run-time detection
//! creates.
//!
//! The kernels are compiled for three [`Level`]s — portable (the baseline target), AVX2 + FMA and
//! AVX-512F/VL + FMA — and a kernel runs the build of the level its [`Isa`] names. Running an
//! AVX-512 build on a CPU without AVX-512 is undefined behaviour, so an `Isa` is a proof: its
//! field is private to this module, and the only ways to get one are [`Isa::detect`] (the best
//! level of this CPU), [`Isa::portable`] (always safe) and, in tests, [`Isa::available`] (every
//! level this CPU supports). Functions taking an `Isa` are therefore safe to call with any value
//! a caller can name.
//!
//! The same mechanism (levels, detection rules, token) is used by `oftq-aqlm`'s kernels; the two
//! crates share no code by design, so each holds a copy of this small module.

/// Clears the upper halves of the AVX vector registers of the calling thread (`vzeroupper`) when
/// the CPU has AVX; nothing otherwise.
///
/// faer's matrix products run assembly micro-kernels that return with the upper register halves
/// dirty. Until something clears them, every legacy-SSE instruction on that thread — the code
/// compiled for the baseline target, most of the Rust code around the kernels — pays a
/// state-transition penalty: measured here, a softmax loop over 128 × 49152 `f32` took 0.91 s
/// after a faer product on its thread and 0.025 s before it. Call this on every thread that ran a
/// faer product (for `Par::rayon`, on every worker: `rayon::broadcast`). oftq-aqlm has the same function.
pub(crate) fn clear_upper_simd_state() {
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
    /// Baseline target features, no fused multiply-add.
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
    /// [`Level::Avx512`] with AVX-512F, AVX-512VL and FMA; else [`Level::Avx2`] with AVX2 and FMA;
    /// else [`Level::Portable`].
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
        Self::portable()
    }

    /// The baseline level, valid on every CPU.
    pub(crate) fn portable() -> Self {
        Self {
            level: Level::Portable,
        }
    }

    /// Every level this CPU supports, from the baseline up to [`detect`](Self::detect)'s (tests
    /// compare the builds).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Self> {
        let best = Self::detect().level;
        [Level::Portable, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|l| *l <= best)
            .map(|level| Self { level })
            .collect()
    }

    /// The level this token proves.
    pub(crate) fn level(self) -> Level {
        self.level
    }

    /// Runs `f` inside a function compiled for this level, so that what LLVM inlines into it
    /// (loads, stores, comparisons, copies) is vectorized with AVX-512 or AVX2 rather than the
    /// SSE2 baseline. Floating-point results do not change: Rust never fuses `a·b + c` on its own.
    pub(crate) fn run<R>(self, f: impl FnOnce() -> R) -> R {
        match self.level {
            // SAFETY: `self` proves the CPU supports the level (see the type's docs).
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { run_avx512(f) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { run_avx2(f) },
            _ => f(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_is_the_best_available_level() {
        let all = Isa::available();
        assert_eq!(all.first(), Some(&Isa::portable()));
        assert_eq!(all.last(), Some(&Isa::detect()));
        assert!(all.windows(2).all(|w| w[0].level() < w[1].level()));
        assert_eq!(Isa::detect().run(|| 3 + 4), 7);
    }
}
