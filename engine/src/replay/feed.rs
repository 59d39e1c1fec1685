//! What one apply takes in: its first batch, and the batches handed to it while it
//! still runs (`Feed::offer`).
//!
//! An apply ends with a durability point (the last part's fsyncs and log append) in
//! which it writes nothing. A batch offered meanwhile is taken by the same apply: it is
//! checked, journaled and written while that commit runs, and committed after it — as
//! the parts of one batch already are — so a stream of batches (a catch-up, a busy
//! folder) is not written one durability point at a time. An apply waits for another
//! batch only while a commit of its own runs: it never delays its own durability.
//!
//! A batch handed over is either taken by the apply (`offer` returns once it is) or
//! given back when the apply ends first: never accepted and then dropped. At most one
//! waits in the feed, so memory holds the batch being fetched, the one offered, the
//! one written and the one committed.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::log::event::Event;

/// The batches of one apply (see the module's doc).
pub struct Feed {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// Batches are still taken (the apply has not ended, nor decided to end).
    open: bool,
    queued: VecDeque<Vec<Event>>,
    /// How many batches the apply has taken.
    taken: u64,
    /// A part's commit is running: the apply may still take a batch offered now.
    committing: bool,
}

impl Feed {
    /// A feed holding `first`, open for more.
    pub fn new(first: Vec<Event>) -> Feed {
        Feed::preloaded(vec![first])
    }

    /// A feed of `events` alone.
    pub fn only(events: Vec<Event>) -> Feed {
        let feed = Feed::new(events);
        feed.lock().open = false;
        feed
    }

    /// A feed already holding `batches`, open for more: an apply takes them in order
    /// until it ends (the tests' way to hand one apply several batches without a
    /// race); `take_back` returns the ones it did not take.
    #[doc(hidden)]
    pub fn preloaded(batches: Vec<Vec<Event>>) -> Feed {
        Feed {
            state: Mutex::new(State {
                open: true,
                queued: batches.into(),
                taken: 0,
                committing: false,
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.wake
            .wait(state)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hand `events` (which follow the last batch handed over) to the running apply.
    /// Returns once the apply has taken them; gives them back when it ends (or will
    /// take no more) first — apply them in a new one.
    pub fn offer(&self, events: Vec<Event>) -> Result<(), Vec<Event>> {
        let mut state = self.lock();
        while state.open && !state.queued.is_empty() {
            state = self.wait(state);
        }
        if !state.open {
            return Err(events);
        }
        state.queued.push_back(events);
        let ticket = state.taken + 1;
        self.wake.notify_all();
        loop {
            if state.taken >= ticket {
                return Ok(());
            }
            if !state.open {
                // Not taken: ours is the only one queued.
                return match state.queued.pop_back() {
                    Some(events) => Err(events),
                    None => Ok(()),
                };
            }
            state = self.wait(state);
        }
    }

    /// Whether the apply may still take batches.
    pub fn is_open(&self) -> bool {
        self.lock().open
    }

    /// The batches of a preloaded feed its apply did not take.
    #[doc(hidden)]
    pub fn take_back(&self) -> Vec<Vec<Event>> {
        self.lock().queued.drain(..).collect()
    }

    /// The first batch, or one queued now.
    pub(super) fn queued(&self) -> Option<Vec<Event>> {
        let mut state = self.lock();
        let next = state.queued.pop_front();
        if next.is_some() {
            state.taken += 1;
        }
        self.wake.notify_all();
        next
    }

    /// The next batch: one queued, or one offered while a commit of the apply still
    /// runs. `None` once no commit runs and none is queued: the feed is then closed.
    pub(super) fn next(&self) -> Option<Vec<Event>> {
        let mut state = self.lock();
        loop {
            if let Some(next) = state.queued.pop_front() {
                state.taken += 1;
                self.wake.notify_all();
                return Some(next);
            }
            if !state.open || !state.committing {
                state.open = false;
                self.wake.notify_all();
                return None;
            }
            state = self.wait(state);
        }
    }

    /// The apply takes no more: a batch being offered is given back.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.open = false;
        self.wake.notify_all();
    }

    /// A part's commit starts (`true`) or has ended (`false`).
    pub(super) fn set_committing(&self, committing: bool) {
        let mut state = self.lock();
        state.committing = committing;
        self.wake.notify_all();
    }
}

/// Clears the feed's `committing` when a commit thread ends, however it ends.
pub(super) struct Committing<'a>(pub &'a Feed);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.0.set_committing(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_to_a_closed_feed_comes_back() {
        let feed = Feed::only(Vec::new());
        assert!(feed.queued().is_some());
        assert_eq!(feed.offer(Vec::new()), Err(Vec::new()));
    }

    #[test]
    fn next_waits_for_an_offer_only_while_a_commit_runs() {
        let feed = Feed::new(Vec::new());
        assert!(feed.queued().is_some());
        // No commit running: the feed closes at once.
        assert!(feed.next().is_none());
        assert!(!feed.is_open());

        let feed = Feed::new(Vec::new());
        assert!(feed.queued().is_some());
        feed.set_committing(true);
        std::thread::scope(|scope| {
            let offering = scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                feed.offer(Vec::new())
            });
            assert!(feed.next().is_some(), "the offer made while committing");
            assert!(offering.join().unwrap().is_ok(), "taken");
        });
        // The commit ends with nothing offered: closed.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                drop(Committing(&feed));
            });
            assert!(feed.next().is_none());
        });
        assert!(feed.offer(Vec::new()).is_err());
    }

    #[test]
    fn a_batch_offered_but_not_taken_comes_back_when_the_apply_ends() {
        let feed = Feed::new(Vec::new());
        assert!(feed.queued().is_some());
        let marker = vec![Vec::<Event>::new(), Vec::new()];
        std::thread::scope(|scope| {
            let offering = scope.spawn(|| feed.offer(Vec::new()));
            // The offer is queued, then the apply decides to take no more.
            while feed.lock().queued.is_empty() {
                std::thread::yield_now();
            }
            feed.close();
            assert_eq!(offering.join().unwrap(), Err(Vec::new()), "given back");
        });
        assert!(feed.take_back().is_empty(), "nothing left behind");
        let preloaded = Feed::preloaded(marker);
        assert!(preloaded.queued().is_some());
        preloaded.close();
        assert_eq!(preloaded.take_back().len(), 1, "the batch not taken");
    }
}
