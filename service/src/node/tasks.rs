//! The long-running tasks of `standin serve`, each under a name. None of them is meant
//! to end before the node stops: `serve` waits for the first to end — returning,
//! failing or panicking — beside the shutdown signal, and then ends the node (see
//! `serve`), naming the task.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};

/// A task of the node, and how it ended.
#[derive(Debug)]
pub struct Ended {
    pub name: &'static str,
    /// `None` when the task returned `Ok` (it still should not have).
    pub failure: Option<String>,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.failure {
            Some(failure) => write!(formatter, "the node's task `{}` {failure}", self.name),
            None => write!(
                formatter,
                "the node's task `{}` ended on its own",
                self.name
            ),
        }
    }
}

#[derive(Default)]
pub struct Tasks {
    set: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
}

impl Tasks {
    /// Run `task` as the node's task `name` (the fault hooks, when built in, can make
    /// it panic: `fault`).
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        #[cfg(feature = "fault-hooks")]
        let task = crate::node::fault::wrap(name, task);
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// The next task to end; never completes while there is none.
    pub async fn next_end(&mut self) -> Ended {
        match self.set.join_next_with_id().await {
            Some(joined) => self.ended(joined),
            None => std::future::pending().await,
        }
    }

    /// Wait at most `limit` for every task to end (after the stop signal), logging
    /// failures; then abort the rest. False when some had to be aborted.
    pub async fn drain(&mut self, limit: Duration) -> bool {
        let drained = tokio::time::timeout(limit, async {
            while let Some(joined) = self.set.join_next_with_id().await {
                let ended = self.ended(joined);
                if ended.failure.is_some() {
                    tracing::warn!("while stopping: {ended}");
                }
            }
        })
        .await;
        if drained.is_err() {
            self.set.abort_all();
            return false;
        }
        true
    }

    fn ended(&mut self, joined: Result<(Id, anyhow::Result<()>), tokio::task::JoinError>) -> Ended {
        let (id, failure) = match joined {
            Ok((id, Ok(()))) => (id, None),
            Ok((id, Err(error))) => (id, Some(format!("failed: {error:#}"))),
            Err(error) if error.is_panic() => {
                let id = error.id();
                let payload = error.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|text| text.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                (id, Some(format!("panicked: {message}")))
            }
            Err(error) => (error.id(), Some("was cancelled".to_string())),
        };
        Ended {
            name: self.names.remove(&id).unwrap_or("(unnamed)"),
            failure,
        }
    }
}
