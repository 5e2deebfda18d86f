//! The submit rate limit (`SUBMIT_RATE_LIMIT`): a token bucket per client for `POST /jobs`
//! and `POST /jobs/batch` (a batch is one request, however many jobs it carries). A client is
//! its bearer token when `API_TOKEN` is set, else its IP address. Each bucket holds up to
//! `requests` tokens, starts full, and refills at `requests` per `per`; a submit takes one.
//! With none left the submit is refused `429 rate_limited` before its body is read.
//!
//! It owns the buckets and the arithmetic, not the answer: refusals are
//! [`Error::RateLimited`], and the `RateLimit-*` headers of a submit that passes are
//! [`Allowance::headers`]. The buckets are this node's: with several nodes behind one
//! balancer each node limits on its own, so a client may reach `requests` on each.
//!
//! Memory is bounded: a bucket that has refilled is the same as no bucket, so such buckets
//! are dropped, and the map never holds more than [`MAX_CLIENTS`]. A new client arriving
//! while the map is full of clients still being limited is let through unlimited rather than
//! refused: the cap may never turn away a client that is within its rate.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::SubmitRate;
use crate::error::{Error, Result};

/// The most clients tracked at once.
pub const MAX_CLIENTS: usize = 100_000;

/// How often, at most, a full map is swept for refilled buckets: a sweep walks every bucket,
/// so under a flood of new clients it must not run on each of their requests.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Who a bucket belongs to. A token is kept only as a keyed hash, never as its text, so
/// neither a debug print nor a memory dump of the map shows one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    Token(u64),
    Peer(IpAddr),
}

/// Whether a request is one the limit counts: a submit, single or batch.
pub fn is_submit(method: &tiny_http::Method, path: &str) -> bool {
    *method == tiny_http::Method::Post
        && matches!(path.trim_end_matches('/'), "/jobs" | "/jobs/batch")
}

/// What a submit that passed may still do, for its `RateLimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    pub limit: u32,
    /// Whole tokens left after this submit.
    pub remaining: u32,
    /// Whole seconds until a token is available: 0 while `remaining` is above 0.
    pub reset_seconds: u64,
}

impl Allowance {
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RateLimit-Limit", self.limit.to_string()),
            ("RateLimit-Remaining", self.remaining.to_string()),
            ("RateLimit-Reset", self.reset_seconds.to_string()),
        ]
    }
}

struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// The buckets of every client, and when they were last swept.
struct Buckets {
    map: HashMap<Client, Bucket>,
    swept_at: Option<Instant>,
}

pub struct RateLimiter {
    capacity: f64,
    limit: u32,
    /// Tokens added per second.
    refill_per_second: f64,
    max_clients: usize,
    /// The key of the token hash: fixed for the process, unknown outside it.
    token_hasher: std::collections::hash_map::RandomState,
    /// The lock is held to update one bucket (or, rarely, to sweep).
    buckets: Mutex<Buckets>,
}

impl RateLimiter {
    pub fn new(rate: SubmitRate) -> RateLimiter {
        RateLimiter::with_max_clients(rate, MAX_CLIENTS)
    }

    fn with_max_clients(rate: SubmitRate, max_clients: usize) -> RateLimiter {
        let per = rate.per.as_secs_f64().max(f64::MIN_POSITIVE);
        RateLimiter {
            capacity: f64::from(rate.requests),
            limit: rate.requests,
            refill_per_second: f64::from(rate.requests) / per,
            max_clients,
            token_hasher: std::collections::hash_map::RandomState::new(),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                swept_at: None,
            }),
        }
    }

    /// The client a bearer token names.
    pub fn token_client(&self, token: &str) -> Client {
        Client::Token(self.token_hasher.hash_one(token))
    }

    /// Takes a token from `client`'s bucket at `now`: the allowance left, or `RateLimited`.
    pub fn take(&self, client: Client, now: Instant) -> Result<Allowance> {
        let mut buckets = self.lock();
        if !buckets.map.contains_key(&client) && buckets.map.len() >= self.max_clients {
            self.sweep(&mut buckets, now);
            if buckets.map.len() >= self.max_clients {
                // Every tracked client is being limited: this one goes unlimited for now.
                return Ok(Allowance {
                    limit: self.limit,
                    remaining: self.limit.saturating_sub(1),
                    reset_seconds: 0,
                });
            }
        }
        let capacity = self.capacity;
        let bucket = buckets.map.entry(client).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.refill_per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            let remaining = bucket.tokens.floor();
            return Ok(Allowance {
                limit: self.limit,
                remaining: remaining as u32,
                reset_seconds: if remaining >= 1.0 {
                    0
                } else {
                    self.seconds_until_one(bucket.tokens)
                },
            });
        }
        let reset_seconds = self.seconds_until_one(bucket.tokens);
        Err(Error::RateLimited {
            limit: self.limit,
            reset_seconds,
        })
    }

    /// Whole seconds (at least 1) until a bucket holding `tokens` (below 1) has one.
    fn seconds_until_one(&self, tokens: f64) -> u64 {
        let seconds = ((1.0 - tokens).max(0.0) / self.refill_per_second).ceil();
        (seconds as u64).max(1)
    }

    /// Drops every bucket that has refilled by `now`, at most once per `SWEEP_INTERVAL`.
    fn sweep(&self, buckets: &mut Buckets, now: Instant) {
        if buckets
            .swept_at
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_INTERVAL)
        {
            return;
        }
        buckets.swept_at = Some(now);
        let (capacity, rate) = (self.capacity, self.refill_per_second);
        buckets.map.retain(|_, bucket| {
            let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
            bucket.tokens + elapsed * rate < capacity
        });
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().map.len()
    }

    fn lock(&self) -> MutexGuard<'_, Buckets> {
        // Each update leaves the map consistent, so a panicking holder leaves it usable.
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests: u32, per_seconds: u64) -> RateLimiter {
        RateLimiter::new(SubmitRate {
            requests,
            per: Duration::from_secs(per_seconds),
        })
    }

    fn peer(last: u8) -> Client {
        Client::Peer(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn a_burst_of_the_capacity_passes_then_the_next_waits_for_a_token() {
        let limiter = limiter(3, 60);
        let start = Instant::now();
        let remaining: Vec<(u32, u64)> = (0..3)
            .map(|_| {
                let allowance = limiter.take(peer(1), start).unwrap();
                (allowance.remaining, allowance.reset_seconds)
            })
            .collect();
        assert_eq!(remaining, [(2, 0), (1, 0), (0, 20)]);
        match limiter.take(peer(1), start + Duration::from_millis(500)) {
            Err(Error::RateLimited {
                limit: 3,
                reset_seconds: 20,
            }) => {}
            other => panic!("{other:?}"),
        }
        // A token comes every 20 s.
        assert!(limiter
            .take(peer(1), start + Duration::from_secs(20))
            .is_ok());
        assert!(limiter
            .take(peer(1), start + Duration::from_secs(21))
            .is_err());
        // Another client has its own bucket.
        assert_eq!(limiter.take(peer(2), start).unwrap().remaining, 2);
    }

    #[test]
    fn a_refilled_bucket_never_holds_more_than_the_capacity() {
        let limiter = limiter(2, 1);
        let start = Instant::now();
        limiter.take(peer(1), start).unwrap();
        let later = start + Duration::from_secs(3600);
        assert_eq!(limiter.take(peer(1), later).unwrap().remaining, 1);
        assert_eq!(limiter.take(peer(1), later).unwrap().remaining, 0);
        assert!(limiter.take(peer(1), later).is_err());
    }

    #[test]
    fn the_map_is_capped_and_refilled_buckets_make_room() {
        let limiter = RateLimiter::with_max_clients(
            SubmitRate {
                requests: 1,
                per: Duration::from_secs(10),
            },
            3,
        );
        let start = Instant::now();
        for last in 1..=3 {
            limiter.take(peer(last), start).unwrap();
        }
        // Full of limited clients: a new one passes, untracked, and is never refused.
        for _ in 0..5 {
            assert!(limiter.take(peer(4), start).is_ok());
        }
        assert_eq!(limiter.tracked(), 3);
        // Once the others have refilled, the sweep drops them and the new one is tracked.
        let later = start + Duration::from_secs(10);
        limiter.take(peer(4), later).unwrap();
        assert_eq!(limiter.tracked(), 1);
        assert!(limiter.take(peer(4), later).is_err());
    }

    #[test]
    fn tokens_are_told_apart_by_their_hash_alone() {
        let limiter = limiter(1, 60);
        let (a, b) = (limiter.token_client("alpha"), limiter.token_client("beta"));
        assert_ne!(a, b);
        assert_eq!(a, limiter.token_client("alpha"));
        assert!(!format!("{a:?}").contains("alpha"));
    }

    #[test]
    fn only_submits_are_counted() {
        use tiny_http::Method;
        assert!(is_submit(&Method::Post, "/jobs"));
        assert!(is_submit(&Method::Post, "/jobs/"));
        assert!(is_submit(&Method::Post, "/jobs/batch"));
        assert!(!is_submit(&Method::Get, "/jobs"));
        assert!(!is_submit(&Method::Post, "/jobs/retry"));
        assert!(!is_submit(&Method::Post, "/jobs/x/retry"));
    }
}
