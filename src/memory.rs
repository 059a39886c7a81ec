//! The process's heap while an image streams through it.
//!
//! Owns: glibc malloc's two thresholds. A transfer's receive buffers (hundreds of KiB each,
//! allocated by the HTTP client on one thread, freed by the blob writer on another) are above
//! malloc's default mmap and heap-trimming thresholds, so each came back from the kernel as
//! fresh pages that fault in while the socket is read into them (about 2% of a cold pull's CPU,
//! measured). [`keep_freed_memory`] raises both while images are prepared; [`give_back`] hands
//! what is free back to the kernel once the image is ready (the entrypoint lives as long as the
//! workspace). Elsewhere than glibc both do nothing. It never allocates.

/// Freed blocks up to 32 MiB stay in the heap, and the heap keeps up to 256 MiB free, for
/// reuse by the next buffers.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning; both values are in the ranges glibc takes.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Returns free heap memory to the kernel, and lets the heap trim itself as by default again.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: as above; malloc_trim only releases memory malloc holds free.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 10);
        libc::malloc_trim(0);
    }
}
