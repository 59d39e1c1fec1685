//! The simulated world's step: feeding the role machines, carrying out their actions,
//! the network, agents, pulls and rejoins, and the faults of each step.

use super::*;

impl World {
    pub(super) fn now_ms(&self) -> u64 {
        self.step * STEP_MS
    }

    pub(super) fn feed(&mut self, index: usize, input: Input) {
        if !self.nodes[index].alive {
            return;
        }
        let before = self.nodes[index].machine.role().clone();
        let actions = self.nodes[index].machine.step(input);
        let after = self.nodes[index].machine.role().clone();
        if before != after {
            self.trace.push(format!(
                "{} {}: {before:?} -> {after:?} (epoch {})",
                self.step,
                self.nodes[index].name,
                self.nodes[index].machine.epoch()
            ));
        }
        self.carry_out(index, actions);
    }

    pub(super) fn carry_out(&mut self, index: usize, actions: Vec<Action>) {
        let peer = 1 - index;
        for action in actions {
            match action {
                Action::SendHeartbeat => {
                    let view = self.nodes[index].view();
                    self.nodes[index]
                        .heartbeat_deadlines
                        .push_back(self.step + HEARTBEAT_TIMEOUT_STEPS);
                    self.send(index, peer, Message::Heartbeat { from: index, view });
                }
                Action::FinalPull => self.nodes[index].final_pull_pending = true,
                Action::PullTo { .. } | Action::StartPulling => self.nodes[index].pulling = true,
                Action::AskPeerToTakeOver(mut request) => {
                    // The shell hands over at the head after the final capture.
                    request.head_seq = self.nodes[index].log.len() as u64;
                    self.send(
                        index,
                        peer,
                        Message::TakeOver {
                            from: index,
                            request,
                        },
                    );
                }
                Action::AcquireAuthority => {
                    let node = &self.nodes[index];
                    let retry = node
                        .acquiring_since
                        .is_none_or(|since| self.step >= since + ACQUIRE_RETRY_STEPS);
                    if self.mode == Mode::Etcd && node.lease.is_none() && retry {
                        self.nodes[index].acquiring_since = Some(self.step);
                        let message = Message::EtcdAcquire {
                            node: index,
                            instance: self.nodes[index].instance,
                            sent_ms: self.now_ms(),
                            given_up: self.nodes[index].revoked.clone(),
                        };
                        self.send(index, ETCD, message);
                    }
                }
                Action::ReleaseAuthority => {
                    self.nodes[index].acquiring_since = None;
                    if let Some((lease, _)) = self.nodes[index].lease.take() {
                        self.nodes[index].revoked.push(lease);
                        self.send(index, ETCD, Message::EtcdRevoke { lease });
                    }
                }
                Action::StopPulling => self.nodes[index].pulling = false,
                Action::RecordPromote { epoch } => {
                    let id = self.fresh_id();
                    self.nodes[index].log.push(Ev { id, epoch });
                    self.trace.push(format!(
                        "{} {} promotes to epoch {epoch}",
                        self.step, self.nodes[index].name
                    ));
                }
                Action::StartCapture => self.nodes[index].capturing = true,
                Action::StopCapture => self.nodes[index].capturing = false,
                Action::StartRejoin { .. } => self.nodes[index].rejoin_pending = true,
                Action::OpenLogins
                | Action::CloseLogins
                | Action::RunHook { .. }
                | Action::RequestSwitchover
                | Action::Alert { .. } => {}
            }
        }
    }

    pub(super) fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Send from endpoint `from` to endpoint `to` (nodes 0-1, agents 2-4).
    pub(super) fn send(&mut self, from: usize, to: usize, message: Message) {
        if !self.network.up(from, to) || self.rng.chance(self.network.loss_percent) {
            return;
        }
        let mut delay = 1 + self.rng.below(2);
        let may_linger = !matches!(
            message,
            Message::Heartbeat { .. } | Message::Answer { .. } | Message::Ack { .. }
        );
        if may_linger && self.network.linger && self.rng.chance(5) {
            // A report, a switchover message or an etcd call stuck in transit for
            // longer than the witness window, the lease's TTL, the failover delay.
            delay = 10 + self.rng.below(30);
        }
        self.network.queue.push((self.step + delay, to, message));
    }

    pub(super) fn reachable(&self, from: usize) -> bool {
        self.network.up(from, 1 - from) && self.nodes[1 - from].alive
    }

    pub(super) fn agents_report(&mut self) {
        if self.mode != Mode::Witness || !self.step.is_multiple_of(AGENT_INTERVAL_STEPS) {
            return;
        }
        let now_ms = self.now_ms();
        for agent in 0..self.agents.len() {
            for node in 0..NODES {
                let address = self.nodes[node].name;
                let name = self.agents[agent].name;
                let report = self.agents[agent].witness.report_for(name, address, now_ms);
                self.send(NODES + agent, node, Message::Report { agent, report });
            }
        }
    }

    /// A pull: our log must be a prefix of the peer's (then we take the rest) or the
    /// peer is behind us; anything else is a divergence.
    pub(super) fn pull(&mut self, index: usize) -> bool {
        if !self.reachable(index) {
            return false;
        }
        let peer = 1 - index;
        let (own, theirs) = (self.nodes[index].log.clone(), self.nodes[peer].log.clone());
        if own.len() <= theirs.len() && theirs[..own.len()] == own[..] {
            for event in &theirs[own.len()..] {
                self.applied_by_passive.insert(event.id);
            }
            self.nodes[index].log = theirs;
            let head = self.nodes[index].log.len() as u64;
            let epoch = self.nodes[index].epoch();
            self.feed(
                index,
                Input::Applied {
                    epoch,
                    head_seq: head,
                },
            );
            self.feed(index, Input::CaughtUp { head_seq: head });
            true
        } else if theirs.len() < own.len() && own[..theirs.len()] == theirs[..] {
            // We are ahead of the peer: nothing to take.
            true
        } else {
            let authority = self.nodes[peer].name.to_string();
            self.feed(index, Input::Diverged { authority });
            true
        }
    }

    /// The rejoin: keep the longest common prefix with the peer, quarantine the rest.
    pub(super) fn rejoin(&mut self, index: usize) {
        if !self.reachable(index) {
            return;
        }
        let peer = 1 - index;
        let theirs = self.nodes[peer].log.clone();
        let own = &mut self.nodes[index];
        let common = own
            .log
            .iter()
            .zip(&theirs)
            .take_while(|(a, b)| a == b)
            .count();
        let moved: Vec<Ev> = own.log.drain(common..).collect();
        own.quarantine.extend(moved);
        own.rejoin_pending = false;
        self.trace.push(format!(
            "{} {} rejoins at {common}",
            self.step, self.nodes[index].name
        ));
        self.feed(index, Input::RejoinDone);
    }

    pub(super) fn run_step(&mut self, faults: bool, writes: bool) {
        self.step += 1;
        let now_ms = self.now_ms();
        // Faults.
        if faults {
            for index in 0..2 {
                if self.nodes[index].alive && self.rng.chance(1) {
                    self.nodes[index].alive = false;
                    self.nodes[index].restart_at = self.step + 5 + self.rng.below(40);
                    self.trace
                        .push(format!("{} {} crashes", self.step, self.nodes[index].name));
                }
            }
            if self.rng.chance(2) {
                let cut = self.network.up(0, 1);
                self.network.set(0, 1, cut);
                self.trace.push(format!(
                    "{} pair link {}",
                    self.step,
                    if cut { "is cut" } else { "heals" }
                ));
            }
            if self.rng.chance(1) {
                // One node isolated from everyone.
                let node = self.rng.below(2) as usize;
                for other in 0..ENDPOINTS {
                    if other != node {
                        self.network.set(node, other, true);
                    }
                }
                self.trace
                    .push(format!("{} {} isolated", self.step, self.nodes[node].name));
            }
            if self.rng.chance(2) {
                // One agent-node link flips (agents split between the nodes).
                let agent = NODES + self.rng.below(AGENTS.len() as u64) as usize;
                let node = self.rng.below(2) as usize;
                let cut = self.network.up(agent, node);
                self.network.set(agent, node, cut);
                self.trace.push(format!(
                    "{} link {}-{} {}",
                    self.step,
                    AGENTS[agent - NODES],
                    self.nodes[node].name,
                    if cut { "is cut" } else { "heals" }
                ));
            }
            if self.mode == Mode::Etcd && self.rng.chance(2) {
                // One node-etcd link flips.
                let node = self.rng.below(2) as usize;
                let cut = self.network.up(node, ETCD);
                self.network.set(node, ETCD, cut);
                self.trace.push(format!(
                    "{} link {}-etcd {}",
                    self.step,
                    self.nodes[node].name,
                    if cut { "is cut" } else { "heals" }
                ));
            }
            if self.rng.chance(1) {
                self.network.heal();
                self.trace.push(format!("{} every link heals", self.step));
            }
            if self.rng.chance(1) {
                // The operator asks the active for a switchover.
                if let Some(index) =
                    (0..NODES).find(|index| self.nodes[*index].machine.role() == &Role::Active)
                {
                    self.trace.push(format!(
                        "{} switchover on {}",
                        self.step, self.nodes[index].name
                    ));
                    self.feed(index, Input::Operator(Command::Switchover));
                }
            }
            if self.rng.chance(1) {
                // An agent restarts and forgets whom it voted for.
                let agent = self.rng.below(AGENTS.len() as u64) as usize;
                self.agents[agent].witness =
                    AgentWitness::new(now_ms, &["alpha".to_string(), "beta".to_string()]);
                self.trace
                    .push(format!("{} {} restarts", self.step, AGENTS[agent]));
            }
        }
        self.agents_report();
        for index in 0..2 {
            if !self.nodes[index].alive && (self.step >= self.nodes[index].restart_at || !faults) {
                self.nodes[index].restart(now_ms);
                self.trace
                    .push(format!("{} {} restarts", self.step, self.nodes[index].name));
                let actions = self.nodes[index].machine.start();
                let epoch = self.nodes[index].epoch();
                let head = self.nodes[index].log.len() as u64;
                self.feed(
                    index,
                    Input::Applied {
                        epoch,
                        head_seq: head,
                    },
                );
                self.carry_out(index, actions);
            }
        }
        // Deliveries.
        let due: Vec<(u64, usize, Message)> = {
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.network.queue)
                .into_iter()
                .partition(|(at, _, _)| *at <= self.step);
            self.network.queue = waiting;
            ready
        };
        for (_, to, message) in due {
            if let Message::Ack { node, answer } = message {
                let address = self.nodes[node].name;
                self.agents[to - NODES]
                    .witness
                    .answered(now_ms, address, &answer);
                continue;
            }
            if to == ETCD {
                self.etcd_serves(message);
                continue;
            }
            if !self.nodes[to].alive {
                continue;
            }
            match message {
                Message::Heartbeat { from, view } => {
                    self.feed(to, Input::PeerSeen { now_ms, peer: view });
                    let answer = self.nodes[to].view();
                    self.send(to, from, Message::Answer { view: answer });
                }
                Message::Report { agent, report } => {
                    self.feed(
                        to,
                        Input::Authority(Evidence::AgentReport { now_ms, report }),
                    );
                    let machine = &self.nodes[to].machine;
                    let ack = Message::Ack {
                        node: to,
                        answer: NodeAnswer {
                            node: self.nodes[to].name.to_string(),
                            epoch: machine.epoch(),
                            active: machine.accepts_logins(),
                            suspended: matches!(machine.role(), Role::Suspended { .. }),
                            eligible: matches!(
                                machine.role(),
                                Role::Active | Role::Passive | Role::Suspended { .. }
                            ),
                            window_ms: WITNESS_WINDOW_MS,
                            instance: self.nodes[to].instance,
                            time_ms: now_ms,
                        },
                    };
                    self.send(to, NODES + agent, ack);
                }
                Message::TakeOver { from, request } => {
                    let id = request.id;
                    self.feed(to, Input::TakeOverRequested(request.clone()));
                    let state = self.nodes[to].machine.take_over_memory().state(&request);
                    self.send(to, from, Message::TakeOverAnswer { id, state });
                }
                Message::TakeOverAnswer { id, state } => {
                    self.feed(to, Input::TakeOverAnswered { id, state });
                }
                message @ (Message::EtcdGranted { .. }
                | Message::EtcdRenewed { .. }
                | Message::EtcdLost { .. }) => self.etcd_answers(to, message),
                Message::Ack { .. }
                | Message::EtcdAcquire { .. }
                | Message::EtcdKeepAlive { .. }
                | Message::EtcdRevoke { .. } => {}
                Message::Answer { view } => {
                    self.nodes[to].heartbeat_deadlines.pop_front();
                    self.feed(to, Input::HeartbeatAnswered { now_ms, peer: view });
                }
            }
        }
        for index in 0..2 {
            self.keep_lease_alive(index);
            while self.nodes[index]
                .heartbeat_deadlines
                .front()
                .is_some_and(|deadline| *deadline <= self.step)
            {
                self.nodes[index].heartbeat_deadlines.pop_front();
                self.feed(index, Input::HeartbeatFailed { now_ms });
            }
            if !self.nodes[index].alive {
                continue;
            }
            if self.nodes[index].rejoin_pending {
                self.rejoin(index);
            }
            if self.nodes[index].final_pull_pending {
                self.nodes[index].final_pull_pending = false;
                self.pull(index);
                self.feed(index, Input::FinalPullDone);
            } else if self.nodes[index].pulling {
                self.pull(index);
            }
            self.feed(index, Input::Tick { now_ms });
        }
        // The writer writes to a node that accepts logins and captures.
        if writes && self.rng.chance(30) {
            let candidates: Vec<usize> = (0..2)
                .filter(|index| {
                    self.nodes[*index].alive
                        && self.nodes[*index].machine.accepts_logins()
                        && self.nodes[*index].capturing
                })
                .collect();
            if let Some(index) = candidates
                .get(self.rng.below(candidates.len() as u64) as usize)
                .copied()
            {
                let id = self.fresh_id();
                let epoch = self.nodes[index].machine.epoch();
                let event = Ev { id, epoch };
                self.nodes[index].log.push(event);
                self.acknowledged.push(event);
            }
        }
        self.check_one_authority_per_epoch();
    }
}
