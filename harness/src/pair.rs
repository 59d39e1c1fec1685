//! `PairSpec` and `Pair`: an active `alpha` and a passive `beta` under one root.
//!
//! The passive always names the active as its peer; with `mutual` the active names
//! the passive too, as deployed (heartbeats both ways, switchover, failback). Each
//! link can go through a route — a fault proxy — that maps a node's gRPC port to the
//! port its peer dials.

use std::path::Path;

use crate::{tree, wait_until, NodeProcess, NodeSpec};

/// How to build a pair: the two nodes' specs and whether the active names its peer.
pub struct PairSpec {
    pub alpha: NodeSpec,
    pub beta: NodeSpec,
    mutual: bool,
}

impl PairSpec {
    /// `alpha` active and `beta` passive, both with the config lines `extra`.
    pub fn new(extra: &str) -> PairSpec {
        PairSpec {
            alpha: NodeSpec::new("alpha", "active").extra(extra),
            beta: NodeSpec::new("beta", "passive").extra(extra),
            mutual: false,
        }
    }

    /// Each with its own extra lines.
    pub fn with_extra(active_extra: &str, passive_extra: &str) -> PairSpec {
        PairSpec {
            alpha: NodeSpec::new("alpha", "active").extra(active_extra),
            beta: NodeSpec::new("beta", "passive").extra(passive_extra),
            mutual: false,
        }
    }

    /// The active names the passive as its peer too.
    pub fn mutual(mut self) -> PairSpec {
        self.mutual = true;
        self
    }

    /// Change the active's spec.
    pub fn alpha(mut self, change: impl FnOnce(NodeSpec) -> NodeSpec) -> PairSpec {
        self.alpha = change(self.alpha);
        self
    }

    /// Change the passive's spec.
    pub fn beta(mut self, change: impl FnOnce(NodeSpec) -> NodeSpec) -> PairSpec {
        self.beta = change(self.beta);
        self
    }

    /// Configure both under `root`, not started; each peer dialled directly.
    pub fn configure(self, root: &Path) -> (NodeProcess, NodeProcess) {
        self.configure_via(root, |port| port)
    }

    /// Configure both under `root`, not started; a node's peer dials `route(port)` for
    /// the other's gRPC `port` (first the active's, then, when mutual, the passive's).
    pub fn configure_via(
        self,
        root: &Path,
        mut route: impl FnMut(u16) -> u16,
    ) -> (NodeProcess, NodeProcess) {
        let alpha = self.alpha.configure(root);
        let beta = self.beta.peer(route(alpha.grpc)).configure(root);
        if self.mutual {
            alpha.set_peer(route(beta.grpc));
        }
        (alpha, beta)
    }

    /// Configure both in a new temp dir; start them when `start` (the active first).
    pub fn build(self, start: bool) -> Pair {
        self.build_in(tempfile::tempdir().expect("a temp dir"), start)
    }

    /// `build` with the pair's files in `root` (on another file system, say).
    pub fn build_in(self, root: tempfile::TempDir, start: bool) -> Pair {
        let (mut alpha, mut beta) = self.configure(root.path());
        if start {
            alpha.start();
            beta.start();
        }
        Pair { root, alpha, beta }
    }
}

/// An active (`alpha`) and a passive (`beta`) in one temp dir.
pub struct Pair {
    pub root: tempfile::TempDir,
    pub alpha: NodeProcess,
    pub beta: NodeProcess,
}

impl Pair {
    /// Configure both (the passive with `passive_extra`); start them when `start`.
    pub fn new(passive_extra: &str, start: bool) -> Pair {
        PairSpec::with_extra("", passive_extra).build(start)
    }

    /// Configure both with extra config lines for each.
    pub fn with_extra(active_extra: &str, passive_extra: &str, start: bool) -> Pair {
        PairSpec::with_extra(active_extra, passive_extra).build(start)
    }

    /// Wait until beta's folder and head are alpha's (alpha having recorded its folder).
    pub fn wait_in_sync(&self) {
        wait_until("beta to match alpha", || {
            let alpha = self.alpha.head_seq();
            alpha > 0
                && alpha == self.beta.head_seq()
                && tree(&self.alpha.folder) == tree(&self.beta.folder)
                && alpha == self.alpha.head_seq()
        });
    }

    /// `standin verify` passes on both nodes.
    pub fn assert_verified(&self) {
        for node in [&self.alpha, &self.beta] {
            let output = node.cli(&["verify"]);
            assert!(
                output.status.success(),
                "verify on {}: {}{}",
                node.name,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Whether `b` has `a`'s head (past 0) and the same folder.
pub fn in_sync(a: &NodeProcess, b: &NodeProcess) -> bool {
    let head = a.head_seq();
    head > 0 && head == b.head_seq() && tree(&a.folder) == tree(&b.folder)
}
