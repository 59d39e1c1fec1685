//! A seeded, randomized simulation of the pair: two `RoleMachine`s with model logs
//! (lists of event ids), three terminal-server agents reporting to both nodes (with
//! the engine's own `AgentWitness`), a network that loses and delays messages and
//! partitions links (the pair link cut, one node isolated from everyone, agents split
//! between the nodes), crashes and restarts of either node and of agents (which
//! forget their votes), operator switchovers, a simulated etcd (one key, one lease holder at a time, leases that expire
//! by time unless kept alive), and a writer that writes to whichever node accepts
//! logins. Reports, switchover messages and etcd calls sometimes linger in transit for
//! longer than any timeout. Each run is replayable by its seed (`STANDIN_SIM_SEED=N`,
//! with `STANDIN_SIM_MODE=peer|witness|etcd`); the number of seeds is
//! `STANDIN_SIM_SEEDS` (default 300 in the test command, 100,000 in the `--ignored`
//! soak).
//!
//! Checked at every step: never two nodes accepting logins in one epoch and, with the
//! agent witness or the etcd lease, never two nodes accepting logins at the same
//! instant (peer mode shows that split brain: a test finds it). Checked once the faults heal: the pair
//! converges (one authority, equal logs); every event a passive applied is on the
//! final authority; every acknowledged write is on the final authority or in a
//! quarantine (nothing silently lost).

use std::collections::{HashSet, VecDeque};

use standin_engine::role::authority::{
    AgentWitness, Authority, EtcdLease, Evidence, NodeAnswer, PeerOnly, WitnessQuorum,
    WitnessReport, WitnessSettings,
};
use standin_engine::role::switchover::{TakeOverRequest, TakeOverState};
use standin_engine::role::timing::{AuthorityTiming, Timing};
use standin_engine::role::{Action, Command, Input, PeerView, Role, RoleMachine, RoleSettings};

const STEP_MS: u64 = 100;
const HEARTBEAT_TIMEOUT_STEPS: u64 = 3;
const AGENTS: [&str; 3] = ["ts1", "ts2", "ts3"];
/// Agents report every this many steps (300 ms, a third of the witness window).
const AGENT_INTERVAL_STEPS: u64 = 3;
const FAILOVER_AFTER_MS: u64 = 1_500;
const WITNESS_WINDOW_MS: u64 = 1_000;
/// The simulated etcd lease's TTL; the holder renews it every third of it.
const LEASE_TTL_MS: u64 = 2_000;
const KEEPALIVE_STEPS: u64 = LEASE_TTL_MS / 3 / STEP_MS;
/// A campaign whose answer was lost is tried again after this many steps.
const ACQUIRE_RETRY_STEPS: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Peer,
    Witness,
    Etcd,
}

/// The pair's timing: a tick every step, failover after `FAILOVER_AFTER_MS`.
fn timing(authority: AuthorityTiming) -> Timing {
    Timing::new(STEP_MS, FAILOVER_AFTER_MS)
        .and_then(|timing| timing.with_authority(authority))
        .unwrap()
}

fn authority(mode: Mode) -> Box<dyn Authority> {
    match mode {
        Mode::Peer => Box::new(PeerOnly),
        Mode::Witness => Box::new(WitnessQuorum::new(WitnessSettings {
            agents: AGENTS.iter().map(|agent| agent.to_string()).collect(),
            timing: timing(AuthorityTiming::Witness {
                window_ms: WITNESS_WINDOW_MS,
            }),
        })),
        Mode::Etcd => Box::new(EtcdLease::new(&timing(AuthorityTiming::Etcd {
            lease_ttl_ms: LEASE_TTL_MS,
        }))),
    }
}

/// Endpoints: nodes are 0 and 1, agents 2, 3 and 4, etcd 5.
const NODES: usize = 2;
const ETCD: usize = NODES + AGENTS.len();
const ENDPOINTS: usize = ETCD + 1;

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
    mode: Mode,
    /// This run of the node (agents echo it).
    instance: u64,
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
    /// etcd shell: the lease held (id, revision), a campaign under way since (step),
    /// the step of the next keep-alive.
    lease: Option<(u64, u64)>,
    /// Leases this node gave up (never adopted again, even after a restart: the shell
    /// keeps them in data_dir).
    revoked: Vec<u64>,
    acquiring_since: Option<u64>,
    next_keepalive: u64,
}

impl SimNode {
    fn new(name: &'static str, mode: Mode, initial_active: bool, now_ms: u64) -> SimNode {
        let machine =
            RoleMachine::with_authority(settings(name, initial_active), authority(mode), 0, now_ms);
        SimNode {
            name,
            mode,
            instance: 1,
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
            lease: None,
            revoked: Vec::new(),
            acquiring_since: None,
            next_keepalive: 0,
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
            handing_over: matches!(self.machine.role(), Role::HandingOver),
            head_seq: self.log.len() as u64,
        }
    }

    fn restart(&mut self, now_ms: u64) {
        self.machine = RoleMachine::with_authority(
            settings(self.name, self.initial_active),
            authority(self.mode),
            self.epoch(),
            now_ms,
        );
        self.alive = true;
        self.instance += 1;
        self.capturing = false;
        self.pulling = false;
        self.rejoin_pending = false;
        self.final_pull_pending = false;
        self.heartbeat_deadlines.clear();
        self.lease = None;
        // `revoked` survives: the shell keeps it in data_dir.
        self.acquiring_since = None;
    }
}

fn settings(name: &str, initial_active: bool) -> RoleSettings {
    RoleSettings {
        node: name.to_string(),
        initial_active,
        preferred: initial_active,
        auto_failback: false,
        timing: timing(AuthorityTiming::Peer),
    }
}

/// A message in flight: deliver at `at` step to node `to`.
enum Message {
    Heartbeat {
        from: usize,
        view: PeerView,
    },
    Answer {
        view: PeerView,
    },
    /// An agent's report to a node.
    Report {
        agent: usize,
        report: WitnessReport,
    },
    /// A switchover: take over at the request's head (once the authority agrees).
    TakeOver {
        from: usize,
        request: TakeOverRequest,
    },
    /// The target's answer to a take-over request.
    TakeOverAnswer {
        id: u64,
        state: TakeOverState,
    },
    /// To etcd: take the authority key under a new lease (or adopt ours).
    EtcdAcquire {
        node: usize,
        instance: u64,
        sent_ms: u64,
        /// Leases the node gave up: not adopted (as the shell reads the key first).
        given_up: Vec<u64>,
    },
    EtcdKeepAlive {
        node: usize,
        instance: u64,
        lease: u64,
        sent_ms: u64,
    },
    EtcdRevoke {
        lease: u64,
    },
    /// From etcd to a node (of run `instance`).
    EtcdGranted {
        instance: u64,
        lease: u64,
        revision: u64,
        sent_ms: u64,
    },
    EtcdRenewed {
        instance: u64,
        revision: u64,
        sent_ms: u64,
    },
    EtcdLost {
        instance: u64,
        lease: Option<u64>,
        reason: &'static str,
    },
    /// A node's answer to an agent's report.
    Ack {
        node: usize,
        answer: NodeAnswer,
    },
}

struct Network {
    /// `cut[a][b]`: the link between endpoints a and b is cut (symmetric).
    cut: [[bool; ENDPOINTS]; ENDPOINTS],
    loss_percent: u64,
    /// Some messages linger in transit (until the faults heal).
    linger: bool,
    queue: Vec<(u64, usize, Message)>,
}

impl Network {
    fn up(&self, a: usize, b: usize) -> bool {
        !self.cut[a][b]
    }
    fn set(&mut self, a: usize, b: usize, cut: bool) {
        self.cut[a][b] = cut;
        self.cut[b][a] = cut;
    }
    fn heal(&mut self) {
        self.cut = [[false; ENDPOINTS]; ENDPOINTS];
    }
}

/// The authority key in the simulated etcd: who holds it, under which lease, until
/// when (etcd's clock), created at which revision.
struct EtcdKey {
    node: usize,
    lease: u64,
    expires_ms: u64,
    revision: u64,
}

#[derive(Default)]
struct EtcdSim {
    key: Option<EtcdKey>,
    revision: u64,
    next_lease: u64,
}

struct SimAgent {
    name: &'static str,
    witness: AgentWitness,
}

struct World {
    rng: Rng,
    mode: Mode,
    nodes: [SimNode; 2],
    agents: Vec<SimAgent>,
    /// Steps at which two nodes accepted logins at once.
    split_brain_steps: u64,
    network: Network,
    etcd: EtcdSim,
    seed: u64,
    step: u64,
    next_id: u64,
    acknowledged: Vec<Ev>,
    applied_by_passive: HashSet<u64>,
    trace: Vec<String>,
}

mod etcd;
mod world;

/// One seeded run; returns the number of steps with two nodes accepting logins.
fn run(seed: u64, mode: Mode) -> u64 {
    let mut world = World {
        rng: Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1),
        mode,
        nodes: [
            SimNode::new("alpha", mode, true, 0),
            SimNode::new("beta", mode, false, 0),
        ],
        agents: AGENTS
            .iter()
            .map(|name| SimAgent {
                name,
                witness: AgentWitness::new(0, &["alpha".to_string(), "beta".to_string()]),
            })
            .collect(),
        split_brain_steps: 0,
        network: Network {
            cut: [[false; ENDPOINTS]; ENDPOINTS],
            loss_percent: 10,
            linger: true,
            queue: Vec::new(),
        },
        etcd: EtcdSim::default(),
        seed,
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
    // Heal: both up, every link up, no loss; then let the pair settle.
    world.network.heal();
    world.network.loss_percent = 0;
    world.network.linger = false;
    world.trace.push(format!("{} faults heal", world.step));
    for _ in 0..200 {
        world.run_step(false, true);
    }
    // The writer stops; the passive catches up.
    for _ in 0..100 {
        world.run_step(false, false);
    }
    let context = || format!("seed {seed} ({mode:?}):\n{}", world.trace.join("\n"));
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
    world.split_brain_steps
}

/// The seeds to run: `STANDIN_SIM_SEED` alone, else 1..=`STANDIN_SIM_SEEDS` (default
/// `default_count`).
fn seeds(default_count: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("STANDIN_SIM_SEED") {
        return vec![seed.parse().expect("STANDIN_SIM_SEED must be a number")];
    }
    let count: u64 = std::env::var("STANDIN_SIM_SEEDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default_count);
    (1..=count).collect()
}

fn mode_wanted(mode: Mode) -> bool {
    match std::env::var("STANDIN_SIM_MODE").as_deref() {
        Ok("peer") => mode == Mode::Peer,
        Ok("witness") => mode == Mode::Witness,
        Ok("etcd") => mode == Mode::Etcd,
        _ => true,
    }
}

/// Runs the seeds of one mode; the panic names the seed (so does each assertion).
fn run_seeds(mode: Mode, default_count: u64) {
    if !mode_wanted(mode) {
        return;
    }
    for seed in seeds(default_count) {
        run(seed, mode);
    }
}

#[test]
fn the_pair_keeps_one_authority_per_epoch_loses_nothing_and_converges() {
    run_seeds(Mode::Peer, 300);
}

#[test]
fn with_the_agent_witness_never_two_nodes_accept_logins_at_once() {
    run_seeds(Mode::Witness, 300);
}

#[test]
fn with_an_etcd_lease_never_two_nodes_accept_logins_at_once() {
    run_seeds(Mode::Etcd, 300);
}

/// Issue 16: a switchover's stale timer let the old active resume while its peer
/// took over.
#[test]
fn regression_witness_seed_3845_switchover_never_overlaps() {
    run(3845, Mode::Witness);
}

/// Issue 16, found by the soak: the old active resumed on its peer's abort (holding
/// by a peer's heartbeat) while the peer, restarted, failed over with the quorum.
#[test]
fn regression_witness_seed_35934_no_resume_on_abort_alone() {
    run(35934, Mode::Witness);
}

/// Issue 16, etcd mode (found while adding the etcd model, and by the soak): a lease
/// adopted after a restart while the old run's revoke was still in flight; a lease
/// given up and adopted again; a target whose own epoch outlived its rejoin answering
/// "done"; a holder blocked by a peer's later epoch.
#[test]
fn regression_etcd_seeds() {
    for seed in [5, 7, 14, 17, 29, 135, 599, 5606, 8563, 55492] {
        run(seed, Mode::Etcd);
    }
}

/// The soak: `cargo test --release -p standin-engine --test engine soak -- --ignored`
/// runs 100,000 seeds per mode (`STANDIN_SIM_SEEDS`, `STANDIN_SIM_MODE` to change).
#[test]
#[ignore = "a soak: 100,000 seeds, minutes in release"]
fn soak_peer() {
    run_seeds(Mode::Peer, 100_000);
}

#[test]
#[ignore = "a soak: 100,000 seeds, minutes in release"]
fn soak_witness() {
    run_seeds(Mode::Witness, 100_000);
}

#[test]
#[ignore = "a soak: 100,000 seeds, minutes in release"]
fn soak_etcd() {
    run_seeds(Mode::Etcd, 100_000);
}

/// The hole the witness closes: in peer mode, a cut link with both nodes alive gives
/// two nodes accepting logins at once (in different epochs).
#[test]
fn peer_mode_shows_the_split_brain_it_documents() {
    if std::env::var("STANDIN_SIM_SEED").is_ok() {
        return;
    }
    let split: u64 = (1..=100).map(|seed| run(seed, Mode::Peer)).sum();
    assert!(
        split > 0,
        "peer mode never had two authorities at once in 100 seeds: the simulation does not cut the link"
    );
}
