//! A seeded, randomized simulation of the pair: two `RoleMachine`s with model logs
//! (lists of event ids), a network that loses, delays and partitions messages, crashes
//! and restarts of either node, and a writer that writes to whichever node accepts
//! logins. Each run is replayable by its seed (`STANDIN_SIM_SEED=N`); the number of
//! seeds is `STANDIN_SIM_SEEDS` (default 300 in the test command).
//!
//! Checked at every step: never two nodes accepting logins in one epoch. Checked once
//! the faults heal: the pair converges (one authority, equal logs); every event a
//! passive applied is on the final authority; every acknowledged write is on the final
//! authority or in a quarantine (nothing silently lost).

use std::collections::{HashSet, VecDeque};

use standin_engine::role::{Action, Input, PeerView, Role, RoleMachine, RoleSettings};

const STEP_MS: u64 = 100;
const HEARTBEAT_TIMEOUT_STEPS: u64 = 3;

/// A model event: a unique id and the epoch it was recorded in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Ev {
    id: u64,
    epoch: u64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

struct SimNode {
    name: &'static str,
    initial_active: bool,
    machine: RoleMachine,
    alive: bool,
    restart_at: u64,
    log: Vec<Ev>,
    quarantine: Vec<Ev>,
    capturing: bool,
    pulling: bool,
    rejoin_pending: bool,
    final_pull_pending: bool,
    /// Heartbeats sent and not answered: the step they time out at.
    heartbeat_deadlines: VecDeque<u64>,
}

impl SimNode {
    fn new(name: &'static str, initial_active: bool, now_ms: u64) -> SimNode {
        let machine = RoleMachine::new(settings(name, initial_active), 0, now_ms);
        SimNode {
            name,
            initial_active,
            machine,
            alive: true,
            restart_at: 0,
            log: Vec::new(),
            quarantine: Vec::new(),
            capturing: false,
            pulling: false,
            rejoin_pending: false,
            final_pull_pending: false,
            heartbeat_deadlines: VecDeque::new(),
        }
    }

    fn epoch(&self) -> u64 {
        self.log.last().map(|event| event.epoch).unwrap_or(0)
    }

    fn view(&self) -> PeerView {
        PeerView {
            node: self.name.to_string(),
            epoch: self.machine.epoch().max(self.epoch()),
            active: self.machine.role() == &Role::Active,
            head_seq: self.log.len() as u64,
        }
    }

    fn restart(&mut self, now_ms: u64) {
        self.machine = RoleMachine::new(
            settings(self.name, self.initial_active),
            self.epoch(),
            now_ms,
        );
        self.alive = true;
        self.capturing = false;
        self.pulling = false;
        self.rejoin_pending = false;
        self.final_pull_pending = false;
        self.heartbeat_deadlines.clear();
    }
}

fn settings(name: &str, initial_active: bool) -> RoleSettings {
    RoleSettings {
        node: name.to_string(),
        initial_active,
        preferred: initial_active,
        auto_failback: false,
        failover_after_ms: 1_500,
    }
}

/// A message in flight: deliver at `at` step to node `to`.
enum Message {
    Heartbeat { from: usize, view: PeerView },
    Answer { view: PeerView },
}

struct Network {
    link_up: bool,
    loss_percent: u64,
    queue: Vec<(u64, usize, Message)>,
}

struct World {
    rng: Rng,
    nodes: [SimNode; 2],
    network: Network,
    step: u64,
    next_id: u64,
    acknowledged: Vec<Ev>,
    applied_by_passive: HashSet<u64>,
    trace: Vec<String>,
}

impl World {
    fn now_ms(&self) -> u64 {
        self.step * STEP_MS
    }

    fn feed(&mut self, index: usize, input: Input) {
        if !self.nodes[index].alive {
            return;
        }
        let actions = self.nodes[index].machine.step(input);
        self.carry_out(index, actions);
    }

    fn carry_out(&mut self, index: usize, actions: Vec<Action>) {
        let peer = 1 - index;
        for action in actions {
            match action {
                Action::SendHeartbeat => {
                    let view = self.nodes[index].view();
                    self.nodes[index]
                        .heartbeat_deadlines
                        .push_back(self.step + HEARTBEAT_TIMEOUT_STEPS);
                    self.send(peer, Message::Heartbeat { from: index, view });
                }
                Action::FinalPull => self.nodes[index].final_pull_pending = true,
                Action::PullTo { .. } | Action::StartPulling => self.nodes[index].pulling = true,
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
                | Action::AskPeerToTakeOver { .. }
                | Action::RequestSwitchover
                | Action::Alert { .. } => {}
            }
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn send(&mut self, to: usize, message: Message) {
        if !self.network.link_up || self.rng.chance(self.network.loss_percent) {
            return;
        }
        let delay = 1 + self.rng.below(2);
        self.network.queue.push((self.step + delay, to, message));
    }

    fn reachable(&self, from: usize) -> bool {
        self.network.link_up && self.nodes[1 - from].alive
    }

    /// A pull: our log must be a prefix of the peer's (then we take the rest) or the
    /// peer is behind us; anything else is a divergence.
    fn pull(&mut self, index: usize) -> bool {
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
    fn rejoin(&mut self, index: usize) {
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

    fn run_step(&mut self, faults: bool, writes: bool) {
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
                self.network.link_up = !self.network.link_up;
                self.trace.push(format!(
                    "{} link {}",
                    self.step,
                    if self.network.link_up {
                        "heals"
                    } else {
                        "is cut"
                    }
                ));
            }
        }
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
            if !self.nodes[to].alive {
                continue;
            }
            match message {
                Message::Heartbeat { from, view } => {
                    self.feed(to, Input::PeerSeen { now_ms, peer: view });
                    let answer = self.nodes[to].view();
                    self.send(from, Message::Answer { view: answer });
                }
                Message::Answer { view } => {
                    self.nodes[to].heartbeat_deadlines.pop_front();
                    self.feed(to, Input::HeartbeatAnswered { now_ms, peer: view });
                }
            }
        }
        for index in 0..2 {
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

    fn check_one_authority_per_epoch(&self) {
        let [a, b] = &self.nodes;
        if a.alive && b.alive && a.machine.accepts_logins() && b.machine.accepts_logins() {
            assert_ne!(
                a.machine.epoch(),
                b.machine.epoch(),
                "two authorities in epoch {} at step {}:\n{}",
                a.machine.epoch(),
                self.step,
                self.trace.join("\n")
            );
        }
    }
}

fn run(seed: u64) {
    let mut world = World {
        rng: Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1),
        nodes: [
            SimNode::new("alpha", true, 0),
            SimNode::new("beta", false, 0),
        ],
        network: Network {
            link_up: true,
            loss_percent: 10,
            queue: Vec::new(),
        },
        step: 0,
        next_id: 0,
        acknowledged: Vec::new(),
        applied_by_passive: HashSet::new(),
        trace: Vec::new(),
    };
    for index in 0..2 {
        let actions = world.nodes[index].machine.start();
        world.carry_out(index, actions);
    }
    for _ in 0..400 {
        world.run_step(true, true);
    }
    // Heal: both up, the link up, no loss; then let the pair settle.
    world.network.link_up = true;
    world.network.loss_percent = 0;
    world.trace.push(format!("{} faults heal", world.step));
    for _ in 0..200 {
        world.run_step(false, true);
    }
    // The writer stops; the passive catches up.
    for _ in 0..100 {
        world.run_step(false, false);
    }
    let context = || format!("seed {seed}:\n{}", world.trace.join("\n"));
    let authorities: Vec<&SimNode> = world
        .nodes
        .iter()
        .filter(|node| node.machine.accepts_logins())
        .collect();
    assert_eq!(
        authorities.len(),
        1,
        "one authority after healing; {}",
        context()
    );
    let authority = authorities[0];
    let other = world
        .nodes
        .iter()
        .find(|node| node.name != authority.name)
        .unwrap();
    assert_eq!(
        other.log,
        authority.log,
        "the pair converges; {}",
        context()
    );
    let on_authority: HashSet<u64> = authority.log.iter().map(|event| event.id).collect();
    let quarantined: HashSet<u64> = world
        .nodes
        .iter()
        .flat_map(|node| node.quarantine.iter().map(|event| event.id))
        .collect();
    for event in &world.acknowledged {
        assert!(
            on_authority.contains(&event.id) || quarantined.contains(&event.id),
            "acknowledged write {event:?} lost; {}",
            context()
        );
    }
    for id in &world.applied_by_passive {
        assert!(
            on_authority.contains(id),
            "event {id} a passive applied is not on the final authority; {}",
            context()
        );
    }
}

#[test]
fn the_pair_keeps_one_authority_per_epoch_loses_nothing_and_converges() {
    if let Ok(seed) = std::env::var("STANDIN_SIM_SEED") {
        run(seed.parse().expect("STANDIN_SIM_SEED must be a number"));
        return;
    }
    let seeds: u64 = std::env::var("STANDIN_SIM_SEEDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(300);
    for seed in 1..=seeds {
        run(seed);
    }
}
