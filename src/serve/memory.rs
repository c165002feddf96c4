//! Memory that a burst of large requests took, given back to the system.
//!
//! glibc's allocator keeps freed memory in its arenas for reuse, and after freeing a large block
//! it raises the size from which it maps blocks of their own (up to 32 MiB): from then on every
//! body, decoded tensor and batch of a large request came from the arenas and stayed there. 200
//! binary requests of 16 MiB left the server at 581 MB for good (23 MB before). Two settings:
//! - blocks of 1 MiB and more are always mapped on their own, so that freeing one returns it at
//!   once (the same burst: 28 MB right after it, and a peak of 365 MB instead of 629 MB);
//!   requests of a few images allocate less than that and never pay for the mapping;
//! - fixing that size also fixes the one above which freeing shrinks the heap at once (128 KiB),
//!   and a heap shrunk and grown again on every request cost a quarter of the throughput of
//!   batch-64 requests: it is set to 32 MiB, which is what the dynamic setting comes to;
//! - once the server goes idle after being busy, `malloc_trim` returns the free pages of every
//!   arena that smaller blocks leave behind.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::metrics::Metrics;

/// Blocks of this size and more are mapped on their own and returned when freed.
const MMAP_THRESHOLD: usize = 1 << 20;

/// Free memory at the top of a heap is given back when it exceeds this (and when idle).
const TRIM_THRESHOLD: usize = 32 << 20;

/// How often the server looks whether it has gone idle.
const POLL: Duration = Duration::from_millis(500);

/// Sets the allocator up for a server and starts the thread that trims it once no request is in
/// progress after some were.
pub fn give_back_freed_memory(metrics: Arc<Metrics>) {
    map_large_blocks();
    let spawned = std::thread::Builder::new()
        .name("maas-trim".into())
        .spawn(move || {
            let mut busy = false;
            loop {
                std::thread::sleep(POLL);
                if metrics.in_progress.load(Ordering::Relaxed) > 0 {
                    busy = true;
                } else if busy {
                    busy = false;
                    trim();
                }
            }
        });
    // Without the thread the server still serves; it only keeps what it freed.
    drop(spawned);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn map_large_blocks() {
    let int = |n: usize| libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt takes no pointer; these only change how later blocks are made and freed.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, int(MMAP_THRESHOLD));
        libc::mallopt(libc::M_TRIM_THRESHOLD, int(TRIM_THRESHOLD));
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointer and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn map_large_blocks() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
