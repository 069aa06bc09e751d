//! Freed memory given back to the system, every `TRIM_INTERVAL`.
//!
//! glibc keeps what a thread freed in that thread's arena for the next allocation, and gives
//! back only the top of each heap. After a flood (thousands of streams refused or ended in a
//! few seconds) the server's RSS stayed about 14 MiB above its baseline until the process
//! ended, though nothing was in use: in a pod with a memory limit that is room lost for good.
//! `malloc_trim(0)` returns every free page of every arena; it takes well under a millisecond
//! on this server's heaps, so a pass every few seconds costs nothing that can be measured.
//! Other allocators and systems give memory back on their own: nothing to do there.

use std::time::Duration;

/// How often free memory is given back.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Gives free memory back every `TRIM_INTERVAL`, until the task is aborted.
pub(super) async fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut every = tokio::time::interval(TRIM_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // SAFETY: malloc_trim only returns free pages to the system; glibc locks each
            // arena while it does, so other threads may allocate meanwhile.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}
