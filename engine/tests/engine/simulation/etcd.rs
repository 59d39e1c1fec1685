//! The simulated etcd (one key, one lease holder at a time, leases that expire by
//! time), the holder's keep-alive, and the check of one authority per epoch.

use super::*;

impl World {
    /// The etcd server: one key, one holder at a time, leases that expire by time.
    pub(super) fn etcd_serves(&mut self, message: Message) {
        let now_ms = self.now_ms();
        if self
            .etcd
            .key
            .as_ref()
            .is_some_and(|key| key.expires_ms <= now_ms)
        {
            self.trace
                .push(format!("{} etcd: the lease expired", self.step));
            self.etcd.key = None;
        }
        match message {
            Message::EtcdAcquire {
                node,
                instance,
                sent_ms,
                given_up,
            } => {
                let answer = match self.etcd.key.as_mut() {
                    // A key that already names this node is adopted (after a restart),
                    // its lease kept alive, as the shell does.
                    Some(key) if key.node == node && !given_up.contains(&key.lease) => {
                        key.expires_ms = now_ms + LEASE_TTL_MS;
                        Message::EtcdGranted {
                            instance,
                            lease: key.lease,
                            revision: key.revision,
                            sent_ms,
                        }
                    }
                    Some(_) => Message::EtcdLost {
                        instance,
                        lease: None,
                        reason: "the etcd authority key is held by another node",
                    },
                    None => {
                        self.etcd.revision += 1;
                        self.etcd.next_lease += 1;
                        let key = EtcdKey {
                            node,
                            lease: self.etcd.next_lease,
                            expires_ms: now_ms + LEASE_TTL_MS,
                            revision: self.etcd.revision,
                        };
                        let answer = Message::EtcdGranted {
                            instance,
                            lease: key.lease,
                            revision: key.revision,
                            sent_ms,
                        };
                        self.etcd.key = Some(key);
                        answer
                    }
                };
                self.send(ETCD, node, answer);
            }
            Message::EtcdKeepAlive {
                node,
                instance,
                lease,
                sent_ms,
            } => {
                let answer = match self.etcd.key.as_mut() {
                    Some(key) if key.lease == lease => {
                        key.expires_ms = now_ms + LEASE_TTL_MS;
                        Message::EtcdRenewed {
                            instance,
                            revision: key.revision,
                            sent_ms,
                        }
                    }
                    _ => Message::EtcdLost {
                        instance,
                        lease: Some(lease),
                        reason: "the etcd lease expired",
                    },
                };
                self.send(ETCD, node, answer);
            }
            Message::EtcdRevoke { lease }
                if self.etcd.key.as_ref().is_some_and(|key| key.lease == lease) =>
            {
                self.trace
                    .push(format!("{} etcd: lease {lease} revoked", self.step));
                self.etcd.key = None;
            }
            _ => {}
        }
    }

    /// The etcd shell of node `index`: what etcd answered.
    pub(super) fn etcd_answers(&mut self, index: usize, message: Message) {
        let now_ms = self.now_ms();
        match message {
            Message::EtcdGranted {
                instance,
                lease,
                revision,
                sent_ms,
            } if instance == self.nodes[index].instance => {
                if self.nodes[index]
                    .lease
                    .is_some_and(|(held, _)| held == lease)
                {
                    // A second answer (a retried campaign adopted the lease): held.
                    return;
                }
                if self.nodes[index].revoked.contains(&lease) {
                    // A lease this run gave up (its revoke may still be on the way):
                    // not adopted; it expires.
                    self.nodes[index].acquiring_since = None;
                    return;
                }
                if self.nodes[index].acquiring_since.take().is_none() {
                    // Released while the campaign was under way: give it back.
                    self.nodes[index].revoked.push(lease);
                    self.send(index, ETCD, Message::EtcdRevoke { lease });
                    return;
                }
                self.nodes[index].lease = Some((lease, revision));
                self.nodes[index].next_keepalive = self.step + KEEPALIVE_STEPS;
                self.trace.push(format!(
                    "{} {} holds lease {lease} (revision {revision})",
                    self.step, self.nodes[index].name
                ));
                let evidence = Evidence::LeaseHeld {
                    now_ms,
                    sent_ms,
                    revision,
                    valid_until_ms: sent_ms + LEASE_TTL_MS,
                };
                self.feed(index, Input::Authority(evidence));
            }
            // A renewal is fed even when the lease was given up meanwhile (as in the
            // shell, where it may already be on its way to the machine).
            Message::EtcdRenewed {
                instance,
                revision,
                sent_ms,
                ..
            } if instance == self.nodes[index].instance => {
                let evidence = Evidence::LeaseHeld {
                    now_ms,
                    sent_ms,
                    revision,
                    valid_until_ms: sent_ms + LEASE_TTL_MS,
                };
                self.feed(index, Input::Authority(evidence));
            }
            Message::EtcdLost {
                instance,
                lease,
                reason,
            } if instance == self.nodes[index].instance => {
                let node = &mut self.nodes[index];
                match lease {
                    Some(lost) if node.lease.is_some_and(|(held, _)| held == lost) => {
                        node.lease = None;
                        let line = format!("{} {} lost lease {lost}", self.step, node.name);
                        self.trace.push(line);
                    }
                    Some(_) => return,
                    None => node.acquiring_since = None,
                }
                let evidence = Evidence::LeaseLost {
                    now_ms,
                    reason: reason.to_string(),
                };
                self.feed(index, Input::Authority(evidence));
            }
            _ => {}
        }
    }

    /// The etcd shell keeps a held lease alive every third of its TTL.
    pub(super) fn keep_lease_alive(&mut self, index: usize) {
        let node = &self.nodes[index];
        let Some((lease, _)) = node.lease else {
            return;
        };
        if !node.alive || self.step < node.next_keepalive {
            return;
        }
        self.nodes[index].next_keepalive = self.step + KEEPALIVE_STEPS;
        let message = Message::EtcdKeepAlive {
            node: index,
            instance: self.nodes[index].instance,
            lease,
            sent_ms: self.now_ms(),
        };
        self.send(index, ETCD, message);
    }

    pub(super) fn check_one_authority_per_epoch(&mut self) {
        let [a, b] = &self.nodes;
        if a.alive && b.alive && a.machine.accepts_logins() && b.machine.accepts_logins() {
            self.split_brain_steps += 1;
            assert!(
                self.mode == Mode::Peer,
                "seed {} ({:?}): two nodes accept logins at step {}:\n{}",
                self.seed,
                self.mode,
                self.step,
                self.trace.join("\n")
            );
            assert_ne!(
                a.machine.epoch(),
                b.machine.epoch(),
                "seed {} ({:?}): two authorities in epoch {} at step {}:\n{}",
                self.seed,
                self.mode,
                a.machine.epoch(),
                self.step,
                self.trace.join("\n")
            );
        }
    }
}
