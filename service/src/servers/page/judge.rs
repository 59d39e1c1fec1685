//! The status page's judgements, pure (from the nodes' answers and this node's facts):
//! whether the pair's authority can decide a failover now, what deserves a warning,
//! and the terminal servers merged across both nodes (each as every node sees it).
//!
//! The authority's state comes as the summary line the engine writes for `status`
//! (`Authority::status`); its wording is pinned by this module's tests, which take
//! the summaries from the engine itself.

use crate::cli::status::Answer;
use crate::node::status::{NodeStatus, TerminalServerStatus};

use super::facts::LocalFacts;

/// At most this many files or paths are named in one warning.
const MAX_NAMED: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The authority can decide now: a failover would be backed.
    Decides,
    /// It cannot decide: a failover now would be refused (no majority, no lease, the
    /// voter sets differ).
    CannotDecide,
    /// Peer-only: it decides, but cannot tell a dead peer from a cut link.
    Unsafe,
}

impl Decision {
    pub fn name(self) -> &'static str {
        match self {
            Decision::Decides => "can decide",
            Decision::CannotDecide => "cannot decide",
            Decision::Unsafe => "unsafe",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub mode: String,
    pub decision: Decision,
    pub why: String,
}

fn answered(answers: &[Answer]) -> impl Iterator<Item = &NodeStatus> {
    answers.iter().filter_map(|answer| answer.status.as_ref())
}

/// Votes for a node, of all, and how many are needed.
type Votes = (usize, usize, usize);

/// `N of M votes for this node (Q needed)` in a witness summary.
fn votes(summary: &str) -> Option<Votes> {
    let (before, after) = summary.split_once(" votes for this node (")?;
    let mut words = before.rsplit(' ');
    let total = words.next()?.parse().ok()?;
    (words.next()? == "of").then_some(())?;
    let count = words.next()?.parse().ok()?;
    let needed = after.split_once(" needed")?.0.parse().ok()?;
    Some((count, total, needed))
}

/// Whether the pair's authority can decide now, judged from every node that answered.
/// None when no node answered or none names its authority.
pub fn authority_verdict(answers: &[Answer]) -> Option<Verdict> {
    let statuses: Vec<&NodeStatus> = answered(answers)
        .filter(|status| !status.authority.is_empty())
        .collect();
    let mode = statuses.first()?.authority.clone();
    let verdict = |decision, why: String| {
        Some(Verdict {
            mode: mode.clone(),
            decision,
            why,
        })
    };
    if let Some(other) = statuses.iter().find(|status| status.authority != mode) {
        return verdict(
            Decision::CannotDecide,
            format!(
                "the nodes use different authority modes ({}: {}, {}: {})",
                statuses[0].node, mode, other.node, other.authority
            ),
        );
    }
    match mode.as_str() {
        "peer" => verdict(
            Decision::Unsafe,
            "peer only: a cut link looks like a dead peer, and both nodes could accept \
             logins (use witness or etcd)"
                .to_string(),
        ),
        "witness" => {
            if let Some(refusing) = statuses
                .iter()
                .find(|status| status.authority_summary.contains("REFUSED"))
            {
                return verdict(
                    Decision::CannotDecide,
                    format!("{}: {}", refusing.node, refusing.authority_summary),
                );
            }
            let counted: Vec<(&str, Option<Votes>)> = statuses
                .iter()
                .map(|status| (status.node.as_str(), votes(&status.authority_summary)))
                .collect();
            if let Some((node, Some((count, total, needed)))) = counted
                .iter()
                .find(|(_, votes)| votes.is_some_and(|(count, _, needed)| count >= needed))
            {
                return verdict(
                    Decision::Decides,
                    format!("{count} of {total} agents vote for {node} ({needed} needed)"),
                );
            }
            let each: Vec<String> = counted
                .iter()
                .map(|(node, votes)| match votes {
                    Some((count, total, needed)) => {
                        format!("{node} {count} of {total}, {needed} needed")
                    }
                    None => format!("{node} unknown"),
                })
                .collect();
            verdict(
                Decision::CannotDecide,
                format!(
                    "no node has a majority of agent votes ({})",
                    each.join("; ")
                ),
            )
        }
        "etcd" => match statuses
            .iter()
            .find(|status| status.authority_summary.starts_with("etcd lease held"))
        {
            Some(holder) => verdict(
                Decision::Decides,
                format!("{}: {}", holder.node, holder.authority_summary),
            ),
            None => verdict(
                Decision::CannotDecide,
                format!(
                    "no node holds the etcd lease ({})",
                    statuses
                        .iter()
                        .map(|status| format!("{}: {}", status.node, status.authority_summary))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ),
        },
        _ => verdict(
            Decision::CannotDecide,
            format!("unknown authority mode {mode:?}"),
        ),
    }
}

/// A line of the warnings list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// Whether it needs action now (a node down, a failover refused), or is advice.
    pub severe: bool,
    pub text: String,
}

fn named(list: &[String]) -> String {
    let mut text = list
        .iter()
        .take(MAX_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > MAX_NAMED {
        text.push_str(&format!(" and {} more", list.len() - MAX_NAMED));
    }
    text
}

/// A terminal server as every node sees it: its freshest report, and each node's
/// (None: that node has no report from it).
pub struct ServerRow<'a> {
    pub freshest: &'a TerminalServerStatus,
    pub per_node: Vec<Option<&'a TerminalServerStatus>>,
}

/// Every terminal server any answering node lists, by name; `per_node` follows
/// `answers` (None also for a node that did not answer).
pub fn servers(answers: &[Answer]) -> Vec<ServerRow<'_>> {
    let mut names: Vec<&str> = answered(answers)
        .flat_map(|status| {
            status
                .terminal_servers
                .iter()
                .map(|server| server.name.as_str())
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let per_node: Vec<Option<&TerminalServerStatus>> = answers
                .iter()
                .map(|answer| {
                    answer
                        .status
                        .as_ref()?
                        .terminal_servers
                        .iter()
                        .find(|server| server.name == name)
                })
                .collect();
            let freshest = per_node.iter().flatten().copied().min_by(|left, right| {
                left.age_seconds
                    .partial_cmp(&right.age_seconds)
                    .unwrap_or(std::cmp::Ordering::Equal)
            })?;
            Some(ServerRow { freshest, per_node })
        })
        .collect()
}

/// Everything the operator should look at, the severe first.
pub fn warnings(answers: &[Answer], local: &LocalFacts) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut warn = |severe: bool, text: String| out.push(Warning { severe, text });
    let mut reported_failovers: Vec<String> = Vec::new();
    for answer in answers {
        let Some(status) = &answer.status else {
            warn(
                true,
                format!(
                    "{} does not answer: {}",
                    answer.url,
                    answer.unreachable.as_deref().unwrap_or("no answer")
                ),
            );
            continue;
        };
        let node = &status.node;
        match status.peer_state.as_str() {
            "unreachable" | "down" => warn(
                true,
                format!(
                    "{node} sees its peer {}{}",
                    status.peer_state,
                    status
                        .peer_last_contact_seconds
                        .map(|seconds| format!(", silent for {seconds:.1} s"))
                        .unwrap_or_else(|| ", never heard from".to_string())
                ),
            ),
            _ => {}
        }
        if !status.last_error.is_empty() {
            warn(true, format!("{node}: {}", status.last_error));
        }
        // The named-loss report (both nodes carry it: said once, by the first).
        if let Some(failover) = &status.last_failover {
            let text = format!(
                "last failover: {} (until `standin failover-ack`)",
                failover.summary
            );
            if !reported_failovers.contains(&failover.summary) {
                reported_failovers.push(failover.summary.clone());
                warn(true, text);
            }
        }
        if status.authority_summary.contains("REFUSED") {
            warn(true, format!("{node}: {}", status.authority_summary));
        }
        if !status.unstable_files.is_empty() {
            warn(
                false,
                format!(
                    "{node}: {} files written during every read (the last recorded version \
                     is kept): {}",
                    status.unstable_files.len(),
                    named(&status.unstable_files)
                ),
            );
        }
        if !status.skipped_paths.is_empty() {
            warn(
                false,
                format!(
                    "{node}: {} paths not replicated: {}",
                    status.skipped_paths.len(),
                    named(&status.skipped_paths)
                ),
            );
        }
        if status.quarantined_events > 0 {
            warn(
                false,
                format!(
                    "{node} keeps {} events in quarantine (`standin quarantine list` on {node})",
                    status.quarantined_events
                ),
            );
        }
    }
    if let Some(verdict) = authority_verdict(answers) {
        match verdict.decision {
            Decision::Decides => {}
            Decision::CannotDecide => warn(
                true,
                format!(
                    "the authority ({}) cannot decide: a failover now would be refused: {}",
                    verdict.mode, verdict.why
                ),
            ),
            Decision::Unsafe => warn(false, verdict.why),
        }
    }
    let versions: Vec<&NodeStatus> = answered(answers).collect();
    if let [first, second] = versions.as_slice() {
        if !first.version.is_empty()
            && !second.version.is_empty()
            && (first.version != second.version || first.build != second.build)
        {
            warn(
                false,
                format!(
                    "the nodes run different builds ({}: {} {}, {}: {} {})",
                    first.node,
                    first.version,
                    first.build,
                    second.node,
                    second.version,
                    second.build
                ),
            );
        }
    }
    for row in servers(answers) {
        let name = &row.freshest.name;
        for (answer, seen) in answers.iter().zip(&row.per_node) {
            let Some(status) = &answer.status else {
                continue;
            };
            match seen {
                None => warn(
                    true,
                    format!("terminal server {name} does not report to {}", status.node),
                ),
                Some(server) if server.down => warn(
                    true,
                    format!(
                        "terminal server {name} is down on {} (last report {:.0} s ago)",
                        status.node, server.age_seconds
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    for problem in &local.problems {
        warn(true, format!("{}: {problem}", local.node));
    }
    out.sort_by_key(|warning| !warning.severe);
    out
}
