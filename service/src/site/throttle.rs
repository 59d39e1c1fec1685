//! Failure throttling for password checks (`Login`, `ListApplications`): who may try
//! again when, after failed attempts. Pure (the caller passes the time), so the
//! rules are tested without a clock.
//!
//! Three counters of failures, each forgiving one failure per `backoff_max_ms` of
//! time (a leaky bucket, so a counter only grows under sustained guessing):
//!
//! - per (user, source address): after `free_failures`, each further failure blocks
//!   that pair for `backoff_ms × 2^k` (k = failures beyond the free ones − 1), capped
//!   at `backoff_max_ms`; attempts while blocked are refused without a password
//!   check and do not count. A success clears it.
//! - per source address (IPv4 address, or the /64 of an IPv6 one): the same with
//!   `address_free_failures` (high by default: an office behind one NAT address is
//!   not blocked because one person there guesses one user's password — that is
//!   the pair counter's job — only when the address sprays many users).
//! - per user, from any address: never blocks (nobody can lock a user out); beyond
//!   `free_failures` each attempt for that user first *waits* the same exponential
//!   delay, capped at `user_delay_max_ms`. A success clears it.
//!
//! Each table holds at most `MAX_ENTRIES`; when full, forgiven entries go first, then
//! the eighth least recently failed.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

/// Entries per table, at most (a bound on memory under a spray of names).
pub const MAX_ENTRIES: usize = 65_536;

/// The throttle's settings (config keys `login_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Failures per (user, address) before the first back-off.
    pub free_failures: u32,
    /// Failures per address before the address backs off.
    pub address_free_failures: u32,
    /// The first back-off; each further failure doubles it.
    pub backoff_ms: u64,
    /// The longest back-off; also the time after which one failure is forgiven.
    pub backoff_max_ms: u64,
    /// The longest wait imposed on every attempt for a user (any address).
    pub user_delay_max_ms: u64,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            free_failures: 5,
            address_free_failures: 50,
            backoff_ms: 1_000,
            backoff_max_ms: 300_000,
            user_delay_max_ms: 2_000,
        }
    }
}

/// What to do with an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Check the password after waiting `delay_ms` (0: at once).
    Check { delay_ms: u64 },
    /// Refuse without checking: this (user, address) or this address is backing off
    /// for `retry_after_ms` more.
    Blocked { retry_after_ms: u64 },
}

/// The source of an attempt, as the address counter keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    V4([u8; 4]),
    /// The first 64 bits (one site's prefix).
    V6Prefix([u8; 8]),
    Unknown,
}

impl Source {
    pub fn of(address: Option<IpAddr>) -> Source {
        match address.map(|address| address.to_canonical()) {
            Some(IpAddr::V4(v4)) => Source::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Source::V6Prefix(prefix)
            }
            None => Source::Unknown,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    /// When `failures` was last brought up to date (failure or forgiveness).
    updated_ms: u64,
    last_failure_ms: u64,
    blocked_until_ms: u64,
}

impl Entry {
    /// Forgive one failure per `forgive_ms` since the last update.
    fn decay(&mut self, now_ms: u64, forgive_ms: u64) {
        let forgiven = now_ms.saturating_sub(self.updated_ms) / forgive_ms.max(1);
        if forgiven > 0 {
            self.failures = self
                .failures
                .saturating_sub(u32::try_from(forgiven).unwrap_or(u32::MAX));
            self.updated_ms += forgiven * forgive_ms.max(1);
        }
    }
}

/// `backoff_ms × 2^(failures − free − 1)` for failures beyond `free`, capped.
pub fn backoff_ms(failures: u32, free: u32, settings: &ThrottleSettings) -> u64 {
    if failures <= free {
        return 0;
    }
    let doublings = (failures - free - 1).min(63);
    settings
        .backoff_ms
        .saturating_mul(1u64 << doublings)
        .min(settings.backoff_max_ms)
}

struct Table<K> {
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new() -> Self {
        Table {
            entries: HashMap::new(),
        }
    }

    /// The entry's state now (decayed), if it still matters.
    fn current(&mut self, key: &K, now_ms: u64, forgive_ms: u64) -> Option<Entry> {
        let entry = self.entries.get_mut(key)?;
        entry.decay(now_ms, forgive_ms);
        if entry.failures == 0 && entry.blocked_until_ms <= now_ms {
            self.entries.remove(key);
            return None;
        }
        Some(*entry)
    }

    fn fail(
        &mut self,
        key: K,
        now_ms: u64,
        forgive_ms: u64,
        free: u32,
        settings: &ThrottleSettings,
    ) {
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_ENTRIES {
            self.make_room(now_ms, forgive_ms);
        }
        let entry = self.entries.entry(key).or_insert(Entry {
            failures: 0,
            updated_ms: now_ms,
            last_failure_ms: now_ms,
            blocked_until_ms: 0,
        });
        entry.decay(now_ms, forgive_ms);
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure_ms = now_ms;
        let delay = backoff_ms(entry.failures, free, settings);
        if delay > 0 {
            entry.blocked_until_ms = entry.blocked_until_ms.max(now_ms + delay);
        }
    }

    fn clear(&mut self, key: &K) {
        self.entries.remove(key);
    }

    fn make_room(&mut self, now_ms: u64, forgive_ms: u64) {
        self.entries.retain(|_, entry| {
            entry.decay(now_ms, forgive_ms);
            entry.failures > 0 || entry.blocked_until_ms > now_ms
        });
        if self.entries.len() < MAX_ENTRIES {
            return;
        }
        let mut by_age: Vec<(u64, K)> = self
            .entries
            .iter()
            .map(|(key, entry)| (entry.last_failure_ms, key.clone()))
            .collect();
        let cut = by_age.len() / 8;
        by_age.select_nth_unstable_by_key(cut, |(last_failure_ms, _)| *last_failure_ms);
        for (_, key) in &by_age[..=cut] {
            self.entries.remove(key);
        }
    }
}

/// The three counters (see the module's doc comment).
pub struct Throttle {
    settings: ThrottleSettings,
    pairs: Table<(String, Source)>,
    addresses: Table<Source>,
    users: Table<String>,
}

impl Throttle {
    pub fn new(settings: ThrottleSettings) -> Throttle {
        Throttle {
            settings,
            pairs: Table::new(),
            addresses: Table::new(),
            users: Table::new(),
        }
    }

    pub fn settings(&self) -> &ThrottleSettings {
        &self.settings
    }

    /// May `user` from `source` try a password now?
    pub fn verdict(&mut self, user: &str, source: Source, now_ms: u64) -> Verdict {
        let forgive = self.settings.backoff_max_ms;
        let pair = (user.to_string(), source);
        let blocked_until = [
            self.pairs.current(&pair, now_ms, forgive),
            self.addresses.current(&source, now_ms, forgive),
        ]
        .into_iter()
        .flatten()
        .map(|entry| entry.blocked_until_ms)
        .max()
        .unwrap_or(0);
        if blocked_until > now_ms {
            return Verdict::Blocked {
                retry_after_ms: blocked_until - now_ms,
            };
        }
        let delay_ms = self
            .users
            .current(&user.to_string(), now_ms, forgive)
            .map(|entry| {
                backoff_ms(entry.failures, self.settings.free_failures, &self.settings)
                    .min(self.settings.user_delay_max_ms)
            })
            .unwrap_or(0);
        Verdict::Check { delay_ms }
    }

    /// A wrong password (or an unknown user) for `user` from `source`.
    pub fn failed(&mut self, user: &str, source: Source, now_ms: u64) {
        let settings = self.settings;
        let forgive = settings.backoff_max_ms;
        self.pairs.fail(
            (user.to_string(), source),
            now_ms,
            forgive,
            settings.free_failures,
            &settings,
        );
        self.addresses.fail(
            source,
            now_ms,
            forgive,
            settings.address_free_failures,
            &settings,
        );
        self.users.fail(
            user.to_string(),
            now_ms,
            forgive,
            settings.free_failures,
            &settings,
        );
    }

    /// The right password: the user's counters start again (the address's does not:
    /// one's own account must not wash a spraying address clean).
    pub fn succeeded(&mut self, user: &str, source: Source) {
        self.pairs.clear(&(user.to_string(), source));
        self.users.clear(&user.to_string());
    }

    /// Entries held, per table (pairs, addresses, users).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.pairs.entries.len(),
            self.addresses.entries.len(),
            self.users.entries.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: Source = Source::V4([10, 0, 0, 1]);
    const OFFICE: Source = Source::V4([192, 0, 2, 7]);

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            free_failures: 3,
            address_free_failures: 20,
            backoff_ms: 1_000,
            backoff_max_ms: 60_000,
            user_delay_max_ms: 2_000,
        }
    }

    fn retry_after(verdict: Verdict) -> u64 {
        match verdict {
            Verdict::Blocked { retry_after_ms } => retry_after_ms,
            Verdict::Check { .. } => 0,
        }
    }

    #[test]
    fn a_pair_backs_off_exponentially_up_to_the_cap_then_may_try_again() {
        let mut throttle = Throttle::new(settings());
        let mut now = 1_000_000;
        for _ in 0..3 {
            assert_eq!(
                throttle.verdict("alice", HOME, now),
                Verdict::Check { delay_ms: 0 }
            );
            throttle.failed("alice", HOME, now);
        }
        assert_eq!(
            throttle.verdict("alice", HOME, now),
            Verdict::Check { delay_ms: 0 }
        );
        let mut seen = Vec::new();
        for _ in 0..10 {
            throttle.failed("alice", HOME, now);
            let wait = retry_after(throttle.verdict("alice", HOME, now));
            seen.push(wait);
            // Blocked until then, free right after.
            assert!(matches!(
                throttle.verdict("alice", HOME, now + wait - 1),
                Verdict::Blocked { .. }
            ));
            now += wait;
            assert!(matches!(
                throttle.verdict("alice", HOME, now),
                Verdict::Check { .. }
            ));
        }
        // Doubling up to the cap; 63 s in, one failure has been forgiven (one per
        // backoff_max_ms), so 32 s comes twice.
        assert_eq!(
            seen,
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 32_000, 60_000, 60_000, 60_000]
        );
        // Another address is not blocked for alice, nor is alice's pair for bob.
        assert!(matches!(
            throttle.verdict("alice", OFFICE, now - 1),
            Verdict::Check { .. }
        ));
        assert!(matches!(
            throttle.verdict("bob", HOME, now - 1),
            Verdict::Check { .. }
        ));
    }

    #[test]
    fn a_user_alone_only_ever_waits_a_capped_delay_and_a_success_clears_it() {
        let mut throttle = Throttle::new(settings());
        let now = 5_000_000;
        // A thousand guesses from a thousand addresses: alice is never blocked.
        for attacker in 0..1_000u32 {
            let source = Source::V4(attacker.to_be_bytes());
            throttle.failed("alice", source, now);
        }
        let verdict = throttle.verdict("alice", OFFICE, now);
        assert_eq!(
            verdict,
            Verdict::Check { delay_ms: 2_000 },
            "capped, not blocked"
        );
        throttle.succeeded("alice", OFFICE);
        assert_eq!(
            throttle.verdict("alice", OFFICE, now),
            Verdict::Check { delay_ms: 0 }
        );
    }

    #[test]
    fn an_address_backs_off_when_it_sprays_users_but_not_for_one_guesser() {
        let mut throttle = Throttle::new(settings());
        let mut now = 9_000_000;
        // One guesser behind the office's NAT, at the pace the pair counter allows, for
        // a long time: the office's other users are never blocked.
        for _ in 0..200 {
            match throttle.verdict("alice", OFFICE, now) {
                Verdict::Check { .. } => throttle.failed("alice", OFFICE, now),
                Verdict::Blocked { retry_after_ms } => now += retry_after_ms,
            }
            assert!(
                matches!(throttle.verdict("bob", OFFICE, now), Verdict::Check { .. }),
                "bob is blocked after the office guessed alice's password"
            );
        }
        // Spraying: new user names from one address, each with its free tries.
        let mut blocked = false;
        for user in 0..30 {
            let name = format!("user{user}");
            if let Verdict::Blocked { .. } = throttle.verdict(&name, HOME, now) {
                blocked = true;
                break;
            }
            throttle.failed(&name, HOME, now);
        }
        assert!(blocked, "an address spraying users is never blocked");
        assert!(matches!(
            throttle.verdict("carol", HOME, now),
            Verdict::Blocked { .. }
        ));
        assert!(matches!(
            throttle.verdict("carol", OFFICE, now),
            Verdict::Check { .. }
        ));
    }

    #[test]
    fn failures_are_forgiven_with_time_and_tables_are_bounded() {
        let mut throttle = Throttle::new(settings());
        let now = 1_000;
        for _ in 0..5 {
            throttle.failed("alice", HOME, now);
        }
        assert!(matches!(
            throttle.verdict("alice", HOME, now),
            Verdict::Blocked { .. }
        ));
        // One failure forgiven per backoff_max_ms: after five, nothing is left.
        assert_eq!(
            throttle.verdict("alice", HOME, now + 5 * 60_000),
            Verdict::Check { delay_ms: 0 }
        );
        assert_eq!(throttle.sizes(), (0, 0, 0), "forgotten entries are removed");

        let mut throttle = Throttle::new(settings());
        for index in 0..(MAX_ENTRIES as u32 + 1_000) {
            throttle.failed(&format!("u{index}"), Source::V4(index.to_be_bytes()), 7);
        }
        let (pairs, addresses, users) = throttle.sizes();
        assert!(pairs <= MAX_ENTRIES && addresses <= MAX_ENTRIES && users <= MAX_ENTRIES);
    }

    #[test]
    fn ipv6_sources_are_keyed_by_their_64_bit_prefix() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_site: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(Some(one)), Source::of(Some(same_site)));
        assert_ne!(Source::of(Some(one)), Source::of(Some(other)));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Source::of(Some(mapped)), OFFICE);
    }
}
