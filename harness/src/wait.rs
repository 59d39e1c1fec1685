//! Polling with a bound: every wait of the harness ends, with a panic naming what it
//! waited for, or with `false`.

use std::time::{Duration, Instant};

/// How long the tests wait for anything by default.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Poll `condition` until it holds or `deadline` passes; whether it held.
pub fn poll_for(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if started.elapsed() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Poll until `condition` holds; panics with `what` after `limit`.
pub fn wait_within(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    if !poll_for(limit, &mut condition) {
        panic!("timed out after {} s waiting for {what}", limit.as_secs());
    }
}

/// Poll until `condition` holds; panics with `what` after `LIMIT`.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < LIMIT {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}
