//! Faults the server must ride out without losing an acknowledged job: a disk that fills up
//! under it and comes back, and attempts whose processes misbehave. (A panic inside an
//! attempt has no trigger from outside; `worker/pool.rs` tests it through the `Executor` seam.)

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::{
    assert_error, assert_stays, eventually, secs, unique_temp_dir, Response, TestServer,
};

/// A small tmpfs mounted for one test: a disk that really fills up. Unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it), or says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("mounting a tmpfs needs root".into());
        }
        let dir = unique_temp_dir();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output();
        let refusal = match mounted {
            Ok(output) if output.status.success() => return Ok(Tmpfs { dir }),
            Ok(output) => format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(err) => format!("cannot run mount: {err}"),
        };
        let _ = fs::remove_dir(&dir);
        Err(refusal)
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            // Something still holds a file open: detach now, freed when it lets go.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

fn submit_scheduled(server: &TestServer, data: &str, n: usize) -> Response {
    // Scheduled for later, so that only submits (and /health) write while the disk fills.
    server.post_json(
        "/jobs",
        &json!({"payload": {"data": data, "n": n}, "delay_seconds": 3600}),
    )
}

#[test]
fn a_full_disk_refuses_submits_with_503_keeps_every_acknowledged_job_and_recovers_by_itself() {
    let disk = match Tmpfs::mount("2m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_...: {why}; this test needs to mount a tmpfs");
            return;
        }
    };
    let db = disk.path().join("jobs.db");
    // Declared after the disk, so the server is stopped before the disk is unmounted.
    let mut server = TestServer::builder()
        .sqlite()
        .env("DATABASE_URL", &format!("sqlite://{}", db.display()))
        .start();
    server.wait_healthy();
    // Space to give back later.
    let filler = disk.path().join("filler");
    fs::write(&filler, vec![0u8; 512 * 1024]).unwrap();

    let data = "x".repeat(16 * 1024);
    let mut acknowledged = Vec::new();
    let refused = loop {
        let response = submit_scheduled(&server, &data, acknowledged.len());
        match response.status {
            201 => acknowledged.push(response.json()["job_id"].as_str().unwrap().to_string()),
            _ => break response,
        }
        assert!(acknowledged.len() < 500, "2 MiB never filled up");
    };
    let message = assert_error(&refused, 503, "unavailable");
    assert!(message.contains("disk is full"), "{message}");
    assert!(!acknowledged.is_empty());

    // While writes fail: every submit is refused, /health says so, reads still work.
    for n in 0..3 {
        let response = submit_scheduled(&server, &data, 1_000 + n);
        assert_error(&response, 503, "unavailable");
        let health = server.get("/health");
        assert_eq!(
            (health.status, health.json()),
            (
                503,
                json!({"status": "unavailable", "database": "writes_failing"})
            )
        );
    }
    let check_all = |server: &TestServer, acknowledged: &[String]| {
        for (n, id) in acknowledged.iter().enumerate() {
            let job = server.job(id);
            assert_eq!(job["payload"]["n"], n, "{id}");
        }
    };
    check_all(&server, &acknowledged);

    // Space comes back: the server notices by itself, with no submit to tell it.
    fs::remove_file(&filler).unwrap();
    eventually(Duration::from_secs(20), "GET /health answers 200", || {
        let health = server.get("/health");
        (health.status == 200).then_some(health.json())
    });
    let response = submit_scheduled(&server, &data, acknowledged.len());
    assert_eq!(response.status, 201, "{}", response.text());
    acknowledged.push(response.json()["job_id"].as_str().unwrap().to_string());
    assert_eq!(
        server.get("/health").json(),
        json!({"status": "ok", "database": "ok"})
    );
    check_all(&server, &acknowledged);

    server.restart();
    check_all(&server, &acknowledged);
    let (pending, _) = server.list("/jobs?status=pending&limit=1000");
    assert_eq!(pending.len(), acknowledged.len());

    let stored: Vec<Value> = pending.into_iter().map(|job| job["id"].clone()).collect();
    assert!(acknowledged.iter().all(|id| stored.contains(&json!(id))));
}

/// Fills what is left of the disk at `path`, in a file to remove later.
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut filler = fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    // The last bytes that fit.
    while filler.write_all(&[0]).is_ok() {}
}

#[test]
fn on_a_full_disk_a_finished_attempt_is_recorded_once_space_returns_and_no_job_runs_meanwhile() {
    let disk = match Tmpfs::mount("2m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED on_a_full_disk_...: {why}; this test needs to mount a tmpfs");
            return;
        }
    };
    let db = disk.path().join("jobs.db");
    let server = TestServer::builder()
        .sqlite()
        .env("DATABASE_URL", &format!("sqlite://{}", db.display()))
        .env("WORKER_COUNT", "1")
        .start();
    let running = server.submit(json!({"payload": {"duration_ms": 1500}, "max_retries": 0}));
    // Due while the disk is full: it must not be run while its claim cannot be stored.
    let due_later = server.submit(json!({"payload": {"duration_ms": 0}, "delay_seconds": 2}));
    server.wait_for_status(&running, "running", secs(5));
    let filler = disk.path().join("filler");
    fill_up(&filler);

    // The attempt ends; its worker is told so before the commit fails.
    eventually(secs(5), "the attempt's end failing to commit", || {
        let log = server.stderr_text();
        (log.contains(&format!("job {running} succeeded")) && log.contains("group commit of"))
            .then_some(())
    });
    assert_eq!(server.job(&running)["status"], "running");
    let started = |id: &str| {
        let log = server.stderr_text();
        log.matches(&format!("job {id} started")).count()
    };
    // Past the time the second job is due, and some: it is not started over and over.
    assert_stays(secs(3), || match started(&due_later) {
        0 => Ok(()),
        n => Err(format!(
            "job {due_later} started {n} times while nothing can be stored"
        )),
    });

    fs::remove_file(&filler).unwrap();
    // No restart, no request that writes: the worker's next claim carries the lost outcome.
    server.wait_for_status(&running, "success", secs(10));
    server.wait_for_status(&due_later, "success", secs(10));
    assert_eq!(started(&due_later), 1);
    let attempts = server.get(&format!("/jobs/{running}/attempts")).json();
    assert_eq!(attempts.as_array().map(Vec::len), Some(1), "{attempts}");
    assert_eq!(attempts[0]["status"], "success", "{attempts}");
}

/// The names of a process's threads as the kernel keeps them (cut to 15 bytes).
fn thread_names(pid: i32) -> Vec<String> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// Processes a test started outside the server's reach, killed when the test ends.
struct Escaped(Vec<i32>);

impl Drop for Escaped {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill has no memory preconditions; at worst the pid is already gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn an_attempts_threads_are_named_after_its_worker_and_end_with_it_even_if_its_pipes_stay_open() {
    let root = unique_temp_dir();
    let functions = root.join("functions");
    fs::create_dir(&functions).unwrap();
    let pidfile = root.join("escaped.pid");
    // Starts a process that leaves the group holding stdout and stderr open for 30 s, waits
    // until it has left (it writes its pid after setsid), and exits.
    let script = functions.join("escape");
    let pidfile_text = pidfile.display();
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nsetsid sh -c 'echo $$ > {pidfile_text}; exec sleep 30' &\n\
             while [ ! -s {pidfile_text} ]; do sleep 0.01; done\necho '{{}}'\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let server = TestServer::builder()
        .env("FUNCTIONS_DIR", functions.to_str().unwrap())
        .env("WORKER_COUNT", "1")
        .start();
    let id = server.submit(json!({"function": "escape", "payload": {}, "max_retries": 0}));
    let escaped = eventually(secs(5), "the escaped process's pid", || {
        fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    });
    let _escaped = Escaped(vec![escaped]);

    eventually(secs(5), "the attempt's pipe threads, named", || {
        let names = thread_names(server.pid());
        let named = ["worker-1-stdout", "worker-1-stderr"]
            .iter()
            .all(|name| names.iter().any(|n| n == name));
        named.then_some(())
    });
    let job = server.wait_for_job(&id, secs(10), "the attempt to end", |job| {
        job["status"] != "pending" && job["status"] != "running"
    });
    assert_eq!(job["status"], "failed", "{job}");
    // The escaped process still holds the pipes, but the attempt is over: so are its threads.
    eventually(secs(2), "no thread of the attempt left", || {
        let names = thread_names(server.pid());
        let left: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with("worker-1-"))
            .collect();
        left.is_empty().then_some(())
    });
    let _ = fs::remove_dir_all(&root);
}
