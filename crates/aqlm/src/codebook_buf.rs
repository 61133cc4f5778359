//! [`CodebookBuf`]: the `f32` storage of a layer's codebooks, on transparent huge pages where
//! that pays.
//!
//! A 1x16 codebook is 2 MiB (65 536 entries of eight `f32`), and its kernels read one random
//! entry per weight group. With 4 KiB pages those reads walk 512 pages, more than the first-level
//! TLB holds, and a good share of them wait on a page walk. On a 2 MiB page they do not: the
//! 4096² 1x16 forward of one token, one thread, took 2.8–2.9 ms in a loop of the same look-ups
//! on 4 KiB pages and 1.78–1.80 ms on a huge page (this machine, Linux with transparent huge
//! pages on `madvise`).
//!
//! So on Linux (x86-64), a codebook of at least [`HUGE_PAGE`] bytes lives in an anonymous
//! mapping with its whole 2 MiB chunks aligned and advised `MADV_HUGEPAGE` (the tail, if any, on
//! ordinary pages: nothing is committed beyond the data). The kernel may still decline (huge
//! pages off, memory fragmented): the buffer then behaves as ordinary memory. Smaller codebooks,
//! and every codebook elsewhere, stay in a `Vec`.

use std::fmt;
use std::ops::Deref;

/// The size of a huge page (x86-64's second-level page): codebooks from this size on are
/// placed on huge pages.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// A layer's codebooks: a `[f32]` that is either a `Vec` or, for large codebooks on Linux, an
/// anonymous mapping advised onto huge pages (see the module notes). Derefs to `[f32]`; the
/// values are fixed once built (a layer never changes its codebooks).
pub(crate) struct CodebookBuf {
    inner: Inner,
}

enum Inner {
    Heap(Vec<f32>),
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    Huge {
        map: memmap2::MmapMut,
        /// Byte offset of the first element: a multiple of [`HUGE_PAGE`] from the mapping's
        /// start address.
        offset: usize,
        /// Number of `f32`.
        len: usize,
    },
}

impl CodebookBuf {
    /// Takes `values`, moving them into a mapping advised onto huge pages when they fill at least
    /// one and the OS provides the mapping (else keeps the `Vec`).
    pub(crate) fn new(values: Vec<f32>) -> Self {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        if let Some(huge) = Self::on_huge_pages(&values) {
            return huge;
        }
        Self {
            inner: Inner::Heap(values),
        }
    }

    /// Whether the values sit in the mapping (for tests; whether the OS backs it with huge pages
    /// is its decision).
    #[cfg(test)]
    pub(crate) fn is_mapped(&self) -> bool {
        !matches!(self.inner, Inner::Heap(_))
    }

    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn on_huge_pages(values: &[f32]) -> Option<Self> {
        let bytes = std::mem::size_of_val(values);
        if bytes < HUGE_PAGE {
            return None;
        }
        // One huge page of slack, so that an aligned start exists inside the mapping.
        let mut map = memmap2::MmapOptions::new()
            .len(bytes + HUGE_PAGE)
            .map_anon()
            .ok()?;
        let offset = (HUGE_PAGE - map.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE;
        // Only whole huge pages are advised, so no page is committed beyond the data. A kernel
        // without transparent huge pages refuses the advice: the mapping is then ordinary memory,
        // as good as a `Vec`, so the refusal is not an error.
        let _ = map.advise_range(
            memmap2::Advice::HugePage,
            offset,
            bytes / HUGE_PAGE * HUGE_PAGE,
        );
        let dst: &mut [f32] =
            bytemuck::try_cast_slice_mut(&mut map[offset..offset + bytes]).ok()?;
        dst.copy_from_slice(values);
        Some(Self {
            inner: Inner::Huge {
                map,
                offset,
                len: values.len(),
            },
        })
    }
}

impl Deref for CodebookBuf {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.inner {
            Inner::Heap(v) => v,
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            Inner::Huge { map, offset, len } => {
                // The range was cast successfully at construction (page-aligned start plus a
                // multiple of the huge page size, so aligned for `f32`), and a mapping never moves.
                bytemuck::cast_slice(&map[*offset..*offset + *len * size_of::<f32>()])
            }
        }
    }
}

impl Clone for CodebookBuf {
    fn clone(&self) -> Self {
        Self::new(self.to_vec())
    }
}

impl fmt::Debug for CodebookBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_values_small_or_large() {
        for n in [
            0usize,
            5,
            HUGE_PAGE / 4,
            HUGE_PAGE / 4 + 3,
            HUGE_PAGE / 2 + 1,
        ] {
            let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
            let buf = CodebookBuf::new(values.clone());
            assert_eq!(&*buf, values.as_slice(), "{n} values");
            let copy = buf.clone();
            assert_eq!(&*copy, values.as_slice(), "clone of {n} values");
            assert!(
                n == 0 || copy.as_ptr() != buf.as_ptr(),
                "a clone owns its values"
            );
            if cfg!(all(target_os = "linux", target_arch = "x86_64")) && n * 4 >= HUGE_PAGE {
                assert!(buf.is_mapped(), "{n} values are mapped");
            } else {
                assert!(!buf.is_mapped(), "{n} values stay in a Vec");
            }
        }
    }
}
