//! A small pool of connections to the server: at most `size` are open, each is handed to one
//! caller at a time, and one whose session failed is dropped and replaced by a new one on
//! the next demand (so a restarted server costs each connection one failed statement, not
//! the process). A caller waits a bounded time for a free connection, then gets
//! `Unavailable`.
//!
//! Each connection prepares a statement the first time it runs it and keeps it for its
//! life, so a hot statement is parsed and planned once per connection.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row, Statement, Transaction};

use super::error::{connect_failure, Failure};
use crate::error::{Error, Result};
use crate::metrics::Histogram;

/// How long a caller waits for a free connection before the request is refused.
const CHECKOUT_WAIT: Duration = Duration::from_secs(5);

/// What every new connection runs first (its session settings).
pub type Setup = Box<dyn Fn(&mut Client) -> Result<(), postgres::Error> + Send + Sync>;

pub struct Pool {
    config: postgres::Config,
    setup: Setup,
    size: usize,
    /// The idle connections and how many exist in all (idle, lent out, or being opened).
    state: Mutex<State>,
    /// Signalled whenever a connection comes back or a slot frees up.
    returned: Condvar,
    /// Where each transaction's commit time is counted (`db_commit_seconds`).
    commit_seconds: Arc<Histogram>,
}

struct State {
    idle: Vec<Connection>,
    open: usize,
}

/// One session and the statements it has prepared.
pub struct Connection {
    client: Client,
    statements: Statements,
    commit_seconds: Arc<Histogram>,
}

type Statements = HashMap<&'static str, Statement>;

impl Pool {
    /// A pool of up to `size` connections; opens one now, so that a server that cannot be
    /// reached or refuses the credentials fails the start.
    pub fn open(
        config: postgres::Config,
        size: usize,
        setup: Setup,
        commit_seconds: Arc<Histogram>,
    ) -> Result<Pool> {
        let pool = Pool {
            config,
            setup,
            size: size.max(1),
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 1,
            }),
            returned: Condvar::new(),
            commit_seconds,
        };
        let first = pool.connect()?;
        pool.lock().idle.push(first);
        Ok(pool)
    }

    /// Runs `work` on a connection, dropping the connection if its session failed.
    pub fn run<T>(&self, work: impl FnOnce(&mut Connection) -> Result<T, Failure>) -> Result<T> {
        let mut lease = self.checkout()?;
        let outcome = work(lease.connection());
        if let Err(failure) = &outcome {
            lease.broken = failure.breaks_connection();
        }
        outcome.map_err(Error::from)
    }

    /// `run` for work that only reads: when the connection turns out to be dead (the server
    /// restarted since it was last used), once more on a new connection.
    pub fn read<T>(
        &self,
        mut work: impl FnMut(&mut Connection) -> Result<T, Failure>,
    ) -> Result<T> {
        let mut lease = self.checkout()?;
        match work(lease.connection()) {
            Err(failure) if failure.breaks_connection() => {
                lease.broken = true;
                drop(lease);
                self.run(work)
            }
            outcome => outcome.map_err(Error::from),
        }
    }

    fn checkout(&self) -> Result<Lease<'_>> {
        let deadline = Instant::now() + CHECKOUT_WAIT;
        let mut state = self.lock();
        loop {
            if let Some(connection) = state.idle.pop() {
                if connection.client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                return Ok(Lease::new(self, connection));
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                // Connecting takes a round trip or more: not under the lock.
                return match self.connect() {
                    Ok(connection) => Ok(Lease::new(self, connection)),
                    Err(err) => {
                        self.lock().open -= 1;
                        self.returned.notify_one();
                        Err(err)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Unavailable(format!(
                    "all {} database connections stayed busy for {} s (DATABASE_POOL_SIZE); try again shortly",
                    self.size,
                    CHECKOUT_WAIT.as_secs()
                )));
            }
            state = self
                .returned
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn connect(&self) -> Result<Connection> {
        let mut client = self.config.connect(NoTls).map_err(connect_failure)?;
        (self.setup)(&mut client).map_err(connect_failure)?;
        Ok(Connection {
            client,
            statements: HashMap::new(),
            commit_seconds: Arc::clone(&self.commit_seconds),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two plain values, consistent after any panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A connection lent to one caller; it goes back to the pool (or, broken, away) on drop.
struct Lease<'a> {
    pool: &'a Pool,
    connection: Option<Connection>,
    broken: bool,
}

impl<'a> Lease<'a> {
    fn new(pool: &'a Pool, connection: Connection) -> Lease<'a> {
        Lease {
            pool,
            connection: Some(connection),
            broken: false,
        }
    }

    fn connection(&mut self) -> &mut Connection {
        self.connection
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let mut state = self.pool.lock();
        if self.broken || connection.client.is_closed() {
            state.open -= 1;
        } else {
            state.idle.push(connection);
        }
        drop(state);
        self.pool.returned.notify_one();
    }
}

impl Connection {
    /// Statements outside a transaction: each one commits on its own.
    pub fn session(&mut self) -> Session<'_, Client> {
        Session {
            client: &mut self.client,
            statements: &mut self.statements,
        }
    }

    /// Runs `work` in one transaction: committed if it returns `Ok`, rolled back otherwise.
    pub fn transaction<T>(
        &mut self,
        work: impl FnOnce(&mut Session<'_, Transaction<'_>>) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let mut transaction = self.client.transaction()?;
        let value = work(&mut Session {
            client: &mut transaction,
            statements: &mut self.statements,
        })?;
        let started = Instant::now();
        transaction.commit()?;
        self.commit_seconds.observe(started.elapsed());
        Ok(value)
    }

    /// The bare client, for what is not a prepared statement (session settings, DDL).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Runs statements, prepared once per connection, on a connection or in its transaction.
pub struct Session<'a, C> {
    client: &'a mut C,
    statements: &'a mut Statements,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl<C: GenericClient> Session<'_, C> {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    pub fn query(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>, Failure> {
        let statement = self.statement(sql)?;
        Ok(self.client.query(&statement, params)?)
    }

    pub fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>, Failure> {
        let statement = self.statement(sql)?;
        Ok(self.client.query_opt(&statement, params)?)
    }

    pub fn query_one(&mut self, sql: &'static str, params: Params<'_>) -> Result<Row, Failure> {
        let statement = self.statement(sql)?;
        Ok(self.client.query_one(&statement, params)?)
    }

    /// Returns the number of rows the statement changed (or, for a `SELECT`, returned).
    pub fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, Failure> {
        let statement = self.statement(sql)?;
        Ok(self.client.execute(&statement, params)?)
    }
}
