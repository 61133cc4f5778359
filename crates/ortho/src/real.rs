//! The scalar trait: the numerics are generic over `f32` and `f64`.

use faer::traits::RealField;

/// A real floating-point scalar usable by every routine of this crate (`f32` or `f64`).
///
/// It joins faer's [`RealField`] (needed by its matmul and LU) with [`num_traits::Float`]
/// (for `sqrt`, `abs`, `is_finite`, …).
pub trait Real:
    RealField
    + num_traits::Float
    + num_traits::FromPrimitive
    + Copy
    + Send
    + Sync
    + std::iter::Sum
    + std::fmt::Display
    + 'static
{
    /// Converts an `f64` constant (rounding to nearest for `f32`).
    fn c(v: f64) -> Self;
    /// Widens to `f64` (exact for `f32` and `f64`).
    fn f64(self) -> f64;
}

impl Real for f32 {
    #[inline(always)]
    fn c(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn c(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
}
