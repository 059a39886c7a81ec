//! `envbox::memory` in a process of its own (malloc's settings and counters are per process;
//! the other test binaries' threads would blur them).

/// After `keep_freed_memory`, a 4 MiB buffer comes from the heap, not from a fresh mapping
/// whose pages fault in again each time (glibc's default maps blocks above 128 KiB, raising
/// that bound only to the size of the largest mapped block freed so far: none here).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn buffers_come_from_the_heap_once_freed_memory_is_kept() {
    fn mapped_blocks() -> usize {
        // SAFETY: mallinfo2 only reads malloc's counters.
        unsafe { libc::mallinfo2() }.hblks
    }
    envbox::memory::keep_freed_memory();
    let before = mapped_blocks();
    let kept = vec![1u8; 4 << 20];
    assert_eq!(mapped_blocks(), before, "a 4 MiB block comes from the heap");
    drop(kept);
    envbox::memory::give_back();
}
