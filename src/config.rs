//! Configuration: read once from the environment at start, validated, then passed down as a
//! value. Nothing else in the crate reads the environment.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::Location;

/// One environment variable: its name, default and meaning. The `--help` text is built from
/// this table so the documentation cannot drift from the parser.
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

pub const VARIABLES: [Variable; 30] = [
    Variable {
        name: "SERVER_ADDR",
        default: "127.0.0.1:3000",
        meaning: "address to listen on (port 0 picks a free port)",
    },
    Variable {
        name: "DATABASE_URL",
        default: "sqlite://mini_lambda.db",
        meaning: "SQLite file (sqlite://PATH or a plain path), or postgres://USER@HOST/DB for several nodes",
    },
    Variable {
        name: "NODE_ID",
        default: "",
        meaning: "this process's name on jobs it runs (default HOSTNAME-RANDOM; one process per id)",
    },
    Variable {
        name: "LEASE_SECONDS",
        default: "30",
        meaning: "a node silent this long has its running jobs recovered by the others (1 to 3600)",
    },
    Variable {
        name: "DATABASE_POOL_SIZE",
        default: "16",
        meaning: "pooled connections to PostgreSQL per node, plus two for notifications (1 to 1000)",
    },
    Variable {
        name: "WORKER_COUNT",
        default: "4",
        meaning: "worker threads running jobs (1 to 1024)",
    },
    Variable {
        name: "DEFAULT_TIMEOUT_SECONDS",
        default: "30",
        meaning: "timeout of a job that does not set one (1 to 86400)",
    },
    Variable {
        name: "DEFAULT_MAX_RETRIES",
        default: "3",
        meaning: "automatic retries of a job that does not set max_retries (0 to 100)",
    },
    Variable {
        name: "RETRY_BACKOFF_MS",
        default: "200",
        meaning: "base of the exponential retry backoff, in milliseconds",
    },
    Variable {
        name: "RETRY_BACKOFF_MAX_MS",
        default: "60000",
        meaning: "cap of the retry backoff, in milliseconds",
    },
    Variable {
        name: "MAX_BODY_BYTES",
        default: "1048576",
        meaning: "largest accepted request body, in bytes",
    },
    Variable {
        name: "SHUTDOWN_GRACE_SECONDS",
        default: "30",
        meaning: "how long a graceful shutdown keeps draining jobs",
    },
    Variable {
        name: "DURABILITY",
        default: "full",
        meaning: "full: acknowledged jobs survive power loss; normal: they survive a crash",
    },
    Variable {
        name: "FUNCTIONS_DIR",
        default: "./functions",
        meaning: "directory whose executable files are the functions jobs can run",
    },
    Variable {
        name: "FUNCTION_MAX_OUTPUT_BYTES",
        default: "1048576",
        meaning: "largest stdout a function may write; more fails the attempt",
    },
    Variable {
        name: "FUNCTION_KILL_GRACE_MS",
        default: "2000",
        meaning: "time between SIGTERM and SIGKILL when a function is stopped",
    },
    Variable {
        name: "FUNCTION_ENV_PASSTHROUGH",
        default: "",
        meaning: "comma-separated variables passed on to functions",
    },
    Variable {
        name: "HTTP_IDLE_TIMEOUT_SECONDS",
        default: "30",
        meaning:
            "how long a connection may stay silent, and a response write may block (1 to 3600)",
    },
    Variable {
        name: "MAX_CONNECTIONS",
        default: "1024",
        meaning: "open connections served at once; more are answered 503 and closed (1 to 65536)",
    },
    Variable {
        name: "API_TOKEN",
        default: "",
        meaning: "when set, every route but GET /health needs Authorization: Bearer <token>",
    },
    Variable {
        name: "API_TOKEN_FILE",
        default: "",
        meaning: "file whose first line is the token (instead of API_TOKEN)",
    },
    Variable {
        name: "ALLOW_UNAUTHENTICATED",
        default: "false",
        meaning: "true: allow a non-loopback SERVER_ADDR without a token",
    },
    Variable {
        name: "MAX_PENDING_JOBS",
        default: "1000000",
        meaning: "most jobs pending at once; a submit beyond is refused with 429 (0: no limit)",
    },
    Variable {
        name: "IDEMPOTENCY_TTL_SECONDS",
        default: "86400",
        meaning: "how long an Idempotency-Key is remembered (1 to 31536000)",
    },
    Variable {
        name: "JOB_RETENTION_SECONDS",
        default: "604800",
        meaning: "ended jobs are deleted this long after they end (0: keep everything)",
    },
    Variable {
        name: "SUBMIT_RATE_LIMIT",
        default: "",
        meaning: "submits per client, e.g. 200/s or 3000/m (burst the same; unset: no limit)",
    },
    Variable {
        name: "API_READ_TOKEN",
        default: "",
        meaning: "a second token that may only read (every GET); needs API_TOKEN",
    },
    Variable {
        name: "METRICS_PUBLIC",
        default: "false",
        meaning: "true: GET /metrics needs no token (for a Prometheus on a trusted network)",
    },
    Variable {
        name: "DASHBOARD_BASE_PATH",
        default: "",
        meaning: "path prefix the server is reached under behind a reverse proxy, e.g. /jobs-admin",
    },
    Variable {
        name: "LOG_FORMAT",
        default: "text",
        meaning: "text: human-readable lines; json: one JSON object per line",
    },
];

/// How hard a commit waits for the disk (SQLite's `synchronous` setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is synced: acknowledged jobs survive power loss.
    Full,
    /// The log is synced at checkpoints only: acknowledged jobs survive a process crash, but
    /// the last ones may be lost if the machine loses power.
    Normal,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub server_addr: SocketAddr,
    pub database: Location,
    /// This process's node id: `NODE_ID`, or a fresh one each start.
    pub node_id: String,
    /// Whether `NODE_ID` set it: then a start recovers at once what an earlier process with
    /// the same id left running.
    pub node_id_fixed: bool,
    pub lease: Duration,
    pub database_pool_size: usize,
    pub worker_count: usize,
    pub default_timeout_seconds: u32,
    pub default_max_retries: u32,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub durability: Durability,
    pub functions_dir: PathBuf,
    pub function_max_output_bytes: usize,
    pub function_kill_grace: Duration,
    /// Variables functions get besides their own, with the values they had at start.
    pub function_env: Vec<(String, String)>,
    /// Per-connection read and write timeout: silence mid-request or between keep-alive
    /// requests, and a response write that cannot progress.
    pub http_idle_timeout: Duration,
    /// Connections served at once; the accept loop refuses more.
    pub max_connections: usize,
    /// The bearer token every route but `GET /health` requires, when set.
    pub api_token: Option<String>,
    /// Submits beyond this many pending jobs are refused (0: no limit).
    pub max_pending_jobs: u64,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// Ended jobs are deleted this long after they end; `None` keeps them.
    pub job_retention: Option<Duration>,
    /// Submits each client may make, when limited.
    pub submit_rate_limit: Option<SubmitRate>,
    /// A token for reads only (every `GET`), when set; only with `api_token`.
    pub api_read_token: Option<String>,
    /// Whether `GET /metrics` is answered without a token.
    pub metrics_public: bool,
    /// The path prefix a reverse proxy serves the server under (`/admin/jobs`), or empty.
    /// Never ends with `/`.
    pub base_path: String,
    pub log_format: LogFormat,
}

/// The first path segments of the API's routes, which a base path may not start with.
pub(crate) const ROUTE_ROOTS: [&str; 8] = [
    "health",
    "openapi.json",
    "functions",
    "jobs",
    "queues",
    "metrics",
    "stats",
    "assets",
];

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `env_logger`'s human-readable lines.
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

/// A rate: `requests` per `per` (`200/s`), with a burst of `requests`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubmitRate {
    pub requests: u32,
    pub per: Duration,
}

impl Config {
    pub fn from_env() -> Result<Config> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any name-to-value lookup, so tests need not touch the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let reader = Reader { lookup };
        let lookup_path =
            (reader.lookup)("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_string());
        let retry_backoff_ms = reader.integer("RETRY_BACKOFF_MS", 0, 3_600_000)?;
        let retry_backoff_max_ms = reader.integer("RETRY_BACKOFF_MAX_MS", 0, 86_400_000)?;
        if retry_backoff_max_ms < retry_backoff_ms {
            return Err(Error::Config {
                variable: "RETRY_BACKOFF_MAX_MS",
                message: format!(
                    "must be at least RETRY_BACKOFF_MS ({retry_backoff_ms}), got {retry_backoff_max_ms}"
                ),
            });
        }
        Config {
            server_addr: reader.address("SERVER_ADDR")?,
            database: reader.database("DATABASE_URL")?,
            node_id_fixed: reader.node_id("NODE_ID")?.is_some(),
            node_id: reader
                .node_id("NODE_ID")?
                .unwrap_or_else(|| fresh_node_id(&reader)),
            lease: Duration::from_secs(reader.integer("LEASE_SECONDS", 1, 3600)?),
            database_pool_size: to_usize(reader.integer("DATABASE_POOL_SIZE", 1, 1000)?),
            worker_count: to_usize(reader.integer("WORKER_COUNT", 1, 1024)?),
            default_timeout_seconds: to_u32(reader.integer(
                "DEFAULT_TIMEOUT_SECONDS",
                1,
                86_400,
            )?),
            default_max_retries: to_u32(reader.integer("DEFAULT_MAX_RETRIES", 0, 100)?),
            retry_backoff: Duration::from_millis(retry_backoff_ms),
            retry_backoff_max: Duration::from_millis(retry_backoff_max_ms),
            max_body_bytes: to_usize(reader.integer("MAX_BODY_BYTES", 1, 1 << 30)?),
            shutdown_grace: Duration::from_secs(reader.integer(
                "SHUTDOWN_GRACE_SECONDS",
                0,
                86_400,
            )?),
            durability: reader.durability("DURABILITY")?,
            // Absolute now: a function runs with its own working directory, where a relative
            // path would point somewhere else.
            functions_dir: std::path::absolute(reader.raw("FUNCTIONS_DIR")).map_err(|err| {
                Error::Config {
                    variable: "FUNCTIONS_DIR",
                    message: format!("cannot resolve the directory: {err}"),
                }
            })?,
            function_max_output_bytes: to_usize(reader.integer(
                "FUNCTION_MAX_OUTPUT_BYTES",
                1,
                1 << 30,
            )?),
            function_kill_grace: Duration::from_millis(reader.integer(
                "FUNCTION_KILL_GRACE_MS",
                0,
                600_000,
            )?),
            function_env: reader.function_env(&lookup_path)?,
            max_pending_jobs: reader.integer("MAX_PENDING_JOBS", 0, u64::MAX)?,
            http_idle_timeout: Duration::from_secs(reader.integer(
                "HTTP_IDLE_TIMEOUT_SECONDS",
                1,
                3600,
            )?),
            max_connections: to_usize(reader.integer("MAX_CONNECTIONS", 1, 65_536)?),
            api_token: reader.api_token()?,
            idempotency_ttl: Duration::from_secs(reader.integer(
                "IDEMPOTENCY_TTL_SECONDS",
                1,
                31_536_000,
            )?),
            job_retention: match reader.integer("JOB_RETENTION_SECONDS", 0, 315_360_000)? {
                0 => None,
                seconds => Some(Duration::from_secs(seconds)),
            },
            submit_rate_limit: reader.rate("SUBMIT_RATE_LIMIT")?,
            api_read_token: reader.read_token()?,
            metrics_public: reader.boolean("METRICS_PUBLIC")?,
            base_path: reader.base_path("DASHBOARD_BASE_PATH")?,
            log_format: reader.log_format("LOG_FORMAT")?,
        }
        .refusing_open_access(reader.boolean("ALLOW_UNAUTHENTICATED")?)
    }

    /// A server reachable from other machines must not run without a token by accident.
    fn refusing_open_access(self, allow_unauthenticated: bool) -> Result<Config> {
        if self.api_read_token.is_some() && self.api_token.is_none() {
            // Reads would need a token that writes do not.
            return Err(Error::Config {
                variable: "API_READ_TOKEN",
                message: "needs API_TOKEN (or API_TOKEN_FILE): without it every request is \
                          allowed, and a read-only token means nothing"
                    .into(),
            });
        }
        if self.api_read_token.is_some() && self.api_read_token == self.api_token {
            return Err(Error::Config {
                variable: "API_READ_TOKEN",
                message: "must differ from API_TOKEN".into(),
            });
        }
        if self.api_token.is_none()
            && !self.server_addr.ip().is_loopback()
            && !allow_unauthenticated
        {
            return Err(Error::Config {
                variable: "SERVER_ADDR",
                message: format!(
                    "{} is reachable from other machines and no API_TOKEN is set; set API_TOKEN (or API_TOKEN_FILE), or ALLOW_UNAUTHENTICATED=true to run without one",
                    self.server_addr
                ),
            });
        }
        Ok(self)
    }
}

/// Prints `--help`: usage and every variable with its default.
pub fn help_text() -> String {
    let mut text = format!(
        "{name} {version}\n{description}\n\nUSAGE:\n    {name} [--help | --version]\n\n\
         Configuration comes from the environment:\n",
        name = env!("CARGO_PKG_NAME"),
        version = env!("CARGO_PKG_VERSION"),
        description = env!("CARGO_PKG_DESCRIPTION"),
    );
    // (name, meaning, default); RUST_LOG is read by the logger, not by `Config`.
    let rows: Vec<(&str, &str, &str)> = VARIABLES
        .iter()
        .map(|variable| (variable.name, variable.meaning, variable.default))
        .chain([(
            "RUST_LOG",
            "log filter, e.g. mini_lambda_rust=debug",
            "mini_lambda_rust=info",
        )])
        .collect();
    // The widest name sets the column, so a longer variable added to the table stays aligned.
    let width = rows.iter().map(|(name, ..)| name.len()).max().unwrap_or(0);
    for (name, meaning, default) in rows {
        text.push_str(&format!("    {name:<width$}  {meaning}"));
        if !default.is_empty() {
            text.push_str(&format!(" (default: {default})"));
        }
        text.push('\n');
    }
    text
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

fn to_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

struct Reader<F> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    /// `N/s`, `N/m` or `N/h` (N from 1 to 1,000,000); unset or empty is no limit.
    fn rate(&self, name: &'static str) -> Result<Option<SubmitRate>> {
        let text = self.raw(name);
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let invalid = || Error::Config {
            variable: name,
            message: format!(
                "must be a number of requests per second, minute or hour, like 200/s, 3000/m or \
                 10000/h, got {text:?}"
            ),
        };
        let (count, unit) = text.split_once('/').ok_or_else(invalid)?;
        let requests: u32 = count.trim().parse().map_err(|_| invalid())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(invalid()),
        };
        if !(1..=1_000_000).contains(&requests) {
            return Err(invalid());
        }
        Ok(Some(SubmitRate { requests, per }))
    }

    /// The variable's value, or its documented default when unset.
    fn raw(&self, name: &'static str) -> String {
        (self.lookup)(name).unwrap_or_else(|| {
            VARIABLES
                .iter()
                .find(|variable| variable.name == name)
                .map(|variable| variable.default.to_string())
                .unwrap_or_default()
        })
    }

    fn integer(&self, name: &'static str, min: u64, max: u64) -> Result<u64> {
        let raw = self.raw(name);
        match raw.trim().parse::<u64>() {
            Ok(value) if (min..=max).contains(&value) => Ok(value),
            _ => Err(Error::Config {
                variable: name,
                message: format!("must be an integer from {min} to {max}, got {raw:?}"),
            }),
        }
    }

    /// `PATH` as the server had it, then every variable named in `FUNCTION_ENV_PASSTHROUGH`
    /// that is set.
    fn function_env(&self, path: &str) -> Result<Vec<(String, String)>> {
        let raw = self.raw("FUNCTION_ENV_PASSTHROUGH");
        let mut env = vec![("PATH".to_string(), path.to_string())];
        for name in raw
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            let valid = name.chars().enumerate().all(|(index, c)| {
                c == '_' || c.is_ascii_alphabetic() || (index > 0 && c.is_ascii_digit())
            });
            if !valid {
                return Err(Error::Config {
                    variable: "FUNCTION_ENV_PASSTHROUGH",
                    message: format!("{name:?} is not a variable name"),
                });
            }
            if let Some(value) = (self.lookup)(name) {
                env.push((name.to_string(), value));
            }
        }
        Ok(env)
    }

    fn boolean(&self, name: &'static str) -> Result<bool> {
        let raw = self.raw(name);
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" | "" => Ok(false),
            _ => Err(Error::Config {
                variable: name,
                message: format!("must be true or false, got {raw:?}"),
            }),
        }
    }

    /// `API_TOKEN`, or the first line of `API_TOKEN_FILE`; setting both is ambiguous.
    fn api_token(&self) -> Result<Option<String>> {
        let inline = (self.lookup)("API_TOKEN").filter(|token| !token.is_empty());
        let file = (self.lookup)("API_TOKEN_FILE").filter(|path| !path.is_empty());
        let token = match (inline, file) {
            (Some(_), Some(_)) => {
                return Err(Error::Config {
                    variable: "API_TOKEN_FILE",
                    message: "set either API_TOKEN or API_TOKEN_FILE, not both".into(),
                })
            }
            (Some(token), None) => token,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|err| Error::Config {
                    variable: "API_TOKEN_FILE",
                    message: format!("cannot read {path:?}: {err}"),
                })?;
                text.lines().next().unwrap_or_default().trim().to_string()
            }
            (None, None) => return Ok(None),
        };
        let printable = token.bytes().all(|byte| byte.is_ascii_graphic());
        if token.is_empty() || !printable {
            return Err(Error::Config {
                variable: "API_TOKEN",
                message: "the token must be non-empty printable ASCII without spaces".into(),
            });
        }
        Ok(Some(token))
    }

    /// `API_READ_TOKEN`: the same rules as the full token.
    fn read_token(&self) -> Result<Option<String>> {
        let Some(token) = (self.lookup)("API_READ_TOKEN").filter(|token| !token.is_empty()) else {
            return Ok(None);
        };
        if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(Error::Config {
                variable: "API_READ_TOKEN",
                message: "the token must be non-empty printable ASCII without spaces".into(),
            });
        }
        Ok(Some(token))
    }

    /// Empty, or `/` followed by path segments of URL-safe characters, without a trailing
    /// `/` (one given is dropped): it is written into the dashboard's page and compared with
    /// request paths as it is.
    fn base_path(&self, name: &'static str) -> Result<String> {
        let raw = self.raw(name);
        let path = raw.trim().trim_end_matches('/');
        if path.is_empty() {
            return Ok(String::new());
        }
        let safe = path.bytes().all(|byte| {
            byte.is_ascii_alphanumeric() || matches!(byte, b'/' | b'-' | b'_' | b'.' | b'~')
        });
        if !path.starts_with('/') || !safe || path.contains("//") || path.len() > 200 {
            return Err(Error::Config {
                variable: name,
                message: format!(
                    "must be a path such as /admin/jobs (letters, digits, - _ . ~ and /), got {raw:?}"
                ),
            });
        }
        // The prefix is taken off every request that starts with it, so it must not be the
        // start of a route as well: `/jobs` would turn `GET /jobs/ID` into `GET /ID`.
        let first = path[1..].split('/').next().unwrap_or_default();
        if ROUTE_ROOTS.contains(&first) {
            return Err(Error::Config {
                variable: name,
                message: format!(
                    "must not start with /{first}, which is a route of the API; use another prefix, e.g. /jobs-admin"
                ),
            });
        }
        Ok(path.to_string())
    }

    fn log_format(&self, name: &'static str) -> Result<LogFormat> {
        let raw = self.raw(name);
        match raw.trim().to_ascii_lowercase().as_str() {
            "text" | "" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(Error::Config {
                variable: name,
                message: format!("must be text or json, got {raw:?}"),
            }),
        }
    }

    fn durability(&self, name: &'static str) -> Result<Durability> {
        let raw = self.raw(name);
        match raw.trim().to_ascii_lowercase().as_str() {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            _ => Err(Error::Config {
                variable: name,
                message: format!("must be full or normal, got {raw:?}"),
            }),
        }
    }

    fn address(&self, name: &'static str) -> Result<SocketAddr> {
        let raw = self.raw(name);
        let resolved = raw
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next());
        resolved.ok_or_else(|| Error::Config {
            variable: name,
            message: format!("must be HOST:PORT such as 127.0.0.1:3000, got {raw:?}"),
        })
    }

    fn database(&self, name: &'static str) -> Result<Location> {
        let raw = self.raw(name);
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(Location::Postgres(raw));
        }
        let path = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
            .unwrap_or(&raw);
        if path.is_empty() || path.contains('?') || path == ":memory:" {
            return Err(Error::Config {
                variable: name,
                message: format!(
                    "must name a database file, e.g. sqlite://mini_lambda.db, got {raw:?}"
                ),
            });
        }
        Ok(Location::Sqlite(PathBuf::from(path)))
    }

    /// Visible ASCII without spaces, at most 64 characters: it appears in logs and rows.
    fn node_id(&self, name: &'static str) -> Result<Option<String>> {
        let raw = self.raw(name);
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.len() > 64 || !raw.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(Error::Config {
                variable: name,
                message: format!(
                    "must be 1 to 64 visible ASCII characters without spaces, got {raw:?}"
                ),
            });
        }
        Ok(Some(raw))
    }
}

/// `HOSTNAME-xxxxxxxx`: where it runs, and unique to this start.
fn fresh_node_id<F: Fn(&str) -> Option<String>>(reader: &Reader<F>) -> String {
    let host = (reader.lookup)("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|host| {
            host.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                .take(40)
                .collect::<String>()
        })
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "node".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(pairs: &[(&str, &str)]) -> Result<Config> {
        Config::from_lookup(|name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        })
    }

    fn failing_variable(pairs: &[(&str, &str)]) -> &'static str {
        match config_with(pairs) {
            Err(Error::Config { variable, .. }) => variable,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_documentation() {
        let config = config_with(&[]).unwrap();
        assert_eq!(config.server_addr.to_string(), "127.0.0.1:3000");
        assert_eq!(
            config.database,
            Location::Sqlite(PathBuf::from("mini_lambda.db"))
        );
        assert_eq!(config.worker_count, 4);
        assert_eq!(config.default_timeout_seconds, 30);
        assert_eq!(config.default_max_retries, 3);
        assert_eq!(config.retry_backoff, Duration::from_millis(200));
        assert_eq!(config.retry_backoff_max, Duration::from_millis(60_000));
        assert_eq!(config.max_body_bytes, 1 << 20);
        assert_eq!(config.shutdown_grace, Duration::from_secs(30));
        assert_eq!(config.durability, Durability::Full);
        assert_eq!(config.http_idle_timeout, Duration::from_secs(30));
        assert_eq!(config.max_connections, 1024);
        assert_eq!(config.api_token, None);
        assert_eq!(config.idempotency_ttl, Duration::from_secs(86_400));
        assert_eq!(config.job_retention, Some(Duration::from_secs(604_800)));
        assert_eq!(config.submit_rate_limit, None);
        assert_eq!(config.api_read_token, None);
        assert!(!config.metrics_public);
        assert_eq!(config.base_path, "");
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn a_read_token_needs_the_full_token_and_base_paths_are_normalised() {
        assert_eq!(
            failing_variable(&[("API_READ_TOKEN", "r")]),
            "API_READ_TOKEN"
        );
        assert_eq!(
            failing_variable(&[("API_TOKEN", "same"), ("API_READ_TOKEN", "same")]),
            "API_READ_TOKEN"
        );
        let config = config_with(&[("API_TOKEN", "w"), ("API_READ_TOKEN", "r")]).unwrap();
        assert_eq!(config.api_read_token.as_deref(), Some("r"));
        let base = |text: &str| config_with(&[("DASHBOARD_BASE_PATH", text)]).map(|c| c.base_path);
        assert_eq!(base("/admin/jobs/").unwrap(), "/admin/jobs");
        assert_eq!(base("/").unwrap(), "");
        assert_eq!(base("/jobs-admin").unwrap(), "/jobs-admin");
        for bad in [
            "admin",
            "/a b",
            "/a//b",
            "/a?b",
            "/<script>",
            "/jobs",
            "/health/x",
        ] {
            assert!(base(bad).is_err(), "{bad}");
        }
        let format = |text: &str| config_with(&[("LOG_FORMAT", text)]).map(|c| c.log_format);
        assert_eq!(format("JSON").unwrap(), LogFormat::Json);
        assert_eq!(failing_variable(&[("LOG_FORMAT", "xml")]), "LOG_FORMAT");
        assert_eq!(
            failing_variable(&[("METRICS_PUBLIC", "maybe")]),
            "METRICS_PUBLIC"
        );
    }

    #[test]
    fn retention_zero_keeps_everything_and_rates_name_their_unit() {
        let config = config_with(&[("JOB_RETENTION_SECONDS", "0")]).unwrap();
        assert_eq!(config.job_retention, None);
        let rate =
            |text: &str| config_with(&[("SUBMIT_RATE_LIMIT", text)]).map(|c| c.submit_rate_limit);
        let per = |requests, seconds| {
            Some(SubmitRate {
                requests,
                per: Duration::from_secs(seconds),
            })
        };
        assert_eq!(rate("200/s").unwrap(), per(200, 1));
        assert_eq!(rate(" 3000/m ").unwrap(), per(3000, 60));
        assert_eq!(rate("10/h").unwrap(), per(10, 3600));
        assert_eq!(rate("").unwrap(), None);
        for bad in ["200", "0/s", "1.5/s", "200/d", "-1/s", "/s", "2000000/s"] {
            assert_eq!(
                failing_variable(&[("SUBMIT_RATE_LIMIT", bad)]),
                "SUBMIT_RATE_LIMIT",
                "{bad}"
            );
        }
        assert_eq!(
            failing_variable(&[("IDEMPOTENCY_TTL_SECONDS", "0")]),
            "IDEMPOTENCY_TTL_SECONDS"
        );
    }

    #[test]
    fn invalid_values_name_their_variable() {
        assert_eq!(failing_variable(&[("WORKER_COUNT", "abc")]), "WORKER_COUNT");
        assert_eq!(failing_variable(&[("WORKER_COUNT", "0")]), "WORKER_COUNT");
        assert_eq!(
            failing_variable(&[("SERVER_ADDR", "nowhere")]),
            "SERVER_ADDR"
        );
        assert_eq!(
            failing_variable(&[("DATABASE_URL", "sqlite://")]),
            "DATABASE_URL"
        );
        assert_eq!(
            failing_variable(&[("MAX_BODY_BYTES", "-1")]),
            "MAX_BODY_BYTES"
        );
        assert_eq!(
            failing_variable(&[("RETRY_BACKOFF_MS", "500"), ("RETRY_BACKOFF_MAX_MS", "100")]),
            "RETRY_BACKOFF_MAX_MS"
        );
    }

    #[test]
    fn database_url_accepts_scheme_or_plain_path() {
        let config = config_with(&[("DATABASE_URL", "sqlite:///tmp/x/jobs.db")]).unwrap();
        assert_eq!(
            config.database,
            Location::Sqlite(PathBuf::from("/tmp/x/jobs.db"))
        );
        let config = config_with(&[("DATABASE_URL", "data/jobs.db")]).unwrap();
        assert_eq!(
            config.database,
            Location::Sqlite(PathBuf::from("data/jobs.db"))
        );
        let config = config_with(&[("DATABASE_URL", "postgres://app@db/jobs")]).unwrap();
        assert_eq!(
            config.database,
            Location::Postgres("postgres://app@db/jobs".into())
        );
    }

    #[test]
    fn a_non_loopback_address_needs_a_token_or_an_explicit_opt_out() {
        assert_eq!(
            failing_variable(&[("SERVER_ADDR", "0.0.0.0:3000")]),
            "SERVER_ADDR"
        );
        assert!(config_with(&[("SERVER_ADDR", "0.0.0.0:3000"), ("API_TOKEN", "s3cret")]).is_ok());
        assert!(config_with(&[
            ("SERVER_ADDR", "0.0.0.0:3000"),
            ("ALLOW_UNAUTHENTICATED", "true")
        ])
        .is_ok());
        assert!(config_with(&[("SERVER_ADDR", "[::1]:3000")]).is_ok());
    }

    #[test]
    fn the_token_comes_from_the_variable_or_the_first_line_of_its_file() {
        let dir = std::env::temp_dir().join(format!("mlr-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\nignored\n").unwrap();
        let path = file.to_string_lossy().into_owned();
        let config = config_with(&[("API_TOKEN_FILE", &path)]).unwrap();
        assert_eq!(config.api_token.as_deref(), Some("from-file"));
        let config = config_with(&[("API_TOKEN", "inline")]).unwrap();
        assert_eq!(config.api_token.as_deref(), Some("inline"));
        assert_eq!(
            failing_variable(&[("API_TOKEN", "a"), ("API_TOKEN_FILE", &path)]),
            "API_TOKEN_FILE"
        );
        assert_eq!(failing_variable(&[("API_TOKEN", "has space")]), "API_TOKEN");
        assert_eq!(
            failing_variable(&[("API_TOKEN_FILE", "/nonexistent/token")]),
            "API_TOKEN_FILE"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn help_lists_every_variable_with_its_default() {
        let help = help_text();
        for variable in &VARIABLES {
            assert!(help.contains(variable.name) && help.contains(variable.default));
        }
    }
}
