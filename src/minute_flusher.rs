//! The flusher of jobs finished per minute: one thread per node that moves the counts
//! `Metrics` gathered as jobs ended into the store's `finished_minutes` every
//! [`FLUSH_INTERVAL`] (n = n + delta, so every node adds to the same rows on PostgreSQL), and
//! deletes the rows older than [`KEPT_MINUTES`]. It flushes once more when stopped (a
//! graceful shutdown), so a restart keeps the chart. A failed flush keeps its counts for the
//! next one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::warn;

use crate::background::Background;
use crate::error::Result;
use crate::metrics::unix_minute;
use crate::store::Store;
use crate::time::Timestamp;

/// How often counts are written: `GET /stats` adds what is not written yet, so this only
/// bounds what a crash loses.
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// How often old minutes are deleted (also when nothing ended).
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Minutes kept in the table: a day.
const KEPT_MINUTES: i64 = 24 * 60;

/// The flusher thread; stop it with [`MinuteFlusher::stop`].
pub struct MinuteFlusher(Background);

impl MinuteFlusher {
    pub fn start(store: Arc<Store>) -> Result<MinuteFlusher> {
        Background::start("minute-flusher", move |stopped| {
            flush_until_stopped(&store, stopped)
        })
        .map(MinuteFlusher)
    }

    /// Stops the thread after one last flush.
    pub fn stop(self) {
        self.0.stop();
    }
}

fn flush_until_stopped(store: &Store, stopped: &Receiver<()>) {
    let mut last_prune: Option<Instant> = None;
    loop {
        let stop = matches!(
            stopped.recv_timeout(FLUSH_INTERVAL),
            Err(RecvTimeoutError::Disconnected)
        );
        let prune = last_prune.is_none_or(|at| at.elapsed() >= PRUNE_INTERVAL);
        match flush(store, prune) {
            Ok(()) if prune => last_prune = Some(Instant::now()),
            Ok(()) => {}
            Err(err) => {
                warn!("cannot write the jobs finished per minute (kept for the next try): {err}")
            }
        }
        if stop {
            return;
        }
    }
}

/// Writes the unflushed counts, and with `prune` deletes the minutes older than a day. With
/// nothing to write and nothing to prune, writes nothing.
pub fn flush(store: &Store, prune: bool) -> Result<()> {
    let prune_before = unix_minute(Timestamp::now()) - KEPT_MINUTES;
    store.metrics().finished_minutes().flush(|counts| {
        if counts.is_empty() && !prune {
            return Ok(());
        }
        store.add_finished_minutes(counts, prune_before)
    })
}
