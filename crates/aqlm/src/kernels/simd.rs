//! Runtime SIMD dispatch for the hand-written kernels.
//!
//! [`multiversion!`] compiles a kernel body twice: once for the portable baseline and once with
//! AVX2 enabled (picked at run time with `is_x86_feature_detected!`). The body never uses
//! fused multiply-add (Rust does not contract `a * b + c`), so both versions give identical bits.

/// Defines `fn name(args)` whose body is compiled for the baseline and for AVX2.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($p:ident : $t:ty),* $(,)?) $body:block) => {
        $(#[$m])* $vis fn $name($($p: $t),*) {
            #[inline(always)]
            fn imp($($p: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($p: $t),*) {
                    imp($($p),*)
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2($($p),*) };
                }
            }
            imp($($p),*)
        }
    };
}

pub(crate) use multiversion;
