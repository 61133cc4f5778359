use super::*;
use crate::matrix::par_col_blocks_uninit;
use faer::Mat;

const MS: [usize; 6] = [1, 7, 16, 33, 64, 515];
const KNS: [usize; 6] = [1, 3, 8, 17, 32, 64];

/// A `rows × cols` matrix of pseudo-random values in `[−1, 1)` (xorshift from `seed`).
pub(crate) fn filled<T: Real>(rows: usize, cols: usize, seed: u64) -> Mat<T> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    Mat::from_fn(rows, cols, |_, _| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        T::c(((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0)
    })
}

/// `α·X·B` in f64 with a plain triple loop.
fn naive_xb<T: Real>(alpha: T, x: MatRef<'_, T>, b: MatRef<'_, T>) -> Mat<f64> {
    Mat::from_fn(x.nrows(), b.ncols(), |i, j| {
        alpha.f64()
            * (0..x.ncols())
                .map(|p| x[(i, p)].f64() * b[(p, j)].f64())
                .sum::<f64>()
    })
}

/// Instruction sets this CPU can run (the portable one always).
fn isas() -> Vec<Isa> {
    Isa::available()
}

/// Runs `gemm_uninit_with` into storage with column stride `ld = m + pad`, pre-filled with a
/// sentinel that must survive outside the `m × n` window.
fn run_xb<T: Real>(isa: Isa, alpha: T, x: MatRef<'_, T>, b: MatRef<'_, T>, pad: usize) -> Vec<T> {
    let (m, n) = (x.nrows(), b.ncols());
    let ld = m + pad;
    let sentinel = T::c(12345.0);
    let mut y = vec![MaybeUninit::new(sentinel); ld * n];
    gemm_uninit_with(isa, alpha, x, b, &mut y, ld);
    // SAFETY: every element was initialised (with the sentinel or by the kernel).
    let y: Vec<T> = y.into_iter().map(|v| unsafe { v.assume_init() }).collect();
    for j in 0..n {
        for i in m..ld {
            assert_eq!(y[i + j * ld], sentinel, "padding written at ({i}, {j})");
        }
    }
    y
}

/// The instruction sets with fused multiply-add (AVX2, AVX-512) gave identical bits.
fn assert_fused_agree<T: Real>(outs: &[(Isa, Vec<T>)], what: &str) {
    let fused: Vec<_> = outs
        .iter()
        .filter(|(i, _)| i.level() != Level::Portable)
        .collect();
    for w in fused.windows(2) {
        assert!(
            w[0].1 == w[1].1,
            "{:?} vs {:?} differ at {what}",
            w[0].0,
            w[1].0
        );
    }
}

fn check_close<T: Real>(got: &[T], ld: usize, want: &Mat<f64>, scale: f64, tol: f64, what: &str) {
    for j in 0..want.ncols() {
        for i in 0..want.nrows() {
            let (g, w) = (got[i + j * ld].f64(), want[(i, j)]);
            assert!(
                (g - w).abs() <= tol * scale,
                "{what} ({i}, {j}): {g} vs {w}"
            );
        }
    }
}

/// Runs `run` with every instruction set, checks each result against `want` (column stride `ld`),
/// and the fused ones against each other bit for bit.
fn check_every_isa<T: Real>(
    want: &Mat<f64>,
    ld: usize,
    scale: f64,
    tol: f64,
    what: &str,
    run: impl Fn(Isa) -> Vec<T>,
) {
    let outs: Vec<(Isa, Vec<T>)> = isas()
        .into_iter()
        .map(|isa| {
            let y = run(isa);
            check_close(&y, ld, want, scale, tol, &format!("{isa:?} {what}"));
            (isa, y)
        })
        .collect();
    assert_fused_agree(&outs, what);
}

fn xb_all_shapes<T: Real>(tol: f64) {
    for &m in &MS {
        for &k in &KNS {
            for &n in &KNS {
                let x = filled::<T>(m, k, (m * 131 + k * 7 + n) as u64);
                let b = filled::<T>(k, n, (m + k * 17 + n * 3) as u64);
                let alpha = T::c(-0.75);
                let want = naive_xb(alpha, x.as_ref(), b.as_ref());
                check_every_isa(
                    &want,
                    m + 3,
                    k as f64,
                    tol,
                    &format!("{m}x{k}x{n}"),
                    |isa| run_xb(isa, alpha, x.as_ref(), b.as_ref(), 3),
                );
            }
        }
    }
}

#[test]
fn xb_matches_naive_f64() {
    xb_all_shapes::<f64>(1e-14);
}

#[test]
fn xb_matches_naive_f32() {
    xb_all_shapes::<f32>(1e-5);
}

#[test]
fn xb_strided_and_transposed_operands() {
    // X as a window of a larger matrix, X transposed (row stride ≠ 1), B transposed and reversed.
    let big = filled::<f64>(600, 90, 1);
    let bigt = filled::<f64>(40, 530, 2);
    let bsrc = filled::<f64>(50, 50, 3);
    for &(m, k, n) in &[
        (515usize, 17usize, 32usize),
        (33, 32, 8),
        (7, 3, 17),
        (32, 32, 32),
    ] {
        let xs = [
            big.as_ref().submatrix(5, 11, m, k),
            bigt.as_ref().submatrix(2, 3, k, m).transpose(),
        ];
        let bs = [
            bsrc.as_ref().submatrix(1, 2, k, n),
            bsrc.as_ref().submatrix(4, 0, n, k).transpose(),
            bsrc.as_ref().submatrix(0, 0, k, n).reverse_rows_and_cols(),
        ];
        for x in xs {
            for b in bs {
                let want = naive_xb(1.5, x, b);
                for isa in isas() {
                    let y = run_xb(isa, 1.5, x, b, 0);
                    check_close(&y, m, &want, k as f64, 1e-14, &format!("{isa:?} strided"));
                }
            }
        }
    }
}

#[test]
fn xb_accumulates() {
    for &(m, k, n) in &[
        (515usize, 32usize, 32usize),
        (7, 17, 3),
        (1, 1, 1),
        (64, 64, 64),
    ] {
        let x = filled::<f64>(m, k, 4);
        let b = filled::<f64>(k, n, 5);
        let y0 = filled::<f64>(m + 2, n, 6);
        let mut want = naive_xb(0.5, x.as_ref(), b.as_ref());
        for j in 0..n {
            for i in 0..m {
                want[(i, j)] += y0[(i, j)];
            }
        }
        check_every_isa(&want, m + 2, k as f64, 1e-14, "acc", |isa| {
            let mut y: Vec<f64> = (0..n)
                .flat_map(|j| y0.col(j).iter().copied().collect::<Vec<_>>())
                .collect();
            gemm_acc_with(isa, 0.5, x.as_ref(), b.as_ref(), &mut y, m + 2);
            for j in 0..n {
                for i in m..m + 2 {
                    assert_eq!(y[i + j * (m + 2)], y0[(i, j)]);
                }
            }
            y
        });
    }
    // The public entry point with the detected instruction set.
    let x = filled::<f32>(9, 4, 7);
    let b = filled::<f32>(4, 2, 8);
    let mut y = vec![1.0f32; 18];
    gemm_acc(2.0, x.as_ref(), b.as_ref(), &mut y, 9);
    let want = naive_xb(2.0, x.as_ref(), b.as_ref());
    check_close(
        &y,
        9,
        &Mat::from_fn(9, 2, |i, j| want[(i, j)] + 1.0),
        4.0,
        1e-6,
        "acc f32",
    );
}

#[test]
fn xb_empty_shapes() {
    let x = filled::<f64>(5, 0, 1);
    let b = filled::<f64>(0, 3, 2);
    let mut y = vec![MaybeUninit::new(7.0); 15];
    gemm_uninit(1.0, x.as_ref(), b.as_ref(), &mut y, 5);
    // SAFETY: initialised above.
    assert!(y.iter().all(|v| unsafe { v.assume_init() } == 0.0));
    let x = filled::<f64>(0, 4, 1);
    let b = filled::<f64>(4, 3, 2);
    gemm_uninit(1.0, x.as_ref(), b.as_ref(), &mut [], 0);
}

/// `Xᵀ·D` in f64 with a plain loop.
fn naive_tn<T: Real>(x: MatRef<'_, T>, d: MatRef<'_, T>) -> Mat<f64> {
    Mat::from_fn(x.ncols(), d.ncols(), |p, q| {
        (0..x.nrows())
            .map(|i| x[(i, p)].f64() * d[(i, q)].f64())
            .sum::<f64>()
    })
}

fn run_tn<T: Real>(isa: Isa, x: MatRef<'_, T>, d: MatRef<'_, T>, pad: usize) -> Vec<T> {
    let (k, n) = (x.ncols(), d.ncols());
    let ld = k + pad;
    let sentinel = T::c(-999.0);
    let mut c = vec![MaybeUninit::new(sentinel); ld * n];
    gemm_tn_uninit_with(isa, x, d, &mut c, ld);
    // SAFETY: every element was initialised (with the sentinel or by the kernel).
    let c: Vec<T> = c.into_iter().map(|v| unsafe { v.assume_init() }).collect();
    for q in 0..n {
        for p in k..ld {
            assert_eq!(c[p + q * ld], sentinel, "padding written at ({p}, {q})");
        }
    }
    c
}

fn tn_all_shapes<T: Real>(tol: f64) {
    for &m in &MS {
        for &k in &KNS {
            for &n in &KNS {
                let x = filled::<T>(m, k, (m * 3 + k * 5 + n) as u64);
                let d = filled::<T>(m, n, (m * 11 + k + n * 13) as u64);
                let want = naive_tn(x.as_ref(), d.as_ref());
                check_every_isa(
                    &want,
                    k + 2,
                    m as f64,
                    tol,
                    &format!("{m}x{k}x{n}"),
                    |isa| run_tn(isa, x.as_ref(), d.as_ref(), 2),
                );
            }
        }
    }
}

#[test]
fn tn_matches_naive_f64() {
    tn_all_shapes::<f64>(1e-14);
}

#[test]
fn tn_matches_naive_f32() {
    tn_all_shapes::<f32>(1e-5);
}

#[test]
fn tn_strided_operands_and_empty() {
    let big = filled::<f64>(600, 80, 9);
    let bigt = filled::<f64>(80, 600, 10);
    for &(m, k, n) in &[(515usize, 17usize, 32usize), (33, 8, 3), (1, 1, 1)] {
        let xs = [
            big.as_ref().submatrix(3, 1, m, k),
            bigt.as_ref().submatrix(0, 7, k, m).transpose(),
            big.as_ref().submatrix(0, 0, m, k).reverse_cols(),
        ];
        let d = big.as_ref().submatrix(50, 40, m, n);
        for x in xs {
            let want = naive_tn(x, d);
            for isa in isas() {
                let c = run_tn(isa, x, d, 1);
                check_close(
                    &c,
                    k + 1,
                    &want,
                    m as f64,
                    1e-14,
                    &format!("{isa:?} tn strided"),
                );
            }
        }
    }
    // m = 0: C = 0.
    let x = filled::<f32>(0, 3, 1);
    let d = filled::<f32>(0, 2, 2);
    let mut c = vec![MaybeUninit::new(5.0f32); 6];
    gemm_tn_uninit(x.as_ref(), d.as_ref(), &mut c, 3);
    // SAFETY: initialised above.
    assert!(c.iter().all(|v| unsafe { v.assume_init() } == 0.0));
}

#[test]
fn copy_and_uninit_matrix() {
    let src = filled::<f64>(7, 5, 3);
    // SAFETY: `copy_uninit` initialises every element of the 7 × 5 shape.
    let m = unsafe {
        par_col_blocks_uninit(7, 5, 5, |_, s, _, ld| {
            copy_uninit(src.as_ref().transpose().transpose(), s, ld)
        })
    }
    .0;
    assert_eq!(m, src);
    // SAFETY: as above, from a transposed (row-stride ≠ 1) source.
    let t = unsafe {
        par_col_blocks_uninit(5, 7, 7, |_, s, _, ld| {
            copy_uninit(src.as_ref().transpose(), s, ld)
        })
    }
    .0;
    assert_eq!(t, src.transpose().to_owned());
}
