//! The pool: starts the worker threads, tells them to drain or abort, and joins them. It owns
//! each thread's loop (find work, run it, repeat) and nothing of its steps: finding work and
//! sleeping are `idle`'s, running and recording an attempt are `attempt`'s.
//!
//! Stopping uses dropped senders as signals: dropping the drain sender makes idle workers exit
//! once nothing is due; dropping the abort sender makes busy workers give up their attempts.

use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, Receiver, Sender};
use log::error;

use super::attempt::{run_and_record, AfterAttempt, AttemptContext};
use super::idle::{find_work, IdleContext, MissedClaims, Next, Waker, Wakeups};
use super::jobs::Jobs;
use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::retry::RetryPolicy;
use crate::running::RunningAttempts;
use crate::time::Timestamp;

/// What the workers do once a drain begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// Run every job that is due, then stop: the queue is this node's alone (SQLite).
    DueJobs,
    /// Finish the attempts running and claim nothing more: other nodes share the queue and
    /// take the rest (PostgreSQL).
    RunningOnly,
}

pub struct WorkerPool {
    handles: Vec<JoinHandle<()>>,
    drain: Option<Sender<()>>,
    abort: Option<Sender<()>>,
    exited: Receiver<()>,
}

/// What one worker thread has: one part for each of its two states.
struct WorkerContext {
    idle: IdleContext,
    attempt: AttemptContext,
    /// Held until the thread ends; when every worker has dropped its clone, `exited` closes.
    _alive: Sender<()>,
}

impl WorkerPool {
    /// Starts `count` workers and returns the pool with the waker that HTTP handlers use.
    /// `drain` says what a drain does: finish what is due (a queue of this node's own), or
    /// only the attempts running (a queue shared with other nodes, which take the rest).
    pub fn start(
        count: usize,
        jobs: Arc<dyn Jobs>,
        retry: RetryPolicy,
        running: Arc<RunningAttempts>,
        executor: Arc<dyn Executor>,
        drain: Drain,
        (waker, Wakeups(wake)): (Waker, Wakeups),
    ) -> Result<WorkerPool> {
        let (drain_sender, drain_signal) = bounded(0);
        let (abort_sender, abort) = bounded(0);
        let (alive, exited) = bounded(0);
        let mut handles = Vec::with_capacity(count);
        for number in 1..=count {
            let context = WorkerContext {
                idle: IdleContext {
                    jobs: Arc::clone(&jobs),
                    wake: wake.clone(),
                    waker: waker.clone(),
                    slot: number - 1,
                    drain: drain_signal.clone(),
                    drain_mode: drain,
                    abort: abort.clone(),
                },
                attempt: AttemptContext {
                    jobs: Arc::clone(&jobs),
                    retry,
                    waker: waker.clone(),
                    running: Arc::clone(&running),
                    executor: Arc::clone(&executor),
                    abort: abort.clone(),
                    drain: drain_signal.clone(),
                    drain_mode: drain,
                },
                _alive: alive.clone(),
            };
            let handle = thread::Builder::new()
                .name(format!("worker-{number}"))
                .spawn(move || work(&context))
                .map_err(|err| Error::Startup(format!("cannot start worker thread: {err}")))?;
            handles.push(handle);
        }
        let pool = WorkerPool {
            handles,
            drain: Some(drain_sender),
            abort: Some(abort_sender),
            exited,
        };
        Ok(pool)
    }

    /// From now on workers finish what is due and exit when nothing more is.
    pub fn begin_drain(&mut self) {
        self.drain = None;
    }

    /// Running attempts are given up and their jobs put back as pending.
    pub fn abort(&mut self) {
        self.abort = None;
    }

    /// Closes (receives `Err`) once every worker thread has ended.
    pub fn exited(&self) -> &Receiver<()> {
        &self.exited
    }

    /// Waits for every worker; a worker's panic is reported, not swallowed.
    pub fn join(self) {
        for handle in self.handles {
            let name = handle.thread().name().unwrap_or("worker").to_string();
            if handle.join().is_err() {
                error!("{name} panicked; its job, if any, is recovered at the next start");
            }
        }
    }
}

fn work(context: &WorkerContext) {
    let mut draining = false;
    let mut after = AfterAttempt::default();
    // A due time this worker learned from its own write, kept until it has looked for work at
    // that time through the writer, which sees it whether or not the reader does yet.
    let mut known_due: Option<Timestamp> = None;
    let mut missed = MissedClaims::default();
    loop {
        let job = match after.next.take() {
            Some(job) => job,
            None => match find_work(&context.idle, &mut draining, &mut known_due, &mut missed) {
                Next::Run(job) => *job,
                Next::LookAgain => continue,
                Next::Stop => return,
            },
        };
        after = run_and_record(&context.attempt, job);
        known_due = known_due.into_iter().chain(after.next_due.take()).min();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    use crate::executor::{Details, Outcome};
    use crate::job::Job;

    const RETRY: RetryPolicy = RetryPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_millis(1000),
    };

    /// Panics in every job's first attempt; later attempts succeed.
    struct PanicsOnFirstAttempts;

    impl Executor for PanicsOnFirstAttempts {
        fn run_attempt(
            &self,
            job: &Job,
            _abort: &Receiver<()>,
            _cancel: &Receiver<()>,
        ) -> (Outcome, Details) {
            if job.attempt == Some(1) {
                panic!("injected panic in {}", job.id);
            }
            (
                Outcome::Succeeded(json!("second time lucky")),
                Details::default(),
            )
        }
    }

    #[test]
    fn a_panicking_attempt_fails_is_retried_and_the_worker_lives_on() {
        let dir = crate::store::test_dir::TestDir::new("worker-panic");
        let path = dir.path().join("jobs.db");
        let options = crate::store::Options::for_test("test-node", 0);
        let location = crate::store::Location::Sqlite(path);
        let store = Arc::new(crate::store::Store::open(&location, &options).unwrap());
        let now = Timestamp::now();
        for (id, max_retries) in [("retried", 1), ("out-of-retries", 0)] {
            let job = crate::job::NewJob {
                payload: json!({}),
                timeout_seconds: 5,
                max_retries,
                priority: 0,
                run_at: None,
                function: None,
                queue: crate::job::DEFAULT_QUEUE.into(),
                traceparent: None,
            };
            store.insert(id.into(), &job, now).unwrap();
        }
        // One worker: if a panic ended it, the jobs after the first panic would never end.
        let (waker, wakeups) = Waker::for_workers(1);
        let running = Arc::new(RunningAttempts::default());
        let queue = crate::queue::Queue::new(
            Arc::clone(&store),
            waker.clone(),
            Arc::clone(&running),
            crate::functions::Functions::new(dir.path().join("functions")),
            crate::job::JobDefaults {
                timeout_seconds: 5,
                max_retries: 0,
            },
            "test-node".into(),
        );
        let mut pool = WorkerPool::start(
            1,
            Arc::new(queue),
            RETRY,
            running,
            Arc::new(PanicsOnFirstAttempts),
            Drain::DueJobs,
            (waker.clone(), wakeups),
        )
        .unwrap();
        waker.job_queued(now);
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = |id: &str| store.get(id).unwrap().unwrap().status;
        while status("retried") != crate::job::JobStatus::Success
            || status("out-of-retries") != crate::job::JobStatus::Failed
        {
            assert!(Instant::now() < deadline, "the jobs did not end");
            // Polling the store with a deadline; nothing else tells this test.
            thread::sleep(Duration::from_millis(10));
        }
        let attempts = store.attempts("retried").unwrap().unwrap();
        let summary: Vec<&str> = attempts.iter().map(|a| a.status.as_str()).collect();
        assert_eq!(summary, ["failed", "success"]);
        let message = attempts[0].error_message.as_deref().unwrap_or_default();
        assert_eq!(
            message,
            "the attempt panicked (a bug in the server): injected panic in retried"
        );
        let failed = store.get("out-of-retries").unwrap().unwrap();
        assert!(failed
            .error_message
            .unwrap_or_default()
            .contains("panicked"));
        pool.begin_drain();
        drop(waker);
        for handle in pool.handles {
            assert!(handle.join().is_ok(), "a worker thread panicked");
        }
    }
}
