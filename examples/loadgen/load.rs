//! Driving load: many keep-alive connections in parallel (throughput), or one connection
//! sending requests in sequence (latency). Both are bounded by count and by time and stop by
//! themselves, and both count every response that is not the expected status as an error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::Connection;
use crate::error::{Context, Error, Result};
use crate::interrupt;

/// When a throughput run stops.
#[derive(Clone, Copy)]
pub enum Until {
    /// Run `warmup + window`; only responses completed inside the window are counted, so
    /// connection set-up and the first cold requests do not dilute the rate.
    Window { warmup: Duration, window: Duration },
    /// `total` requests shared by all connections (a connection the server is slow to serve
    /// leaves more to the others), or stop at `deadline`.
    Count { total: u64, deadline: Duration },
}

/// What a throughput run saw, summed over its connections.
#[derive(Default)]
pub struct Outcome {
    /// Expected responses completed inside the measuring window (`Until::Window`).
    pub counted: u64,
    /// Expected responses over the whole run, warm-up included: what reached the server.
    pub ok_total: u64,
    /// Responses with another status.
    pub wrong_status: u64,
    /// Failed exchanges (connection refused, reset, timed out, malformed response).
    pub io_errors: u64,
    /// The first error, to show what went wrong rather than only how often.
    pub first_error: Option<String>,
    pub window: Duration,
    /// When the first connection started sending (all start together, see `run`).
    pub started: Option<Instant>,
    /// From that moment until the last connection stopped.
    pub elapsed: Duration,
    /// The longest single exchange: a rate can look fine while some requests stall.
    pub slowest: Duration,
    /// Connections that completed no request inside the window: the server left them waiting.
    pub starved: usize,
    pub connections: usize,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.counted as f64 / self.window.as_secs_f64().max(1e-9)
    }

    pub fn errors(&self) -> u64 {
        self.wrong_status + self.io_errors
    }

    fn add(&mut self, other: Outcome) {
        self.counted += other.counted;
        self.ok_total += other.ok_total;
        self.wrong_status += other.wrong_status;
        self.io_errors += other.io_errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.started = match (self.started, other.started) {
            (Some(mine), Some(theirs)) => Some(mine.min(theirs)),
            (mine, theirs) => mine.or(theirs),
        };
        self.elapsed = self.elapsed.max(other.elapsed);
        self.slowest = self.slowest.max(other.slowest);
        self.starved += other.starved;
    }
}

/// Sends `request` over `connections` keep-alive connections, one thread each, until `until`.
pub fn run(
    addr: SocketAddr,
    connections: usize,
    request: &[u8],
    expect: u16,
    until: Until,
) -> Result<Outcome> {
    run_spread(&[addr], connections, request, expect, until)
}

/// `run` against several servers (nodes on one database): connection N goes to
/// `addrs[N % addrs.len()]`, so the load is spread round-robin.
pub fn run_spread(
    addrs: &[SocketAddr],
    connections: usize,
    request: &[u8],
    expect: u16,
    until: Until,
) -> Result<Outcome> {
    interrupt::check()?;
    if addrs.is_empty() {
        return Err(Error::new("no server to send load to"));
    }
    // All connections are opened at once, before any request: a burst of connects is what
    // clients do, and tiny_http's pool once stranded such connections (see the server's
    // `CONNECTION_THREADS`). The phases report any connection left unanswered (`starved`).
    let opened: Vec<_> = (0..connections)
        .map(|index| {
            let addr = addrs[index % addrs.len()];
            (addr, Connection::open(addr))
        })
        .collect();
    // All threads start together, so the window does not include the set-up.
    let start_line = Barrier::new(connections);
    let budget = AtomicU64::new(match until {
        Until::Window { .. } => u64::MAX,
        Until::Count { total, .. } => total,
    });
    let outcomes: Vec<Result<Outcome>> = thread::scope(|scope| {
        let handles: Vec<_> = opened
            .into_iter()
            .map(|(addr, connection)| {
                let (start_line, budget) = (&start_line, &budget);
                scope.spawn(move || {
                    start_line.wait();
                    let connection = connection.context(format!("cannot connect to {addr}"))?;
                    Ok(drive(connection, request, expect, until, budget))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(Error::new("a load thread panicked")))
            })
            .collect()
    });
    let mut total = Outcome {
        window: match until {
            Until::Window { window, .. } => window,
            Until::Count { .. } => Duration::ZERO,
        },
        connections,
        ..Outcome::default()
    };
    for outcome in outcomes {
        total.add(outcome?);
    }
    interrupt::check()?;
    Ok(total)
}

/// One connection's loop. The clock is read once per response (a vDSO call, a few tens of ns),
/// which is what lets the window be exact.
fn drive(
    mut connection: Connection,
    request: &[u8],
    expect: u16,
    until: Until,
    budget: &AtomicU64,
) -> Outcome {
    let started = Instant::now();
    let (window_start, stop) = match until {
        Until::Window { warmup, window } => (started + warmup, started + warmup + window),
        Until::Count { deadline, .. } => (started, started + deadline),
    };
    // Takes one request from the shared budget; `false` once it is spent.
    let take = || {
        budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    };
    let mut outcome = Outcome {
        started: Some(started),
        ..Outcome::default()
    };
    let mut now = started;
    while now < stop && !interrupt::requested() && take() {
        let before = now;
        let result = connection.exchange(request);
        now = Instant::now();
        outcome.slowest = outcome.slowest.max(now - before);
        match result {
            Ok(status) if status == expect => {
                outcome.ok_total += 1;
                if now >= window_start && now < stop {
                    outcome.counted += 1;
                }
            }
            Ok(status) => {
                outcome.wrong_status += 1;
                if outcome.first_error.is_none() {
                    outcome.first_error = Some(format!(
                        "status {status} (expected {expect}): {}",
                        snippet(connection.body())
                    ));
                }
            }
            Err(err) => {
                outcome.io_errors += 1;
                if outcome.first_error.is_none() {
                    outcome.first_error = Some(err.to_string());
                }
                // The next exchange reconnects; pause so a dead server is not spun on.
                thread::sleep(Duration::from_millis(10));
                now = Instant::now();
            }
        }
    }
    outcome.elapsed = now - started;
    outcome.starved = usize::from(outcome.counted == 0);
    outcome
}

/// Latencies of requests sent one at a time over one keep-alive connection.
pub struct Sequential {
    pub latencies_ms: Vec<f64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Sends `count` requests in sequence (cycling through `requests`) after `warmup` uncounted
/// ones, stopping early at `deadline`. Each latency is write-to-last-byte of one exchange.
pub fn sequential(
    addr: SocketAddr,
    requests: &[Vec<u8>],
    expect: u16,
    warmup: usize,
    count: usize,
    deadline: Duration,
) -> Result<Sequential> {
    if requests.is_empty() {
        return Err(Error::new("no requests to send"));
    }
    let mut connection = Connection::open(addr).context(format!("cannot connect to {addr}"))?;
    let stop = Instant::now() + deadline;
    let mut result = Sequential {
        latencies_ms: Vec::with_capacity(count),
        errors: 0,
        first_error: None,
    };
    for (index, request) in requests.iter().cycle().take(warmup + count).enumerate() {
        interrupt::check()?;
        if Instant::now() >= stop {
            break;
        }
        let sent = Instant::now();
        let outcome = connection.exchange(request);
        let latency = sent.elapsed();
        let error = match outcome {
            Ok(status) if status == expect => None,
            Ok(status) => Some(format!(
                "status {status} (expected {expect}): {}",
                snippet(connection.body())
            )),
            Err(err) => Some(err.to_string()),
        };
        match error {
            Some(error) => {
                result.errors += 1;
                result.first_error.get_or_insert(error);
            }
            None if index >= warmup => result.latencies_ms.push(latency.as_secs_f64() * 1e3),
            None => {}
        }
    }
    Ok(result)
}

/// The start of a response body, for error messages.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text
    }
}
