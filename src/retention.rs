//! Retention: one thread per node that deletes what is kept no longer. Jobs that ended more
//! than `JOB_RETENTION_SECONDS` ago go, with their attempts and idempotency keys; so do
//! idempotency keys older than `IDEMPOTENCY_TTL_SECONDS`, whatever the job retention.
//!
//! A sweep runs at start and then every [`sweep_interval`]. It deletes in small batches, one
//! short transaction each, with a pause between them, so a backlog of a million expired jobs
//! (the first start with retention on) costs the submits beside it little: the rate of
//! pruning may be slow, the writer is never held for long. The SQL is the store's; several
//! nodes may prune one database at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{error, info};

use crate::background::Background;
use crate::error::Result;
use crate::store::Store;
use crate::time::Timestamp;

/// Jobs one batch deletes, and the pause after a full batch. The load generator's prune
/// phase (SQLite, 64 connections submitting beside it; 100,000 expired jobs) measured 200
/// rows every 20 ms (6,000 jobs/s) costing the submits 22%, 100 every 30 ms (2,500/s) 6%,
/// and with 1,000,000 jobs 100 every 40 ms (2,000/s) 14%; 50 every 50 ms (900/s) cost
/// nothing measurable. What costs is the pages a batch dirties, each written to the log and
/// synced with the submits' commit.
const BATCH_ROWS: usize = 50;
const BATCH_PAUSE: Duration = Duration::from_millis(50);
/// The longest time between two sweeps.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// How long the thread waits before it tries again after the database failed.
const FAILURE_PAUSE: Duration = Duration::from_secs(5);

/// What is kept, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    /// Ended jobs are deleted this long after they ended; `None` keeps them.
    pub jobs: Option<Duration>,
    /// Idempotency keys are deleted this long after they were made.
    pub idempotency_keys: Duration,
}

/// The retention thread; stop it with [`Pruner::stop`].
pub struct Pruner(Background);

impl Pruner {
    pub fn start(store: Arc<Store>, retention: Retention) -> Result<Pruner> {
        Background::start("retention", move |stopped| {
            prune_until_stopped(&store, retention, stopped)
        })
        .map(Pruner)
    }

    /// Stops the thread, within one batch.
    pub fn stop(self) {
        self.0.stop();
    }
}

/// Between sweeps: as long as what is kept, so a short retention is kept closely, but at
/// least a second and at most a minute.
pub fn sweep_interval(retention: Retention) -> Duration {
    let shortest = retention.jobs.map_or(retention.idempotency_keys, |jobs| {
        jobs.min(retention.idempotency_keys)
    });
    shortest.clamp(Duration::from_secs(1), MAX_SWEEP_INTERVAL)
}

fn prune_until_stopped(store: &Store, retention: Retention, stopped: &Receiver<()>) {
    let interval = sweep_interval(retention);
    loop {
        let started = Instant::now();
        let pause = match sweep(store, retention, stopped) {
            Ok(Swept::Stopped) => return,
            Ok(Swept::Done { jobs, keys }) => {
                if jobs > 0 || keys > 0 {
                    info!(
                        "retention: deleted {jobs} ended job(s) and {keys} idempotency key(s) in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                interval
            }
            Err(err) => {
                error!("retention: cannot delete expired jobs: {err}");
                FAILURE_PAUSE.min(interval)
            }
        };
        if wait_or_stop(stopped, pause) {
            return;
        }
    }
}

enum Swept {
    Done { jobs: usize, keys: usize },
    Stopped,
}

/// Deletes batches until one is not full, pausing after each full one.
fn sweep(store: &Store, retention: Retention, stopped: &Receiver<()>) -> Result<Swept> {
    let (mut jobs, mut keys) = (0, 0);

    loop {
        let now = Timestamp::now();
        let ended = match retention.jobs {
            Some(kept) => store.prune_ended(before(now, kept), BATCH_ROWS)?,
            None => 0,
        };
        let expired =
            store.prune_idempotency_keys(before(now, retention.idempotency_keys), BATCH_ROWS)?;
        jobs += ended;
        keys += expired;
        if ended < BATCH_ROWS && expired < BATCH_ROWS {
            return Ok(Swept::Done { jobs, keys });
        }
        if wait_or_stop(stopped, BATCH_PAUSE) {
            return Ok(Swept::Stopped);
        }
    }
}

/// `kept` before `now`.
fn before(now: Timestamp, kept: Duration) -> Timestamp {
    let micros = i64::try_from(kept.as_micros()).unwrap_or(i64::MAX);
    Timestamp::from_micros(now.as_micros().saturating_sub(micros))
}

/// Waits `pause`; `true` if the pruner was stopped meanwhile.
fn wait_or_stop(stopped: &Receiver<()>, pause: Duration) -> bool {
    !matches!(stopped.recv_timeout(pause), Err(RecvTimeoutError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention(jobs: Option<u64>, keys: u64) -> Retention {
        Retention {
            jobs: jobs.map(Duration::from_secs),
            idempotency_keys: Duration::from_secs(keys),
        }
    }

    #[test]
    fn sweeps_follow_the_shortest_retention_within_a_second_and_a_minute() {
        let interval = |jobs, keys| sweep_interval(retention(jobs, keys)).as_secs();
        assert_eq!(interval(Some(1), 86_400), 1);
        assert_eq!(interval(Some(30), 86_400), 30);
        assert_eq!(interval(Some(604_800), 86_400), 60);
        assert_eq!(interval(None, 10), 10);
        assert_eq!(interval(None, 86_400), 60);
    }

    #[test]
    fn before_never_overflows() {
        let now = Timestamp::from_micros(5_000_000);
        assert_eq!(
            before(now, Duration::from_secs(2)),
            Timestamp::from_micros(3_000_000)
        );
        assert_eq!(
            before(Timestamp::from_micros(i64::MIN + 1), Duration::from_secs(1)),
            Timestamp::from_micros(i64::MIN)
        );
    }
}
