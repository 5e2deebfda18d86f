//! Faults the server must ride out without losing an acknowledged job: a disk that fills up
//! under it, and comes back.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::{assert_error, eventually, unique_temp_dir, Response, TestServer};

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
