//! Counts requests between "head received" and "response written", so shutdown can wait until
//! every request it let in has been answered.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

#[derive(Default)]
pub struct InFlight {
    /// Requests being answered now.
    count: Mutex<usize>,
    idle: Condvar,
}

/// Held while one request is answered.
pub struct Answering<'a>(&'a InFlight);

impl InFlight {
    pub fn enter(&self) -> Answering<'_> {
        *self.lock() += 1;
        Answering(self)
    }

    /// Waits until no request is being answered, for at most `patience`; `false` if some
    /// still are then.
    pub fn wait_idle(&self, patience: Duration) -> bool {
        let count = self.lock();
        let (count, _) = self
            .idle
            .wait_timeout_while(count, patience, |count| *count > 0)
            .unwrap_or_else(PoisonError::into_inner);
        *count == 0
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        // A count stays meaningful whatever panicked while holding it.
        self.count.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        let mut count = self.0.lock();
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.0.idle.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_last_answer() {
        let in_flight = InFlight::default();
        assert!(in_flight.wait_idle(Duration::ZERO));
        let answering = in_flight.enter();
        assert!(!in_flight.wait_idle(Duration::from_millis(10)));
        std::thread::scope(|scope| {
            scope.spawn(move || drop(answering));
            assert!(in_flight.wait_idle(Duration::from_secs(5)));
        });
    }
}
