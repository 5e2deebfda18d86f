//! Jobs finished per minute, as this node counts them between flushes: each end adds one to
//! its (Unix minute, status) here, and a flusher (`crate::minute_flusher`) moves the counts
//! into the store's `finished_minutes` every few seconds. A reader (`GET /stats`) adds the
//! table and what is not flushed yet.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, RwLock};

use crate::error::Result;
use crate::job::JobStatus;

/// Ends by (Unix minute, end status).
pub type MinuteCounts = BTreeMap<(i64, JobStatus), u64>;

#[derive(Default)]
pub struct FinishedMinutes {
    /// Ends counted since the last flush. Locked to add one, or to take or copy them all.
    unflushed: Mutex<MinuteCounts>,
    /// Keeps a flush and a read apart: a flush (taking the counts and writing them) holds it
    /// for writing, a read (the table, then the counts here) for reading, so a read never
    /// sees an end both in the table and here, or in neither. Ends are added without it, so
    /// a flush never holds up a worker, only a reader, for one write.
    gate: RwLock<()>,
}

impl FinishedMinutes {
    pub fn record(&self, minute: i64, status: JobStatus) {
        *self.lock().entry((minute, status)).or_insert(0) += 1;
    }

    /// Hands the unflushed counts to `write`; if it fails they are kept for the next flush.
    /// `write` is called even with none (it may prune).
    pub fn flush(&self, write: impl FnOnce(&MinuteCounts) -> Result<()>) -> Result<()> {
        let _gate = self
            .gate
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let taken = std::mem::take(&mut *self.lock());
        let written = write(&taken);
        if written.is_err() {
            let mut unflushed = self.lock();
            for (key, n) in taken {
                *unflushed.entry(key).or_insert(0) += n;
            }
        }
        written
    }

    /// What `read_table` returns, with the unflushed counts of minutes from `since` added.
    pub fn read(
        &self,
        since: i64,
        read_table: impl FnOnce() -> Result<MinuteCounts>,
    ) -> Result<MinuteCounts> {
        let _gate = self
            .gate
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut counts = read_table()?;
        for (key, n) in self.lock().range((since, JobStatus::Pending)..) {
            *counts.entry(*key).or_insert(0) += n;
        }
        Ok(counts)
    }

    fn lock(&self) -> MutexGuard<'_, MinuteCounts> {
        // Plain counts, consistent after any panic.
        self.unflushed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn a_failed_flush_keeps_the_counts_and_a_read_adds_them_to_the_table() {
        let minutes = FinishedMinutes::default();
        minutes.record(10, JobStatus::Success);
        minutes.record(10, JobStatus::Success);
        minutes.record(9, JobStatus::Failed);
        let failed = minutes.flush(|_| Err(Error::Unavailable("down".into())));
        assert!(failed.is_err());
        let mut table = MinuteCounts::new();
        minutes
            .flush(|counts| {
                table = counts.clone();
                Ok(())
            })
            .unwrap();
        assert_eq!(table.get(&(10, JobStatus::Success)), Some(&2));
        minutes.record(10, JobStatus::Success);
        let read = minutes.read(10, || Ok(table.clone())).unwrap();
        assert_eq!(read.get(&(10, JobStatus::Success)), Some(&3));
        assert_eq!(read.get(&(9, JobStatus::Failed)), Some(&1));
    }
}
