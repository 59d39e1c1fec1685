//! The shell around the engine's role machine (this file: ticks, heartbeats,
//! carrying out actions) and what it drives: the operator's commands (`operator`),
//! the rejoin (`rejoin`: common point, quarantine, rewind), the last failover's
//! report (`failover_report`), `drill`, the etcd lease's I/O (`etcd_authority`) and
//! the voter set the heartbeats compare (`voter_set`).
//!
//! The coordinator: the thin shell around the engine's role state machine.
//!
//! It owns the `RoleMachine`, feeds it a `Tick` every `heartbeat_interval_ms` and the
//! inputs other parts send through `Node::feed` (heartbeat answers, what the peer
//! said, pull results, operator commands), publishes the resulting role, and carries
//! out the actions in order: heartbeats, the final pull, recording the `Promote`
//! event, starting and stopping capture and the pull loop, the rejoin (find the last
//! common event, quarantine the rest, rewind the folder), switchover calls to the
//! peer, and the `on_promote` / `on_demote` hooks.

pub mod drill;
pub mod etcd_authority;
pub mod failover_report;
pub mod operator;
pub mod rejoin;
pub mod voter_set;

use std::sync::Arc;
use std::time::Duration;

use standin_engine::fsutil::monotonic_ms as now_ms;
use standin_engine::role::{Action, Command, Hook, Input, PeerView, RoleMachine, RoleSettings};
use standin_engine::Change;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{AuthorityConfig, InitialRole};
use crate::coordinator::etcd_authority::EtcdAuthority;
use crate::node::Node;
use crate::node::{OperatorCommand, OperatorRequest};
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
            timing: node.config.timing,
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
        let (Some(mut inputs), Some(mut evidence), Some(mut operator)) = (
            self.node.take_inputs(),
            self.node.take_evidence(),
            self.node.take_operator(),
        ) else {
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
            self.node.config.timing.heartbeat_interval_ms(),
        ));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let actions = tokio::select! {
                _ = ticker.tick() => self.machine.step(Input::Tick { now_ms: now_ms() }),
                Some(input) = inputs.recv() => self.machine.step(input),
                Some(input) = evidence.recv() => self.machine.step(input),
                Some(request) = operator.recv() => self.operate(request),
                _ = stop.wait_for(|stopped| *stopped) => break,
            };
            self.carry_out(actions).await;
        }
        self.stop_pulling().await;
    }

    /// An operator's command: the machine accepts it (its actions follow) or refuses
    /// it with the reason, and the answer goes back to the caller first.
    fn operate(&mut self, request: OperatorRequest) -> Vec<Action> {
        let result = match request.command {
            OperatorCommand::Promote { force } => self.machine.operate(Command::Promote { force }),
            OperatorCommand::Switchover { probe } => self
                .machine
                .switchover_readiness(
                    &probe,
                    self.node.repository.head().seq,
                    crate::node::SWITCHOVER_MAX_LAG_EVENTS,
                )
                .and_then(|()| self.machine.operate(Command::Switchover)),
        };
        let (actions, answer) = match result {
            Ok(actions) => (actions, Ok(())),
            Err(refusal) => {
                tracing::warn!(%refusal, "operator command refused");
                (Vec::new(), Err(refusal))
            }
        };
        // The role is published before the caller hears the answer.
        self.publish();
        let _ = request.answer.send(answer);
        actions
    }

    fn publish(&self) {
        self.node.set_machine_epoch(self.machine.epoch());
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
                    let wait = Duration::from_millis(node.config.timing.final_pull_ms());
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
                    if let Some(reason) = node.fatal() {
                        // The node is stopping; it must not promote on the way.
                        tracing::error!(%reason, "not promoting");
                        return;
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
                    // A batch that failed half way (and whose own recovery failed too)
                    // left paths between versions: put back first, or capture would
                    // record them as they are. Failing that, no promotion.
                    standin_engine::replay::recover(&node.config.folder, &node.repository)?;
                    drop_incomplete_group(&node)?;
                    // What this node kept of the old active's log.
                    let kept_seq = node.repository.head().seq;
                    node.repository
                        .record(epoch, vec![Change::Promote { node: name }])
                        .map(|_| kept_seq)
                })
                .await;
                match recorded {
                    Ok(Ok(kept_seq)) => {
                        // What went wrong while following the old active is over.
                        self.node.set_error(None);
                        self.node.set_pull_error(None);
                        tracing::warn!(epoch, "promoted: this node is now authoritative");
                        // A failover (not a switchover): its named-loss report.
                        if let Some(promotion) = self
                            .machine
                            .last_promotion()
                            .filter(|promotion| promotion.epoch == epoch && !promotion.planned)
                        {
                            record_promotion(&self.node, promotion, kept_seq);
                        }
                    }
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
                // The authority's epoch as last seen: the failover this rejoin ends.
                let epoch = self.machine.peer().map_or(0, |peer| peer.epoch);
                tokio::spawn(async move {
                    match crate::coordinator::rejoin::rejoin(&node, epoch).await {
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
                    let Some(link) = node.peer() else {
                        return;
                    };
                    // The head after the final capture (capture has stopped by now).
                    let request = standin_engine::role::switchover::TakeOverRequest {
                        head_seq: node.repository.head().seq,
                        ..request
                    };
                    match link.take_over(&request).await {
                        Ok(state) => node.feed(Input::TakeOverAnswered {
                            id: request.id,
                            state,
                        }),
                        Err(crate::peer::PeerError::TimedOut(_)) => {
                            tracing::warn!("switchover: the take-over request timed out")
                        }
                        Err(error) => {
                            tracing::warn!(
                                message = %error,
                                "switchover: the peer did not accept the take-over request"
                            );
                            node.set_error(Some(format!(
                                "switchover: the peer did not answer: {error}"
                            )));
                        }
                    }
                });
            }
            Action::RequestSwitchover => {
                tokio::spawn(async move {
                    let Some(link) = node.peer() else {
                        return;
                    };
                    match link.request_switchover().await {
                        Ok(_) => tracing::info!("asked the active for a failback switchover"),
                        Err(error) => {
                            tracing::warn!(message = %error, "failback request refused")
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
        self.node.set_pulling(true);
        let task = tokio::spawn(async move {
            let result = puller.run(stopped).await;
            node.set_pulling(false);
            if let Some(error) = result {
                tracing::error!(%error, "replication stopped");
                // (A lost durability has made the node fail: `Puller::pull`.)
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
fn authority_of(
    config: &crate::config::Config,
) -> Box<dyn standin_engine::role::authority::Authority> {
    use standin_engine::role::authority::{EtcdLease, PeerOnly, WitnessQuorum, WitnessSettings};
    match &config.authority {
        AuthorityConfig::Peer => Box::new(PeerOnly),
        AuthorityConfig::Etcd(_) => Box::new(EtcdLease::new(&config.timing)),
        AuthorityConfig::Witness { agents, .. } => Box::new(WitnessQuorum::new(WitnessSettings {
            agents: agents.clone(),
            timing: config.timing,
        })),
    }
}

fn puller(node: &Arc<Node>) -> Option<Puller> {
    Some(Puller::new(node.clone(), node.peer()?))
}

/// One call to the peer: its view and role as it answered, or why there was no
/// (usable) answer. Heartbeats and the switchover's readiness check use it.
pub(crate) async fn ask_peer(node: &Arc<Node>) -> Result<(PeerView, String), String> {
    let Some(link) = node.peer() else {
        return Err("no peer_url is configured".to_string());
    };
    let response = link
        .heartbeat(
            &node.config.node_name,
            &node.repository.head(),
            node.role().name(),
            node.voter_sets.own(),
            node.failover.current().as_ref(),
        )
        .await
        .map_err(|error| error.to_string())?;
    if response.node == node.config.node_name {
        let message = format!(
            "the peer answers as {:?}, this node's own name: give each node its own node_name",
            node.config.node_name
        );
        tracing::error!("{message}");
        node.set_error(Some(message.clone()));
        return Err(message);
    }
    node.voters_announced(&response.voter_set);
    if let Some(report) = &response.failover {
        node.failover.merge(report);
    }
    let head = response.head;
    let view = PeerView {
        node: response.node,
        epoch: head.epoch,
        active: response.role == "active",
        handing_over: response.role == "handing-over",
        head_seq: head.seq,
    };
    Ok((view, response.role))
}

/// One heartbeat to the peer; the answer (or its absence) goes back to the machine.
async fn heartbeat(node: Arc<Node>) {
    let answer = ask_peer(&node).await;
    let now_ms = now_ms();
    match answer {
        Ok((peer, _)) => node.feed(Input::HeartbeatAnswered { now_ms, peer }),
        Err(_) => node.feed(Input::HeartbeatFailed { now_ms }),
    }
}

/// Run an `on_promote` / `on_demote` command with the node, the epoch and the old
/// active in its environment.
fn run_hook(node: &Arc<Node>, hook: Hook, epoch: u64, old_active: Option<String>) {
    // The hooks as now configured: a SIGHUP reload may have replaced them.
    let hooks = node.hooks();
    let command = match hook {
        Hook::OnPromote => hooks.on_promote,
        Hook::OnDemote => hooks.on_demote,
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
        standin_engine::log::quarantine::quarantine_after(&node.repository, start - 1)?
    {
        tracing::warn!(
            from_seq = start,
            to_seq = head,
            dir = %quarantined.dir.display(),
            "the last capture of the old active arrived only in part; promoting from the state before it"
        );
    }
    standin_engine::log::quarantine::rewind_folder(&node.config.folder, &node.repository)
}

/// A passive promoted itself (not a switchover) in `promotion.epoch`, keeping its log
/// up to `kept_seq`: record what it knew of the old active (its head as last heard,
/// from the heartbeats or the last pull, and when).
fn record_promotion(
    node: &crate::node::Node,
    promotion: &standin_engine::role::Promotion,
    kept_seq: u64,
) {
    let now_ms = standin_engine::fsutil::now_ms();
    let report = node.peer().map(|link| link.report());
    let heard = report.as_ref().and_then(|report| report.peer.as_ref());
    let old_active = promotion
        .old_active
        .clone()
        .or_else(|| heard.map(|peer| peer.node.clone()))
        .unwrap_or_default();
    let old_active_head_seq = heard
        .map(|peer| peer.head.seq)
        .max(node.peer_head().map(|head| head.seq));
    let old_active_heard_at_ms = report
        .as_ref()
        .and_then(|report| report.last_contact_ago_ms)
        .map(|ago_ms| now_ms.saturating_sub(ago_ms));
    node.failover
        .merge(&crate::coordinator::failover_report::FailoverReport {
            epoch: promotion.epoch,
            promoted_node: node.config.node_name.clone(),
            promoted_at_ms: now_ms,
            promoted_head_seq: kept_seq,
            old_active,
            old_active_head_seq,
            old_active_heard_at_ms,
            ..crate::coordinator::failover_report::FailoverReport::default()
        });
}
