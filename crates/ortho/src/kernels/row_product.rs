//! `y = x·B` for a single row `x`, with `B` given by rows: the few-token path of a rotation.
//!
//! While generating, each projection rotates one token: per block a `1 × b` by `b × b` product,
//! about a thousand multiply-adds. The tiled kernel ([`gemm_uninit`](super::block_gemm::gemm_uninit))
//! computes whole tiles of rows (32 for `f32` with AVX-512), so here the row is multiplied
//! directly: `B`'s rows are
//! contiguous (the caller transposes a column-major block once), and each step adds `x[p]`
//! times row `p` to all `n` sums, which vectorizes over the columns.
//!
//! Rounding: `y_j = (…((x_0·b_0j) + x_1·b_1j) + …) + x_{k−1}·b_{k−1,j}`, one fused multiply-add
//! per term in ascending `p` starting from 0 (a product and a sum with the portable build) — the
//! chain of [`gemm_uninit`](super::block_gemm::gemm_uninit) with `α = 1`, so a token gets the
//! same bits whether it is rotated alone or among many.

use super::{Isa, Level, madd};
use crate::real::Real;

/// `y[j] = Σ_p x[p]·rows[p·n + j]` for `j < n`, `p < x.len()`, in the chain of the module notes
/// (`rows`: `B` row-major, `x.len()` rows of `n`).
///
/// # Panics
/// If `rows` is shorter than `x.len()·n` or `y` than `n`.
pub(crate) fn row_times_rows<T: Real>(x: &[T], rows: &[T], n: usize, y: &mut [T]) {
    row_times_rows_with(Isa::detect(), x, rows, n, y);
}

/// [`row_times_rows`] with an explicit instruction set (tests compare them with the tiled
/// kernel's; any [`Isa`] is one this CPU supports).
///
/// # Panics
/// As [`row_times_rows`].
pub(crate) fn row_times_rows_with<T: Real>(isa: Isa, x: &[T], rows: &[T], n: usize, y: &mut [T]) {
    let k = x.len();
    assert!(
        rows.len() >= k * n && y.len() >= n,
        "row product: {} elements of B for {k} × {n}, {} of y",
        rows.len(),
        y.len()
    );
    let (rows, y) = (&rows[..k * n], &mut y[..n]);
    match isa.level() {
        // SAFETY: an `Isa` proves the CPU supports its level's features.
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => unsafe { row_avx512(x, rows, n, y) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => unsafe { row_avx2(x, rows, n, y) },
        _ => row_imp::<T, false>(x, rows, n, y),
    }
}

/// The body: `y` cleared, then `y[j] ← madd(x[p], rows[p·n + j], y[j])` for `p` ascending.
#[inline(always)]
fn row_imp<T: Real, const FMA: bool>(x: &[T], rows: &[T], n: usize, y: &mut [T]) {
    y.fill(T::zero());
    if n == 0 {
        return;
    }
    for (&xp, row) in x.iter().zip(rows.chunks_exact(n)) {
        for (acc, &b) in y.iter_mut().zip(row) {
            *acc = madd::<T, FMA>(xp, b, *acc);
        }
    }
}

/// [`row_imp`] compiled for AVX-512 (fused multiply-adds).
///
/// # Safety
/// The CPU supports AVX-512F/VL and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn row_avx512<T: Real>(x: &[T], rows: &[T], n: usize, y: &mut [T]) {
    row_imp::<T, true>(x, rows, n, y);
}

/// [`row_imp`] compiled for AVX2 (fused multiply-adds).
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2<T: Real>(x: &[T], rows: &[T], n: usize, y: &mut [T]) {
    row_imp::<T, true>(x, rows, n, y);
}

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use faer::{Mat, MatRef};

    use super::*;
    use crate::kernels::block_gemm::gemm_uninit_with;
    use crate::kernels::block_gemm::tests::filled;

    /// `row_times_rows_with` against `gemm_uninit_with` (α = 1, one row) at every instruction
    /// set, bit for bit.
    fn check<T: Real>(x: MatRef<'_, T>, b: MatRef<'_, T>, what: &str) {
        let (k, n) = (b.nrows(), b.ncols());
        let rows: Vec<T> = (0..k * n).map(|i| b[(i / n, i % n)]).collect();
        let xr: Vec<T> = (0..k).map(|p| x[(0, p)]).collect();
        for isa in Isa::available() {
            let mut y = vec![T::c(f64::NAN); n];
            row_times_rows_with(isa, &xr, &rows, n, &mut y);
            let mut want = vec![MaybeUninit::new(T::zero()); n];
            gemm_uninit_with(isa, T::one(), x, b, &mut want, 1);
            for (j, (got, want)) in y.iter().zip(&want).enumerate() {
                // SAFETY: initialised above.
                let want = unsafe { want.assume_init() };
                assert!(
                    got.f64().to_bits() == want.f64().to_bits(),
                    "{what}, {isa:?}, column {j}: {got:?} vs {want:?}"
                );
            }
        }
    }

    fn shapes<T: Real>() {
        for (k, n) in [(32, 32), (16, 16), (64, 64), (7, 13), (1, 1), (0, 5)] {
            let (x, b) = (
                filled::<T>(1, k, 1 + k as u64),
                filled::<T>(k, n, 2 + n as u64),
            );
            check(x.as_ref(), b.as_ref(), &format!("{k} × {n}"));
        }
        // Signed zeros (every product −0, the sum +0) and an exact cancellation.
        let x = Mat::<T>::from_fn(1, 4, |_, _| T::c(-0.0));
        check(x.as_ref(), filled::<T>(4, 8, 3).as_ref(), "−0 row");
        let x = Mat::<T>::from_fn(1, 2, |_, _| T::one());
        let b = Mat::<T>::from_fn(2, 16, |p, j| {
            T::c(if p == 0 { 0.25 } else { -0.25 } * j as f64)
        });
        check(x.as_ref(), b.as_ref(), "cancellation");
    }

    #[test]
    fn gives_the_bits_of_the_tiled_kernel_at_every_instruction_set() {
        shapes::<f32>();
        shapes::<f64>();
    }

    #[test]
    fn short_operands_panic() {
        let r = std::panic::catch_unwind(|| {
            let mut y = [0.0f32; 4];
            row_times_rows(&[1.0f32; 3], &[0.0; 11], 4, &mut y);
        });
        assert!(r.is_err());
    }
}
