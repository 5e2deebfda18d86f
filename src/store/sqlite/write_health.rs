//! Whether writes reach the disk, as `GET /health` reports it. Reads alone cannot tell: a full
//! disk or a failing device still serves reads while every commit fails.
//!
//! Group commit reports each batch that fails for lack of storage (disk full, I/O error, a
//! transaction that cannot begin or commit) and each batch that commits real changes. The
//! verdict is built from those reports, so a busy server answers `/health` without writing
//! anything. Only when no write has been seen for [`RECHECK_AFTER`] does `/health` ask for a
//! probe: one write of one row, committed like any other write (see `Store::writes_ok`). At
//! most one probe runs at a time; callers arriving meanwhile get the last verdict, never a wait.
//!
//! Group commit also asks it, for every write answered before its commit, whether writes fail
//! now ([`WriteHealth::failing`]); then such writes wait for their commit.
//!
//! A failure outweighs successes for [`FAILURE_HOLD`]: on a nearly full disk small writes (a
//! probe, a claim) can still fit while a submit does not, and the verdict must not flip back
//! to healthy on the next small one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::group_commit::lock;

/// How long a committed write counts as proof that writes work.
pub const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// How long after a failed write the verdict stays "failing", whatever succeeds meanwhile.
pub const FAILURE_HOLD: Duration = Duration::from_secs(3);

#[derive(Default)]
pub struct WriteHealth {
    /// What the batches reported; held only to read or update a few fields.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The latest storage failure of a write: when, and the message a client gets.
    failure: Option<(Instant, String)>,
    /// When a write last committed changes.
    committed: Option<Instant>,
    /// Whether a probe is on its way; others do not start one meanwhile.
    probing: bool,
}

/// What `/health` should say now.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Writes fail; the message says why.
    Failing(String),
    /// Nothing recent is known: the caller runs a probe write and then calls `probe_done`.
    Probe,
}

impl WriteHealth {
    /// A batch failed because the storage did (not because of a write's own error).
    pub fn failed(&self, message: &str, now: Instant) {
        lock(&self.state).failure = Some((now, message.to_string()));
    }

    /// A batch committed changes: the disk took them.
    pub fn committed(&self, now: Instant) {
        lock(&self.state).committed = Some(now);
    }

    pub fn verdict(&self, now: Instant) -> Verdict {
        let mut state = lock(&self.state);
        let failed_at = state.failure.as_ref().map(|(at, _)| *at);
        let failing = |state: &State| {
            let message = state.failure.as_ref().map(|(_, message)| message.clone());
            Verdict::Failing(message.unwrap_or_default())
        };
        if failed_at.is_some_and(|at| now.duration_since(at) < FAILURE_HOLD) {
            return failing(&state);
        }
        // Whichever came last of the latest failure and the latest commit is the state now.
        let recovered = match (state.committed, failed_at) {
            (Some(committed), Some(failed)) => committed > failed,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        let fresh = state
            .committed
            .is_some_and(|at| now.duration_since(at) < RECHECK_AFTER);
        if recovered && fresh {
            return Verdict::Healthy;
        }
        if state.probing {
            return if recovered {
                Verdict::Healthy
            } else {
                failing(&state)
            };
        }
        state.probing = true;
        Verdict::Probe
    }

    /// Whether writes are failing now: a failure within the hold, or no commit since the last
    /// failure. Cheap enough for every write to ask.
    pub fn failing(&self, now: Instant) -> bool {
        let state = lock(&self.state);
        state.failure.as_ref().is_some_and(|(failed, _)| {
            now.duration_since(*failed) < FAILURE_HOLD
                || state.committed.is_none_or(|committed| committed < *failed)
        })
    }

    /// The probe asked for by `verdict` has ended; its batch has reported how it went.
    pub fn probe_done(&self) {
        lock(&self.state).probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_store_is_probed_once_at_a_time_and_a_commit_is_trusted_for_a_while() {
        let health = WriteHealth::default();
        let start = Instant::now();
        assert_eq!(health.verdict(start), Verdict::Probe);
        // A second caller while the probe runs gets the last verdict at once.
        assert_eq!(health.verdict(start), Verdict::Healthy);
        health.committed(start);
        health.probe_done();
        assert_eq!(health.verdict(start + RECHECK_AFTER / 2), Verdict::Healthy);
        assert_eq!(health.verdict(start + RECHECK_AFTER), Verdict::Probe);
    }

    #[test]
    fn a_failure_outweighs_commits_for_the_hold_then_a_probe_decides() {
        let health = WriteHealth::default();
        let start = Instant::now();
        let failing = Verdict::Failing("the disk is full".into());
        health.failed("the disk is full", start);
        // A small write that still fits does not make a full disk healthy.
        health.committed(start + Duration::from_millis(10));
        assert_eq!(health.verdict(start + Duration::from_millis(20)), failing);

        let after_hold = start + FAILURE_HOLD;
        health.failed("the disk is full", start + Duration::from_millis(30));
        assert_eq!(health.verdict(after_hold), failing);
        let probe_time = start + Duration::from_millis(30) + FAILURE_HOLD;
        assert_eq!(health.verdict(probe_time), Verdict::Probe);
        // While the probe runs, the failure is still the latest news.
        assert_eq!(health.verdict(probe_time), failing);
        health.committed(probe_time);
        health.probe_done();
        assert_eq!(health.verdict(probe_time), Verdict::Healthy);
    }
}
