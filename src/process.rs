//! Running a function: one attempt as a child process. The payload goes to its stdin, stdout
//! becomes the result, the tail of stderr is kept. The child runs in a fresh working directory
//! with a cleared environment, in its own process group, so that stopping it (timeout, cancel,
//! shutdown) can signal every process it started: SIGTERM, a grace period, then SIGKILL.

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::executor::{Details, FunctionRunner, Outcome};
use crate::job::Job;
use crate::time::Timestamp;

/// How much of stderr an attempt keeps: the end, where the error usually is.
const STDERR_TAIL_BYTES: usize = 64 * 1024;
/// How long to wait for the output readers once every process of the group is gone.
const READERS_WAIT: Duration = Duration::from_secs(2);
/// How much of a script's first line the kernel reads for its `#!` interpreter (Linux).
const SHEBANG_LIMIT: usize = 256;

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
        std::env::temp_dir().join(format!("mini-lambda-attempt-{}", uuid::Uuid::new_v4()));
    if let Err(err) = fs::create_dir(&workdir) {
        let message = format!("could not create a working directory for function {name}: {err}");
        return (Outcome::Failed(message), Details::default());
    }
    let ended = run_in(runner, job, name, path, &workdir, abort, cancel);
    let _ = fs::remove_dir_all(&workdir);
    ended
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
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let message = spawn_failure(name, path, &err);
            return (Outcome::Failed(message), Details::default());
        }
    };
    let group = i32::try_from(child.id())
        .map(Pid::from_raw)
        .unwrap_or(Pid::from_raw(-1));
    runner.groups.add(group);
    let streams = Streams::start(&mut child, job, runner.max_output);
    let (exit_sender, exited) = bounded(1);
    // Waiting for the child is blocking, so it has a thread; the watchdog below selects on it.
    thread::spawn(move || {
        let _ = exit_sender.send(child.wait());
    });
    let stop = select! {
        recv(exited) -> status => {
            let ended = finish(status.ok(), &streams, group, runner);
            runner.groups.remove(group);
            return ended;
        },
        recv(streams.too_large) -> _ => Stop::TooLarge,
        recv(abort) -> _ => Stop::Outcome(Outcome::Interrupted),
        recv(cancel) -> _ => Stop::Outcome(Outcome::Cancelled),
        default(job.timeout()) => Stop::Outcome(Outcome::TimedOut),
    };
    // The leader is not reaped until it exits, so its group id cannot be reused meanwhile.
    if matches!(stop, Stop::TooLarge) {
        signal_group(group, Signal::SIGKILL);
    } else {
        signal_group(group, Signal::SIGTERM);
    }
    if exited.recv_timeout(runner.kill_grace).is_err() {
        signal_group(group, Signal::SIGKILL);
        let _ = exited.recv_timeout(READERS_WAIT);
    }
    signal_group(group, Signal::SIGKILL);
    runner.groups.remove(group);
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
    group: Pid,
    runner: &FunctionRunner,
) -> (Outcome, Details) {
    // Whatever the function left running in its group goes with it.
    signal_group(group, Signal::SIGKILL);
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
    fn start(child: &mut Child, job: &Job, max_output: usize) -> Streams {
        if let Some(mut stdin) = child.stdin.take() {
            let payload = serde_json::to_vec(&job.payload).unwrap_or_default();
            // A function that never reads its stdin must not block the attempt.
            thread::spawn(move || {
                let _ = stdin.write_all(&payload);
            });
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let (alive, readers_done) = bounded::<()>(0);
        let (over_limit, too_large) = bounded(1);
        if let Some(mut pipe) = child.stdout.take() {
            let (buffer, alive, over_limit) =
                (Arc::clone(&stdout), alive.clone(), over_limit.clone());
            thread::spawn(move || {
                if !read_capped(&mut pipe, max_output, &buffer) {
                    let _ = over_limit.try_send(());
                }
                drop(alive);
            });
        }
        if let Some(mut pipe) = child.stderr.take() {
            let buffer = Arc::clone(&stderr);
            thread::spawn(move || {
                read_tail(&mut pipe, STDERR_TAIL_BYTES, &buffer);
                drop(alive);
            });
        }
        Streams {
            stdout,
            stderr,
            readers_done,
            too_large,
            _over_limit: over_limit,
        }
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

/// Reads into `kept` until the end; returns `false` (and stops reading) once more than
/// `limit` bytes arrived, so the watchdog can stop the function.
fn read_capped(pipe: &mut impl Read, limit: usize, kept: &Mutex<Vec<u8>>) -> bool {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buffer) {
            Ok(0) => return true,
            Ok(read) => {
                let mut kept = lock(kept);
                if kept.len() + read > limit {
                    return false;
                }
                kept.extend_from_slice(&buffer[..read]);
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Reads to the end, keeping the last `keep` bytes in `tail`.
fn read_tail(pipe: &mut impl Read, keep: usize, tail: &Mutex<VecDeque<u8>>) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => {
                let mut tail = lock(tail);
                tail.extend(&buffer[..read]);
                let excess = tail.len().saturating_sub(keep);
                tail.drain(..excess);
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
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
        let text = b"0123456789".repeat(10);
        let tail = Mutex::new(VecDeque::new());
        read_tail(&mut &text[..], 5, &tail);
        assert_eq!(tail.into_inner().unwrap(), b"56789".to_vec());
    }

    #[test]
    fn stdout_over_the_limit_stops_reading() {
        let kept = Mutex::new(Vec::new());
        assert!(read_capped(&mut &b"12345"[..], 5, &kept));
        let kept = Mutex::new(Vec::new());
        assert!(!read_capped(&mut &b"123456"[..], 5, &kept));
    }
}
