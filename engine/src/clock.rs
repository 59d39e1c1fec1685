//! The engine's clock: every read of the time in the engine's production code is a
//! call here (the `boundaries` test fails on a `SystemTime::now` or `Instant::now`
//! anywhere else under `engine/src`), and the pure parts — the role machine, the
//! authority, the switchover, `Timing` — never call it: time reaches them as inputs.
//!
//! What the engine reads the time for: stamps (an event's `recorded_at_ms`, a
//! quarantine's time, the temporary-name token); telling a file that may still be
//! being written from a settled one (`read`, `scan::diff`); bounded waits and timers
//! (capture's debounce, staleness bound and rescans, the ordering mark's timeout,
//! SQLite's lock bound, the wait for sled's lock, the name cache's expiry, how long
//! replay leaves the index unsaved); and measurements for logs and status (replay's
//! step times, how long a database copy held its lock).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The wall clock's time since the Unix epoch (`None` when the clock is set before
/// it).
pub fn since_unix_epoch() -> Option<Duration> {
    SystemTime::now().duration_since(UNIX_EPOCH).ok()
}

/// Milliseconds since the Unix epoch (0 when the clock is set before it).
pub fn now_ms() -> u64 {
    since_unix_epoch()
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds on a monotonic clock (since the first call in this process). The role
/// machine and the authority measure every duration on it: a wall clock stepped
/// backwards (NTP) must not make an old vote or lease look fresh.
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Now on the monotonic clock, for timers and measurements.
pub fn instant() -> Instant {
    Instant::now()
}
