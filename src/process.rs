//! Running a function: one attempt as a child process. The payload goes to its stdin, stdout
//! becomes the result, the tail of stderr is kept. The child runs in a fresh working directory
//! with a cleared environment, in its own process group, so that stopping it (timeout, cancel,
//! shutdown) can signal every process it started: SIGTERM, a grace period, then SIGKILL.

use std::collections::VecDeque;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, select, Receiver};
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
    let attempt = job.attempt.unwrap_or(job.retry_count + 1);
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
            let message = format!("could not start function {name}: {err}");
            return (Outcome::Failed(message), Details::default());
        }
    };
    let group = i32::try_from(child.id())
        .map(Pid::from_raw)
        .unwrap_or(Pid::from_raw(-1));
    let streams = Streams::start(&mut child, job, runner.max_output, group);
    let (exit_sender, exited) = bounded(1);
    // Waiting for the child is blocking, so it has a thread; the watchdog below selects on it.
    thread::spawn(move || {
        let _ = exit_sender.send(child.wait());
    });
    let stopped = select! {
        recv(exited) -> status => return finish(status.ok(), streams, group, runner),
        recv(abort) -> _ => Outcome::Interrupted,
        recv(cancel) -> _ => Outcome::Cancelled,
        default(job.timeout()) => Outcome::TimedOut,
    };
    signal_group(group, Signal::SIGTERM);
    if exited.recv_timeout(runner.kill_grace).is_err() {
        signal_group(group, Signal::SIGKILL);
        let _ = exited.recv_timeout(READERS_WAIT);
    }
    signal_group(group, Signal::SIGKILL);
    let (_, _, stderr_tail) = streams.collect();
    (
        stopped,
        Details {
            exit_code: None,
            stderr_tail: Some(stderr_tail),
        },
    )
}

/// Maps how the child exited to the attempt's outcome.
fn finish(
    status: Option<std::io::Result<ExitStatus>>,
    streams: Streams,
    group: Pid,
    runner: &FunctionRunner,
) -> (Outcome, Details) {
    // Whatever the function left running in its group goes with it.
    signal_group(group, Signal::SIGKILL);
    let (stdout, too_large, stderr_tail) = streams.collect();
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
    let outcome = if too_large {
        Outcome::Failed(format!(
            "the function's output exceeded FUNCTION_MAX_OUTPUT_BYTES ({} bytes)",
            runner.max_output
        ))
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

/// The child's pipes, each served by a thread so that none can block the child.
struct Streams {
    stdout: Receiver<(Vec<u8>, bool)>,
    stderr: Receiver<Vec<u8>>,
}

impl Streams {
    fn start(child: &mut Child, job: &Job, max_output: usize, group: Pid) -> Streams {
        if let Some(mut stdin) = child.stdin.take() {
            let payload = serde_json::to_vec(&job.payload).unwrap_or_default();
            // A function that never reads its stdin must not block the attempt.
            thread::spawn(move || {
                let _ = stdin.write_all(&payload);
            });
        }
        let (stdout_sender, stdout) = bounded(1);
        if let Some(mut pipe) = child.stdout.take() {
            thread::spawn(move || {
                let _ = stdout_sender.send(read_capped(&mut pipe, max_output, group));
            });
        }
        let (stderr_sender, stderr) = bounded(1);
        if let Some(mut pipe) = child.stderr.take() {
            thread::spawn(move || {
                let _ = stderr_sender.send(read_tail(&mut pipe, STDERR_TAIL_BYTES));
            });
        }
        Streams { stdout, stderr }
    }

    /// stdout, whether it went over the limit, and the stderr tail as text.
    fn collect(self) -> (Vec<u8>, bool, String) {
        let (stdout, too_large) = self.stdout.recv_timeout(READERS_WAIT).unwrap_or_default();
        let stderr = self.stderr.recv_timeout(READERS_WAIT).unwrap_or_default();
        (
            stdout,
            too_large,
            String::from_utf8_lossy(&stderr).into_owned(),
        )
    }
}

/// Reads up to `limit` bytes. Past the limit the whole group is killed at once: the attempt
/// has failed, and a child writing on would otherwise block on a full pipe.
fn read_capped(pipe: &mut impl Read, limit: usize, group: Pid) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buffer) {
            Ok(0) | Err(_) => return (kept, false),
            Ok(read) => {
                if kept.len() + read > limit {
                    signal_group(group, Signal::SIGKILL);
                    return (kept, true);
                }
                kept.extend_from_slice(&buffer[..read]);
            }
        }
    }
}

/// Reads to the end, keeping the last `keep` bytes.
fn read_tail(pipe: &mut impl Read, keep: usize) -> Vec<u8> {
    let mut tail = VecDeque::with_capacity(keep.min(4096));
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                tail.extend(&buffer[..read]);
                let excess = tail.len().saturating_sub(keep);
                tail.drain(..excess);
            }
        }
    }
    tail.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stdout_is_json_when_it_parses_and_text_otherwise() {
        assert_eq!(result_of(b"{\"a\": 1}\n"), json!({"a": 1}));
        assert_eq!(result_of(b"hello\n"), json!("hello"));
        assert_eq!(result_of(b"two\nlines\n"), json!("two\nlines"));
    }

    #[test]
    fn the_stderr_tail_keeps_the_end() {
        let text = b"0123456789".repeat(10);
        assert_eq!(read_tail(&mut &text[..], 5), b"56789".to_vec());
    }
}
