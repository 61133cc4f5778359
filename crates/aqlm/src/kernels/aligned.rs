//! Zeroed `f32` scratch whose first element starts a cache line (64 bytes).
//!
//! A `Vec<f32>` (or of `[f32; 16]`) is only 4-byte aligned, and glibc hands out blocks of 128 KiB
//! and more from `mmap` at 16 bytes past a page: every 64-byte vector load of such a buffer then
//! straddles two cache lines. Measured on the few-token forward (`decode_fma`, 4096², 16 tokens):
//! 5.2–5.9 ms with its copy of `x` at 16 bytes past a line, 3.7–4.2 ms at a line, depending only
//! on what the process had allocated before.

/// One cache line of `f32`.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// `len` zeroed `f32` starting at a 64-byte boundary (see the module notes).
#[derive(Debug, Clone)]
pub(crate) struct AlignedF32 {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedF32 {
    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    /// The elements, mutably.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: `Line` is `repr(C)` around `[f32; 16]` (64 bytes, no padding), so the lines are
        // `16·lines.len() ≥ len` contiguous, initialised `f32`, borrowed mutably for `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_a_line_and_holds_zeros() {
        for len in [0usize, 1, 15, 16, 17, 40_000, 70_000] {
            let mut a = AlignedF32::zeroed(len);
            let s = a.as_mut_slice();
            assert_eq!(s.len(), len);
            assert!(s.iter().all(|&v| v == 0.0));
            if len > 0 {
                assert_eq!(s.as_ptr() as usize % 64, 0, "len {len}");
                s[len - 1] = 3.0;
                assert_eq!(a.clone().as_mut_slice()[len - 1], 3.0);
            }
        }
    }
}
