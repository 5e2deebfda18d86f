//! Shared helpers for the black-box integration tests: a process wrapper that
//! starts the real server binary on `127.0.0.1:0` with a private database, a
//! tiny HTTP/1.1 client over `TcpStream`, polling helpers and timestamp
//! parsing. Each test binary uses a subset of this module.
//!
//! The database is SQLite, or a fresh PostgreSQL schema per server when
//! `TEST_POSTGRES_URL` is set and the build has `--features postgres` (`database`).
#![allow(dead_code)]

mod database;

#[allow(unused_imports)]
pub use database::{postgres_url, Database, Schema, NEEDS_POSTGRES};

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mini-lambda-rust");

/// How long one HTTP exchange may take before the test fails instead of hanging.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the server may take to print its `listening on` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Every configuration variable the server reads (its own table, so none is missed). Removed
/// from the inherited environment before each spawn so the host environment cannot leak in.
pub fn config_vars() -> impl Iterator<Item = &'static str> {
    mini_lambda_rust::config::VARIABLES
        .iter()
        .map(|variable| variable.name)
}

/// The fields of a job as every endpoint returns it.
pub const JOB_FIELDS: [&str; 16] = [
    "id",
    "payload",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "retry_count",
    "max_retries",
    "timeout_seconds",
    "result",
    "error_message",
    "priority",
    "run_at",
    "function",
    "queue",
    "traceparent",
];

pub const STATUSES: [&str; 6] = [
    "pending",
    "running",
    "success",
    "failed",
    "timeout",
    "cancelled",
];

/// The queue `name` as `GET /queues` lists it, if it does; the request carries `headers`
/// (a token, say) and must be answered 200.
pub fn listed_queue(server: &TestServer, name: &str, headers: &[(&str, &str)]) -> Option<Value> {
    let response = server.request("GET", "/queues", headers, None);
    assert_eq!(response.status, 200, "{}", response.text());
    response
        .json()
        .as_array()
        .expect("GET /queues answers an array")
        .iter()
        .find(|queue| queue["name"] == name)
        .cloned()
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Polls `f` every ~20 ms until it returns `Some`, or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Like [`wait_until`] but panics with `what` when the deadline passes.
pub fn eventually<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    match wait_until(timeout, f) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for: {what}"),
    }
}

/// Checks `f` every ~20 ms for `duration`; panics as soon as it reports an error.
pub fn assert_stays(duration: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + duration;
    loop {
        if let Err(e) = f() {
            panic!("condition stopped holding: {e}");
        }
        if Instant::now() >= deadline {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header with this name (case-insensitive), in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the raw body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The set of methods in the `Allow` header, upper-cased.
    pub fn allow(&self) -> BTreeSet<String> {
        let allow = self
            .header("allow")
            .unwrap_or_else(|| panic!("no Allow header; headers: {:?}", self.headers));
        allow
            .split(',')
            .map(|m| m.trim().to_ascii_uppercase())
            .filter(|m| !m.is_empty())
            .collect()
    }
}

fn find_subslice(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked body. `Ok(None)` means more bytes are needed.
fn decode_chunked(data: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(line_end) = find_subslice(&data[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&data[pos..pos + line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size {line:?}"),
            )
        })?;
        pos += line_end + 2;
        if size == 0 {
            // Skip trailers up to the blank line.
            loop {
                let Some(end) = find_subslice(&data[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += end + 2;
                if end == 0 {
                    return Ok(Some(out));
                }
            }
        }
        if data.len() < pos + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[pos..pos + size]);
        pos += size + 2;
    }
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Reads one HTTP response: headers, then a body framed by Content-Length,
/// chunked encoding, or the end of the connection.
pub fn read_response(stream: &mut TcpStream) -> io::Result<Response> {
    let mut buf = Vec::new();
    let header_end = loop {
        if let Some(pos) = find_subslice(&buf, b"\r\n\r\n") {
            break pos;
        }
        if read_more(stream, &mut buf)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before the response headers ended; got {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut rest = buf[header_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad status line {status_line:?}"),
        ));
    }
    let status: u16 = parts.next().unwrap_or_default().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad status line {status_line:?}"),
        )
    })?;
    let reason = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(':') {
            Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
            None => (l.trim().to_string(), String::new()),
        })
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };

    let chunked = header("transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false);
    let body = if chunked {
        loop {
            if let Some(body) = decode_chunked(&rest)? {
                break body;
            }
            if read_more(stream, &mut rest)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a chunked body",
                ));
            }
        }
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad Content-Length {len:?}"),
            )
        })?;
        while rest.len() < len {
            if read_more(stream, &mut rest)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {} of {len} body bytes", rest.len()),
                ));
            }
        }
        rest.truncate(len);
        rest
    } else {
        // No framing: the body runs to the end of the connection.
        while read_more(stream, &mut rest)? > 0 {}
        rest
    };
    Ok(Response {
        status,
        reason,
        headers,
        body,
    })
}

/// Sends one request with `Connection: close` and reads the response.
/// `Content-Length` is added whenever a body is given (and as 0 for POST,
/// PUT and PATCH without one).
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match body {
        Some(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        None if matches!(method, "POST" | "PUT" | "PATCH") => {
            head.push_str("Content-Length: 0\r\n")
        }
        None => {}
    }
    head.push_str("\r\n");
    let mut data = head.into_bytes();
    if let Some(b) = body {
        data.extend_from_slice(b);
    }
    // The server may answer (e.g. 413) and close before reading the whole
    // body; a failed write is then not the interesting part: read anyway.
    let written = stream.write_all(&data).and_then(|_| stream.flush());
    match read_response(&mut stream) {
        Ok(resp) => Ok(resp),
        Err(read_err) => match written {
            Err(write_err) => Err(write_err),
            Ok(()) => Err(read_err),
        },
    }
}

/// [`try_request`] that panics on a transport error.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} failed at the transport level: {e}"))
}

/// Writes raw bytes, half-closes the connection and collects whatever the
/// server sends back within `read_timeout`. Transport errors are not errors
/// here: the point is only that the server survives.
pub fn send_raw(addr: SocketAddr, bytes: &[u8], read_timeout: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return out;
    };
    let _ = stream.set_read_timeout(Some(read_timeout));
    let _ = stream.set_write_timeout(Some(read_timeout));
    let _ = stream.write_all(bytes);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + read_timeout;
    while Instant::now() < deadline {
        match read_more(&mut stream, &mut out) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    out
}

/// Asserts an error response: exact status, JSON content type, and a body of
/// exactly `{"error":{"code":CODE,"message":"<non-empty>"}}`. Returns the message.
pub fn assert_error(resp: &Response, status: u16, code: &str) -> String {
    assert_eq!(
        resp.status,
        status,
        "expected {status} {code}, got {} with body {:?}",
        resp.status,
        resp.text()
    );
    assert_json_content_type(resp);
    let body = resp.json();
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {body}"));
    assert_eq!(
        obj.keys().collect::<Vec<_>>(),
        vec!["error"],
        "error body must have exactly the key \"error\": {body}"
    );
    let err = obj["error"]
        .as_object()
        .unwrap_or_else(|| panic!("\"error\" is not an object: {body}"));
    let mut keys: Vec<_> = err.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec!["code", "message"],
        "error object must have exactly code and message: {body}"
    );
    assert_eq!(err["code"], code, "wrong error code in {body}");
    let message = err["message"]
        .as_str()
        .unwrap_or_else(|| panic!("message is not a string: {body}"));
    assert!(!message.trim().is_empty(), "empty error message: {body}");
    message.to_string()
}

pub fn assert_json_content_type(resp: &Response) {
    let ct = resp.header("content-type").unwrap_or_else(|| {
        panic!(
            "no Content-Type on a {} response with body {:?}",
            resp.status,
            resp.text()
        )
    });
    assert!(
        ct.to_ascii_lowercase().starts_with("application/json"),
        "Content-Type is {ct:?}, expected application/json"
    );
}

// ---------------------------------------------------------------------------
// Timestamps: UTC RFC 3339, exactly 6 fractional digits, `Z`
// ---------------------------------------------------------------------------

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses `YYYY-MM-DDTHH:MM:SS.ffffffZ` into microseconds since the Unix epoch;
/// `None` when the text is not exactly in that form.
pub fn try_parse_ts(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 27 {
        return None;
    }
    for (i, &c) in b.iter().enumerate() {
        let ok = match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            26 => c == b'Z',
            _ => c.is_ascii_digit(),
        };
        if !ok {
            return None;
        }
    }
    let num = |a: usize, z: usize| s[a..z].parse::<i64>().ok();
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, se, us) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 26)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) * 1_000_000) + us)
}

/// Parses a timestamp in the contract's format; panics otherwise.
pub fn parse_ts(s: &str) -> i64 {
    try_parse_ts(s).unwrap_or_else(|| {
        panic!("timestamp {s:?} is not UTC RFC 3339 with 6 fractional digits and Z")
    })
}

/// The timestamp in `job[field]`, which must be set.
pub fn ts(job: &Value, field: &str) -> i64 {
    match job[field].as_str() {
        Some(s) => parse_ts(s),
        None => panic!("job.{field} should be a timestamp string: {job}"),
    }
}

/// Formats microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_ts(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let us = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{us:06}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Formats the instant `micros` as local time in a fixed `+HH:MM` offset.
pub fn format_ts_with_offset(micros: i64, offset_minutes: i64) -> String {
    let shifted = format_ts(micros + offset_minutes * 60 * 1_000_000);
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let off = offset_minutes.abs();
    format!("{}{sign}{:02}:{:02}", &shifted[..26], off / 60, off % 60)
}

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

/// Asserts the job has exactly the documented fields, a known status and
/// well-formed timestamps (null where unset).
pub fn assert_job_shape(job: &Value) {
    let obj = job
        .as_object()
        .unwrap_or_else(|| panic!("job is not an object: {job}"));
    let got: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = JOB_FIELDS.into_iter().collect();
    assert_eq!(got, want, "job fields differ from the contract: {job}");
    let status = job["status"].as_str().unwrap_or_default();
    assert!(STATUSES.contains(&status), "unknown status in {job}");
    let id = job["id"].as_str().unwrap_or_default();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "id is not a uuid: {job}");
    ts(job, "created_at");
    for field in ["started_at", "finished_at", "run_at"] {
        if !job[field].is_null() {
            ts(job, field);
        }
    }
    for field in ["retry_count", "max_retries", "timeout_seconds", "priority"] {
        assert!(job[field].is_u64(), "{field} is not an integer: {job}");
    }
    assert!(
        job["error_message"].is_null() || job["error_message"].is_string(),
        "error_message must be a string or null: {job}"
    );
    assert!(
        job["function"].is_null() || job["function"].is_string(),
        "function must be a string or null: {job}"
    );
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

pub fn unique_temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mini-lambda-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Output of a run of the binary that is expected to exit on its own.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args` and `env` (config variables from the host are
/// removed; SERVER_ADDR and DATABASE_URL point at a private temp dir unless
/// given), in a private working directory. Kills it and panics if it has not
/// exited within `timeout`.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Finished {
    let dir = unique_temp_dir();
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(&dir);
    for var in config_vars() {
        cmd.env_remove(var);
    }
    cmd.env_remove("RUST_LOG");
    cmd.env("SERVER_ADDR", "127.0.0.1:0");
    cmd.env(
        "DATABASE_URL",
        format!("sqlite://{}/jobs.db", dir.display()),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the server binary");
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            panic!(
                "{BIN} {args:?} with {env:?} did not exit within {timeout:?}; stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&stdout.lock().unwrap()),
                String::from_utf8_lossy(&stderr.lock().unwrap())
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    // The pipes close at exit; give the drain threads a moment to finish.
    let _ = wait_until(Duration::from_secs(2), || {
        (Arc::strong_count(&stdout) == 1 && Arc::strong_count(&stderr) == 1).then_some(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    let out = String::from_utf8_lossy(&stdout.lock().unwrap()).into_owned();
    let err = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
    Finished {
        status,
        stdout: out,
        stderr: err,
    }
}

/// Copies everything from `r` into a shared buffer on a background thread.
fn drain(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    buf
}

/// Builder for [`TestServer`]: extra environment variables, and the database.
#[derive(Default)]
pub struct ServerBuilder {
    env: Vec<(String, String)>,
    open_files: Option<u64>,
    /// `None`: whatever the environment selects ([`Database::from_env`]).
    database: Option<Database>,
}

impl ServerBuilder {
    /// Runs on SQLite whatever the environment selects: for tests about the database file
    /// itself (its path, its disk, its contents).
    pub fn sqlite(mut self) -> Self {
        self.database = Some(Database::Sqlite);
        self
    }

    /// Runs on this database: several servers given the same PostgreSQL schema are nodes of
    /// one cluster.
    pub fn database(mut self, database: &Database) -> Self {
        self.database = Some(database.clone());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the server with this limit on open files (soft and hard), through `sh -c
    /// 'ulimit -n N; exec …'`, so the process under test is still the server itself.
    pub fn open_files_limit(mut self, limit: u64) -> Self {
        self.open_files = Some(limit);
        self
    }

    pub fn start(self) -> TestServer {
        let dir = unique_temp_dir();
        // A test that names its own DATABASE_URL gets exactly that, and no schema.
        let explicit_url = self.env.iter().any(|(key, _)| key == "DATABASE_URL");
        let database = match self.database {
            Some(database) => database,
            None if explicit_url => Database::Sqlite,
            None => Database::from_env(),
        };
        let mut server = TestServer {
            addr: "127.0.0.1:1".parse().unwrap(),
            dir,
            database,
            node_id: format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            env: self.env,
            open_files: self.open_files,
            child: None,
            exit_status: None,
            stdout: Arc::new(Mutex::new(Vec::new())),
            stderr: Arc::new(Mutex::new(Vec::new())),
        };
        server.spawn();
        server
    }
}

/// One server process on `127.0.0.1:0` with its own database (a file in its temp dir, or
/// a PostgreSQL schema) and its own temp dir as working directory. Dropping it kills the
/// process, removes the directory, and drops the schema unless another server still uses it.
pub struct TestServer {
    pub addr: SocketAddr,
    dir: PathBuf,
    /// Dropped after the process is killed (`Drop` runs before the fields go).
    database: Database,
    /// The `NODE_ID` given on PostgreSQL unless the test sets one; unique per server.
    node_id: String,
    env: Vec<(String, String)>,
    open_files: Option<u64>,
    child: Option<Child>,
    exit_status: Option<ExitStatus>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl TestServer {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// A server with the default configuration.
    pub fn start() -> TestServer {
        ServerBuilder::default().start()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The SQLite file; panics on PostgreSQL (build such tests with `.sqlite()`).
    pub fn db_path(&self) -> PathBuf {
        assert!(
            !self.database.is_postgres(),
            "db_path() of a server on {}: a test about the file needs TestServer::builder().sqlite()",
            self.database.describe()
        );
        self.dir.join("jobs.db")
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The `DATABASE_URL` this server is started with, unless the test gave its own.
    fn database_url(&self) -> String {
        match &self.database {
            Database::Sqlite => format!("sqlite://{}", self.dir.join("jobs.db").display()),
            Database::Postgres(schema) => schema.database_url(),
        }
    }

    /// Changes (or adds) an environment variable for the next [`restart`](Self::restart).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    fn spawn(&mut self) {
        let mut cmd = match self.open_files {
            None => Command::new(BIN),
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\""))
                    .arg(BIN);
                sh
            }
        };
        cmd.current_dir(&self.dir);
        for var in config_vars() {
            cmd.env_remove(var);
        }
        cmd.env("SERVER_ADDR", "127.0.0.1:0")
            .env("DATABASE_URL", self.database_url())
            .env("RUST_LOG", "mini_lambda_rust=debug");
        if self.database.is_postgres() {
            // A fixed node id, kept across restarts: a restarted server recovers what its
            // killed predecessor left running at once, as on SQLite, instead of after the
            // lease. Multi-node tests name their nodes themselves (below, the test's env wins).
            cmd.env("NODE_ID", &self.node_id);
            // Few connections each: the PostgreSQL server's `max_connections` (100 by default)
            // is shared by every server of the tests running at once, three per multi-node test.
            cmd.env("DATABASE_POOL_SIZE", "4");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the server binary");

        // stderr: drained into the shared buffer (kept across restarts).
        let mut err = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&self.stderr);
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match err.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
        });

        // stdout: lines go to the buffer (this process's output only) and to
        // a channel until the `listening on` line has been seen.
        let out = child.stdout.take().expect("stdout");
        self.stdout = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&self.stdout);
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        sink.lock().unwrap().extend_from_slice(line.as_bytes());
                        let _ = tx.send(line.clone());
                    }
                }
            }
        });

        self.child = Some(child);
        self.exit_status = None;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let line = line.trim_end_matches(['\r', '\n']);
                    if let Some(rest) = line.strip_prefix("listening on http://") {
                        let addr: SocketAddr = rest.parse().unwrap_or_else(|e| {
                            panic!("cannot parse the address in {line:?}: {e}")
                        });
                        assert_eq!(
                            addr.ip().to_string(),
                            "127.0.0.1",
                            "listening line {line:?}"
                        );
                        assert_ne!(addr.port(), 0, "listening line {line:?}");
                        self.addr = addr;
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "server did not print `listening on http://...` within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                        self.stderr_text()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    panic!(
                        "server closed stdout before printing `listening on` (exit {status:?}); stdout {:?}; stderr:\n{}",
                        self.stdout_text(),
                        self.stderr_text()
                    );
                }
            }
        }
    }

    /// Everything the server processes wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// What the current process wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("server process").id() as i32
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub fn sigint(&self) {
        self.signal(libc::SIGINT);
    }

    /// SIGKILL, then reap.
    pub fn kill_9(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.exit_status.is_none() {
                let _ = child.kill();
                self.exit_status = child.wait().ok();
            }
        }
    }

    /// The exit status if the process has exited within `timeout`.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exit_status {
            return Some(status);
        }
        let child = self.child.as_mut().expect("server process");
        let status = wait_until(timeout, || child.try_wait().expect("try_wait"));
        self.exit_status = status;
        status
    }

    /// The exit status; panics if the process is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.try_wait_exit(timeout) {
            Some(status) => status,
            None => panic!(
                "server did not exit within {timeout:?}; stderr:\n{}",
                self.stderr_text()
            ),
        }
    }

    /// Starts a new process on the same database (SIGKILLing the old one if it
    /// is still running). The new process listens on a new port.
    pub fn restart(&mut self) {
        self.kill_9();
        self.spawn();
    }

    /// [`restart`](Self::restart) without the open-files limit it was started with.
    pub fn restart_without_limit(&mut self) {
        self.open_files = None;
        self.restart();
    }

    // -- HTTP -------------------------------------------------------------

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        try_request(self.addr, method, path, headers, body)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        request(self.addr, method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], None)
    }

    pub fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, &[], None)
    }

    /// POST with an empty body.
    pub fn post_empty(&self, path: &str) -> Response {
        self.request("POST", path, &[], None)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Response {
        let bytes = serde_json::to_vec(body).unwrap();
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(&bytes),
        )
    }

    /// POST /jobs with raw bytes as `application/json`.
    pub fn post_jobs_raw(&self, bytes: &[u8]) -> Response {
        self.request(
            "POST",
            "/jobs",
            &[("Content-Type", "application/json")],
            Some(bytes),
        )
    }

    /// Submits a job; asserts 201 and returns its id.
    pub fn submit(&self, body: Value) -> String {
        let resp = self.post_json("/jobs", &body);
        assert_eq!(
            resp.status,
            201,
            "submitting {body} answered {} {:?}",
            resp.status,
            resp.text()
        );
        resp.json()["job_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no job_id in {:?}", resp.text()))
            .to_string()
    }

    /// GET /jobs/:id; asserts 200 and the job's shape.
    pub fn job(&self, id: &str) -> Value {
        let resp = self.get(&format!("/jobs/{id}"));
        assert_eq!(
            resp.status,
            200,
            "GET /jobs/{id} answered {} {:?}",
            resp.status,
            resp.text()
        );
        let job = resp.json();
        assert_job_shape(&job);
        assert_eq!(job["id"], id);
        job
    }

    /// GET `path` (a /jobs listing); asserts 200 and returns the array.
    /// `GET /jobs/:id/attempts`: asserts 200 and an array, and returns it.
    pub fn attempts(&self, id: &str) -> Vec<Value> {
        let response = self.get(&format!("/jobs/{id}/attempts"));
        assert_eq!(response.status, 200, "{}", response.text());
        response
            .json()
            .as_array()
            .unwrap_or_else(|| panic!("attempts of {id} are not an array: {}", response.text()))
            .clone()
    }

    pub fn list(&self, path: &str) -> (Vec<Value>, Response) {
        let resp = self.get(path);
        assert_eq!(
            resp.status,
            200,
            "GET {path} answered {} {:?}",
            resp.status,
            resp.text()
        );
        let jobs = resp
            .json()
            .as_array()
            .unwrap_or_else(|| panic!("GET {path} is not an array: {:?}", resp.text()))
            .clone();
        for job in &jobs {
            assert_job_shape(job);
        }
        (jobs, resp)
    }

    /// Polls the job until `pred` holds.
    pub fn wait_for_job(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        match wait_until(timeout, || {
            let job = self.job(id);
            let done = pred(&job);
            last = job.clone();
            done.then_some(job)
        }) {
            Some(job) => job,
            None => {
                panic!("job {id}: timed out after {timeout:?} waiting for {what}; last seen {last}")
            }
        }
    }

    /// Polls the job until its status is `status`. Fails at once if it reaches
    /// a different final status (success, failed, timeout).
    pub fn wait_for_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        self.wait_for_job(id, timeout, &format!("status {status}"), |job| {
            let now = job["status"].as_str().unwrap_or_default();
            if now != status && ["success", "failed", "timeout", "cancelled"].contains(&now) {
                panic!("job {id} reached {now} while waiting for {status}: {job}");
            }
            now == status
        })
    }

    /// Waits until GET /health answers 200.
    pub fn wait_healthy(&self) {
        eventually(Duration::from_secs(10), "GET /health answers 200", || {
            (self.get("/health").status == 200).then_some(())
        });
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.exit_status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if thread::panicking() {
            eprintln!(
                "----- server stderr ({}, {}) -----\n{}\n----- end of server stderr -----",
                self.dir.display(),
                self.database.describe(),
                self.stderr_text()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

/// Threads that submit jobs to one server process as fast as it answers, until told to stop or
/// until the process is gone (a transport error), recording every acknowledged job id. Any
/// answer other than `201` fails the test when the threads are joined.
pub struct Submitters {
    acknowledged: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Submitters {
    /// `count` threads submitting to `addr`; `body(submitter, n)` is a submitter's n-th job.
    pub fn start(addr: SocketAddr, count: usize, body: fn(usize, usize) -> Value) -> Submitters {
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|submitter| {
                let (acknowledged, stop) = (Arc::clone(&acknowledged), Arc::clone(&stop));
                thread::spawn(move || {
                    // Bounded, in case the process never goes away.
                    for n in 0..100_000 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let job = body(submitter, n).to_string();
                        let headers = [("Content-Type", "application/json")];
                        match try_request(addr, "POST", "/jobs", &headers, Some(job.as_bytes())) {
                            Ok(response) if response.status == 201 => {
                                let id = response.json()["job_id"].as_str().map(str::to_string);
                                acknowledged.lock().unwrap().extend(id);
                            }
                            Ok(response) => {
                                panic!("submit answered {}: {}", response.status, response.text())
                            }
                            // The process is gone: everything after a kill fails at transport.
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        Submitters {
            acknowledged,
            stop,
            threads,
        }
    }

    /// How many submits have been acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Stops the threads still submitting, joins them, and returns every acknowledged id.
    pub fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a submitter thread failed");
        }
        let acknowledged = self.acknowledged.lock().unwrap();
        acknowledged.clone()
    }
}

// ---------------------------------------------------------------------------
// Small conveniences
// ---------------------------------------------------------------------------

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The ids of a list of jobs, in order.
pub fn ids(jobs: &[Value]) -> Vec<String> {
    jobs.iter()
        .map(|j| j["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `PUT path` with a JSON body.
#[allow(dead_code)] // Not every test binary uses it.
pub fn put_json(server: &TestServer, path: &str, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("JSON encodes");
    server.request(
        "PUT",
        path,
        &[("Content-Type", "application/json")],
        Some(&bytes),
    )
}

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let s = "2026-11-28T20:53:10.123456Z";
        assert_eq!(format_ts(parse_ts(s)), s);
        assert_eq!(parse_ts("1970-01-01T00:00:01.000002Z"), 1_000_002);
        assert_eq!(
            format_ts_with_offset(parse_ts(s), 60),
            "2026-11-28T21:53:10.123456+01:00"
        );
        assert!(try_parse_ts("2026-11-28T20:53:10.123Z").is_none());
        assert!(try_parse_ts("2026-11-28T20:53:10.123456+00:00").is_none());
    }

    #[test]
    fn chunked_bodies_decode() {
        let data = b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n";
        assert_eq!(decode_chunked(data).unwrap().unwrap(), b"Wikipedia");
        assert!(decode_chunked(b"4\r\nWi").unwrap().is_none());
    }
}
