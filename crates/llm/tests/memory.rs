//! The memory probes, alone in their own process (other tests would move the figures).

use oftq_llm::memory::{peak_rss_bytes, release_freed_memory, reset_peak, rss_bytes};

#[test]
fn freed_heap_memory_is_released_and_the_peak_restarts_from_the_current_size() {
    let (Some(before), true) = (
        rss_bytes(),
        cfg!(all(target_os = "linux", target_env = "gnu")),
    ) else {
        return; // nothing to measure off Linux/glibc
    };
    // 96 MiB in small boxes: heap memory the allocator keeps after they are dropped.
    let boxes: Vec<Box<[u8; 1024]>> = (0..96 * 1024).map(|i| Box::new([i as u8; 1024])).collect();
    // A live box after them keeps the freed run from merging into the heap's top, which glibc
    // would hand back by itself on `free`: only `release_freed_memory` returns it.
    let pin = Box::new([7u8; 1024]);
    std::hint::black_box((&boxes, &pin));
    let full = rss_bytes().unwrap();
    assert!(
        full >= before + (80 << 20),
        "the boxes are resident: {before} -> {full}"
    );
    drop(boxes);
    assert!(release_freed_memory());
    let after = rss_bytes().unwrap();
    assert!(after + (64 << 20) <= full, "released: {full} -> {after}");
    assert!(reset_peak());
    let peak = peak_rss_bytes().unwrap();
    assert!(
        peak < full,
        "the peak restarts near the current size: {peak} vs {full}"
    );
    drop(pin);
}
