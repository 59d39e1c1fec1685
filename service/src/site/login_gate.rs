//! Admission of password checks (`Login`, `ListApplications`, on either node): an
//! argon2 check takes about 19 MiB and a core's worth of time, so they run on a pool
//! of threads of their own (`login_workers`, by default one core fewer than the
//! machine has; each reuses one hash's memory, `site::verify`, so at most that many
//! hashes' worth is ever held) with a bounded queue behind it (`login_queue`);
//! an attempt beyond both is answered `RESOURCE_EXHAUSTED` at once. Before any of that the `throttle` decides whether the
//! attempt may be checked at all (and how long it first waits); after, failures are
//! counted (`standin_login_failures_total{reason}`) and logged at most once per
//! `LOG_EVERY_MS` with how many were not.
//!
//! What a caller is told is one of: "invalid user or password", "service
//! unavailable…" (busy, throttled, or a problem only the node's log describes), or,
//! once the password is right, what the closure it passed answers.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tonic::Status;

use crate::node::metrics::Metrics;
use crate::site::throttle::{Source, Throttle, ThrottleSettings, Verdict};
use crate::site::{self, SiteError};

/// The longest a password may be (bytes), and so what a queued attempt holds.
pub const MAX_PASSWORD_BYTES: usize = 1_024;
/// At most one log line per this many ms per kind (failures, problems).
pub const LOG_EVERY_MS: u64 = 10_000;

/// The pool, the queue and the throttle's settings (config keys `login_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginSettings {
    pub workers: usize,
    pub queue: usize,
    pub throttle: ThrottleSettings,
}

/// One core fewer than the machine has, at least one.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|cores| cores.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

pub const DEFAULT_LOGIN_QUEUE: usize = 32;

/// The `login_*` keys as written (None: the default).
#[derive(Debug, Default)]
pub struct LoginKeys {
    pub workers: Option<u64>,
    pub queue: Option<u64>,
    pub free_failures: Option<u64>,
    pub address_free_failures: Option<u64>,
    pub backoff_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub user_delay_max_ms: Option<u64>,
}

impl LoginSettings {
    /// Check the keys: Err names the key and the reason.
    pub fn from_keys(keys: &LoginKeys) -> Result<LoginSettings, (&'static str, String)> {
        let defaults = ThrottleSettings::default();
        let within = |key: &'static str, value: Option<u64>, default: u64, low: u64, high: u64| {
            let value = value.unwrap_or(default);
            if (low..=high).contains(&value) {
                Ok(value)
            } else {
                Err((key, format!("{value} must be between {low} and {high}")))
            }
        };
        let workers = within(
            "login_workers",
            keys.workers,
            default_workers() as u64,
            1,
            256,
        )?;
        let queue = within(
            "login_queue",
            keys.queue,
            DEFAULT_LOGIN_QUEUE as u64,
            0,
            10_000,
        )?;
        let free_failures = within(
            "login_free_failures",
            keys.free_failures,
            defaults.free_failures.into(),
            1,
            1_000,
        )?;
        let address_free_failures = within(
            "login_address_free_failures",
            keys.address_free_failures,
            defaults.address_free_failures.into(),
            1,
            1_000_000,
        )?;
        let backoff_ms = within(
            "login_backoff_ms",
            keys.backoff_ms,
            defaults.backoff_ms,
            1,
            3_600_000,
        )?;
        let backoff_max_ms = within(
            "login_backoff_max_ms",
            keys.backoff_max_ms,
            defaults.backoff_max_ms.max(backoff_ms),
            backoff_ms,
            86_400_000,
        )?;
        let user_delay_max_ms = within(
            "login_user_delay_max_ms",
            keys.user_delay_max_ms,
            defaults.user_delay_max_ms,
            0,
            60_000,
        )?;
        // The bounds above keep every value within u32 / usize.
        Ok(LoginSettings {
            workers: workers as usize,
            queue: queue as usize,
            throttle: ThrottleSettings {
                free_failures: free_failures as u32,
                address_free_failures: address_free_failures as u32,
                backoff_ms,
                backoff_max_ms,
                user_delay_max_ms,
            },
        })
    }
}

impl Default for LoginSettings {
    fn default() -> Self {
        LoginSettings {
            workers: default_workers(),
            queue: DEFAULT_LOGIN_QUEUE,
            throttle: ThrottleSettings::default(),
        }
    }
}

/// Log a kind of event at most once per `LOG_EVERY_MS`, saying how many were not.
#[derive(Default)]
pub struct LogLimiter {
    state: Mutex<(Option<u64>, u64)>,
}

impl LogLimiter {
    /// Whether to log now; if so, how many were left out since the last line.
    pub fn allow(&self, now_ms: u64) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last, suppressed) = &mut *state;
        match last {
            Some(at) if now_ms.saturating_sub(*at) < LOG_EVERY_MS => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now_ms);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// `workers` threads that run the password checks, fed by a channel (the gate's
/// semaphore lets no more than `workers` jobs be in it or running at once).
struct HashPool {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl HashPool {
    fn new(workers: usize) -> HashPool {
        let (jobs, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..workers {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("standin-login-{index}"))
                .spawn(move || loop {
                    let job = {
                        let receiver = receiver
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                        receiver.recv()
                    };
                    match job {
                        Ok(job) => job(),
                        // The gate is gone.
                        Err(_) => return,
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "could not start a login worker thread");
            }
        }
        HashPool { jobs }
    }

    /// Run `work` on a pool thread; None if the pool is gone (or the work panicked).
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = answer.send(work());
        });
        self.jobs.send(job).ok()?;
        answered.await.ok()
    }
}

/// The gate every password check of a node goes through.
pub struct LoginGate {
    folder: PathBuf,
    pool: HashPool,
    throttle: Mutex<Throttle>,
    /// Workers plus queue: an attempt that gets no permit is refused at once.
    admitted: Arc<Semaphore>,
    workers: Arc<Semaphore>,
    failures_log: LogLimiter,
    problems_log: LogLimiter,
}

fn busy() -> Status {
    Status::resource_exhausted("service unavailable: too many logins at once; try again later")
}

fn throttled() -> Status {
    Status::resource_exhausted("service unavailable: too many failed logins; try again later")
}

fn unavailable() -> Status {
    Status::unavailable("service unavailable")
}

impl LoginGate {
    pub fn new(folder: PathBuf, settings: LoginSettings) -> LoginGate {
        LoginGate {
            folder,
            pool: HashPool::new(settings.workers),
            throttle: Mutex::new(Throttle::new(settings.throttle)),
            admitted: Arc::new(Semaphore::new(settings.workers + settings.queue)),
            workers: Arc::new(Semaphore::new(settings.workers)),
            failures_log: LogLimiter::default(),
            problems_log: LogLimiter::default(),
        }
    }

    fn verdict(&self, user: &str, source: Source) -> Verdict {
        self.throttle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .verdict(user, source, standin_engine::fsutil::monotonic_ms())
    }

    fn refused(&self, metrics: &Metrics, reason: &'static str, user: &str, from: Option<IpAddr>) {
        metrics.login_failure(reason);
        if let Some(left_out) = self
            .failures_log
            .allow(standin_engine::fsutil::monotonic_ms())
        {
            tracing::warn!(%user, from = ?from, reason, left_out, "login refused ({left_out} other refusals not logged since the last line)");
        }
    }

    fn problem(&self, metrics: &Metrics, detail: &str) {
        metrics.login_failure("unavailable");
        if let Some(left_out) = self
            .problems_log
            .allow(standin_engine::fsutil::monotonic_ms())
        {
            tracing::error!(%detail, left_out, "a login could not be checked ({left_out} other problems not logged since the last line)");
        }
    }

    /// Check `user`'s password from `from`; with the right one, run `then` on the
    /// folder (on the same worker) and answer what it answers.
    pub async fn check<T, F>(
        &self,
        metrics: &Metrics,
        from: Option<IpAddr>,
        user: String,
        password: String,
        then: F,
    ) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&std::path::Path, &str) -> Result<T, SiteError> + Send + 'static,
    {
        let source = Source::of(from);
        let delay_ms = match self.verdict(&user, source) {
            Verdict::Blocked { .. } => {
                self.refused(metrics, "throttled", &user, from);
                return Err(throttled());
            }
            Verdict::Check { delay_ms } => delay_ms,
        };
        // The per-user delay is waited outside the queue: it holds no place in it.
        if delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        }
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            self.refused(metrics, "busy", &user, from);
            return Err(busy());
        };
        let Ok(worker) = self.workers.clone().acquire_owned().await else {
            self.problem(metrics, "the hashing pool is closed");
            return Err(unavailable());
        };
        // Failures recorded while this attempt waited count too.
        if let Verdict::Blocked { .. } = self.verdict(&user, source) {
            self.refused(metrics, "throttled", &user, from);
            return Err(throttled());
        }
        let folder = self.folder.clone();
        let name = user.clone();
        let outcome = self
            .pool
            .run(move || {
                let _held = (admitted, worker);
                site::authenticate(&folder, &name, &password).map(|()| then(&folder, &name))
            })
            .await;
        let now_ms = standin_engine::fsutil::monotonic_ms();
        let throttle = || {
            self.throttle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        match outcome {
            Some(Ok(answer)) => {
                throttle().succeeded(&user, source);
                metrics.logins.inc();
                match answer {
                    Ok(value) => Ok(value),
                    Err(SiteError::AppNotAvailable) => {
                        Err(Status::not_found(SiteError::AppNotAvailable.to_string()))
                    }
                    Err(SiteError::NoTerminalServer) => {
                        Err(Status::unavailable(SiteError::NoTerminalServer.to_string()))
                    }
                    Err(other) => {
                        self.problem(metrics, &other.to_string());
                        Err(unavailable())
                    }
                }
            }
            Some(Err(SiteError::WrongCredentials)) => {
                throttle().failed(&user, source, now_ms);
                self.refused(metrics, "credentials", &user, from);
                Err(Status::unauthenticated(
                    SiteError::WrongCredentials.to_string(),
                ))
            }
            Some(Err(other)) => {
                self.problem(metrics, &other.to_string());
                Err(unavailable())
            }
            None => {
                self.problem(metrics, "a login worker thread stopped");
                Err(unavailable())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> LoginSettings {
        LoginSettings {
            workers: 1,
            queue: 1,
            throttle: ThrottleSettings {
                free_failures: 2,
                address_free_failures: 1_000,
                backoff_ms: 60_000,
                backoff_max_ms: 600_000,
                user_delay_max_ms: 0,
            },
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn login_errors_never_name_a_path_or_a_reason() {
        let folder = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(folder.path().join("users")).unwrap();
        std::fs::write(folder.path().join("users/mallory.toml"), "name = [broken").unwrap();
        site::add_user(folder.path(), "alice", "right password").unwrap();
        let gate = LoginGate::new(folder.path().to_path_buf(), quick());
        let metrics = Metrics::new();
        let from = Some(IpAddr::from([192, 0, 2, 1]));
        let shown = folder.path().display().to_string();
        let runtime = runtime();
        let attempt = |user: &str, password: &str| {
            runtime.block_on(gate.check(
                &metrics,
                from,
                user.into(),
                password.into(),
                |_, _| Ok(()),
            ))
        };
        let broken = attempt("mallory", "whatever").unwrap_err();
        assert_eq!(broken.code(), tonic::Code::Unavailable);
        assert_eq!(broken.message(), "service unavailable");
        for (user, password) in [
            ("alice", "wrong"),
            ("nobody", "x"),
            ("../../etc/passwd", "x"),
        ] {
            let status = attempt(user, password).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{user}");
            assert_eq!(status.message(), "invalid user or password", "{user}");
            assert!(!status.message().contains(&shown));
        }
        let encoded = metrics.encode();
        assert!(
            encoded.contains("# TYPE standin_login_failures counter")
                && encoded.contains("standin_login_failures_total{reason=\"credentials\"} 3")
                && encoded.contains("standin_login_failures_total{reason=\"unavailable\"} 1"),
            "{encoded}"
        );
    }

    #[test]
    fn a_pair_that_keeps_failing_is_refused_without_a_check_and_others_are_not() {
        let folder = tempfile::tempdir().unwrap();
        site::add_user(folder.path(), "alice", "right password").unwrap();
        let gate = LoginGate::new(folder.path().to_path_buf(), quick());
        let metrics = Metrics::new();
        let guesser = Some(IpAddr::from([192, 0, 2, 66]));
        let colleague = Some(IpAddr::from([192, 0, 2, 67]));
        let runtime = runtime();
        let attempt = |from, password: &str| {
            runtime.block_on(
                gate.check(&metrics, from, "alice".into(), password.into(), |_, _| {
                    Ok(())
                }),
            )
        };
        for _ in 0..3 {
            assert_eq!(
                attempt(guesser, "guess").unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        // Backing off (a minute): even the right password is not checked from there...
        let status = attempt(guesser, "right password").unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().starts_with("service unavailable"),
            "{}",
            status.message()
        );
        // ...but alice herself, from elsewhere, logs in.
        attempt(colleague, "right password").unwrap();
        assert!(metrics
            .encode()
            .contains("standin_login_failures_total{reason=\"throttled\"} 1"));
    }

    #[test]
    fn beyond_the_pool_and_the_queue_attempts_are_refused_at_once() {
        let folder = tempfile::tempdir().unwrap();
        site::add_user(folder.path(), "user0", "right password").unwrap();
        let gate = Arc::new(LoginGate::new(folder.path().to_path_buf(), quick()));
        let metrics = Arc::new(Metrics::new());
        let runtime = runtime();
        // One worker, one place in the queue. The first attempt holds the worker (its
        // password is right and what runs after it waits for `release`), the second
        // waits in the queue: a third is refused at once.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = Arc::new(Mutex::new(hold));
        let codes = runtime.block_on(async {
            let spawn = |index: u8| {
                let (gate, metrics, hold) = (gate.clone(), metrics.clone(), hold.clone());
                let password = if index == 0 {
                    "right password"
                } else {
                    "wrong"
                };
                tokio::spawn(async move {
                    gate.check(
                        &metrics,
                        Some(IpAddr::from([10, 0, 0, index])),
                        format!("user{index}"),
                        password.into(),
                        move |_, _| {
                            let _ = hold.lock().map(|receiver| receiver.recv());
                            Ok(())
                        },
                    )
                    .await
                    .map_err(|status| status.code())
                })
            };
            let first = spawn(0);
            let second = spawn(1);
            while gate.admitted.available_permits() > 0 || gate.workers.available_permits() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let third = spawn(2).await.unwrap();
            drop(release);
            vec![third, first.await.unwrap(), second.await.unwrap()]
        });
        assert_eq!(
            codes,
            vec![
                Err(tonic::Code::ResourceExhausted),
                Ok(()),
                Err(tonic::Code::Unauthenticated)
            ]
        );
        assert!(metrics
            .encode()
            .contains("standin_login_failures_total{reason=\"busy\"} 1"));
    }

    #[test]
    fn the_login_keys_are_checked() {
        let settings = LoginSettings::from_keys(&LoginKeys::default()).unwrap();
        assert_eq!(settings, LoginSettings::default());
        assert!(settings.workers >= 1);
        for (keys, key) in [
            (
                LoginKeys {
                    workers: Some(0),
                    ..Default::default()
                },
                "login_workers",
            ),
            (
                LoginKeys {
                    queue: Some(1_000_000),
                    ..Default::default()
                },
                "login_queue",
            ),
            (
                LoginKeys {
                    free_failures: Some(0),
                    ..Default::default()
                },
                "login_free_failures",
            ),
            (
                LoginKeys {
                    backoff_ms: Some(5_000),
                    backoff_max_ms: Some(1_000),
                    ..Default::default()
                },
                "login_backoff_max_ms",
            ),
            (
                LoginKeys {
                    user_delay_max_ms: Some(3_600_000),
                    ..Default::default()
                },
                "login_user_delay_max_ms",
            ),
        ] {
            assert_eq!(LoginSettings::from_keys(&keys).unwrap_err().0, key);
        }
    }

    #[test]
    fn the_log_limiter_lets_one_line_through_per_period_and_counts_the_rest() {
        let limiter = LogLimiter::default();
        assert_eq!(limiter.allow(1_000), Some(0));
        assert_eq!(limiter.allow(2_000), None);
        assert_eq!(limiter.allow(3_000), None);
        assert_eq!(limiter.allow(1_000 + LOG_EVERY_MS), Some(2));
    }
}
