//! Functions: jobs that name an executable in `FUNCTIONS_DIR` and run it as a child process
//! (payload on stdin, result from stdout), `GET /functions`, output limits, timeouts and
//! cancellation that kill the whole process group, the environment a function sees, and the
//! `exit_code` and `stderr_tail` of its attempts.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;

/// The statuses a job does not leave on its own.
const FINAL: [&str; 4] = ["success", "failed", "timeout", "cancelled"];

/// A private directory of functions plus a scratch directory for files the scripts write
/// (pid files, markers). Removed on drop; declare it before the server so it outlives it.
struct Functions {
    root: PathBuf,
}

impl Functions {
    fn new() -> Self {
        let root = unique_temp_dir();
        fs::create_dir(root.join("functions")).expect("create the functions dir");
        fs::create_dir(root.join("scratch")).expect("create the scratch dir");
        Functions { root }
    }

    fn dir(&self) -> PathBuf {
        self.root.join("functions")
    }

    /// A path in the scratch directory (outside the functions directory).
    fn scratch(&self, name: &str) -> PathBuf {
        self.root.join("scratch").join(name)
    }

    /// Writes `#!/bin/sh` plus `body` as `name` with the given mode.
    fn file(&self, name: &str, body: &str, mode: u32) -> PathBuf {
        let path = self.dir().join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write the script");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    /// Writes an executable (0755) script.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        self.file(name, body, 0o755)
    }

    /// A server builder with `FUNCTIONS_DIR` pointing here.
    fn server(&self) -> ServerBuilder {
        TestServer::builder().env("FUNCTIONS_DIR", self.dir().to_str().expect("utf-8 path"))
    }
}

impl Drop for Functions {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Submits `function` with `payload` and no automatic retries; returns the job id.
fn submit_fn(server: &TestServer, function: &str, payload: Value) -> String {
    server.submit(json!({"function": function, "payload": payload, "max_retries": 0}))
}

/// Polls the job until it reaches a final status.
fn wait_final(server: &TestServer, id: &str, timeout: std::time::Duration) -> Value {
    server.wait_for_job(id, timeout, "a final status", |job| {
        FINAL.contains(&job["status"].as_str().unwrap_or_default())
    })
}

/// Runs `function` on `payload` to the end (no retries) and returns the finished job.
fn run(server: &TestServer, function: &str, payload: Value) -> Value {
    let id = submit_fn(server, function, payload);
    let job = wait_final(server, &id, secs(10));
    assert_eq!(job["function"], function, "{job}");
    job
}

/// The only attempt of a job that ran once.
fn only_attempt(server: &TestServer, id: &str) -> Value {
    let all = server.attempts(id);
    assert_eq!(all.len(), 1, "expected one attempt: {all:?}");
    all[0].clone()
}

/// Whether `pid` is a live process. A zombie (dead, waiting to be reaped by whoever inherited
/// it) counts as gone: it runs nothing and holds nothing but its process table entry.
fn alive(pid: i32) -> bool {
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 {
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(errno, Some(libc::ESRCH), "kill({pid}, 0) failed oddly");
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until `path` holds at least `n` pids (one or more per line) and returns them.
fn read_pids(path: &Path, n: usize) -> Vec<i32> {
    eventually(secs(5), &format!("{n} pids in {}", path.display()), || {
        let text = fs::read_to_string(path).ok()?;
        let pids: Vec<i32> = text
            .split_whitespace()
            .map(|p| p.parse().expect("a pid"))
            .collect();
        (pids.len() >= n).then_some(pids)
    })
}

/// Asserts every pid is gone within ~3 s (polling).
fn assert_all_gone(pids: &[i32]) {
    let deadline = Instant::now() + secs(3);
    loop {
        let survivors: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if survivors.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for &pid in &survivors {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            panic!("processes of the function survived: {survivors:?} of {pids:?}");
        }
        std::thread::sleep(ms(20));
    }
}

/// A function that starts a background `sleep 60`, records its own pid and the sleep's in the
/// payload's pid file, and waits.
fn sleeper_script() -> String {
    format!("{READ_PIDFILE}\nsleep 60 &\necho \"$$ $!\" >> \"$pidfile\"\nwait")
}

/// Runs the `sleeper` function (installed by the caller) as a job without retries and waits
/// until it runs.
fn start_sleeper(functions: &Functions, server: &TestServer) -> Sleeper {
    let pidfile = functions.scratch("pids");
    let id = server.submit(json!({
        "function": "sleeper",
        "payload": {"pidfile": pidfile.to_str().unwrap()},
        "timeout_seconds": 120,
        "max_retries": 0,
    }));
    let pids = read_pids(&pidfile, 2);
    server.wait_for_status(&id, "running", secs(5));
    Sleeper { id, pids, pidfile }
}

struct Sleeper {
    id: String,
    /// The script's and its background child's.
    pids: Vec<i32>,
    /// Where each run of the script appends its two pids.
    pidfile: PathBuf,
}

/// Extracts the `pidfile` path from the payload (serde_json writes `"pidfile":"..."`).
const READ_PIDFILE: &str = r#"pidfile=$(sed -n 's/.*"pidfile": *"\([^"]*\)".*/\1/p')"#;

// ---------------------------------------------------------------------------
// GET /functions and validation at submit
// ---------------------------------------------------------------------------

#[test]
fn get_functions_lists_the_executable_files_sorted_by_name() {
    let functions = Functions::new();
    let long_name = "x".repeat(64);
    let alpha = functions.script("alpha", "cat");
    functions.script("beta.sh", "echo beta");
    functions.script("gamma_3-x", "echo gamma");
    functions.script(&long_name, "echo long");
    // Not functions: too long, a bad character, a dotfile, not executable, a directory,
    // a symlink leaving the directory.
    functions.script(&"y".repeat(65), "echo too long");
    functions.script("has space", "echo space");
    functions.script(".hidden", "echo hidden");
    functions.file("notes.txt", "echo notes", 0o644);
    let subdir = functions.dir().join("subdir");
    fs::create_dir(&subdir).unwrap();
    fs::set_permissions(&subdir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(subdir.join("inner"), "#!/bin/sh\necho inner\n").unwrap();
    fs::set_permissions(subdir.join("inner"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("/bin/sh", functions.dir().join("outside")).unwrap();
    // A symlink whose target stays inside the directory is followed.
    symlink("alpha", functions.dir().join("inside-link")).unwrap();

    let server = functions.server().start();
    let response = server.get("/functions");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_json_content_type(&response);
    let listed = response.json();
    let listed = listed
        .as_array()
        .unwrap_or_else(|| panic!("GET /functions is not an array: {listed}"));
    let names: Vec<&str> = listed
        .iter()
        .map(|f| f["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        vec![
            "alpha",
            "beta.sh",
            "gamma_3-x",
            "inside-link",
            long_name.as_str()
        ],
        "{listed:?}"
    );
    for function in listed {
        let keys: Vec<&str> = function
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {function}"))
            .keys()
            .map(String::as_str)
            .collect();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["has_schema", "modified_at", "name", "size"],
            "{function}"
        );
        let name = function["name"].as_str().unwrap();
        // Metadata through the symlink: the target's size and time.
        let meta = fs::metadata(functions.dir().join(name)).unwrap();
        assert_eq!(function["size"], meta.len(), "{function}");
        let modified = meta
            .modified()
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let listed_modified = parse_ts(function["modified_at"].as_str().unwrap_or_else(|| {
            panic!("modified_at is not a string: {function}");
        }));
        assert!(
            (listed_modified - modified).abs() <= 1_000,
            "modified_at {} but the file says {}: {function}",
            function["modified_at"],
            format_ts(modified)
        );
    }
    assert_eq!(
        listed[0]["size"],
        fs::metadata(&alpha).unwrap().len(),
        "{listed:?}"
    );
}

#[test]
fn an_empty_functions_dir_lists_nothing_and_simulated_jobs_still_run() {
    let functions = Functions::new();
    let server = functions.server().start();
    let response = server.get("/functions");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), json!([]));
    let id = server.submit(json!({"payload": {"duration_ms": 0, "result": "simulated"}}));
    let job = server.wait_for_status(&id, "success", secs(5));
    assert_eq!(job["function"], Value::Null, "{job}");
    assert_eq!(job["result"], "simulated");
    let attempt = only_attempt(&server, &id);
    assert_eq!(attempt["exit_code"], Value::Null, "{attempt}");
    assert_eq!(attempt["stderr_tail"], Value::Null, "{attempt}");
}

#[test]
fn an_unknown_or_invalid_function_is_refused_at_submit() {
    let functions = Functions::new();
    functions.script("alpha", "cat");
    functions.script(".hidden", "cat");
    functions.script("has space", "cat");
    functions.script(&"y".repeat(65), "cat");
    functions.file("notes.txt", "cat", 0o644);
    fs::create_dir(functions.dir().join("subdir")).unwrap();
    symlink("/bin/sh", functions.dir().join("outside")).unwrap();
    let server = functions.server().start();
    let long_name = "y".repeat(65);
    for name in [
        "nope",
        ".hidden",
        "has space",
        long_name.as_str(),
        "notes.txt",
        "subdir",
        "outside",
        "../functions/alpha",
        "/bin/sh",
        "",
    ] {
        let response = server.post_json("/jobs", &json!({"function": name, "payload": {"x": 1}}));
        let message = assert_error(&response, 400, "unknown_function");
        assert!(
            message.contains(name),
            "the message should name {name:?}: {message:?}"
        );
    }
    let (jobs, _) = server.list("/jobs");
    assert!(jobs.is_empty(), "a refused job was stored: {jobs:?}");
    // The known one is accepted and recorded with its name.
    let id = submit_fn(&server, "alpha", json!({"x": 1}));
    assert_eq!(server.job(&id)["function"], "alpha");
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

#[test]
fn exit_zero_with_json_stdout_is_success_with_the_parsed_result() {
    let functions = Functions::new();
    functions.script("echo", "cat");
    functions.script(
        "answer",
        "cat > /dev/null\necho progress >&2\necho '{\"ok\": true, \"n\": [1, 2]}'",
    );
    let server = functions.server().start();

    let payload =
        json!({"text": "héllo \"quoted\"\nline", "list": [1, 2.5, null], "nested": {"a": true}});
    let job = run(&server, "echo", payload.clone());
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(
        job["result"], payload,
        "stdin should be the payload as JSON"
    );
    assert_eq!(job["error_message"], Value::Null);
    assert_eq!(job["payload"], payload);

    let id = submit_fn(&server, "answer", json!("ignored"));
    let job = server.wait_for_status(&id, "success", secs(10));
    assert_eq!(job["result"], json!({"ok": true, "n": [1, 2]}));
    let attempt = only_attempt(&server, &id);
    assert_eq!(attempt["status"], "success", "{attempt}");
    assert_eq!(attempt["exit_code"], 0, "{attempt}");
    assert_eq!(attempt["stderr_tail"], "progress\n", "{attempt}");
    assert_eq!(attempt["result"], json!({"ok": true, "n": [1, 2]}));
}

#[test]
fn exit_zero_with_text_stdout_gives_the_text_without_one_trailing_newline() {
    let functions = Functions::new();
    functions.script("hello", "echo 'hello world'");
    functions.script("two-newlines", r"printf 'line one\nline two\n\n'");
    functions.script("no-newline", "printf 'no newline'");
    functions.script("scalar", "echo 42");
    functions.script("quoted", r#"echo '"a json string"'"#);
    functions.script("silent", "exit 0");
    let server = functions.server().start();
    for (name, want) in [
        ("hello", json!("hello world")),
        ("two-newlines", json!("line one\nline two\n")),
        ("no-newline", json!("no newline")),
        ("scalar", json!(42)),
        ("quoted", json!("a json string")),
        ("silent", json!("")),
    ] {
        let job = run(&server, name, json!({}));
        assert_eq!(job["status"], "success", "{name}: {job}");
        assert_eq!(job["result"], want, "{name}: {job}");
    }
}

#[test]
fn a_non_zero_exit_fails_with_the_last_non_empty_stderr_line() {
    let functions = Functions::new();
    functions.script(
        "complain",
        "echo 'partial output'\necho first >&2\necho 'the real reason' >&2\necho >&2\nexit 7",
    );
    let server = functions.server().start();
    let job = run(&server, "complain", json!({}));
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error_message"], "the real reason", "{job}");
    assert_eq!(job["result"], Value::Null, "{job}");
    let attempt = only_attempt(&server, job["id"].as_str().unwrap());
    assert_eq!(attempt["status"], "failed", "{attempt}");
    assert_eq!(attempt["exit_code"], 7, "{attempt}");
    assert_eq!(
        attempt["stderr_tail"], "first\nthe real reason\n\n",
        "{attempt}"
    );
}

#[test]
fn a_non_zero_exit_without_stderr_reports_the_exit_code() {
    let functions = Functions::new();
    functions.script("quiet", "exit 5");
    let server = functions.server().start();
    let job = run(&server, "quiet", json!({}));
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error_message"], "exited with code 5", "{job}");
    let attempt = only_attempt(&server, job["id"].as_str().unwrap());
    assert_eq!(attempt["exit_code"], 5, "{attempt}");
    assert_eq!(attempt["stderr_tail"], "", "{attempt}");
}

#[test]
fn a_function_killed_by_a_signal_fails_with_the_signal_number() {
    let functions = Functions::new();
    functions.script("suicide", "echo 'about to die' >&2\nkill -KILL $$\nsleep 5");
    let server = functions.server().start();
    let job = run(&server, "suicide", json!({}));
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error_message"], "killed by signal 9", "{job}");
    let attempt = only_attempt(&server, job["id"].as_str().unwrap());
    assert_eq!(attempt["exit_code"], Value::Null, "{attempt}");
    assert_eq!(attempt["stderr_tail"], "about to die\n", "{attempt}");
}

/// The kernel reports a missing `#!` interpreter as "No such file or directory", which reads
/// as if the function itself were missing; the message names the file that is.
#[test]
fn a_function_whose_interpreter_is_missing_fails_naming_the_interpreter() {
    let functions = Functions::new();
    let write = |name: &str, text: &str| {
        let path = functions.dir().join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    };
    write("broken", "#!/nonexistent/python9 -u\nprint('hi')\n");
    write("crlf", "#!/bin/sh\r\necho hi\r\n");
    let server = functions.server().start();

    let job = run(&server, "broken", json!({}));
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(
        job["error_message"],
        "cannot start function broken: its interpreter /nonexistent/python9 (from the #! line) \
         was not found",
        "{job}"
    );
    let attempt = only_attempt(&server, job["id"].as_str().unwrap());
    assert_eq!(attempt["error_message"], job["error_message"], "{attempt}");

    let job = run(&server, "crlf", json!({}));
    assert_eq!(job["status"], "failed", "{job}");
    let message = job["error_message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "cannot start function crlf: its interpreter /bin/sh (from the #! line) was not found"
        ) && message.contains("Windows (CRLF) line endings"),
        "{job}"
    );
}

#[test]
fn stdout_over_the_limit_fails_promptly_and_does_not_block_the_child() {
    let functions = Functions::new();
    // 1024 bytes exactly is allowed; one more is not.
    functions.script("at-limit", "head -c 1024 /dev/zero | tr '\\0' a");
    functions.script("over-limit", "head -c 1025 /dev/zero | tr '\\0' a");
    // ~200 KB: far more than a pipe buffer, so a child nobody reads would block forever.
    functions.script(
        "flood",
        "line=0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789\n\
         i=0\nwhile [ $i -lt 2000 ]; do echo \"$line\"; i=$((i + 1)); done\necho finished >&2",
    );
    let server = functions
        .server()
        .env("FUNCTION_MAX_OUTPUT_BYTES", "1024")
        .start();

    let job = run(&server, "at-limit", json!({}));
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(job["result"], "a".repeat(1024));

    for name in ["over-limit", "flood"] {
        let started = Instant::now();
        let id = server.submit(json!({
            "function": name, "payload": {}, "max_retries": 0, "timeout_seconds": 60
        }));
        let job = wait_final(&server, &id, secs(5));
        assert!(started.elapsed() < secs(5));
        assert_eq!(job["status"], "failed", "{name}: {job}");
        let message = job["error_message"].as_str().unwrap_or_default();
        assert!(
            message.contains("output") && message.contains("FUNCTION_MAX_OUTPUT_BYTES"),
            "{name}: the message should say the output was over FUNCTION_MAX_OUTPUT_BYTES: {job}"
        );
        assert_eq!(job["result"], Value::Null, "{job}");
    }
}

#[test]
fn stderr_tail_keeps_the_last_64_kib() {
    let functions = Functions::new();
    functions.script(
        "noisy",
        "i=0\nwhile [ $i -lt 10000 ]; do echo \"stderr line $i\"; i=$((i + 1)); done >&2\nexit 1",
    );
    let server = functions.server().start();
    let job = run(&server, "noisy", json!({}));
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error_message"], "stderr line 9999", "{job}");
    let written: String = (0..10000).map(|i| format!("stderr line {i}\n")).collect();
    let want = &written[written.len() - 64 * 1024..];
    let attempt = only_attempt(&server, job["id"].as_str().unwrap());
    let tail = attempt["stderr_tail"].as_str().unwrap_or_default();
    assert_eq!(tail.len(), 64 * 1024, "stderr_tail length");
    assert!(tail == want, "stderr_tail is not the last 64 KiB of stderr");
    assert_eq!(attempt["exit_code"], 1);
}

// ---------------------------------------------------------------------------
// Timeout and cancellation kill the process group
// ---------------------------------------------------------------------------

#[test]
fn a_timeout_kills_the_whole_group_including_a_forked_child_that_ignores_term() {
    let functions = Functions::new();
    // The script records its own pid, a background subshell that ignores SIGTERM, that
    // subshell's sleep and its own sleep. On SIGTERM it leaves a marker and exits, leaving the
    // TERM-ignoring subshell behind: only SIGKILL to the group ends it.
    functions.script(
        "stubborn",
        &format!(
            "{READ_PIDFILE}\n\
             trap 'echo term > \"$pidfile.term\"; exit 143' TERM\n\
             (trap '' TERM; sleep 30 & echo $! >> \"$pidfile\"; wait) &\n\
             echo \"$! $$\" >> \"$pidfile\"\n\
             sleep 30 &\n\
             echo $! >> \"$pidfile\"\n\
             wait"
        ),
    );
    let server = functions
        .server()
        .env("FUNCTION_KILL_GRACE_MS", "200")
        .start();
    let pidfile = functions.scratch("pids");
    let id = server.submit(json!({
        "function": "stubborn",
        "payload": {"pidfile": pidfile.to_str().unwrap()},
        "timeout_seconds": 1,
        "max_retries": 0,
    }));
    let pids = read_pids(&pidfile, 4);
    let job = wait_final(&server, &id, secs(10));
    assert_eq!(job["status"], "timeout", "{job}");
    let message = job["error_message"].as_str().unwrap_or_default();
    assert!(message.contains("timed out"), "{job}");
    assert_all_gone(&pids);
    let term = fs::read_to_string(format!("{}.term", pidfile.display())).unwrap_or_default();
    assert_eq!(
        term, "term\n",
        "the group should get SIGTERM before SIGKILL"
    );
    let attempt = only_attempt(&server, &id);
    assert_eq!(attempt["status"], "timeout", "{attempt}");
    assert_eq!(attempt["exit_code"], Value::Null, "{attempt}");
    // The attempt lasted about the timeout plus the grace, not the scripts' 30 s.
    let ran = ts(&job, "finished_at") - ts(&job, "started_at");
    assert!((900_000..5_000_000).contains(&ran), "ran {ran} us: {job}");
}

#[test]
fn cancelling_a_running_function_kills_its_process_group() {
    let functions = Functions::new();
    functions.script("sleeper", &sleeper_script());
    let server = functions
        .server()
        .env("WORKER_COUNT", "1")
        .env("FUNCTION_KILL_GRACE_MS", "200")
        .start();
    let Sleeper { id, pids, .. } = start_sleeper(&functions, &server);
    // The function runs in its own process group, led by the script.
    let server_group = unsafe { libc::getpgid(server.pid()) };
    for &pid in &pids {
        let group = unsafe { libc::getpgid(pid) };
        assert_eq!(group, pids[0], "pid {pid} is not in the script's group");
        assert_ne!(
            group, server_group,
            "the function shares the server's group"
        );
    }

    let response = server.post_empty(&format!("/jobs/{id}/cancel"));
    assert_eq!(response.status, 202, "{}", response.text());
    let job = server.wait_for_status(&id, "cancelled", secs(3));
    assert_eq!(job["function"], "sleeper");
    assert_all_gone(&pids);
    let attempt = only_attempt(&server, &id);
    assert_eq!(attempt["status"], "cancelled", "{attempt}");
    assert_eq!(attempt["exit_code"], Value::Null, "{attempt}");
    // The single worker is free again.
    let next = server.submit(json!({"payload": {"duration_ms": 0}}));
    server.wait_for_status(&next, "success", secs(3));
}

#[test]
fn deleting_a_running_function_job_kills_its_process_group() {
    let functions = Functions::new();
    functions.script("sleeper", &sleeper_script());
    let server = functions
        .server()
        .env("FUNCTION_KILL_GRACE_MS", "200")
        .start();
    let Sleeper { id, pids, .. } = start_sleeper(&functions, &server);
    assert_eq!(server.delete(&format!("/jobs/{id}")).status, 204);
    assert_all_gone(&pids);
    assert_eq!(server.get(&format!("/jobs/{id}")).status, 404);
}

/// A child never outlives a graceful shutdown: at the end of the grace its group is killed and
/// the attempt is recorded as interrupted; the job runs again after the restart.
#[test]
fn a_graceful_shutdown_kills_a_running_function_and_requeues_its_job() {
    let functions = Functions::new();
    functions.script("sleeper", &sleeper_script());
    let mut server = functions
        .server()
        .env("SHUTDOWN_GRACE_SECONDS", "1")
        .env("FUNCTION_KILL_GRACE_MS", "200")
        .start();
    let Sleeper { id, pids, pidfile } = start_sleeper(&functions, &server);
    server.sigterm();
    let status = server.wait_exit(secs(10));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert_all_gone(&pids);
    server.restart();
    // It runs again after the restart; stop that run too, so that nothing outlives the test.
    let second = server.wait_for_job(&id, secs(10), "a second attempt", |job| {
        job["status"] == "running"
    });
    assert_eq!(
        second["retry_count"], 0,
        "an interrupted attempt uses no retry: {second}"
    );
    let pids_again = read_pids(&pidfile, 4);
    assert_eq!(server.post_empty(&format!("/jobs/{id}/cancel")).status, 202);
    server.wait_for_status(&id, "cancelled", secs(5));
    assert_all_gone(&pids_again);
    let attempts = server.attempts(&id);
    assert_eq!(attempts[0]["status"], "interrupted", "{attempts:?}");
    assert_eq!(attempts[0]["exit_code"], Value::Null);
    assert_eq!(attempts[1]["status"], "cancelled", "{attempts:?}");
}

// ---------------------------------------------------------------------------
// Environment, working directory, attempts
// ---------------------------------------------------------------------------

/// A script that prints its environment, then `--` and facts about its working directory.
const SHOW_ENV: &str = "cat > /dev/null\nenv\necho --\necho \"cwd=$(pwd -P)\"\n\
                        echo \"home=$(cd \"$HOME\" && pwd -P)\"\necho \"entries=$(ls -A | wc -l)\"";

/// Runs the SHOW_ENV function and splits its output into (environment, facts).
fn show_env(server: &TestServer) -> (Value, BTreeMap<String, String>, BTreeMap<String, String>) {
    let job = run(server, "show-env", json!({}));
    assert_eq!(job["status"], "success", "{job}");
    let text = job["result"].as_str().expect("text output").to_string();
    let (env_part, facts_part) = text.split_once("\n--\n").expect("the -- separator");
    let split = |part: &str| -> BTreeMap<String, String> {
        part.lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    };
    (job, split(env_part), split(facts_part))
}

#[test]
fn a_function_sees_only_its_own_environment_in_a_fresh_empty_directory() {
    let functions = Functions::new();
    functions.script("show-env", SHOW_ENV);
    let server = functions
        .server()
        .env("MINI_LAMBDA_TEST_SECRET", "xyz")
        .env("DEFAULT_TIMEOUT_SECONDS", "30")
        .start();
    let (job, env, facts) = show_env(&server);
    let mut names: Vec<&str> = env
        .keys()
        .map(String::as_str)
        // Set by the shell itself.
        .filter(|name| !["PWD", "OLDPWD"].contains(name))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "HOME",
            "LANG",
            "MINI_LAMBDA_ATTEMPT",
            "MINI_LAMBDA_DEADLINE",
            "MINI_LAMBDA_JOB_ID",
            "PATH"
        ],
        "{env:?}"
    );
    assert!(!env["PATH"].is_empty());
    assert_eq!(env["LANG"], "C.UTF-8");
    assert_eq!(env["MINI_LAMBDA_JOB_ID"], job["id"].as_str().unwrap());
    assert_eq!(env["MINI_LAMBDA_ATTEMPT"], "1");
    let deadline = &env["MINI_LAMBDA_DEADLINE"];
    assert!(
        deadline.len() >= 20
            && deadline.as_bytes()[10] == b'T'
            && (deadline.ends_with('Z') || deadline[19..].contains(['+', '-'])),
        "MINI_LAMBDA_DEADLINE is not RFC 3339: {deadline:?}"
    );
    if let Some(deadline) = try_parse_ts(deadline) {
        let want = ts(&job, "started_at") + 30_000_000;
        assert!(
            (deadline - want).abs() < 2_000_000,
            "MINI_LAMBDA_DEADLINE {} is not started_at + timeout: {job}",
            env["MINI_LAMBDA_DEADLINE"]
        );
    }
    // HOME is the working directory: fresh, empty, and removed afterwards.
    assert_eq!(facts["cwd"], facts["home"], "{facts:?}");
    assert_eq!(facts["entries"], "0", "{facts:?}");
    let cwd = Path::new(&facts["cwd"]);
    assert!(
        !cwd.starts_with(functions.dir()) && !cwd.starts_with(server.dir()),
        "{facts:?}"
    );
    eventually(secs(3), "the working directory is removed", || {
        (!cwd.exists()).then_some(())
    });
    // Each run gets its own directory.
    let (_, _, again) = show_env(&server);
    assert_ne!(again["cwd"], facts["cwd"]);
}

#[test]
fn variables_named_in_function_env_passthrough_are_passed_through() {
    let functions = Functions::new();
    functions.script("show-env", SHOW_ENV);
    let server = functions
        .server()
        .env("MINI_LAMBDA_TEST_SECRET", "xyz")
        .env("MINI_LAMBDA_TEST_OTHER", "not passed")
        .env(
            "FUNCTION_ENV_PASSTHROUGH",
            "MINI_LAMBDA_TEST_SECRET,MINI_LAMBDA_TEST_ABSENT",
        )
        .start();
    let (_, env, _) = show_env(&server);
    assert_eq!(
        env.get("MINI_LAMBDA_TEST_SECRET").map(String::as_str),
        Some("xyz")
    );
    assert!(!env.contains_key("MINI_LAMBDA_TEST_OTHER"), "{env:?}");
    // Named but not set in the server's environment: not set for the function either.
    assert!(!env.contains_key("MINI_LAMBDA_TEST_ABSENT"), "{env:?}");
    assert!(!env.contains_key("DATABASE_URL"), "{env:?}");
    assert!(!env.contains_key("FUNCTION_ENV_PASSTHROUGH"), "{env:?}");
}

#[test]
fn attempts_after_retries_carry_exit_code_stderr_tail_and_the_attempt_number() {
    let functions = Functions::new();
    functions.script(
        "second-time-lucky",
        "cat > /dev/null\n\
         if [ \"$MINI_LAMBDA_ATTEMPT\" != 2 ]; then echo \"attempt $MINI_LAMBDA_ATTEMPT failed\" >&2; exit 4; fi\n\
         echo \"attempt $MINI_LAMBDA_ATTEMPT\"",
    );
    let server = functions
        .server()
        .env("RETRY_BACKOFF_MS", "10")
        .env("RETRY_BACKOFF_MAX_MS", "10")
        .start();
    let id = server.submit(json!({
        "function": "second-time-lucky", "payload": {}, "max_retries": 2
    }));
    let job = server.wait_for_status(&id, "success", secs(10));
    assert_eq!(job["result"], "attempt 2", "{job}");
    assert_eq!(job["retry_count"], 1, "{job}");
    let all = server.attempts(&id);
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["attempt"], 1);
    assert_eq!(all[0]["status"], "failed");
    assert_eq!(all[0]["error_message"], "attempt 1 failed");
    assert_eq!(all[0]["exit_code"], 4);
    assert_eq!(all[0]["stderr_tail"], "attempt 1 failed\n");
    assert_eq!(all[1]["attempt"], 2);
    assert_eq!(all[1]["status"], "success");
    assert_eq!(all[1]["result"], "attempt 2");
    assert_eq!(all[1]["exit_code"], 0);
    assert_eq!(all[1]["stderr_tail"], "");

    // A simulated job in the same server: both fields null.
    let simulated = server.submit(json!({"payload": {"duration_ms": 0}}));
    server.wait_for_status(&simulated, "success", secs(5));
    let attempt = only_attempt(&server, &simulated);
    assert_eq!(attempt["exit_code"], Value::Null, "{attempt}");
    assert_eq!(attempt["stderr_tail"], Value::Null, "{attempt}");
}

// ---------------------------------------------------------------------------
// The shipped examples
// ---------------------------------------------------------------------------

/// The examples shipped in the repository's `functions/`.
const SHIPPED: [&str; 4] = ["echo", "fail", "slow", "wordcount"];

/// The shipped examples are copied into a private directory: the repository's `functions/` is
/// where the README's tutorial has a user add their own (`greet`), and that must not change
/// what the tests see.
#[test]
fn the_shipped_example_functions_work() {
    let functions = Functions::new();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("functions");
    for name in SHIPPED {
        fs::copy(shipped.join(name), functions.dir().join(name))
            .unwrap_or_else(|err| panic!("copy the shipped function {name}: {err}"));
    }
    let server = functions.server().start();
    let listed = server.get("/functions").json();
    let names: Vec<&str> = listed
        .as_array()
        .expect("an array")
        .iter()
        .map(|f| f["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, SHIPPED, "{listed}");

    let payload = json!({"hello": ["world", 1, true], "n": null});
    let job = run(&server, "echo", payload.clone());
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(job["result"], payload);

    let job = run(
        &server,
        "wordcount",
        json!({"text": "the quick brown\nfox  jumps"}),
    );
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(job["result"], json!({"words": 5}));

    let job = run(&server, "fail", json!({}));
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error_message"], "fail: this function always fails");
    let attempt = only_attempt(&server, job["id"].as_str().unwrap());
    assert_eq!(attempt["exit_code"], 3, "{attempt}");

    let job = run(&server, "slow", json!({"seconds": 0}));
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(job["result"], "done");

    let id = server.submit(json!({
        "function": "slow", "payload": {"seconds": 30}, "timeout_seconds": 1, "max_retries": 0
    }));
    let job = wait_final(&server, &id, secs(10));
    assert_eq!(job["status"], "timeout", "{job}");
}

/// The default `FUNCTIONS_DIR` is relative; functions run in their own working directory, so
/// the server must resolve it against its own.
#[test]
fn a_relative_functions_dir_is_resolved_against_the_server_directory() {
    let server = TestServer::builder().env("FUNCTIONS_DIR", "fns").start();
    let dir = server.dir().join("fns");
    fs::create_dir(&dir).expect("create fns");
    let path = dir.join("hello");
    fs::write(&path, "#!/bin/sh\necho hello\n").expect("write the script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    let job = run(&server, "hello", json!({}));
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(job["result"], "hello");
}

/// A process that leaves the function's group (setsid) escapes the kill; if it keeps the
/// output open the attempt fails saying so, promptly, instead of reporting empty output.
#[test]
fn a_process_that_escapes_the_group_holding_stdout_fails_the_attempt() {
    let functions = Functions::new();
    functions.script(
        "escape",
        &format!(
            "{READ_PIDFILE}\nsetsid sh -c 'exec sleep 20' &\necho \"$!\" >> \"$pidfile\"\n\
             sleep 0.2\necho '{{\"ok\": 1}}'"
        ),
    );
    let server = functions.server().start();
    let pidfile = functions.scratch("pids");
    let id = submit_fn(
        &server,
        "escape",
        json!({"pidfile": pidfile.to_str().unwrap()}),
    );
    let escaped = read_pids(&pidfile, 1);
    let job = wait_final(&server, &id, secs(10));
    for pid in escaped {
        // Not the server's to stop (it left the group); the test cleans up after itself.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert_eq!(job["status"], "failed", "{job}");
    let message = job["error_message"].as_str().unwrap_or_default();
    assert!(message.contains("outside its process group"), "{job}");
}

/// A second signal exits at once, but not before killing the groups of running functions.
#[test]
fn a_forced_exit_still_kills_running_functions() {
    let functions = Functions::new();
    functions.script("sleeper", &sleeper_script());
    let mut server = functions.server().start();
    let Sleeper { pids, .. } = start_sleeper(&functions, &server);
    server.sigterm();
    // Signals of one kind do not queue: send the second once the first has been acted on.
    eventually(
        secs(5),
        "the server to answer 503 while draining",
        || match server.try_request("GET", "/health", &[], None) {
            Ok(response) if response.status == 503 => Some(()),
            _ => None,
        },
    );
    server.sigterm();
    server.wait_exit(secs(5));
    assert_all_gone(&pids);
}
