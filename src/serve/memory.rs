//! Memory that a burst of large requests took, given back to the system once the server is
//! idle again.
//!
//! glibc's allocator keeps freed memory in its arenas for reuse: after 200 requests of 16 MiB
//! the server held 2.4 GB for good, although nothing used it. `malloc_trim` returns the free
//! pages of every arena; it runs when the server goes idle after having been busy, so that a
//! steady load never pays for it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::metrics::Metrics;

/// How often the server looks whether it has gone idle.
const POLL: Duration = Duration::from_millis(500);

/// Starts the thread that trims the allocator once no request is in progress after some were.
pub fn give_back_when_idle(metrics: Arc<Metrics>) {
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
fn trim() {
    // SAFETY: malloc_trim takes no pointer and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
