//! Running a function: one attempt as a child process. The payload goes to its stdin, stdout
//! becomes the result, the tail of stderr is kept. The child runs in a fresh working directory
//! with a cleared environment, in its own process group, so that stopping it (timeout, cancel,
//! shutdown) can signal every process it started: SIGTERM, a grace period, then SIGKILL.
//!
//! An attempt starts four threads, named after its worker (`worker-3-wait`, `-stdin`,
//! `-stdout`, `-stderr`). The three pipe threads wait only in `poll` with a short timeout, so
//! they end within [`TICK`] of the attempt's end even when a process that escaped the group
//! keeps a pipe open, and the attempt joins them. The thread waiting for the child is joined
//! once the child is reaped, which the group's SIGKILL bounds. However an attempt ends (a
//! panic included), its process group is killed and its working directory removed.
//!
//! It owns the child's whole life and [`FunctionRunner`], what running functions needs from
//! the configuration. Which jobs run as functions is `runner`'s choice, which files are
//! functions is `functions`'s, and what the outcome does to the job is the worker's.

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::{Details, Outcome};
use crate::functions::Functions;
use crate::job::Job;
use crate::time::Timestamp;

/// What running functions needs, from the configuration.
pub struct FunctionRunner {
    pub functions: Functions,
    pub max_output: usize,
    pub kill_grace: Duration,
    /// `PATH` and the passed-through variables, as the server had them at start.
    pub env: Vec<(String, String)>,
    /// The groups of the functions running now.
    pub groups: Arc<ProcessGroups>,
}

/// How much of stderr an attempt keeps: the end, where the error usually is.
const STDERR_TAIL_BYTES: usize = 64 * 1024;
/// How long to wait for the output readers once every process of the group is gone.
const READERS_WAIT: Duration = Duration::from_secs(2);
/// How much of a script's first line the kernel reads for its `#!` interpreter (Linux).
const SHEBANG_LIMIT: usize = 256;
/// The longest a pipe thread waits before it looks whether the attempt is over.
const TICK: Duration = Duration::from_millis(100);

/// Runs function `path` for `job`; returns how the attempt ended and what it left behind.
pub fn run(
    runner: &FunctionRunner,
    job: &Job,
    name: &str,
    path: &Path,
    abort: &Receiver<()>,
    cancel: &Receiver<()>,
) -> (Outcome, Details) {
    let workdir =
        WorkDir(std::env::temp_dir().join(format!("mini-lambda-attempt-{}", uuid::Uuid::new_v4())));
    if let Err(err) = fs::create_dir(&workdir.0) {
        let message = format!("could not create a working directory for function {name}: {err}");
        return (Outcome::Failed(message), Details::default());
    }
    run_in(runner, job, name, path, &workdir.0, abort, cancel)
}

/// An attempt's working directory, removed when the attempt ends, however it ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Process groups of the functions running now, so that a forced exit can still kill them.
#[derive(Default)]
pub struct ProcessGroups(Mutex<HashSet<i32>>);

impl ProcessGroups {
    fn add(&self, group: Pid) {
        self.lock().insert(group.as_raw());
    }

    fn remove(&self, group: Pid) {
        self.lock().remove(&group.as_raw());
    }

    /// SIGKILLs every running function's group: the last thing a forced exit does.
    pub fn kill_all(&self) {
        for group in self.lock().drain() {
            signal_group(Pid::from_raw(group), Signal::SIGKILL);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<i32>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running function's process group, registered in `ProcessGroups` for a forced exit.
/// Dropping it SIGKILLs whatever is left in the group and forgets it, so that no way out of an
/// attempt, a panic included, leaves the function running.
struct Group<'a> {
    id: Pid,
    groups: &'a ProcessGroups,
}

impl<'a> Group<'a> {
    fn register(groups: &'a ProcessGroups, child: &Child) -> Group<'a> {
        let id = i32::try_from(child.id())
            .map(Pid::from_raw)
            .unwrap_or(Pid::from_raw(-1));
        groups.add(id);
        Group { id, groups }
    }

    fn signal(&self, signal: Signal) {
        signal_group(self.id, signal);
    }
}

impl Drop for Group<'_> {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        self.groups.remove(self.id);
    }
}

/// The pipe threads of one attempt. Setting `stop` makes each of them end within `TICK`;
/// dropping this sets it and joins them.
struct PipeThreads {
    /// The worker's thread name, which the pipe threads' names start with.
    prefix: String,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl PipeThreads {
    fn new() -> PipeThreads {
        PipeThreads {
            prefix: thread::current().name().unwrap_or("attempt").to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            handles: Vec::new(),
        }
    }

    fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn spawn(
        &mut self,
        role: &str,
        work: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> io::Result<()> {
        let stop = Arc::clone(&self.stop);
        let handle = thread::Builder::new()
            .name(self.name(role))
            .spawn(move || work(&stop))?;
        self.handles.push(handle);
        Ok(())
    }
}

impl Drop for PipeThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.handles.drain(..) {
            if handle.join().is_err() {
                log::error!("a pipe thread of a function panicked");
            }
        }
    }
}

/// The thread that waits for the child to exit, and how it reports.
struct Waiter {
    exited: Receiver<io::Result<ExitStatus>>,
    handle: Option<JoinHandle<()>>,
}

impl Waiter {
    fn start(mut child: Child, name: String) -> io::Result<Waiter> {
        let (exit_sender, exited) = bounded(1);
        // Waiting for the child is blocking, so it has a thread; the watchdog selects on it.
        let handle = thread::Builder::new().name(name).spawn(move || {
            let _ = exit_sender.send(child.wait());
        })?;
        Ok(Waiter {
            exited,
            handle: Some(handle),
        })
    }

    /// Called once the exit status arrived: the thread has nothing left to do.
    fn join(&mut self) {
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                log::error!("the thread waiting for a function panicked");
            }
        }
    }

    /// Waits up to `timeout` for the child to exit; joins the thread if it did.
    fn wait(&mut self, timeout: Duration) -> bool {
        let exited = self.exited.recv_timeout(timeout).is_ok();
        if exited {
            self.join();
        }
        exited
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.handle.is_some() {
            // The group has been SIGKILLed: the thread ends as soon as the kernel reaps it.
            log::warn!("a function's process was not reaped before its attempt ended; its wait thread ends when it is");
        }
    }
}

/// How the watchdog stopped an attempt before the function exited by itself.
enum Stop {
    Outcome(Outcome),
    TooLarge,
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    runner: &FunctionRunner,
    job: &Job,
    name: &str,
    path: &Path,
    workdir: &Path,
    abort: &Receiver<()>,
    cancel: &Receiver<()>,
) -> (Outcome, Details) {
    let deadline = Timestamp::now().plus(job.timeout());
    let attempt = job.attempt_number();
    let mut command = Command::new(path);
    command
        .env_clear()
        .envs(runner.env.iter().map(|(key, value)| (key, value)))
        .env("HOME", workdir)
        .env("LANG", "C.UTF-8")
        .env("MINI_LAMBDA_JOB_ID", &job.id)
        .env("MINI_LAMBDA_ATTEMPT", attempt.to_string())
        .env("MINI_LAMBDA_DEADLINE", deadline.to_string())
        .current_dir(workdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // The trace the job was submitted in, for the function to continue (W3C Trace Context's
    // name for it in the environment); never one passed through from the server's own.
    match &job.traceparent {
        Some(traceparent) => command.env("TRACEPARENT", traceparent),
        None => command.env_remove("TRACEPARENT"),
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let message = spawn_failure(name, path, &err);
            return (Outcome::Failed(message), Details::default());
        }
    };
    // Declared before the group: dropped after it, so the processes are gone by then.
    let mut threads = PipeThreads::new();
    let group = Group::register(&runner.groups, &child);
    let started = Streams::start(&mut child, job, runner.max_output, &mut threads)
        .and_then(|streams| Ok((streams, Waiter::start(child, threads.name("wait"))?)));
    let (streams, mut waiter) = match started {
        Ok(started) => started,
        Err(err) => {
            let message = format!("could not start a thread for function {name}: {err}");
            return (Outcome::Failed(message), Details::default());
        }
    };
    let stop = select! {
        recv(waiter.exited) -> status => {
            waiter.join();
            return finish(status.ok(), &streams, &group, runner);
        },
        recv(streams.too_large) -> _ => Stop::TooLarge,
        recv(abort) -> _ => Stop::Outcome(Outcome::Interrupted),
        recv(cancel) -> _ => Stop::Outcome(Outcome::Cancelled),
        default(job.timeout()) => Stop::Outcome(Outcome::TimedOut),
    };
    // The leader is not reaped until it exits, so its group id cannot be reused meanwhile.
    if matches!(stop, Stop::TooLarge) {
        group.signal(Signal::SIGKILL);
    } else {
        group.signal(Signal::SIGTERM);
    }
    if !waiter.wait(runner.kill_grace) {
        group.signal(Signal::SIGKILL);
        waiter.wait(READERS_WAIT);
    }
    drop(group);
    let (_, stderr_tail, _) = streams.collect();
    let outcome = match stop {
        Stop::Outcome(outcome) => outcome,
        Stop::TooLarge => Outcome::Failed(too_large_message(runner)),
    };
    let details = Details {
        exit_code: None,
        stderr_tail: Some(stderr_tail),
    };
    (outcome, details)
}

/// Why function `name` could not start. The kernel answers "No such file or directory" both
/// when the file is gone and when the interpreter its `#!` line names is missing, so the
/// second case is told apart and the missing file named.
fn spawn_failure(name: &str, path: &Path, err: &std::io::Error) -> String {
    let prefix = format!("cannot start function {name}");
    let interpreter = fs::File::open(path)
        .ok()
        .and_then(|file| interpreter_of(file).ok().flatten());
    match (err.raw_os_error().map(Errno::from_raw), interpreter) {
        (Some(Errno::ENOENT), Some(interpreter)) if Path::new(&interpreter).is_file() => format!(
            "{prefix}: its interpreter {interpreter} (from the #! line) exists, but a file it \
             needs to start was not found: {err}"
        ),
        (Some(Errno::ENOENT), Some(interpreter)) => match interpreter.strip_suffix('\r') {
            // The classic: a script saved with Windows line endings asks for "/bin/sh\r".
            Some(without_cr) => format!(
                "{prefix}: its interpreter {without_cr} (from the #! line) was not found, \
                 because the line ends in a carriage return: the file has Windows (CRLF) line \
                 endings; convert it to LF"
            ),
            None if !interpreter.starts_with('/') => format!(
                "{prefix}: its interpreter {interpreter} (from the #! line) was not found; \
                 a #! line needs an absolute path, e.g. #!/usr/bin/env {interpreter}"
            ),
            None => {
                format!("{prefix}: its interpreter {interpreter} (from the #! line) was not found")
            }
        },
        (Some(Errno::ENOENT), None) if path.exists() => format!(
            "{prefix}: a file it needs to start was not found (for a program, its dynamic \
             loader: is it built for this system?): {err}"
        ),
        (Some(Errno::ENOENT), None) => {
            format!("{prefix}: {} no longer exists: {err}", path.display())
        }
        (Some(Errno::EACCES), Some(interpreter)) if !is_executable_file(&interpreter) => format!(
            "{prefix}: its interpreter {interpreter} (from the #! line) is not executable: {err}"
        ),
        (Some(Errno::ENOEXEC), None) => format!(
            "{prefix}: it is neither a program for this system nor a script with a #! line \
             (start a script with one, e.g. #!/bin/sh): {err}"
        ),
        _ => format!("{prefix}: {err}"),
    }
}

fn is_executable_file(path: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The interpreter a script's `#!` line names, as the kernel reads it: the first word after
/// `#!` on the first line, within the first 256 bytes. `None` for a file without `#!`.
fn interpreter_of(file: impl Read) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(SHEBANG_LIMIT);
    file.take(SHEBANG_LIMIT as u64).read_to_end(&mut head)?;
    let Some(line) = head.strip_prefix(b"#!") else {
        return Ok(None);
    };
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let interpreter = line
        .split(|&b| b == b' ' || b == b'\t')
        .find(|word| !word.is_empty())
        .map(|word| String::from_utf8_lossy(word).into_owned());
    Ok(interpreter)
}

fn too_large_message(runner: &FunctionRunner) -> String {
    format!(
        "the function's output exceeded FUNCTION_MAX_OUTPUT_BYTES ({} bytes)",
        runner.max_output
    )
}

/// Maps how the child exited to the attempt's outcome.
fn finish(
    status: Option<std::io::Result<ExitStatus>>,
    streams: &Streams,
    group: &Group<'_>,
    runner: &FunctionRunner,
) -> (Outcome, Details) {
    // Whatever the function left running in its group goes with it.
    group.signal(Signal::SIGKILL);
    let (stdout, stderr_tail, complete) = streams.collect();
    let status = match status {
        Some(Ok(status)) => status,
        Some(Err(err)) => {
            let message = format!("could not wait for the function: {err}");
            return (Outcome::Failed(message), Details::default());
        }
        None => {
            let message = "lost track of the function's process".to_string();
            return (Outcome::Failed(message), Details::default());
        }
    };
    let details = Details {
        exit_code: status.code(),
        stderr_tail: Some(stderr_tail.clone()),
    };
    let outcome = if streams.too_large.try_recv().is_ok() {
        Outcome::Failed(too_large_message(runner))
    } else if !complete {
        Outcome::Failed(
            "the function exited, but a process it started outside its process group \
             (setsid?) still holds its output open; that process is not stopped by the server"
                .into(),
        )
    } else if status.success() {
        Outcome::Succeeded(result_of(&stdout))
    } else if let Some(signal) = status.signal() {
        Outcome::Failed(format!("killed by signal {signal}"))
    } else {
        let code = status.code().unwrap_or(-1);
        let last_line = stderr_tail
            .lines()
            .rev()
            .map(str::trim)
            .find(|line| !line.is_empty());
        Outcome::Failed(match last_line {
            Some(line) => line.to_string(),
            None => format!("exited with code {code}"),
        })
    };
    (outcome, details)
}

/// stdout as JSON if it is JSON, otherwise as text without its trailing newline.
fn result_of(stdout: &[u8]) -> Value {
    serde_json::from_slice(stdout).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(stdout);
        Value::String(text.strip_suffix('\n').unwrap_or(&text).to_string())
    })
}

fn signal_group(group: Pid, signal: Signal) {
    // ESRCH (nobody left in the group) is the usual, good answer.
    let _ = killpg(group, signal);
}

/// The child's pipes, each drained by a thread into a shared buffer, so that none can block
/// the child and what was read is kept even if a pipe never reaches its end.
struct Streams {
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<VecDeque<u8>>>,
    /// Closes when both readers have finished.
    readers_done: Receiver<()>,
    /// Receives once stdout goes over the limit.
    too_large: Receiver<()>,
    /// Held so that `too_large` never closes: a closed channel would read as a signal.
    _over_limit: Sender<()>,
}

impl Streams {
    fn start(
        child: &mut Child,
        job: &Job,
        max_output: usize,
        threads: &mut PipeThreads,
    ) -> io::Result<Streams> {
        if let Some(stdin) = child.stdin.take() {
            let payload = serde_json::to_vec(&job.payload).unwrap_or_default();
            // A function that never reads its stdin must not block the attempt.
            threads.spawn("stdin", move |stop| feed(stdin, &payload, stop))?;
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let (alive, readers_done) = bounded::<()>(0);
        let (over_limit, too_large) = bounded(1);
        if let Some(pipe) = child.stdout.take() {
            let (buffer, alive, over_limit) =
                (Arc::clone(&stdout), alive.clone(), over_limit.clone());
            threads.spawn("stdout", move |stop| {
                let mut within_limit = true;
                drain_pipe(pipe, stop, |chunk| {
                    within_limit = keep_capped(chunk, max_output, &buffer);
                    within_limit
                });
                if !within_limit {
                    let _ = over_limit.try_send(());
                }
                drop(alive);
            })?;
        }
        if let Some(pipe) = child.stderr.take() {
            let buffer = Arc::clone(&stderr);
            threads.spawn("stderr", move |stop| {
                drain_pipe(pipe, stop, |chunk| {
                    keep_tail(chunk, STDERR_TAIL_BYTES, &buffer);
                    true
                });
                drop(alive);
            })?;
        }
        Ok(Streams {
            stdout,
            stderr,
            readers_done,
            too_large,
            _over_limit: over_limit,
        })
    }

    /// stdout, the stderr tail as text, and whether both pipes reached their end in time.
    fn collect(&self) -> (Vec<u8>, String, bool) {
        let complete = matches!(
            self.readers_done.recv_timeout(READERS_WAIT),
            Err(RecvTimeoutError::Disconnected)
        );
        let stdout = lock(&self.stdout).clone();
        let stderr: Vec<u8> = lock(&self.stderr).iter().copied().collect();
        (
            stdout,
            String::from_utf8_lossy(&stderr).into_owned(),
            complete,
        )
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a descriptor became ready (or hung up) within one `TICK`.
enum Readiness {
    Ready,
    NotYet,
    Broken,
}

fn wait_ready(fd: &impl AsFd, events: PollFlags) -> Readiness {
    let mut fds = [PollFd::new(fd.as_fd(), events)];
    let tick = u16::try_from(TICK.as_millis()).unwrap_or(u16::MAX);
    match poll(&mut fds, tick) {
        Ok(0) | Err(nix::errno::Errno::EINTR) => Readiness::NotYet,
        Ok(_) => Readiness::Ready,
        Err(_) => Readiness::Broken,
    }
}

/// Reads `pipe` to its end, handing each chunk to `keep` until it returns `false`. Gives up
/// once `stop` is set: it only ever blocks in a `poll` of one `TICK`.
fn drain_pipe(mut pipe: impl Read + AsFd, stop: &AtomicBool, mut keep: impl FnMut(&[u8]) -> bool) {
    let mut buffer = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match wait_ready(&pipe, PollFlags::POLLIN) {
            Readiness::NotYet => continue,
            Readiness::Broken => return,
            // Readable or hung up: the read returns data or the end without blocking.
            Readiness::Ready => {}
        }
        match pipe.read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => {
                if !keep(&buffer[..read]) {
                    return;
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Writes the payload to the function's stdin and closes it. Non-blocking, so that a function
/// that never reads (while something outside its group holds the pipe) cannot hold this thread
/// past the attempt.
fn feed(mut stdin: ChildStdin, payload: &[u8], stop: &AtomicBool) {
    let flags = fcntl(stdin.as_raw_fd(), FcntlArg::F_GETFL).map(OFlag::from_bits_truncate);
    let nonblocking = flags.and_then(|flags| {
        fcntl(
            stdin.as_raw_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )
    });
    if nonblocking.is_err() {
        // Blocking then; the child's exit (or SIGKILL) still ends the write with EPIPE.
        let _ = stdin.write_all(payload);
        return;
    }
    let mut rest = payload;
    while !rest.is_empty() && !stop.load(Ordering::Relaxed) {
        match stdin.write(rest) {
            Ok(written) => rest = &rest[written..],
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                if let Readiness::Broken = wait_ready(&stdin, PollFlags::POLLOUT) {
                    return;
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            // EPIPE: the function exited or closed its stdin without reading it all.
            Err(_) => return,
        }
    }
}

/// Appends `chunk` to `kept`; returns `false` (keeping nothing of it) once `limit` bytes would
/// be passed, so the watchdog can stop the function.
fn keep_capped(chunk: &[u8], limit: usize, kept: &Mutex<Vec<u8>>) -> bool {
    let mut kept = lock(kept);
    if kept.len() + chunk.len() > limit {
        return false;
    }
    kept.extend_from_slice(chunk);
    true
}

/// Appends `chunk` to `tail`, keeping only its last `keep` bytes.
fn keep_tail(chunk: &[u8], keep: usize, tail: &Mutex<VecDeque<u8>>) {
    let mut tail = lock(tail);
    tail.extend(chunk);
    let excess = tail.len().saturating_sub(keep);
    tail.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_interpreter_is_the_first_word_of_the_shebang_line() {
        let read = |text: &[u8]| interpreter_of(text).unwrap();
        assert_eq!(read(b"#!/bin/sh\necho\n").as_deref(), Some("/bin/sh"));
        assert_eq!(
            read(b"#! /usr/bin/env python3 -u\n").as_deref(),
            Some("/usr/bin/env")
        );
        assert_eq!(read(b"#!/bin/sh\r\necho\r\n").as_deref(), Some("/bin/sh\r"));
        assert_eq!(read(b"#!\n"), None);
        assert_eq!(read(b"echo no shebang\n"), None);
        assert_eq!(read(b""), None);
    }

    /// The spawn error of a missing interpreter is the one of a missing file; the message
    /// must name the interpreter, not leave the reader looking for the function.
    #[test]
    fn a_missing_interpreter_is_named_with_its_line() {
        let dir = crate::store::test_dir::TestDir::new("process");
        let script = |name: &str, text: &str| {
            let path = dir.path().join(name);
            fs::write(&path, text).unwrap();
            path
        };
        let enoent = std::io::Error::from_raw_os_error(Errno::ENOENT as i32);
        let missing = script("py", "#!/usr/bin/python9\nprint(1)\n");
        assert_eq!(
            spawn_failure("py", &missing, &enoent),
            "cannot start function py: its interpreter /usr/bin/python9 (from the #! line) \
             was not found"
        );
        let crlf = script("crlf", "#!/bin/sh\r\necho hi\r\n");
        let message = spawn_failure("crlf", &crlf, &enoent);
        assert!(
            message.starts_with("cannot start function crlf: its interpreter /bin/sh (from")
                && message.contains("Windows (CRLF) line endings"),
            "{message}"
        );
        let relative = script("rel", "#!python3\n");
        let message = spawn_failure("rel", &relative, &enoent);
        assert!(message.contains("needs an absolute path"), "{message}");
        let gone = dir.path().join("gone");
        let message = spawn_failure("gone", &gone, &enoent);
        assert!(message.contains("no longer exists"), "{message}");
        let enoexec = std::io::Error::from_raw_os_error(Errno::ENOEXEC as i32);
        let plain = script("plain", "echo hi\n");
        let message = spawn_failure("plain", &plain, &enoexec);
        assert!(message.contains("a script with a #! line"), "{message}");
    }

    #[test]
    fn stdout_is_json_when_it_parses_and_text_otherwise() {
        assert_eq!(result_of(b"{\"a\": 1}\n"), json!({"a": 1}));
        assert_eq!(result_of(b"hello\n"), json!("hello"));
        assert_eq!(result_of(b"two\nlines\n"), json!("two\nlines"));
    }

    #[test]
    fn the_stderr_tail_keeps_the_end() {
        let tail = Mutex::new(VecDeque::new());
        for _ in 0..10 {
            keep_tail(b"0123456789", 5, &tail);
        }
        assert_eq!(tail.into_inner().unwrap(), b"56789".to_vec());
    }

    #[test]
    fn stdout_over_the_limit_stops_reading() {
        let kept = Mutex::new(Vec::new());
        assert!(keep_capped(b"123", 5, &kept));
        assert!(keep_capped(b"45", 5, &kept));
        assert!(!keep_capped(b"6", 5, &kept));
        assert_eq!(kept.into_inner().unwrap(), b"12345".to_vec());
    }

    #[test]
    fn a_pipe_thread_ends_soon_after_stop_even_if_the_pipe_stays_open() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (read, first_chunk) = bounded(1);
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            drain_pipe(reader, &stopped, |_| {
                let _ = read.try_send(());
                true
            })
        });
        // Once it has read something it is back to waiting on a pipe that stays open.
        writer.write_all(b"x").unwrap();
        first_chunk.recv().unwrap();
        stop.store(true, Ordering::Relaxed);
        let started = std::time::Instant::now();
        thread.join().unwrap();
        assert!(started.elapsed() < TICK * 5, "{:?}", started.elapsed());
        drop(writer);
    }
}
