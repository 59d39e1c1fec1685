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

/// A time in milliseconds since 1970 as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}
