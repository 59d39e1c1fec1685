//! The rejoin of a node that learned it was superseded: find the last event it shares
//! with the authority (exponential steps back from its head, then a binary search,
//! each probe a one-event `Pull`), move its own later events to quarantine, put its
//! folder back to that point, and keep aside what its folder holds that its log never
//! recorded. The coordinator starts it on the role machine's `StartRejoin`. What was
//! kept aside goes into the last failover's report (`failover_report`).

use std::sync::Arc;
use std::time::Duration;

use standin_engine::Hash;

use crate::node::Node;
use crate::peer::{EventKnown as Known, PeerLink};

async fn authority_knows(link: &PeerLink, seq: u64, hash: Hash) -> Result<Known, String> {
    link.knows_event(seq, hash)
        .await
        .map_err(|error| error.to_string())
}

/// The last event we share with the authority. When the authority has compacted the
/// part of its log where our history would be, that cannot be known: everything after
/// our own base is treated as ours alone (quarantined, never dropped), and the pull
/// loop then starts again from the authority's snapshot.
async fn common_point(node: &Arc<Node>, link: &PeerLink) -> Result<u64, String> {
    let log = node.repository.log();
    let base = log.base().seq;
    let head = log.head().seq;
    let hash_at = |seq: u64| {
        log.hash_at(seq)
            .map_err(|error| error.to_string())
            .map(|hash| hash.unwrap_or_default())
    };
    // Exponential steps back from our head, then a binary search.
    let mut lacking = head + 1;
    let mut candidate = head;
    let mut step = 1;
    let common = loop {
        match authority_knows(link, candidate, hash_at(candidate)?).await? {
            Known::Has => break candidate,
            Known::Compacted => return Ok(base),
            Known::Lacks => {}
        }
        lacking = candidate;
        if candidate == base {
            return Ok(base);
        }
        candidate = candidate.saturating_sub(step).max(base);
        step *= 2;
    };
    let (mut low, mut high) = (common, lacking);
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        match authority_knows(link, middle, hash_at(middle)?).await? {
            Known::Has => low = middle,
            Known::Lacks | Known::Compacted => high = middle,
        }
    }
    Ok(low)
}

/// The rejoin: find the last event we share with the authority, quarantine ours after
/// it, put the folder back to it. Returns how many events were quarantined.
/// How often a rejoin asks the authority again before it gives up (and fences).
const REJOIN_ATTEMPTS: u32 = 20;

/// `epoch`: the authority's, as last seen (the failover this rejoin ends); what was
/// kept goes into the last failover's report (`record_rejoin`).
pub async fn rejoin(node: &Arc<Node>, epoch: u64) -> Result<usize, String> {
    let started_ms = standin_engine::fsutil::now_ms();
    let link = node.peer().ok_or("no peer_url to rejoin")?;
    // Finding the common point only reads from the authority: a link that drops
    // meanwhile is retried (with a growing pause) instead of fencing the node.
    let mut pause = Duration::from_millis(500);
    let mut attempts = 0;
    let common = loop {
        match common_point(node, &link).await {
            Ok(common) => break common,
            Err(error) if attempts < REJOIN_ATTEMPTS => {
                attempts += 1;
                tracing::warn!(%error, attempt = attempts, retry_in_ms = pause.as_millis() as u64, "rejoin: the authority could not be asked; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            Err(error) => return Err(error),
        }
    };
    let quarantining = node.clone();
    let quarantined = tokio::task::spawn_blocking(move || -> Result<usize, String> {
        let count =
            match standin_engine::log::quarantine::quarantine_after(&quarantining.repository, common)
                .map_err(|error| error.to_string())?
            {
                Some(quarantined) => quarantined.manifest.events.len(),
                None => 0,
            };
        standin_engine::log::quarantine::rewind_folder(
            &quarantining.config.folder,
            &quarantining.repository,
        )
        .map_err(|error| error.to_string())?;
        // Changes written here after the last capture (a write racing a switchover)
        // are kept aside too, never left behind unrecorded or overwritten.
        let unrecorded = standin_engine::log::quarantine::quarantine_unrecorded(
            &quarantining.config.folder,
            &quarantining.repository,
        )
        .map_err(|error| error.to_string())?;
        if let Err(error) =
            record_rejoin(&quarantining, epoch, common, started_ms)
        {
            tracing::warn!(%error, "what this rejoin kept could not be added to the failover report");
        }
        Ok(count + unrecorded)
    })
    .await
    .map_err(|error| error.to_string())??;
    tracing::info!(common, "found the last common event with the authority");
    Ok(quarantined)
}

/// The old active rejoined the authority of `epoch`, its log cut back to
/// `common_seq`: what it kept is in the quarantines written since `since_ms`.
pub(crate) fn record_rejoin(
    node: &crate::node::Node,
    epoch: u64,
    common_seq: u64,
    since_ms: u64,
) -> standin_engine::Result<()> {
    let quarantines = standin_engine::log::quarantine::list_quarantines(&node.config.data_dir)?;
    let mut kept = crate::coordinator::failover_report::Kept {
        node: node.config.node_name.clone(),
        at_ms: standin_engine::fsutil::now_ms(),
        common_seq,
        ..crate::coordinator::failover_report::Kept::default()
    };
    let mut paths: Vec<String> = Vec::new();
    for (dir, manifest) in quarantines
        .iter()
        .filter(|(_, manifest)| manifest.quarantined_at_ms >= since_ms)
    {
        kept.dirs.push(dir.display().to_string());
        kept.events += manifest.events.len() as u64;
        // A group's or a promotion's record names no path of the folder.
        for event in manifest
            .events
            .iter()
            .filter(|event| event.kind != "group" && event.kind != "promote")
        {
            for path in std::iter::once(&event.path).chain(event.to.as_ref()) {
                if !path.is_empty() && !paths.contains(path) {
                    paths.push(path.clone());
                }
            }
        }
    }
    kept.more_paths = paths
        .len()
        .saturating_sub(crate::coordinator::failover_report::MAX_PATHS)
        as u64;
    paths.truncate(crate::coordinator::failover_report::MAX_PATHS);
    kept.paths = paths;
    node.failover
        .merge(&crate::coordinator::failover_report::FailoverReport {
            epoch,
            kept: Some(kept),
            ..crate::coordinator::failover_report::FailoverReport::default()
        });
    Ok(())
}
