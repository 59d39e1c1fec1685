//! The coordinator: the thin shell around the engine's role state machine.
//!
//! It owns the `RoleMachine`, feeds it a `Tick` every `heartbeat_interval_ms` and the
//! inputs other parts send through `Node::feed` (heartbeat answers, what the peer
//! said, pull results, operator commands), publishes the resulting role, and carries
//! out the actions in order: heartbeats, the final pull, recording the `Promote`
//! event, starting and stopping capture and the pull loop, the rejoin (find the last
//! common event, quarantine the rest, rewind the folder), switchover calls to the
//! peer, and the `on_promote` / `on_demote` hooks.

use std::sync::Arc;
use std::time::Duration;

use standin_engine::fsutil::monotonic_ms as now_ms;
use standin_engine::role::{Action, Hook, Input, PeerView, RoleMachine, RoleSettings};
use standin_engine::switchover::TakeOverState;
use standin_engine::{Change, Hash};
use standin_proto::v1 as wire;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use crate::config::{AuthorityConfig, InitialRole};
use crate::convert::{head_from_wire, head_to_wire};
use crate::etcd_authority::EtcdAuthority;
use crate::node::Node;
use crate::passive::Puller;

/// The pull loop while it runs.
struct Pulling {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct Coordinator {
    node: Arc<Node>,
    machine: RoleMachine,
    pulling: Option<Pulling>,
    /// The etcd lease's I/O (authority = "etcd").
    etcd: Option<EtcdAuthority>,
}

impl Coordinator {
    pub fn new(node: Arc<Node>) -> Coordinator {
        let settings = RoleSettings {
            node: node.config.node_name.clone(),
            initial_active: node.config.role == InitialRole::Active,
            preferred: node.config.preferred,
            auto_failback: node.config.auto_failback,
            failover_after_ms: node.config.failover_after_ms,
        };
        let machine = RoleMachine::with_authority(
            settings,
            authority_of(&node.config),
            node.repository.head().epoch,
            now_ms(),
        );
        Coordinator {
            node,
            machine,
            pulling: None,
            etcd: None,
        }
    }

    /// Run until `stop`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if let AuthorityConfig::Etcd(settings) = &self.node.config.authority {
            self.etcd = Some(EtcdAuthority::start(self.node.clone(), settings.clone()));
        }
        let (Some(mut inputs), Some(mut evidence)) =
            (self.node.take_inputs(), self.node.take_evidence())
        else {
            tracing::error!("the role inputs were already taken; no coordinator");
            return;
        };
        let head = self.node.repository.head();
        self.machine.step(Input::Applied {
            epoch: head.epoch,
            head_seq: head.seq,
        });
        let first = self.machine.start();
        self.carry_out(first).await;
        let mut ticker = tokio::time::interval(Duration::from_millis(
            self.node.config.heartbeat_interval_ms,
        ));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let actions = tokio::select! {
                _ = ticker.tick() => self.machine.step(Input::Tick { now_ms: now_ms() }),
                Some(input) = inputs.recv() => self.machine.step(input),
                Some(input) = evidence.recv() => self.machine.step(input),
                _ = stop.wait_for(|stopped| *stopped) => break,
            };
            self.carry_out(actions).await;
        }
        self.stop_pulling().await;
    }

    fn publish(&self) {
        self.node
            .set_role(self.machine.role().clone(), self.machine.accepts_logins());
        self.node
            .set_take_over(self.machine.take_over_memory().clone());
        self.node.set_authority_status(
            self.machine
                .authority()
                .status(self.machine.now_ms(), &self.node.config.node_name),
        );
    }

    async fn carry_out(&mut self, actions: Vec<Action>) {
        let before = self.node.role();
        self.publish();
        if before != *self.machine.role() {
            tracing::info!(
                from = before.name(),
                to = self.machine.role().name(),
                epoch = self.machine.epoch(),
                "role changed"
            );
        }
        for action in actions {
            self.carry_out_one(action).await;
        }
        self.publish();
    }

    async fn carry_out_one(&mut self, action: Action) {
        let node = self.node.clone();
        match action {
            Action::SendHeartbeat => {
                tokio::spawn(heartbeat(node));
            }
            Action::FinalPull => {
                tokio::spawn(async move {
                    let wait = Duration::from_millis(node.config.failover_after_ms.max(1000));
                    if let Some(mut puller) = puller(&node) {
                        match tokio::time::timeout(wait, puller.pull_once()).await {
                            Ok(Ok(report)) => tracing::info!(
                                applied = report.events_applied,
                                "final pull before promotion"
                            ),
                            Ok(Err(error)) => {
                                tracing::warn!(%error, "final pull before promotion failed")
                            }
                            Err(_) => tracing::warn!("final pull before promotion timed out"),
                        }
                    }
                    node.feed(Input::FinalPullDone);
                });
            }
            Action::PullTo { head_seq } => {
                tokio::spawn(async move {
                    let Some(mut puller) = puller(&node) else {
                        return;
                    };
                    for _ in 0..100 {
                        let _ = puller.pull_once().await;
                        let head = node.repository.head().seq;
                        if head >= head_seq {
                            node.feed(Input::CaughtUp { head_seq: head });
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    tracing::error!(head_seq, "could not pull to the switchover head");
                });
            }
            Action::StartPulling => self.start_pulling(),
            Action::StopPulling => self.stop_pulling().await,
            Action::RecordPromote { epoch } => {
                let name = node.config.node_name.clone();
                // An apply the stopped puller left running finishes first: nothing is
                // appended between the group check and the `Promote` event.
                let applying = node.apply_lock.clone().write_owned().await;
                let recorded = tokio::task::spawn_blocking(move || {
                    let _applying = applying;
                    drop_incomplete_group(&node)?;
                    node.repository
                        .record(epoch, vec![Change::Promote { node: name }])
                })
                .await;
                match recorded {
                    Ok(Ok(_)) => tracing::warn!(epoch, "promoted: this node is now authoritative"),
                    Ok(Err(error)) => {
                        self.fail(format!("recording the promotion failed: {error}"))
                            .await
                    }
                    Err(error) => {
                        self.fail(format!("recording the promotion failed: {error}"))
                            .await
                    }
                }
            }
            Action::StartCapture => {
                match tokio::task::spawn_blocking(move || node.start_capture()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => self.fail(format!("{error:#}")).await,
                    Err(error) => self.fail(format!("capture: {error}")).await,
                }
            }
            Action::StopCapture => {
                let _ = tokio::task::spawn_blocking(move || node.stop_capture()).await;
            }
            Action::OpenLogins | Action::CloseLogins => {
                // `accepts_logins` follows the machine; published after every step.
            }
            Action::RunHook {
                hook,
                epoch,
                old_active,
            } => run_hook(&node, hook, epoch, old_active),
            Action::StartRejoin { authority } => {
                tokio::spawn(async move {
                    match rejoin(&node).await {
                        Ok(quarantined) => {
                            if quarantined > 0 {
                                tracing::warn!(events = quarantined, %authority, "rejoined; events that never replicated are in quarantine");
                            } else {
                                tracing::info!(%authority, "rejoined; nothing to quarantine");
                            }
                            node.feed(Input::RejoinDone);
                        }
                        Err(error) => {
                            tracing::error!(%error, "rejoin failed");
                            node.set_error(Some(format!("rejoin failed: {error}")));
                            node.feed(Input::IntegrityFailure {
                                reason: format!("rejoin failed: {error}"),
                            });
                        }
                    }
                });
            }
            Action::AskPeerToTakeOver(request) => {
                // Repeated every tick until the peer answers done or aborted; the
                // machine, not a timer here, decides when to resume.
                tokio::spawn(async move {
                    let Some(mut client) = cluster_client(&node) else {
                        return;
                    };
                    // The head after the final capture (capture has stopped by now).
                    let wire_request = wire::TakeOverRequest {
                        head_seq: node.repository.head().seq,
                        from_node: request.from.clone(),
                        epoch: request.epoch,
                        switchover_id: request.id,
                    };
                    let limit =
                        Duration::from_millis(node.config.heartbeat_interval_ms.max(200) * 2);
                    match tokio::time::timeout(limit, client.take_over(wire_request)).await {
                        Ok(Ok(reply)) => {
                            let state = match reply.get_ref().state() {
                                wire::TakeOverState::TakeOverPending => TakeOverState::Pending,
                                wire::TakeOverState::TakeOverDone => TakeOverState::Done,
                                wire::TakeOverState::TakeOverAborted => TakeOverState::Aborted,
                            };
                            node.feed(Input::TakeOverAnswered {
                                id: request.id,
                                state,
                            });
                        }
                        Ok(Err(status)) => {
                            tracing::warn!(
                                message = status.message(),
                                "switchover: the peer did not accept the take-over request"
                            );
                            node.set_error(Some(format!(
                                "switchover: the peer did not answer: {}",
                                status.message()
                            )));
                        }
                        Err(_) => tracing::warn!("switchover: the take-over request timed out"),
                    }
                });
            }
            Action::RequestSwitchover => {
                tokio::spawn(async move {
                    let Some(mut client) = cluster_client(&node) else {
                        return;
                    };
                    match client.switchover(wire::SwitchoverRequest {}).await {
                        Ok(_) => tracing::info!("asked the active for a failback switchover"),
                        Err(status) => {
                            tracing::warn!(message = status.message(), "failback request refused")
                        }
                    }
                });
            }
            Action::Alert { message } => {
                tracing::warn!("{message}");
            }
            Action::AcquireAuthority => {
                if let Some(etcd) = &self.etcd {
                    etcd.acquire();
                }
            }
            Action::ReleaseAuthority => {
                if let Some(etcd) = &self.etcd {
                    etcd.release();
                }
            }
        }
    }

    async fn fail(&mut self, reason: String) {
        self.node.set_error(Some(reason.clone()));
        let actions = self.machine.step(Input::IntegrityFailure { reason });
        for action in actions {
            // Fencing only stops things; no recursion into failures.
            if matches!(
                action,
                Action::StopCapture
                    | Action::StopPulling
                    | Action::ReleaseAuthority
                    | Action::Alert { .. }
            ) {
                Box::pin(self.carry_out_one(action)).await;
            }
        }
    }

    fn start_pulling(&mut self) {
        if self.pulling.is_some() {
            return;
        }
        let Some(puller) = puller(&self.node) else {
            tracing::error!("no peer_url: cannot follow an active");
            return;
        };
        let (stop, stopped) = watch::channel(false);
        let node = self.node.clone();
        let task = tokio::spawn(async move {
            if let Some(error) = puller.run(stopped).await {
                tracing::error!(%error, "replication stopped");
                if let crate::passive::PullError::Divergence { .. } = error {
                    node.feed(Input::Diverged {
                        authority: node.config.peer_url.clone().unwrap_or_default(),
                    });
                }
            }
        });
        self.pulling = Some(Pulling { stop, task });
    }

    async fn stop_pulling(&mut self) {
        if let Some(pulling) = self.pulling.take() {
            let _ = pulling.stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(30), pulling.task).await;
        }
    }
}

/// The authority the role machine consults, from the config.
fn authority_of(config: &crate::config::Config) -> Box<dyn standin_engine::authority::Authority> {
    use standin_engine::authority::{EtcdLease, PeerOnly, WitnessQuorum, WitnessSettings};
    match &config.authority {
        AuthorityConfig::Peer => Box::new(PeerOnly),
        AuthorityConfig::Etcd(settings) => Box::new(EtcdLease::new(settings.lease_ttl_s * 1000)),
        AuthorityConfig::Witness { agents, window_ms } => {
            Box::new(WitnessQuorum::new(WitnessSettings {
                agents: agents.clone(),
                window_ms: *window_ms,
                failover_after_ms: config.failover_after_ms,
            }))
        }
    }
}

fn puller(node: &Arc<Node>) -> Option<Puller> {
    let url = node.config.peer_url.as_ref()?;
    let channel = crate::client::channel(url, node.config.tls.as_ref()).ok()?;
    let client = crate::client::replication(channel, &node.secret).ok()?;
    Some(Puller::new(node.clone(), client))
}

fn cluster_client(
    node: &Arc<Node>,
) -> Option<standin_proto::v1::cluster_client::ClusterClient<crate::client::Authed>> {
    let url = node.config.peer_url.as_ref()?;
    let channel = crate::client::channel(url, node.config.tls.as_ref()).ok()?;
    crate::client::cluster(channel, &node.secret).ok()
}

/// One heartbeat to the peer; the answer (or its absence) goes back to the machine.
async fn heartbeat(node: Arc<Node>) {
    let Some(mut client) = cluster_client(&node) else {
        // No peer configured: nobody to ask, nobody answers.
        node.feed(Input::HeartbeatFailed { now_ms: now_ms() });
        return;
    };
    let request = wire::HeartbeatRequest {
        node: node.config.node_name.clone(),
        head: Some(head_to_wire(&node.repository.head())),
        role: node.role().name().to_string(),
    };
    let limit = Duration::from_millis(node.config.heartbeat_interval_ms.max(200) * 2);
    let answer = tokio::time::timeout(limit, client.heartbeat(request)).await;
    let now_ms = now_ms();
    match answer {
        Ok(Ok(response)) if response.get_ref().node == node.config.node_name => {
            let message = format!(
                "the peer answers as {:?}, this node's own name: give each node its own node_name",
                node.config.node_name
            );
            tracing::error!("{message}");
            node.set_error(Some(message));
            node.feed(Input::HeartbeatFailed { now_ms });
        }
        Ok(Ok(response)) => {
            let response = response.into_inner();
            match head_from_wire(response.head.as_ref()) {
                Ok(head) => node.feed(Input::HeartbeatAnswered {
                    now_ms,
                    peer: PeerView {
                        node: response.node,
                        epoch: head.epoch,
                        active: response.role == "active",
                        handing_over: response.role == "handing-over",
                        head_seq: head.seq,
                    },
                }),
                Err(_) => node.feed(Input::HeartbeatFailed { now_ms }),
            }
        }
        _ => node.feed(Input::HeartbeatFailed { now_ms }),
    }
}

/// Run an `on_promote` / `on_demote` command with the node, the epoch and the old
/// active in its environment.
fn run_hook(node: &Arc<Node>, hook: Hook, epoch: u64, old_active: Option<String>) {
    let command = match hook {
        Hook::OnPromote => node.config.on_promote.clone(),
        Hook::OnDemote => node.config.on_demote.clone(),
    };
    let Some(command) = command else { return };
    let name = node.config.node_name.clone();
    tokio::spawn(async move {
        let status = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&command)
            .env("STANDIN_NODE", &name)
            .env("STANDIN_EPOCH", epoch.to_string())
            .env("STANDIN_OLD_ACTIVE", old_active.unwrap_or_default())
            .env(
                "STANDIN_EVENT",
                if hook == Hook::OnPromote {
                    "promote"
                } else {
                    "demote"
                },
            )
            .status()
            .await;
        match status {
            Ok(status) if status.success() => tracing::info!(%command, "hook ran"),
            Ok(status) => tracing::error!(%command, %status, "hook failed"),
            Err(error) => tracing::error!(%command, %error, "hook could not start"),
        }
    });
}

/// What the authority's log says of our event `seq`.
enum Known {
    /// It has our event (same hash).
    Has,
    /// It has another event there, or none.
    Lacks,
    /// It compacted that part of its log away: it cannot tell.
    Compacted,
}

async fn authority_knows(
    client: &mut standin_proto::v1::replication_client::ReplicationClient<crate::client::Authed>,
    seq: u64,
    hash: Hash,
) -> Result<Known, String> {
    let request = wire::PullRequest {
        after_seq: seq,
        after_hash: hash.0.to_vec(),
        max_events: 1,
        follow: false,
    };
    let mut stream = client
        .pull(request)
        .await
        .map_err(|status| status.message().to_string())?
        .into_inner();
    match stream.next().await {
        Some(Ok(wire::PullResponse {
            kind: Some(wire::pull_response::Kind::Batch(_)),
        })) => Ok(Known::Has),
        Some(Ok(wire::PullResponse {
            kind: Some(wire::pull_response::Kind::Divergence(_)),
        })) => Ok(Known::Lacks),
        Some(Ok(wire::PullResponse {
            kind: Some(wire::pull_response::Kind::Compacted(_)),
        })) => Ok(Known::Compacted),
        Some(Ok(_)) | None => Err("the authority sent nothing".to_string()),
        Some(Err(status)) => Err(status.message().to_string()),
    }
}

/// The last event we share with the authority. When the authority has compacted the
/// part of its log where our history would be, that cannot be known: everything after
/// our own base is treated as ours alone (quarantined, never dropped), and the pull
/// loop then starts again from the authority's snapshot.
async fn common_point(
    node: &Arc<Node>,
    client: &mut standin_proto::v1::replication_client::ReplicationClient<crate::client::Authed>,
) -> Result<u64, String> {
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
        match authority_knows(client, candidate, hash_at(candidate)?).await? {
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
        match authority_knows(client, middle, hash_at(middle)?).await? {
            Known::Has => low = middle,
            Known::Lacks | Known::Compacted => high = middle,
        }
    }
    Ok(low)
}

/// Before a promotion: a log that ends inside a group (part of the old active's last
/// capture arrived) is put back to where that group began, so the promoted folder is
/// a state the old active's folder really had (invariant 10). The group's events go
/// to quarantine like any others this node will not keep; the old active still has
/// them too.
fn drop_incomplete_group(node: &Node) -> standin_engine::Result<()> {
    let Some(start) = node.repository.incomplete_group_start()? else {
        return Ok(());
    };
    let head = node.repository.head().seq;
    if let Some(quarantined) =
        standin_engine::quarantine::quarantine_after(&node.repository, start - 1)?
    {
        tracing::warn!(
            from_seq = start,
            to_seq = head,
            dir = %quarantined.dir.display(),
            "the last capture of the old active arrived only in part; promoting from the state before it"
        );
    }
    standin_engine::quarantine::rewind_folder(&node.config.folder, &node.repository)
}

/// The rejoin: find the last event we share with the authority, quarantine ours after
/// it, put the folder back to it. Returns how many events were quarantined.
/// How often a rejoin asks the authority again before it gives up (and fences).
const REJOIN_ATTEMPTS: u32 = 20;

async fn rejoin(node: &Arc<Node>) -> Result<usize, String> {
    let url = node
        .config
        .peer_url
        .clone()
        .ok_or("no peer_url to rejoin")?;
    // Finding the common point only reads from the authority: a link that drops
    // meanwhile is retried (with a growing pause) instead of fencing the node.
    let mut pause = Duration::from_millis(500);
    let mut attempts = 0;
    let common = loop {
        let attempt = async {
            let channel = crate::client::channel(&url, node.config.tls.as_ref())?;
            let mut client = crate::client::replication(channel, &node.secret)?;
            common_point(node, &mut client).await
        };
        match attempt.await {
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
            match standin_engine::quarantine::quarantine_after(&quarantining.repository, common)
                .map_err(|error| error.to_string())?
            {
                Some(quarantined) => quarantined.manifest.events.len(),
                None => 0,
            };
        standin_engine::quarantine::rewind_folder(
            &quarantining.config.folder,
            &quarantining.repository,
        )
        .map_err(|error| error.to_string())?;
        // Changes written here after the last capture (a write racing a switchover)
        // are kept aside too, never left behind unrecorded or overwritten.
        let unrecorded = standin_engine::quarantine::quarantine_unrecorded(
            &quarantining.config.folder,
            &quarantining.repository,
        )
        .map_err(|error| error.to_string())?;
        Ok(count + unrecorded)
    })
    .await
    .map_err(|error| error.to_string())??;
    tracing::info!(common, "found the last common event with the authority");
    Ok(quarantined)
}
