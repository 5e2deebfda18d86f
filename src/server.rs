//! The composition root: start-up in order and the one shutdown sequence. `run` opens the
//! store, takes this node's lease (recovering what lost nodes left running), starts workers,
//! the lease keeper, the retention thread and the HTTP server, then waits for a
//! signal (or for the HTTP server to report that it can no longer accept). The first signal starts a
//! graceful drain bounded by `SHUTDOWN_GRACE_SECONDS`; a second one ends the process at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, Receiver};
use log::{error, info, warn};

use crate::config::{Config, Durability};
use crate::error::{Error, Result};
use crate::executor::{FunctionRunner, ProcessGroups};
use crate::functions::Functions;
use crate::http::HttpServer;
use crate::job::JobDefaults;
use crate::metrics::Metrics;
use crate::minute_flusher::MinuteFlusher;
use crate::queue::Queue;
use crate::retention::{Pruner, Retention};
use crate::retry::RetryPolicy;
use crate::running::RunningAttempts;
use crate::store::{Options, Store, SyncMode};
use crate::worker::{Drain, LeaseKeeper, Waker, WorkerPool};

/// How long the end of shutdown waits for requests already received to be answered.
const HTTP_STOP_PATIENCE: Duration = Duration::from_secs(5);

/// How the server ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Drained (or the grace ran out and unfinished jobs were put back): exit code 0.
    Graceful,
    /// A second signal arrived during the drain: exit at once; the database keeps everything.
    Forced,
}

/// Runs the server until `signals` delivers a shutdown request. `on_ready` is called with the
/// bound address once requests are being accepted.
pub fn run(
    config: Config,
    signals: Receiver<()>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<Exit> {
    // The one registry: the store, the workers (through the store) and HTTP record into it.
    let metrics = Arc::new(Metrics::default());
    let options = Options {
        sync: sync_mode(config.durability),
        max_pending_jobs: config.max_pending_jobs,
        node: config.node_id.clone(),
        pool_size: config.database_pool_size,
        metrics: Arc::clone(&metrics),
    };
    let store = Arc::new(Store::open(&config.database, &options)?);
    // A waiting request holds its connection's thread: half of them stay for the rest.
    store.waiters().limit(config.max_connections / 2);
    let retry = RetryPolicy {
        base: config.retry_backoff,
        cap: config.retry_backoff_max,
    };
    let recovered = LeaseKeeper::take_lease(&store, &retry, config.lease, config.node_id_fixed)?;
    if recovered > 0 {
        warn!("recovered {recovered} job(s) left running by a server that stopped");
    }
    let running = Arc::new(RunningAttempts::default());
    let functions = Functions::new(config.functions_dir.clone());
    functions.warn_if_unusable();
    let groups = Arc::new(ProcessGroups::default());
    let runner = Arc::new(FunctionRunner {
        functions: functions.clone(),
        max_output: config.function_max_output_bytes,
        kill_grace: config.function_kill_grace,
        env: config.function_env.clone(),
        groups: Arc::clone(&groups),
    });
    // A drain runs what is due when the queue is this node's alone; with other nodes on the
    // queue it only finishes what runs here, and they take the rest.
    let drain = if store.is_shared() {
        Drain::RunningOnly
    } else {
        Drain::DueJobs
    };
    let defaults = JobDefaults {
        timeout_seconds: config.default_timeout_seconds,
        max_retries: config.default_max_retries,
    };
    let (waker, wakeups) = Waker::for_workers(config.worker_count);
    let idempotency_ttl = idempotency_ttl(&config);
    let queue = Arc::new(
        Queue::new(
            Arc::clone(&store),
            waker.clone(),
            Arc::clone(&running),
            functions.clone(),
            defaults,
            config.node_id.clone(),
        )
        .with_idempotency_ttl(idempotency_ttl),
    );
    // The port first: a node that cannot serve (the address is taken) must not have claimed
    // jobs from a queue other nodes share.
    let server = HttpServer::start(&config, Arc::clone(&queue), functions, metrics)?;
    let mut pool = WorkerPool::start(
        config.worker_count,
        queue,
        retry,
        Arc::clone(&running),
        runner,
        drain,
        (waker.clone(), wakeups),
    )?;
    let lease = LeaseKeeper::start(
        Arc::clone(&store),
        running,
        retry,
        waker.clone(),
        config.lease,
    )?;
    let pruner = Pruner::start(
        Arc::clone(&store),
        Retention {
            jobs: config.job_retention,
            idempotency_keys: idempotency_ttl,
        },
    )?;
    let flusher = MinuteFlusher::start(Arc::clone(&store))?;
    store.watch_other_nodes(Box::new(move || waker.wake_one()))?;
    info!(
        "listening on http://{} with {} workers, database {}, node {}",
        server.local_addr(),
        config.worker_count,
        config.database.describe(),
        config.node_id
    );
    on_ready(server.local_addr());

    // Any signal, or its sender going away, means stop; so does an accept loop that ended.
    let listener_failure = select! {
        recv(signals) -> _ => None,
        // A closed channel means the accept thread ended without saying why (a panic).
        recv(server.failed()) -> failure => Some(failure.unwrap_or_else(|_| "the accept thread ended".into())),
    };
    match &listener_failure {
        None => info!(
            "shutdown requested: refusing new requests, {} for up to {} s (a second signal exits at once)",
            draining(drain),
            config.shutdown_grace.as_secs()
        ),
        Some(failure) => error!(
            "cannot accept connections any more ({failure}); {} for up to {} s, then exiting with an error",
            draining(drain),
            config.shutdown_grace.as_secs()
        ),
    }
    server.refuse_new_requests();
    // Requests waiting for a job answer now, with the job as it is.
    store.waiters().stop();
    pruner.stop();
    pool.begin_drain();
    select! {
        recv(pool.exited()) -> _ => info!("all due jobs finished"),
        recv(signals) -> _ => {
            warn!("second signal: exiting now; unfinished jobs are recovered at the next start");
            groups.kill_all();
            return Ok(Exit::Forced);
        },
        default(config.shutdown_grace) => {
            warn!("shutdown grace ended; putting unfinished jobs back as pending");
            pool.abort();
        },
    }
    pool.join();
    // Every end here is counted: the last of them go to the table.
    flusher.stop();
    // Every attempt here has ended or been put back: the node can leave.
    lease.stop(true);
    if !server.stop(HTTP_STOP_PATIENCE, &signals) {
        warn!("second signal: exiting now");
        groups.kill_all();
        return Ok(Exit::Forced);
    }
    if let Some(failure) = listener_failure {
        return Err(Error::ListenerFailed(failure));
    }
    info!("stopped");
    Ok(Exit::Graceful)
}

/// What the drain does, as the log says it.
fn draining(drain: Drain) -> &'static str {
    match drain {
        Drain::DueJobs => "draining due jobs",
        Drain::RunningOnly => "finishing running attempts (other nodes take the queue)",
    }
}

/// `DURABILITY` in the store's terms.
fn sync_mode(durability: Durability) -> SyncMode {
    match durability {
        Durability::Full => SyncMode::EveryCommit,
        Durability::Normal => SyncMode::Deferred,
    }
}

/// How long idempotency keys are kept: `IDEMPOTENCY_TTL_SECONDS`, but never longer than ended
/// jobs are. Retention deletes a key with its job; a key that outlived its (pruned) job would
/// let a repeat create the job again, so the key must expire first. Every job of a key is
/// submitted when the key is stored and ends later, so it is pruned no sooner than that.
fn idempotency_ttl(config: &Config) -> Duration {
    match config.job_retention {
        Some(retention) if retention < config.idempotency_ttl => {
            warn!(
                "IDEMPOTENCY_TTL_SECONDS ({} s) is longer than JOB_RETENTION_SECONDS ({} s): \
                 idempotency keys are kept {} s, so that no key outlives its jobs",
                config.idempotency_ttl.as_secs(),
                retention.as_secs(),
                retention.as_secs()
            );
            retention
        }
        _ => config.idempotency_ttl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_never_outlive_the_jobs_they_created() {
        let ttl = |pairs: &[(&str, &str)]| {
            let config = Config::from_lookup(|name| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            })
            .unwrap();
            idempotency_ttl(&config)
        };
        assert_eq!(ttl(&[]), Duration::from_secs(86_400));
        assert_eq!(
            ttl(&[("JOB_RETENTION_SECONDS", "3600")]),
            Duration::from_secs(3600)
        );
        assert_eq!(
            ttl(&[("JOB_RETENTION_SECONDS", "0")]),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            ttl(&[
                ("JOB_RETENTION_SECONDS", "600"),
                ("IDEMPOTENCY_TTL_SECONDS", "60")
            ]),
            Duration::from_secs(60)
        );
    }
}
