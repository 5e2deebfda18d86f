//! Server processes: starting one (the real binary or the bare ceiling), learning its port from
//! its `listening on http://ADDR` line, reading its memory from /proc, and stopping it with
//! SIGTERM. A `Server` that is dropped without `stop` (an error, an interrupt) is terminated
//! and reaped in `Drop`, so no run leaves a server behind.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use crate::interrupt;

/// A server prints its line within milliseconds; the margin is for a cold page cache.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// After SIGTERM the real server drains due jobs (none in these runs) and exits; after this it
/// is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The variables the real server reads (its own table), and its log filter. Removed from the
/// inherited environment so a setting in the shell that runs `make bench` cannot change what
/// is measured.
fn server_variables() -> impl Iterator<Item = &'static str> {
    mini_lambda_rust::config::VARIABLES
        .iter()
        .map(|variable| variable.name)
        .chain(["RUST_LOG"])
}

/// How to start a server process.
pub struct Spec<'a> {
    /// For messages: "bare tiny_http", "server (submit, FULL)".
    pub name: String,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Its stderr goes here; the tail is quoted when it fails to start.
    pub log: PathBuf,
}

pub struct Server {
    name: String,
    child: Child,
    log: PathBuf,
    pub addr: SocketAddr,
    /// From spawn to the `listening on` line.
    pub ready_after: Duration,
    pub spawned_at: Instant,
    stopped: bool,
}

/// How long a server must stay quiet to count as settled, and what quiet allows: one clock tick
/// (10 ms at the usual 100 Hz) over the span, for timers and heartbeats that cost almost nothing.
const QUIET_SPAN: Duration = Duration::from_millis(300);
const QUIET_TICKS: u64 = 1;
const QUIET_POLL: Duration = Duration::from_millis(25);

/// How a wait for a quiet server went (`Server::settle`).
#[derive(Clone, Copy, Default)]
pub struct Settled {
    /// From the start of the wait until the quiet span had passed (or the deadline came).
    pub waited: Duration,
    /// CPU the server used meanwhile, in ms: what it was still doing after the load ended.
    pub busy_ms: f64,
    /// False if the deadline came first: the window that follows was not clean.
    pub quiet: bool,
}

/// Resident memory from /proc/PID/status.
#[derive(Clone, Copy)]
pub struct Memory {
    /// VmHWM: the most the process has ever had resident, so a short spike counts too.
    pub peak_kib: u64,
}

impl Server {
    pub fn start(spec: Spec<'_>) -> Result<Server> {
        interrupt::check()?;
        let log = File::create(&spec.log)
            .context(format!("cannot create the log file {}", spec.log.display()))?;
        let mut command = Command::new(spec.program);
        command
            .args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group: a Ctrl-C in the terminal reaches only the loadgen, which
            // then stops the server itself (a SIGINT would start the server's drain mid-run).
            .process_group(0);
        for variable in server_variables() {
            command.env_remove(variable);
        }
        command.envs(spec.env.iter().map(|(key, value)| (key, value)));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent; this is
        // the documented way to make the kernel kill the child if the loadgen itself dies
        // (killed with -9, a panic that skips destructors), which Drop cannot cover.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned_at = Instant::now();
        let mut child = command.spawn().context(format!(
            "cannot start {} ({})",
            spec.name,
            spec.program.display()
        ))?;
        let stdout = child.stdout.take();
        let mut server = Server {
            name: spec.name,
            child,
            log: spec.log,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ready_after: Duration::ZERO,
            spawned_at,
            stopped: false,
        };
        let stdout = stdout.ok_or_else(|| Error::new("the child has no stdout pipe"))?;
        server.addr = server.wait_ready(stdout)?;
        server.ready_after = spawned_at.elapsed();
        Ok(server)
    }

    /// Waits for the `listening on` line. A thread reads stdout so the wait can have a
    /// deadline; it keeps draining until the server exits.
    fn wait_ready(&mut self, stdout: std::process::ChildStdout) -> Result<SocketAddr> {
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                    let _ = sender.send(addr.to_string());
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            interrupt::check()?;
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => {
                    return addr.parse().context(format!(
                        "{} printed an address that does not parse: {addr:?}",
                        self.name
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(self.failure(format!(
                        "did not print its address within {READY_TIMEOUT:?}"
                    )))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Stdout closed without the line: it exited. Reap it for the status.
                    let status = self.wait_exit(Duration::from_secs(5));
                    let how = status
                        .map(|status| status.to_string())
                        .unwrap_or_else(|| "closed stdout".into());
                    return Err(self.failure(format!("exited before it was ready ({how})")));
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).context(format!("cannot read {path}"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .ok_or_else(|| Error::new(format!("{path} has no {name} line")))
        };
        Ok(Memory {
            peak_kib: field("VmHWM:")?,
        })
    }

    /// User plus system CPU time of the whole process, in clock ticks (/proc/PID/stat fields
    /// 14 and 15, which count every thread).
    pub fn cpu_ticks(&self) -> Result<u64> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).context(format!("cannot read {path}"))?;
        // The command name (field 2) may hold spaces and parentheses; fields after the last
        // `)` are plain numbers, starting with field 3.
        let after_name = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| Error::new(format!("{path} has no command name")))?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field = |number: usize| -> Result<u64> {
            fields
                .get(number - 3)
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| Error::new(format!("{path} has no field {number}")))
        };
        Ok(field(14)? + field(15)?)
    }

    /// Waits until the server's CPU time has stopped advancing for `QUIET_SPAN` (checkpoints
    /// written, connection threads gone, workers idle), or until `deadline`. A window measured
    /// on the ceiling while this server still works shares the cores with that work.
    pub fn settle(&self, deadline: Duration) -> Result<Settled> {
        let started = Instant::now();
        let first = self.cpu_ticks()?;
        let mut quiet_since = (started, first);
        loop {
            interrupt::check()?;
            thread::sleep(QUIET_POLL);
            let now = Instant::now();
            let ticks = self.cpu_ticks()?;
            if ticks > quiet_since.1 + QUIET_TICKS {
                quiet_since = (now, ticks);
            }
            let quiet = now - quiet_since.0 >= QUIET_SPAN;
            if quiet || now - started >= deadline {
                return Ok(Settled {
                    waited: now - started,
                    busy_ms: (ticks - first) as f64 * 1e3 / clock_ticks_per_second(),
                    quiet,
                });
            }
        }
    }

    /// How many of its threads have a name starting with `prefix` (from /proc/PID/task).
    pub fn threads_named(&self, prefix: &str) -> Result<usize> {
        let dir = format!("/proc/{}/task", self.pid());
        let tasks = std::fs::read_dir(&dir).context(format!("cannot list {dir}"))?;
        let mut count = 0;
        for task in tasks {
            let comm = task
                .context(format!("cannot list {dir}"))?
                .path()
                .join("comm");
            // A thread that ended meanwhile has no comm any more; it is not counted.
            if std::fs::read_to_string(comm).is_ok_and(|name| name.starts_with(prefix)) {
                count += 1;
            }
        }
        Ok(count)
    }

    /// SIGTERM, then waits for the exit. Errors if it does not exit in time or exits badly.
    pub fn stop(mut self) -> Result<()> {
        self.stopped = true;
        self.signal(libc::SIGTERM);
        match self.wait_exit(STOP_TIMEOUT) {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(self.failure(format!("exited with {status} after SIGTERM"))),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(self.failure(format!(
                    "did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed"
                )))
            }
        }
    }

    fn signal(&self, signal: i32) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) with the pid of our own child, which we have not reaped yet, so
        // the pid cannot have been reused by another process.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// An error naming the server, with the end of its log: the server's own words are
    /// usually the explanation.
    fn failure(&self, what: String) -> Error {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n    ");
        if tail.is_empty() {
            Error::new(format!("{} {what}; its log is empty", self.name))
        } else {
            Error::new(format!("{} {what}; end of its log:\n    {tail}", self.name))
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Dropped without `stop` means something failed; a server that died on its own is
        // the likely why, and its log says more than the client's "connection refused".
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!(
                "  {}",
                self.failure(format!("had exited by itself ({status})"))
            );
            return;
        }
        self.signal(libc::SIGTERM);
        if self.wait_exit(Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
