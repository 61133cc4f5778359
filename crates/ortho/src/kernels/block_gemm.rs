//! Register-tiled products for block-diagonal rotations: `Y = α·X·B` ([`gemm_uninit`],
//! [`gemm_acc`]) and `C = Xᵀ·D` ([`gemm_tn_uninit`], [`gemm_tn_panel_uninit`]), written into
//! uninitialised memory so the caller needs no zero-fill.
//!
//! Shapes are those of one rotation block: `X` is `m × k` with `m` large (tokens) and
//! `k = n = b` small; they are general-purpose though (any `m, k, n ≥ 0`, e.g. `32 × 32 × 32`).
//!
//! Rounding (the same for every instruction set with FMA, hence AVX2 and AVX-512 give identical
//! bits; the portable version rounds the product and the sum separately):
//! - `Y = α·X·B`: `y_ij = α · s_ij` with `s_ij = (…((x_i0·b_0j) + x_i1·b_1j) + …) + x_i,k−1·b_k−1,j`,
//!   one fused multiply-add per term in ascending `p` starting from `0`; accumulating,
//!   `y_ij ← y_ij + α·s_ij` (one fused multiply-add).
//! - `C = Xᵀ·D`: `c_pq` splits the rows into `L` lanes (`L = 16` for `f32`, `8` for `f64`): lane `l`
//!   sums `x_ip·d_iq` over `i ≡ l (mod L)` in ascending `i` (one multiply-add each, the rows past
//!   the last full group of `L` padded with zeros), then the lanes are added pairwise:
//!   `v_l ← v_l + v_{l+L/2}`, then `L/4`, …, `1`; `c_pq = v_0`.
//! - `C = Xᵀ·D` by [`gemm_tn_panel_uninit`] (`f32` with AVX-512, for blocks of 32 and more):
//!   `c_pq` is one fused multiply-add per row in ascending `i` from `0` (see [`tn_panel`]).

use std::mem::MaybeUninit;

use faer::MatRef;

use super::{Isa, Level, madd, prefetch};
use crate::real::Real;

mod tn_panel;

pub(crate) use tn_panel::gemm_tn_panel_uninit;

/// Lanes of the `Xᵀ·D` partial sums for a scalar of `size` bytes: one AVX-512 register.
const fn tn_lanes(size: usize) -> usize {
    64 / size
}

// ---------------------------------------------------------------------------------------------
// Y = α·X·B
// ---------------------------------------------------------------------------------------------

/// What the `X·B` kernel does with an output element: `Overwrite` writes `α·s` into (possibly
/// uninitialised) memory, `Accumulate` reads it and writes `y + α·s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    /// `y ← α·s` (the old value is never read).
    Overwrite,
    /// `y ← y + α·s`.
    Accumulate,
}

/// The operands of `Y = α·X·B` as raw parts, checked by [`GemmArgs::new`].
///
/// `x` points to `X[0, 0]` of the `m × k` matrix with strides `(rsx, csx)`; `b` to `B[0, 0]` of the
/// `k × n` matrix with strides `(rsb, csb)`; `y` to `Y[0, 0]`, column-major with column stride
/// `ldy ≥ m` (`Y[i, j]` at `y + i + j·ldy`).
#[derive(Clone, Copy)]
struct GemmArgs<T> {
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    x: *const T,
    rsx: isize,
    csx: isize,
    b: *const T,
    rsb: isize,
    csb: isize,
    y: *mut T,
    ldy: usize,
    store: Store,
}

impl<T: Real> GemmArgs<T> {
    /// Checks the shapes against `y_len` elements of output storage.
    fn new(
        alpha: T,
        x: MatRef<'_, T>,
        b: MatRef<'_, T>,
        y: *mut T,
        y_len: usize,
        ldy: usize,
        store: Store,
    ) -> Self {
        let (m, k, n) = (x.nrows(), x.ncols(), b.ncols());
        assert_eq!(b.nrows(), k, "X·B: inner dimensions differ");
        assert!(
            n <= 1 || ldy >= m,
            "X·B: output column stride below the row count"
        );
        let need = if n == 0 || m == 0 {
            0
        } else {
            (n - 1) * ldy + m
        };
        assert!(y_len >= need, "X·B: output storage too short");
        Self {
            m,
            n,
            k,
            alpha,
            x: x.as_ptr(),
            rsx: x.row_stride(),
            csx: x.col_stride(),
            b: b.as_ptr(),
            rsb: b.row_stride(),
            csb: b.col_stride(),
            y,
            ldy,
            store,
        }
    }
}

/// Writes `Y = α·X·B` into `y` (column-major, column stride `ldy`, `Y[i, j]` at `y[i + j·ldy]`),
/// never reading it; on return every `y[i + j·ldy]` with `i < m`, `j < n` is initialised (and
/// nothing else is written). `X` (`m × k`) and `B` (`k × n`) may have any strides, so `Rᵀ` is
/// `r.transpose()`. Rounding: see the module notes.
///
/// # Panics
/// If `B` does not have `k` rows, `ldy < m` with more than one column, or `y` is too short.
pub(crate) fn gemm_uninit<T: Real>(
    alpha: T,
    x: MatRef<'_, T>,
    b: MatRef<'_, T>,
    y: &mut [MaybeUninit<T>],
    ldy: usize,
) {
    gemm_uninit_with(Isa::detect(), alpha, x, b, y, ldy);
}

/// [`gemm_uninit`] with an explicit instruction set (tests compare them). Safe for any `isa`:
/// an [`Isa`] exists only for a level this CPU supports.
pub(crate) fn gemm_uninit_with<T: Real>(
    isa: Isa,
    alpha: T,
    x: MatRef<'_, T>,
    b: MatRef<'_, T>,
    y: &mut [MaybeUninit<T>],
    ldy: usize,
) {
    let args = GemmArgs::new(
        alpha,
        x,
        b,
        y.as_mut_ptr().cast(),
        y.len(),
        ldy,
        Store::Overwrite,
    );
    // SAFETY: `args` was checked against `y`, borrowed mutably for the call; `x` and `b` are
    // valid views for their shapes and strides; `Overwrite` never reads `y`.
    unsafe { gemm_dispatch(isa, args) }
}

/// `Y ← Y + α·X·B` for an initialised `y` (layout as in [`gemm_uninit`]).
///
/// # Panics
/// As [`gemm_uninit`].
pub(crate) fn gemm_acc<T: Real>(
    alpha: T,
    x: MatRef<'_, T>,
    b: MatRef<'_, T>,
    y: &mut [T],
    ldy: usize,
) {
    gemm_acc_with(Isa::detect(), alpha, x, b, y, ldy);
}

/// [`gemm_acc`] with an explicit instruction set (any [`Isa`] is one this CPU supports).
pub(crate) fn gemm_acc_with<T: Real>(
    isa: Isa,
    alpha: T,
    x: MatRef<'_, T>,
    b: MatRef<'_, T>,
    y: &mut [T],
    ldy: usize,
) {
    let args = GemmArgs::new(alpha, x, b, y.as_mut_ptr(), y.len(), ldy, Store::Accumulate);
    // SAFETY: as in `gemm_uninit_with`; `y` is initialised, so reading it is sound.
    unsafe { gemm_dispatch(isa, args) }
}

/// Picks the compiled version and the register tile for `isa` and `T`.
///
/// `f32` with AVX-512 runs 32 × 8 (16 accumulators). Measured on one `512 × 32 · 32 × 32` block
/// (one thread, G multiply-adds/s, block in cache / 128 blocks streamed): 32 × 8 at 58–61 / 52–56;
/// 64 × 4 at 58 / 50; 48 × 8 at 53 / 48; 64 × 6 and 32 × 12 (24 accumulators) at 14–16, their
/// accumulators spilled in this generic form. The same 32 × 8 tile written with AVX-512
/// intrinsics and `B` packed gave the same bits at 63–64 / 47–48: not kept. Also measured and
/// dropped, on the rotation's forward + backward (`512 × 4096`, `b = 32`, 2 threads, alternating
/// runs): `B` packed per column tile in this generic kernel (contiguous broadcasts, no stride
/// arithmetic), median 2.48 → 2.56 ms over 8 rounds; non-temporal stores of `Y` for outputs of
/// 1 MiB and more, 2.3 → 5.3 ms; a 48 × 8 tile in AVX-512 intrinsics (24 accumulators, none
/// spilled; `B` packed once per product, so 1.6 micro-ops per multiply-add against 2.4 here; the
/// last 32 rows by this kernel), 2.32–2.56 → 2.71–2.97 ms over 3 rounds.
///
/// # Safety
/// `args` must describe valid memory: `X` and `B` readable at every in-range index, `Y` writable
/// (and readable if `Store::Accumulate`) at every `i + j·ldy`, `i < m`, `j < n`, and not
/// overlapping `X` or `B`.
unsafe fn gemm_dispatch<T: Real>(isa: Isa, args: GemmArgs<T>) {
    if args.m == 0 || args.n == 0 {
        return;
    }
    let f32 = size_of::<T>() == 4;
    // SAFETY (all arms): the contract of this function; an `Isa` proves its level is supported.
    unsafe {
        match (isa.level(), f32) {
            #[cfg(target_arch = "x86_64")]
            (Level::Avx512, true) => gemm_avx512::<T, 32, 8>(args),
            #[cfg(target_arch = "x86_64")]
            (Level::Avx512, false) => gemm_avx512::<T, 16, 8>(args),
            #[cfg(target_arch = "x86_64")]
            (Level::Avx2, true) => gemm_avx2::<T, 16, 6>(args),
            #[cfg(target_arch = "x86_64")]
            (Level::Avx2, false) => gemm_avx2::<T, 8, 6>(args),
            (_, true) => gemm_imp::<T, false, 8, 4>(args),
            (_, false) => gemm_imp::<T, false, 4, 4>(args),
        }
    }
}

/// AVX-512 build of [`gemm_imp`].
///
/// # Safety
/// As [`gemm_dispatch`], and the CPU supports AVX-512F/VL and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn gemm_avx512<T: Real, const MR: usize, const NR: usize>(args: GemmArgs<T>) {
    // SAFETY: forwarded contract.
    unsafe { gemm_imp::<T, true, MR, NR>(args) }
}

/// AVX2 build of [`gemm_imp`].
///
/// # Safety
/// As [`gemm_dispatch`], and the CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_avx2<T: Real, const MR: usize, const NR: usize>(args: GemmArgs<T>) {
    // SAFETY: forwarded contract.
    unsafe { gemm_imp::<T, true, MR, NR>(args) }
}

/// Largest column stride of `X`, in bytes, at which [`gemm_imp`] reads full row tiles of a
/// column-major `X` in place instead of packing them: at most 16 cache lines apart, a tile's
/// columns spread over the L1 sets (a `b × b` block or a tape is 128 bytes per column; 64 tokens
/// of activations 256), while activations of 512 tokens (2 KiB apart) would all fall into a few
/// sets. Building R for 128 blocks of 32 (two `32 × 32` products each), in place against packed:
/// 218 → 197 µs on 2 threads, 328 → 317 µs on one.
const IN_PLACE_MAX_STRIDE_BYTES: usize = 1024;

/// Where the micro-kernel reads the `MR` rows of `X` of step `p`: `ptr + p·stride` (a packed
/// panel with `stride = MR`, or `X` itself with `stride` its column stride).
#[derive(Clone, Copy)]
struct Rows<T> {
    ptr: *const T,
    stride: usize,
}

/// The `X·B` driver: for each row tile of `MR` rows, reads `X`'s rows in place when the tile is
/// full and `X` is column-major with a small column stride ([`IN_PLACE_MAX_STRIDE_BYTES`]), else
/// packs them into a contiguous zero-padded panel (`panel[p·MR + i] = X[i0 + i, p]`, so the
/// column stride of `X`, often a multiple of 2 KiB that maps every column to the same cache set,
/// no longer matters), then runs the `MR × NR` micro-kernel over the column tiles and a `MR × 1`
/// one over the remaining columns. Either way each element is the same chain of operations.
///
/// The first column tile's micro-kernel also prefetches the next row tile of `X`, column `p` at
/// step `p`: the columns are usually 4 KiB-multiple strides apart, which no hardware prefetcher
/// follows. Spread over the product loop this is 6–9% faster (1 and 2 threads, 128 blocks of
/// `512 × 32 · 32 × 32`) than the same prefetches issued in one burst while packing.
///
/// # Safety
/// As [`gemm_dispatch`], with `m, n ≥ 1`.
#[inline(always)]
unsafe fn gemm_imp<T: Real, const FMA: bool, const MR: usize, const NR: usize>(a: GemmArgs<T>) {
    let in_place = a.rsx == 1
        && a.csx >= 0
        && a.csx.unsigned_abs() * size_of::<T>() <= IN_PLACE_MAX_STRIDE_BYTES;
    let mut panel = Vec::new();
    let mut i0 = 0;
    while i0 < a.m {
        let mr = MR.min(a.m - i0);
        let rows = if in_place && mr == MR {
            Rows {
                // SAFETY: row `i0 < m` of `X`, in range.
                ptr: unsafe { a.x.add(i0) },
                stride: a.csx.unsigned_abs(),
            }
        } else {
            panel.resize(MR * a.k, T::zero());
            // SAFETY: rows `i0 .. i0 + mr < m` and columns `< k` of `X` are in range.
            unsafe { pack_rows::<T, MR>(&mut panel, a, i0, mr) };
            Rows {
                ptr: panel.as_ptr(),
                stride: MR,
            }
        };
        let mut j0 = 0;
        let next_tile = a.rsx == 1 && i0 + 2 * MR <= a.m;
        while j0 + NR <= a.n {
            let pf = if j0 == 0 && next_tile {
                a.x.wrapping_add(i0 + MR)
            } else {
                std::ptr::null()
            };
            // SAFETY: columns `j0 .. j0 + NR ≤ n` and rows `i0 .. i0 + mr ≤ m` are in range;
            // `rows` holds `MR` readable elements per step `p < k`.
            unsafe { micro::<T, FMA, MR, NR>(rows, a, i0, mr, j0, pf) };
            j0 += NR;
        }
        while j0 < a.n {
            // SAFETY: column `j0 < n` is in range.
            unsafe { micro::<T, FMA, MR, 1>(rows, a, i0, mr, j0, std::ptr::null()) };
            j0 += 1;
        }
        i0 += MR;
    }
}

/// `panel[p·MR + i] = X[i0 + i, p]` for `i < mr`, `0` for `mr ≤ i < MR`, every `p < k`.
///
/// # Safety
/// `X` is readable at rows `i0 .. i0 + mr` and columns `0 .. k`; `panel.len() = MR·k`.
#[inline(always)]
unsafe fn pack_rows<T: Real, const MR: usize>(
    panel: &mut [T],
    a: GemmArgs<T>,
    i0: usize,
    mr: usize,
) {
    for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
        // SAFETY: `(i0, p)` is in range (`p < k` since `panel` has `k` chunks).
        let col = unsafe { a.x.offset(i0 as isize * a.rsx + p as isize * a.csx) };
        if mr == MR && a.rsx == 1 {
            // SAFETY: `MR` contiguous elements of column `p` from row `i0` are in range.
            let src = unsafe { std::slice::from_raw_parts(col, MR) };
            dst.copy_from_slice(src);
        } else {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = if i < mr {
                    // SAFETY: row `i0 + i < m`.
                    unsafe { *col.offset(i as isize * a.rsx) }
                } else {
                    T::zero()
                };
            }
        }
    }
}

/// One `MR × NR` tile: `acc[j][i] = Σ_p rows[p][i]·B[p, j0 + j]` (fused, ascending `p`; `rows[p]`
/// the `MR` elements at `rows.ptr + p·rows.stride`), then `Y[i0 + i, j0 + j] = α·acc` (or `+=`)
/// for `i < mr`. Unless `pf` is null, step `p` prefetches the `MR` elements at `pf + p·csx` (a
/// hint only: any address is allowed).
///
/// # Safety
/// `B` is readable at rows `< k`, columns `j0 .. j0 + NR`; `Y` is writable (readable when
/// accumulating) at rows `i0 .. i0 + mr`, columns `j0 .. j0 + NR`; `rows` is readable for `MR`
/// elements at every step `p < k`.
#[inline(always)]
unsafe fn micro<T: Real, const FMA: bool, const MR: usize, const NR: usize>(
    rows: Rows<T>,
    a: GemmArgs<T>,
    i0: usize,
    mr: usize,
    j0: usize,
    pf: *const T,
) {
    let mut acc = [[T::zero(); MR]; NR];
    // SAFETY: column `j0 < n` of `B`.
    let b0 = unsafe { a.b.offset(j0 as isize * a.csb) };
    for p in 0..a.k {
        // SAFETY: `MR` readable elements of step `p < k` (the contract).
        let xv = unsafe {
            rows.ptr
                .add(p * rows.stride)
                .cast::<[T; MR]>()
                .read_unaligned()
        };
        // SAFETY: row `p < k` of `B`.
        let brow = unsafe { b0.offset(p as isize * a.rsb) };
        if !pf.is_null() {
            let col = pf.wrapping_offset(p as isize * a.csx).cast::<u8>();
            for off in (0..MR * size_of::<T>()).step_by(64) {
                prefetch(col.wrapping_add(off));
            }
        }
        for j in 0..NR {
            // SAFETY: `B[p, j0 + j]`, in range.
            let bj = unsafe { *brow.offset(j as isize * a.csb) };
            for i in 0..MR {
                acc[j][i] = madd::<T, FMA>(xv[i], bj, acc[j][i]);
            }
        }
    }
    // SAFETY: `Y[i0, j0]`, in range.
    let y0 = unsafe { a.y.add(i0 + j0 * a.ldy) };
    if mr == MR {
        for j in 0..NR {
            // SAFETY: `Y[i0 .. i0 + MR, j0 + j]`, in range; `Y` does not overlap the inputs.
            unsafe { store_col::<T, FMA, MR>(y0.add(j * a.ldy), acc[j], a.alpha, a.store) };
        }
    } else {
        // Through a full-height scratch column, so that `acc` is only ever indexed by constants
        // (a runtime index would keep it in memory, stored on every step of the loop above).
        for j in 0..NR {
            // SAFETY: `Y[i0 .. i0 + mr, j0 + j]`, in range.
            let col = unsafe { y0.add(j * a.ldy) };
            let mut buf = [T::zero(); MR];
            if a.store == Store::Accumulate {
                for (i, v) in buf.iter_mut().take(mr).enumerate() {
                    // SAFETY: in range, initialised when accumulating.
                    *v = unsafe { col.add(i).read() };
                }
            }
            // SAFETY: `buf` holds `MR` initialised elements.
            unsafe { store_col::<T, FMA, MR>(buf.as_mut_ptr(), acc[j], a.alpha, a.store) };
            for (i, &v) in buf.iter().take(mr).enumerate() {
                // SAFETY: `Y[i0 + i, j0 + j]` with `i < mr`, in range. A raw element write, no
                // reference to possibly uninitialised memory.
                unsafe { col.add(i).write(v) };
            }
        }
    }
}

/// `col[i] = α·v[i]` (or `col[i] + α·v[i]`) for `i < W`.
///
/// # Safety
/// `col` is writable (and readable, initialised, when accumulating) for `W` elements.
#[inline(always)]
unsafe fn store_col<T: Real, const FMA: bool, const W: usize>(
    col: *mut T,
    v: [T; W],
    alpha: T,
    store: Store,
) {
    let mut out = [T::zero(); W];
    match store {
        Store::Overwrite => {
            for i in 0..W {
                out[i] = alpha * v[i];
            }
        }
        Store::Accumulate => {
            // SAFETY: readable and initialised when accumulating.
            let old = unsafe { col.cast::<[T; W]>().read_unaligned() };
            for i in 0..W {
                out[i] = madd::<T, FMA>(alpha, v[i], old[i]);
            }
        }
    }
    // SAFETY: writable for `W` elements.
    unsafe { col.cast::<[T; W]>().write_unaligned(out) };
}

// ---------------------------------------------------------------------------------------------
// C = Xᵀ·D
// ---------------------------------------------------------------------------------------------

/// Writes `C = Xᵀ·D` into `c` (column-major, column stride `ldc`, `C[p, q]` at `c[p + q·ldc]`),
/// never reading it; on return every `c[p + q·ldc]`, `p < k`, `q < n`, is initialised. `X` is
/// `m × k`, `D` is `m × n`; column-major operands (row stride 1) are used in place, others are
/// first copied. The sum over `m` is the lane-split chain of the module notes (`m = 0` gives 0).
///
/// # Panics
/// If `X` and `D` have different row counts, `ldc < k` with more than one column, or `c` is too
/// short.
pub(crate) fn gemm_tn_uninit<T: Real>(
    x: MatRef<'_, T>,
    d: MatRef<'_, T>,
    c: &mut [MaybeUninit<T>],
    ldc: usize,
) {
    gemm_tn_uninit_with(Isa::detect(), x, d, c, ldc);
}

/// The operands of `C = Xᵀ·D`: column-major `X` (`m × k`, column stride `ldx`), `D` (`m × n`,
/// `ldd`) and `C` (`k × n`, `ldc`).
#[derive(Clone, Copy)]
struct TnArgs<T> {
    m: usize,
    k: usize,
    n: usize,
    x: *const T,
    ldx: usize,
    d: *const T,
    ldd: usize,
    c: *mut T,
    ldc: usize,
}

/// [`gemm_tn_uninit`] with an explicit instruction set (tests compare them; any [`Isa`] is one
/// this CPU supports).
pub(crate) fn gemm_tn_uninit_with<T: Real>(
    isa: Isa,
    x: MatRef<'_, T>,
    d: MatRef<'_, T>,
    c: &mut [MaybeUninit<T>],
    ldc: usize,
) {
    let (m, k, n) = (x.nrows(), x.ncols(), d.ncols());
    assert_eq!(d.nrows(), m, "Xᵀ·D: row counts differ");
    assert!(
        n <= 1 || ldc >= k,
        "Xᵀ·D: output column stride below the row count"
    );
    let need = if n == 0 || k == 0 {
        0
    } else {
        (n - 1) * ldc + k
    };
    assert!(c.len() >= need, "Xᵀ·D: output storage too short");
    if k == 0 || n == 0 {
        return;
    }
    // Column-major views with non-negative column strides (copies otherwise, rare).
    let contiguous = |v: MatRef<'_, T>| v.row_stride() == 1 && v.col_stride() >= 0;
    let (xo, do_);
    let x = if contiguous(x) {
        x
    } else {
        xo = x.to_owned();
        xo.as_ref()
    };
    let d = if contiguous(d) {
        d
    } else {
        do_ = d.to_owned();
        do_.as_ref()
    };
    let args = TnArgs {
        m,
        k,
        n,
        x: x.as_ptr(),
        ldx: x.col_stride().unsigned_abs(),
        d: d.as_ptr(),
        ldd: d.col_stride().unsigned_abs(),
        c: c.as_mut_ptr().cast(),
        ldc,
    };
    let f32 = size_of::<T>() == 4;
    // SAFETY (all arms): `x` and `d` are column-major views of their shapes, `c` was checked and is
    // borrowed mutably (so it overlaps neither); an `Isa` proves its level is supported.
    unsafe {
        match (isa.level(), f32) {
            #[cfg(target_arch = "x86_64")]
            (Level::Avx512, true) => tn_avx512::<T, { tn_lanes(4) }, 4, 4>(args),
            #[cfg(target_arch = "x86_64")]
            (Level::Avx512, false) => tn_avx512::<T, { tn_lanes(8) }, 4, 4>(args),
            #[cfg(target_arch = "x86_64")]
            (Level::Avx2, true) => tn_avx2::<T, { tn_lanes(4) }, 2, 2>(args),
            #[cfg(target_arch = "x86_64")]
            (Level::Avx2, false) => tn_avx2::<T, { tn_lanes(8) }, 2, 2>(args),
            (_, true) => tn_imp::<T, false, { tn_lanes(4) }, 2, 2>(args),
            (_, false) => tn_imp::<T, false, { tn_lanes(8) }, 2, 2>(args),
        }
    }
}

/// AVX-512 build of [`tn_imp`].
///
/// # Safety
/// As [`tn_imp`], and the CPU supports AVX-512F/VL and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn tn_avx512<T: Real, const L: usize, const TP: usize, const TQ: usize>(a: TnArgs<T>) {
    // SAFETY: forwarded contract.
    unsafe { tn_imp::<T, true, L, TP, TQ>(a) }
}

/// AVX2 build of [`tn_imp`].
///
/// # Safety
/// As [`tn_imp`], and the CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tn_avx2<T: Real, const L: usize, const TP: usize, const TQ: usize>(a: TnArgs<T>) {
    // SAFETY: forwarded contract.
    unsafe { tn_imp::<T, true, L, TP, TQ>(a) }
}

/// The `Xᵀ·D` driver: `TP × TQ` tiles of `C` (columns of `X` outer, so a tile's `TP` columns of `X`
/// stay in L1 while the columns of `D` stream past), edges by `1 × TQ`, `TP × 1`, `1 × 1` tiles.
///
/// # Safety
/// `X` readable as `m × k` column-major with stride `ldx`, `D` as `m × n` with `ldd`, `C` writable
/// as `k × n` with `ldc`, not overlapping the inputs; `k, n ≥ 1`.
#[inline(always)]
unsafe fn tn_imp<T: Real, const FMA: bool, const L: usize, const TP: usize, const TQ: usize>(
    a: TnArgs<T>,
) {
    let mut p0 = 0;
    while p0 < a.k {
        let full_p = p0 + TP <= a.k;
        let mut q0 = 0;
        while q0 < a.n {
            let full_q = q0 + TQ <= a.n;
            // SAFETY (all arms): the tile's rows and columns are in range.
            unsafe {
                match (full_p, full_q) {
                    (true, true) => tn_tile::<T, FMA, L, TP, TQ>(a, p0, q0),
                    (true, false) => tn_tile::<T, FMA, L, TP, 1>(a, p0, q0),
                    (false, true) => tn_tile::<T, FMA, L, 1, TQ>(a, p0, q0),
                    (false, false) => tn_tile::<T, FMA, L, 1, 1>(a, p0, q0),
                }
            }
            q0 += if full_q { TQ } else { 1 };
        }
        p0 += if full_p { TP } else { 1 };
    }
}

/// `C[p0 + s, q0 + t] = Σ_i X[i, p0 + s]·D[i, q0 + t]` for `s < TP`, `t < TQ`, summed in `L` lanes.
///
/// # Safety
/// Columns `p0 .. p0 + TP` of `X` and `q0 .. q0 + TQ` of `D` and `C` are in range.
#[inline(always)]
unsafe fn tn_tile<T: Real, const FMA: bool, const L: usize, const TP: usize, const TQ: usize>(
    a: TnArgs<T>,
    p0: usize,
    q0: usize,
) {
    let mut acc = [[[T::zero(); L]; TQ]; TP];
    // SAFETY (both): columns `p0 + s` of `X` and `q0 + t` of `D` are in range.
    let xc: [*const T; TP] = std::array::from_fn(|s| unsafe { a.x.add((p0 + s) * a.ldx) });
    let dc: [*const T; TQ] = std::array::from_fn(|t| unsafe { a.d.add((q0 + t) * a.ldd) });
    // The last `m mod L` rows, zero-padded, in scratch columns read by the same loop body as the
    // full groups.
    let full = a.m / L * L;
    let rest = a.m - full;
    let mut xt = [[T::zero(); L]; TP];
    let mut dt = [[T::zero(); L]; TQ];
    if rest > 0 {
        for s in 0..TP {
            // SAFETY: rows `full .. m` of a column in range.
            xt[s][..rest]
                .copy_from_slice(unsafe { std::slice::from_raw_parts(xc[s].add(full), rest) });
        }
        for t in 0..TQ {
            // SAFETY: as above.
            dt[t][..rest]
                .copy_from_slice(unsafe { std::slice::from_raw_parts(dc[t].add(full), rest) });
        }
    }
    let mut i = 0;
    while i < full {
        // SAFETY: rows `i .. i + L ≤ m` of columns in range.
        unsafe { tn_load_step::<T, FMA, L, TP, TQ>(&mut acc, xc, dc, i) };
        i += L;
    }
    if rest > 0 {
        let xs: [*const T; TP] = std::array::from_fn(|s| xt[s].as_ptr());
        let ds: [*const T; TQ] = std::array::from_fn(|t| dt[t].as_ptr());
        // SAFETY: the scratch columns hold `L` elements each.
        unsafe { tn_load_step::<T, FMA, L, TP, TQ>(&mut acc, xs, ds, 0) };
    }
    // An optimisation barrier between the loop and the reduction below: without it LLVM keeps
    // `acc` in memory and stores all of it on every step of the loop (measured: ~2× slower). It
    // has no effect on the values.
    let acc = std::hint::black_box(acc);
    for s in 0..TP {
        for t in 0..TQ {
            // SAFETY: `C[p0 + s, q0 + t]` is in range and writable.
            unsafe {
                a.c.add(p0 + s + (q0 + t) * a.ldc)
                    .write(reduce_lanes(acc[s][t]))
            };
        }
    }
}

/// Loads `L` elements from `xc[s] + i` and `dc[t] + i` and runs [`tn_step`].
///
/// # Safety
/// Each `xc[s] + i .. + L` and `dc[t] + i .. + L` is readable.
#[inline(always)]
unsafe fn tn_load_step<
    T: Real,
    const FMA: bool,
    const L: usize,
    const TP: usize,
    const TQ: usize,
>(
    acc: &mut [[[T; L]; TQ]; TP],
    xc: [*const T; TP],
    dc: [*const T; TQ],
    i: usize,
) {
    let mut xv = [[T::zero(); L]; TP];
    let mut dv = [[T::zero(); L]; TQ];
    for s in 0..TP {
        // SAFETY: the contract.
        xv[s] = unsafe { xc[s].add(i).cast::<[T; L]>().read_unaligned() };
    }
    for t in 0..TQ {
        // SAFETY: the contract.
        dv[t] = unsafe { dc[t].add(i).cast::<[T; L]>().read_unaligned() };
    }
    tn_step::<T, FMA, L, TP, TQ>(acc, &xv, &dv);
}

/// `acc[s][t][l] += xv[s][l]·dv[t][l]` (one multiply-add each).
#[inline(always)]
fn tn_step<T: Real, const FMA: bool, const L: usize, const TP: usize, const TQ: usize>(
    acc: &mut [[[T; L]; TQ]; TP],
    xv: &[[T; L]; TP],
    dv: &[[T; L]; TQ],
) {
    for s in 0..TP {
        for t in 0..TQ {
            for l in 0..L {
                acc[s][t][l] = madd::<T, FMA>(xv[s][l], dv[t][l], acc[s][t][l]);
            }
        }
    }
}

/// Pairwise sum of the lanes: `v_l ← v_l + v_{l+h}` for `h = L/2, L/4, …, 1`; returns `v_0`
/// (`L` a power of two, at most 16). Written with constant bounds only: a runtime index would keep
/// the caller's accumulators in memory.
#[inline(always)]
fn reduce_lanes<T: Real, const L: usize>(v: [T; L]) -> T {
    const { assert!(L.is_power_of_two() && L <= 16) };
    let mut w = v;
    if L >= 16 {
        for l in 0..8 {
            w[l] += w[l + 8];
        }
    }
    if L >= 8 {
        for l in 0..4 {
            w[l] += w[l + 4];
        }
    }
    if L >= 4 {
        for l in 0..2 {
            w[l] += w[l + 2];
        }
    }
    if L >= 2 {
        w[0] += w[1];
    }
    w[0]
}

/// Copies `src` (any strides) into uninitialised column-major storage `dst` (column stride
/// `ld ≥ rows`); on return every `dst[i + j·ld]`, `i < rows`, `j < cols`, is initialised.
///
/// # Panics
/// If `dst` is too short or `ld` too small.
pub(crate) fn copy_uninit<T: Real>(src: MatRef<'_, T>, dst: &mut [MaybeUninit<T>], ld: usize) {
    let (m, n) = (src.nrows(), src.ncols());
    assert!(n <= 1 || ld >= m, "copy: column stride below the row count");
    assert!(
        n == 0 || m == 0 || dst.len() >= (n - 1) * ld + m,
        "copy: storage too short"
    );
    for j in 0..n {
        let col = &mut dst[j * ld..j * ld + m];
        match src.col(j).try_as_col_major() {
            Some(s) => {
                for (d, &v) in col.iter_mut().zip(s.as_slice()) {
                    d.write(v);
                }
            }
            None => {
                for (i, d) in col.iter_mut().enumerate() {
                    d.write(src[(i, j)]);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
