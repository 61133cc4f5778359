//! This process's resident memory, for reports (Linux: `/proc/self/status`; elsewhere `None`).

/// A `kB` field of `/proc/self/status` in bytes.
fn status_kb(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident set size since the process started or since the last [`reset_peak`] (`VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    status_kb("VmHWM:")
}

/// Current resident set size (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    status_kb("VmRSS:")
}

/// Resets the peak to the current resident size (writes `5` to `/proc/self/clear_refs`), so that
/// [`peak_rss_bytes`] measures one phase of the process. Returns whether the kernel took it.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Hands the memory this process has freed back to the operating system where the allocator
/// keeps it (glibc's `malloc_trim(0)`, every arena), so that a phase after a large one (the
/// teacher's in `oftq llm finetune`) holds only what is live. Returns whether memory was released;
/// always `false` off Linux/glibc, where nothing is done.
pub fn release_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: `malloc_trim` takes no pointer, only releases pages glibc's allocator has
        // already freed, and is thread-safe (it locks each arena); any `pad` is valid.
        unsafe { malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
