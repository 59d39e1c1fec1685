//! A node's check of signed load reports (per-agent keys, `agent_keys`): which agent
//! signed it, that it names that agent, and that it is fresh — it echoes this run of
//! this node (so it cannot be replayed to the other node or to a later run), an answer
//! given recently (so it cannot be replayed later), and an answer no earlier counted
//! report of that agent echoed (so it counts once). A report echoing nothing is a
//! greeting: answered so the agent can sign one that counts, never counted itself.

use std::collections::HashMap;
use std::sync::Mutex;

use prost::Message;
use standin_proto::v1 as wire;
use tonic::Status;

use crate::site::agent_keys::AgentKeys;

/// The longest a counted report may echo an answer given before it: three of the
/// agent's own intervals, within these bounds.
const MIN_REPORT_AGE_MS: u64 = 2_000;
const MAX_REPORT_AGE_MS: u64 = 60_000;

/// How old an echoed answer may be for a report of an agent reporting every
/// `interval_ms` (the interval is inside the signed report).
pub fn max_report_age_ms(interval_ms: u64) -> u64 {
    interval_ms
        .saturating_mul(3)
        .clamp(MIN_REPORT_AGE_MS, MAX_REPORT_AGE_MS)
}

/// What a signed report turned out to be.
#[derive(Debug)]
pub enum Checked {
    /// Signed by its agent's key and fresh: count it.
    Counted(Box<wire::LoadReport>),
    /// Signed, but echoing nothing: answer it, count nothing.
    Greeting(String),
}

/// The node's keys and, per agent, the newest answer a counted report echoed.
pub struct ReportAuth {
    keys: AgentKeys,
    instance: u64,
    last_echo: Mutex<HashMap<String, u64>>,
    /// Agents whose refusals were already logged (once each; later ones at debug).
    warned: Mutex<std::collections::HashSet<String>>,
}

impl ReportAuth {
    /// `instance`: this run of the node (what a fresh report echoes).
    pub fn new(keys: AgentKeys, instance: u64) -> ReportAuth {
        ReportAuth {
            keys,
            instance,
            last_echo: Mutex::new(HashMap::new()),
            warned: Mutex::new(Default::default()),
        }
    }

    /// Check `outer`, which arrived at `now_ms` (this node's monotonic clock).
    pub fn check(
        &self,
        outer: &wire::LoadReport,
        now_ms: u64,
        from: Option<std::net::SocketAddr>,
    ) -> Result<Checked, Status> {
        if outer.signed_report.is_empty() {
            self.refused("", from, "unsigned");
            return Err(Status::unauthenticated(
                "this node takes only signed reports (per-agent keys): run the agent with --key-file",
            ));
        }
        let report = wire::LoadReport::decode(outer.signed_report.as_slice())
            .map_err(|_| Status::invalid_argument("signed_report is not a LoadReport"))?;
        if !report.signed_report.is_empty() || !report.mac.is_empty() {
            return Err(Status::invalid_argument(
                "a signed report must not itself be signed",
            ));
        }
        let Some(key) = self.keys.get(&report.name) else {
            self.refused(&report.name, from, "no key for this name");
            return Err(Status::unauthenticated(
                "no key for this agent on this node (standin agent-key add, on both nodes)",
            ));
        };
        if !key.verify(&outer.signed_report, &outer.mac) {
            self.refused(&report.name, from, "the MAC does not match its key");
            return Err(Status::unauthenticated(
                "the report is not signed by this agent's key",
            ));
        }
        if report.echo_instance == 0 {
            return Ok(Checked::Greeting(report.name));
        }
        if report.echo_instance != self.instance {
            self.refused(&report.name, from, "it echoes another node or run");
            return Err(Status::failed_precondition(
                "the report echoes another node's answer or an earlier run's: not counted",
            ));
        }
        let echoed = report.echo_time_ms;
        let max_age = max_report_age_ms(report.interval_ms);
        if echoed > now_ms || now_ms - echoed > max_age {
            self.refused(&report.name, from, "stale");
            return Err(Status::failed_precondition(format!(
                "the report echoes an answer older than {max_age} ms: not counted"
            )));
        }
        let mut last = self
            .last_echo
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.get(&report.name).is_some_and(|seen| *seen >= echoed) {
            drop(last);
            self.refused(&report.name, from, "replayed");
            return Err(Status::failed_precondition(
                "the report echoes an answer a counted report already echoed (replayed): not counted",
            ));
        }
        last.insert(report.name.clone(), echoed);
        Ok(Checked::Counted(Box::new(report)))
    }

    fn refused(&self, name: &str, from: Option<std::net::SocketAddr>, why: &str) {
        let shown: String = name.chars().take(64).collect();
        let mut warned = self
            .warned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = format!("{shown}\0{why}");
        if warned.len() < 1_000 && warned.insert(key) {
            tracing::warn!(agent = %shown, ?from, reason = why, "a load report refused (logged once per agent and reason)");
        } else {
            tracing::debug!(agent = %shown, ?from, reason = why, "a load report refused");
        }
    }
}

/// An agent's side: `report` signed with `key`, as the outer report to send.
pub fn sign(
    report: &wire::LoadReport,
    key: &crate::site::agent_keys::AgentKey,
) -> wire::LoadReport {
    let signed_report = report.encode_to_vec();
    let mac = key.mac(&signed_report).to_vec();
    wire::LoadReport {
        signed_report,
        mac,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::agent_keys::AgentKey;

    fn report(name: &str, instance: u64, time_ms: u64) -> wire::LoadReport {
        wire::LoadReport {
            name: name.to_string(),
            address: format!("{name}:3389"),
            interval_ms: 500,
            vote: Some("alpha".to_string()),
            echo_instance: instance,
            echo_time_ms: time_ms,
            ..Default::default()
        }
    }

    fn setup() -> (ReportAuth, AgentKey, AgentKey) {
        let (ts1, ts2) = (AgentKey::generate(), AgentKey::generate());
        let keys = AgentKeys::from_keys([
            ("ts1".to_string(), ts1.clone()),
            ("ts2".to_string(), ts2.clone()),
        ]);
        (ReportAuth::new(keys, 77), ts1, ts2)
    }

    #[test]
    fn a_fresh_report_signed_by_its_own_key_counts_once() {
        let (auth, ts1, _) = setup();
        let signed = sign(&report("ts1", 77, 1_000), &ts1);
        assert!(matches!(
            auth.check(&signed, 1_500, None),
            Ok(Checked::Counted(inner)) if inner.name == "ts1"
        ));
        let replayed = auth.check(&signed, 1_600, None).unwrap_err();
        assert_eq!(replayed.code(), tonic::Code::FailedPrecondition);
        // A later answer echoed: counts.
        let next = sign(&report("ts1", 77, 1_400), &ts1);
        assert!(matches!(
            auth.check(&next, 1_900, None),
            Ok(Checked::Counted(_))
        ));
        // An earlier one (out of order): refused.
        let earlier = sign(&report("ts1", 77, 1_200), &ts1);
        assert!(auth.check(&earlier, 1_950, None).is_err());
    }

    #[test]
    fn forged_names_other_nodes_stale_and_unsigned_reports_are_refused() {
        let (auth, ts1, _) = setup();
        // ts1's key naming ts2, or an unknown agent.
        for name in ["ts2", "ts3"] {
            let forged = sign(&report(name, 77, 1_000), &ts1);
            let status = auth.check(&forged, 1_100, None).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{name}");
        }
        // Tampered after signing.
        let mut tampered = sign(&report("ts1", 77, 1_000), &ts1);
        let last = tampered.signed_report.len() - 1;
        tampered.signed_report[last] ^= 1;
        assert!(auth.check(&tampered, 1_100, None).is_err());
        // Echoing the other node (or an earlier run).
        let elsewhere = sign(&report("ts1", 78, 1_000), &ts1);
        assert_eq!(
            auth.check(&elsewhere, 1_100, None).unwrap_err().code(),
            tonic::Code::FailedPrecondition
        );
        // Too old, or from the future.
        let stale = sign(&report("ts1", 77, 1_000), &ts1);
        assert!(auth
            .check(&stale, 1_000 + max_report_age_ms(500) + 1, None)
            .is_err());
        let future = sign(&report("ts1", 77, 5_000), &ts1);
        assert!(auth.check(&future, 4_000, None).is_err());
        // Unsigned.
        let status = auth
            .check(&report("ts1", 77, 1_000), 1_100, None)
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        // A greeting: answered, not counted.
        let greeting = sign(&report("ts1", 0, 0), &ts1);
        assert!(matches!(
            auth.check(&greeting, 1_100, None),
            Ok(Checked::Greeting(_))
        ));
    }
}
