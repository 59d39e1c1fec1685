//! Test-only fault hooks, built only with the `fault-hooks` feature (the integration
//! tests' build): with `STANDIN_FAULT_END_TASK=<name>` in its environment, `standin
//! serve` makes its task `name` (see `serve`: `grpc-server`, `http-server`,
//! `coordinator`, `compaction`, `capture-watch`) panic when the process gets SIGUSR1,
//! as a bug would.

use std::future::Future;

/// The environment variable naming the task to end.
pub const END_TASK: &str = "STANDIN_FAULT_END_TASK";

/// `task`, or, when it is the one named in `END_TASK`, `task` until SIGUSR1 and then a
/// panic.
pub fn wrap(
    name: &'static str,
    task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
    let chosen = std::env::var(END_TASK).is_ok_and(|target| target == name);
    // Installed now, before the test can send the signal (a handler installed later
    // would let SIGUSR1's default action kill the process instead).
    let signal = chosen
        .then(|| {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .inspect_err(|error| tracing::error!(%error, "fault hook: no SIGUSR1 handler"))
                .ok()
        })
        .flatten();
    async move {
        let Some(mut signal) = signal else {
            return task.await;
        };
        tracing::warn!(
            task = name,
            "fault hook armed: SIGUSR1 makes this task panic"
        );
        tokio::select! {
            result = task => result,
            _ = signal.recv() => panic!("fault hook: SIGUSR1"),
        }
    }
}
