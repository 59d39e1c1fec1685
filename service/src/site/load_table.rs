//! The terminal servers' load table, kept in memory on both nodes: what each agent
//! last reported, checked before it is believed (`check_report`), how a login picks
//! the least-loaded server, and how long an entry lives.
//!
//! A report is refused (INVALID_ARGUMENT at the service) unless its name is a name,
//! its loads are finite percentages (0–100), its session count at most
//! `MAX_SESSIONS`, its address `host:port` (a DNS name, an IPv4 address or a
//! bracketed IPv6 one, a port 1–65535) of at most `MAX_ADDRESS_BYTES`, and its
//! applications at most `MAX_REPORTED_APPS` names. An entry counts as down after three
//! of its intervals and is removed after `EXPIRE_INTERVALS` of them (at least
//! `MIN_EXPIRY_MS`); the table holds at most `MAX_TERMINAL_SERVERS`.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::site::{check_name, SiteError};

/// At most this many terminal servers are tracked (a bound on memory, and on the size
/// of a `Status` answer).
pub const MAX_TERMINAL_SERVERS: usize = 1_000;
/// A sane bound on the sessions one terminal server runs.
pub const MAX_SESSIONS: u32 = 100_000;
/// `host:port`, at most.
pub const MAX_ADDRESS_BYTES: usize = 255;
/// Applications per report, at most.
pub const MAX_REPORTED_APPS: usize = 256;
/// An entry is removed after this many of its intervals without a report...
pub const EXPIRE_INTERVALS: u64 = 20;
/// ...and never sooner than this (so `status` shows a dead server as down a while).
pub const MIN_EXPIRY_MS: u64 = 60_000;
/// The report interval is taken as at least / at most this.
pub const INTERVAL_BOUNDS_MS: (u64, u64) = (100, 600_000);

/// One terminal server's last report.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    pub name: String,
    pub address: String,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub sessions: u32,
    pub apps: Vec<String>,
    pub interval_ms: u64,
    pub reported_at_ms: u64,
}

/// Why a report was refused (the report's values are not echoed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("the agent name is not a valid name (letters, digits, '.', '-', '_'; at most 64)")]
    Name,
    #[error("{0} must be a finite percentage between 0 and 100")]
    Percentage(&'static str),
    #[error("sessions must be at most {MAX_SESSIONS}")]
    Sessions,
    #[error("the address must be host:port (at most {MAX_ADDRESS_BYTES} bytes)")]
    Address,
    #[error("at most {MAX_REPORTED_APPS} applications, each a valid name")]
    Apps,
    #[error("the load table is full ({MAX_TERMINAL_SERVERS} terminal servers)")]
    TableFull,
}

/// Check a report's values before anything believes them.
pub fn check_report(load: &Load) -> Result<(), ReportError> {
    check_name(&load.name).map_err(|_| ReportError::Name)?;
    for (field, value) in [
        ("cpu_percent", load.cpu_percent),
        ("memory_percent", load.memory_percent),
    ] {
        if !value.is_finite() || !(0.0..=100.0).contains(&value) {
            return Err(ReportError::Percentage(field));
        }
    }
    if load.sessions > MAX_SESSIONS {
        return Err(ReportError::Sessions);
    }
    if !is_host_port(&load.address) {
        return Err(ReportError::Address);
    }
    if load.apps.len() > MAX_REPORTED_APPS || load.apps.iter().any(|app| check_name(app).is_err()) {
        return Err(ReportError::Apps);
    }
    Ok(())
}

/// `host:port`: a DNS name, an IPv4 address or `[IPv6]`, and a port 1–65535, in at
/// most `MAX_ADDRESS_BYTES`.
pub fn is_host_port(address: &str) -> bool {
    if address.is_empty() || address.len() > MAX_ADDRESS_BYTES {
        return false;
    }
    if address.starts_with('[') {
        return address
            .parse::<std::net::SocketAddrV6>()
            .is_ok_and(|parsed| parsed.port() != 0);
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return false;
    };
    if !port.parse::<u16>().is_ok_and(|port| port != 0) {
        return false;
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|character| {
                character.is_ascii_alphanumeric() || matches!(character, '-' | '_')
            })
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    host.len() <= 253 && host.split('.').all(label_ok)
}

impl Load {
    pub fn is_down(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.reported_at_ms) > 3 * self.interval_ms.max(1)
    }

    /// Past this, the entry is removed from the table.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.reported_at_ms)
            > (EXPIRE_INTERVALS * self.interval_ms).max(MIN_EXPIRY_MS)
    }

    pub fn score(&self) -> f64 {
        100.0 * self.sessions as f64 + self.cpu_percent + self.memory_percent / 2.0
    }

    fn serves(&self, app: &str) -> bool {
        app.is_empty() || self.apps.is_empty() || self.apps.iter().any(|served| served == app)
    }
}

/// The terminal servers' last reports, kept in memory on both nodes.
#[derive(Default)]
pub struct LoadTable {
    servers: Mutex<HashMap<String, Load>>,
}

impl LoadTable {
    fn servers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Load>> {
        self.servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Record a report (checked first; its `reported_at_ms` is the time now).
    pub fn report(&self, mut load: Load) -> Result<(), ReportError> {
        check_report(&load)?;
        load.interval_ms = load
            .interval_ms
            .clamp(INTERVAL_BOUNDS_MS.0, INTERVAL_BOUNDS_MS.1);
        let now_ms = load.reported_at_ms;
        let mut servers = self.servers();
        if !servers.contains_key(&load.name) && servers.len() >= MAX_TERMINAL_SERVERS {
            servers.retain(|_, known| !known.is_expired(now_ms));
            if servers.len() >= MAX_TERMINAL_SERVERS {
                return Err(ReportError::TableFull);
            }
        }
        servers.insert(load.name.clone(), load);
        Ok(())
    }

    /// Remove the entries expired at `now_ms`.
    pub fn expire(&self, now_ms: u64) {
        self.servers().retain(|_, load| !load.is_expired(now_ms));
    }

    /// Every server not expired at `now_ms`, by name.
    pub fn snapshot_at(&self, now_ms: u64) -> Vec<Load> {
        self.expire(now_ms);
        let mut out: Vec<Load> = self.servers().values().cloned().collect();
        out.sort_by(|left, right| left.name.cmp(&right.name));
        out
    }

    /// Every server not expired, by name.
    pub fn snapshot(&self) -> Vec<Load> {
        self.snapshot_at(standin_engine::fsutil::now_ms())
    }

    /// The least-loaded server that is up and serves `app`.
    pub fn choose(&self, app: &str, now_ms: u64) -> Result<Load, SiteError> {
        self.snapshot_at(now_ms)
            .into_iter()
            .filter(|load| !load.is_down(now_ms) && load.serves(app))
            .min_by(|left, right| {
                left.score()
                    .total_cmp(&right.score())
                    .then_with(|| left.name.cmp(&right.name))
            })
            .ok_or(SiteError::NoTerminalServer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, sessions: u32, reported_at_ms: u64, apps: &[&str]) -> Load {
        Load {
            name: name.to_string(),
            address: format!("{name}:3389"),
            cpu_percent: 10.0,
            memory_percent: 20.0,
            sessions,
            apps: apps.iter().map(|app| app.to_string()).collect(),
            interval_ms: 1_000,
            reported_at_ms,
        }
    }

    #[test]
    fn the_least_loaded_live_server_that_serves_the_app_is_chosen() {
        let table = LoadTable::default();
        table.report(load("ts1", 3, 10_000, &[])).unwrap();
        table.report(load("ts2", 1, 10_000, &["word"])).unwrap();
        table.report(load("ts3", 0, 1_000, &[])).unwrap(); // stale: 9 s old, interval 1 s
        assert_eq!(table.choose("word", 10_500).unwrap().name, "ts2");
        assert_eq!(
            table.choose("calc", 10_500).unwrap().name,
            "ts1",
            "ts2 does not serve calc"
        );
        assert!(table
            .snapshot_at(10_500)
            .iter()
            .any(|load| load.name == "ts3" && load.is_down(10_500)));
        assert_eq!(
            table.choose("calc", 60_000),
            Err(SiteError::NoTerminalServer)
        );
    }

    #[test]
    fn nan_negative_or_huge_loads_are_refused_and_never_win_a_login() {
        let table = LoadTable::default();
        table.report(load("honest", 2, 1_000, &[])).unwrap();
        for (cpu, memory) in [
            (f64::NAN, 0.0),
            (-f64::NAN, 0.0),
            (0.0, f64::NAN),
            (-1.0, 0.0),
            (0.0, -0.5),
            (f64::NEG_INFINITY, 0.0),
            (f64::INFINITY, 0.0),
            (100.5, 0.0),
        ] {
            let mut liar = load("liar", 0, 1_000, &[]);
            liar.cpu_percent = cpu;
            liar.memory_percent = memory;
            assert!(
                matches!(table.report(liar), Err(ReportError::Percentage(_))),
                "cpu {cpu} memory {memory} accepted"
            );
        }
        let mut liar = load("liar", 4_000_000_000, 1_000, &[]);
        assert_eq!(table.report(liar.clone()), Err(ReportError::Sessions));
        liar.sessions = MAX_SESSIONS + 1;
        assert_eq!(table.report(liar.clone()), Err(ReportError::Sessions));
        liar.sessions = MAX_SESSIONS;
        table.report(liar).unwrap();
        assert_eq!(table.choose("", 1_500).unwrap().name, "honest");
    }

    #[test]
    fn addresses_must_be_host_and_port_of_bounded_length() {
        for good in [
            "ts1:3389",
            "ts1.example.com:3389",
            "10.0.0.7:3389",
            "[2001:db8::7]:3389",
            "TS_1.corp.local.:65535",
        ] {
            assert!(is_host_port(good), "{good}");
        }
        let long_host = format!("{}:3389", "a.".repeat(130));
        let three_megabytes = "x".repeat(3 << 20);
        for bad in [
            "",
            "ts1",
            "ts1:",
            "ts1:0",
            "ts1:65536",
            ":3389",
            "2001:db8::7:3389",
            "[2001:db8::7]",
            "ts 1:3389",
            "ts1/x:3389",
            "-ts1:3389",
            "ts1..example:3389",
            "ts1:3389\n",
            long_host.as_str(),
            three_megabytes.as_str(),
        ] {
            assert!(!is_host_port(bad), "{bad:.40}");
            let mut report = load("ts1", 0, 1, &[]);
            report.address = bad.to_string();
            assert_eq!(check_report(&report), Err(ReportError::Address));
        }
    }

    #[test]
    fn names_and_apps_are_names() {
        let mut report = load("ts1", 0, 1, &[]);
        report.name = "../ts1".to_string();
        assert_eq!(check_report(&report), Err(ReportError::Name));
        let mut report = load("ts1", 0, 1, &["word", "../../x"]);
        assert_eq!(check_report(&report), Err(ReportError::Apps));
        report.apps = (0..=MAX_REPORTED_APPS)
            .map(|app| format!("a{app}"))
            .collect();
        assert_eq!(check_report(&report), Err(ReportError::Apps));
    }

    #[test]
    fn entries_expire_after_some_intervals_and_the_table_is_bounded() {
        let table = LoadTable::default();
        let mut slow = load("slow", 0, 0, &[]);
        slow.interval_ms = 10_000;
        table.report(slow).unwrap();
        table.report(load("fast", 0, 0, &[])).unwrap(); // 1 s: expires after the minimum
        let names = |now| -> Vec<String> {
            table
                .snapshot_at(now)
                .into_iter()
                .map(|load| load.name)
                .collect()
        };
        assert_eq!(names(MIN_EXPIRY_MS), vec!["fast", "slow"]);
        assert_eq!(names(MIN_EXPIRY_MS + 1), vec!["slow"]);
        assert_eq!(names(EXPIRE_INTERVALS * 10_000), vec!["slow"]);
        assert!(names(EXPIRE_INTERVALS * 10_000 + 1).is_empty());

        // Full: a new name is refused until old entries expire; known names still report.
        for index in 0..MAX_TERMINAL_SERVERS {
            table
                .report(load(&format!("ts{index}"), 0, 1_000, &[]))
                .unwrap();
        }
        assert_eq!(
            table.report(load("one-more", 0, 2_000, &[])),
            Err(ReportError::TableFull)
        );
        table.report(load("ts7", 1, 2_000, &[])).unwrap();
        table
            .report(load("one-more", 0, 1_000 + MIN_EXPIRY_MS + 1, &[]))
            .unwrap();
        assert_eq!(table.snapshot_at(1_000 + MIN_EXPIRY_MS + 1).len(), 2);
    }
}
