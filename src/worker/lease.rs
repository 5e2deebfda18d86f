//! The lease keeper: one thread per node that keeps this node's lease and acts on what other
//! nodes did. Every heartbeat interval (a third of the lease) it records that this node is
//! alive, recovers the attempts of nodes that lost their lease, and forgets nodes that are
//! gone; every second it compares the attempts running here with what the database says runs
//! here, and stops those that were cancelled or deleted (possibly on another node) or taken
//! over by another node's recovery.
//!
//! It owns none of the steps: the SQL is the store's, recovery is `recovery`'s, stopping an
//! attempt is `RunningAttempts`'.

use std::collections::HashSet;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Sender};
use log::{error, info, warn};

use super::idle::Waker;
use super::recovery::{recover_lost, recover_orphan};
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::running::RunningAttempts;
use crate::store::Store;
use crate::time::Timestamp;

/// How often the attempts running here are checked against the database: a cancel or delete
/// made on another node stops the attempt here within about this long.
const STOP_CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub struct LeaseKeeper {
    /// Dropped to stop the thread.
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
    store: Arc<Store>,
    lease: Duration,
}

struct Keeper {
    store: Arc<Store>,
    running: Arc<RunningAttempts>,
    retry: RetryPolicy,
    waker: Waker,
    lease: Duration,
}

impl LeaseKeeper {
    /// Takes this node's lease before any worker starts: the first heartbeat, then one recovery
    /// pass (with `recover_own`, also of attempts an earlier process with this node's id left).
    /// Returns how many attempts that pass recovered.
    pub fn take_lease(
        store: &Store,
        retry: &RetryPolicy,
        lease: Duration,
        recover_own: bool,
    ) -> Result<usize> {
        store.heartbeat(Timestamp::now())?;
        let recovered = recover_lost(store, retry, lease, recover_own, None)?;
        store.forget_nodes(Timestamp::now(), lease, false)?;
        Ok(recovered)
    }

    /// Starts the thread that keeps the lease from now on.
    pub fn start(
        store: Arc<Store>,
        running: Arc<RunningAttempts>,
        retry: RetryPolicy,
        waker: Waker,
        lease: Duration,
    ) -> Result<LeaseKeeper> {
        let (stop, stopped) = bounded::<()>(0);
        let keeper = Keeper {
            store: Arc::clone(&store),
            running,
            retry,
            waker,
            lease,
        };
        let handle = thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                let heartbeat_interval = (lease / 3).max(Duration::from_millis(200));
                let tick = STOP_CHECK_INTERVAL.min(heartbeat_interval);
                let mut next_heartbeat = Instant::now() + heartbeat_interval;
                let mut seen = Seen::default();
                loop {
                    select! {
                        recv(stopped) -> _ => return,
                        default(tick) => {}
                    }
                    keeper.check_attempts_here(&mut seen);
                    if Instant::now() >= next_heartbeat {
                        next_heartbeat = Instant::now() + heartbeat_interval;
                        keeper.renew();
                    }
                }
            })
            .map_err(|err| Error::Startup(format!("cannot start the lease thread: {err}")))?;
        Ok(LeaseKeeper {
            stop: Some(stop),
            handle: Some(handle),
            store,
            lease,
        })
    }

    /// Stops the thread. With `leaving` (every attempt here has ended or been put back), this
    /// node's row goes too, so no other node waits for its lease.
    pub fn stop(mut self, leaving: bool) {
        self.stop = None;
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                error!("the lease thread panicked");
            }
        }
        if leaving {
            if let Err(err) = self.store.forget_nodes(Timestamp::now(), self.lease, true) {
                warn!("cannot remove this node from the database ({err}); it is forgotten once its lease runs out");
            }
        }
    }
}

impl Keeper {
    /// Heartbeat, recovery of lost nodes' attempts, and forgetting nodes that are gone.
    fn renew(&self) {
        if let Err(err) = self.store.heartbeat(Timestamp::now()) {
            error!("cannot renew this node's lease: {err}");
            return;
        }
        match recover_lost(
            &self.store,
            &self.retry,
            self.lease,
            false,
            Some(&self.waker),
        ) {
            Ok(0) => {}
            Ok(recovered) => {
                info!("recovered {recovered} attempt(s) of nodes that lost their lease")
            }
            Err(err) => error!("cannot recover the attempts of lost nodes: {err}"),
        }
        if let Err(err) = self.store.forget_nodes(Timestamp::now(), self.lease, false) {
            error!("cannot forget lost nodes: {err}");
        }
    }

    /// Stops each attempt registered here that the database no longer has running here
    /// (deleted, or recovered by another node) or that has a cancel recorded. `cancelled`
    /// remembers what was stopped already, so each is stopped once. And the other way round:
    /// an attempt the database has running here that no worker runs (its claim committed but
    /// the answer was lost) is recovered once two checks in a row have seen it so.
    fn check_attempts_here(&self, seen: &mut Seen) {
        let registered = self.running.registered();
        seen.cancelled.retain(|key| registered.contains(key));
        // Read after `registered`: an attempt claimed in between is in the database but not
        // yet registered, which is why an orphan needs two sightings.
        let here = match self.store.running_here() {
            Ok(here) => here,
            Err(err) => {
                error!("cannot check the attempts running here: {err}");
                return;
            }
        };
        for key in &registered {
            if seen.cancelled.contains(key) {
                continue;
            }
            let in_database = here
                .iter()
                .find(|row| row.job_id == key.0 && row.attempt == key.1);
            let reason = match in_database {
                None => "it no longer runs here (deleted, or recovered by another node)",
                Some(row) if row.cancel_requested => "it was cancelled",
                Some(_) => continue,
            };
            // It may have ended since `registered` was read: then there is nothing to stop.
            if self.running.cancel_if_running(&key.0, key.1) {
                let (job_id, attempt) = (key.0.as_str(), key.1);
                info!(job_id, attempt; "job {job_id}: stopping attempt {attempt}: {reason}");
            }
            seen.cancelled.insert(key.clone());
        }
        let unregistered: HashSet<(String, u32)> = here
            .into_iter()
            .map(|row| (row.job_id, row.attempt))
            .filter(|key| !registered.contains(key) && !self.running.registered().contains(key))
            .collect();
        for (job_id, attempt) in unregistered.intersection(&seen.unregistered) {
            recover_orphan(&self.store, &self.retry, job_id, *attempt, &self.waker);
        }
        seen.unregistered = unregistered;
    }
}

/// What the attempt checks remember from one tick to the next.
#[derive(Default)]
struct Seen {
    /// Attempts stopped already.
    cancelled: HashSet<(String, u32)>,
    /// Attempts the database had running here that no worker had registered.
    unregistered: HashSet<(String, u32)>,
}
