//! Group commit must keep the promise that a 201 means "on disk": many concurrent submits,
//! `kill -9` in the middle of them, and every job that was acknowledged is there after restart.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::json;
use support::{eventually, try_request, TestServer};

const SUBMITTERS: usize = 16;

#[test]
fn every_acknowledged_job_survives_kill_9_during_concurrent_submits() {
    let mut server = TestServer::start();
    let addr = server.addr;
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let answered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|submitter| {
            let (acknowledged, answered, stop) = (
                Arc::clone(&acknowledged),
                Arc::clone(&answered),
                Arc::clone(&stop),
            );
            thread::spawn(move || {
                // Bounded: the kill ends the loop long before this many.
                for n in 0..5_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let body = json!({
                        "payload": {"submitter": submitter, "n": n, "duration_ms": 0},
                        "delay_seconds": 3600
                    })
                    .to_string();
                    let headers = [("Content-Type", "application/json")];
                    match try_request(addr, "POST", "/jobs", &headers, Some(body.as_bytes())) {
                        Ok(response) if response.status == 201 => {
                            let id = response.json()["job_id"].as_str().map(str::to_string);
                            acknowledged.lock().unwrap().extend(id);
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(response) => {
                            panic!("submit answered {}: {}", response.status, response.text())
                        }
                        // The process is gone: everything after the kill fails at transport.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();

    eventually(Duration::from_secs(30), "300 jobs acknowledged", || {
        (answered.load(Ordering::Relaxed) >= 300).then_some(())
    });
    server.kill_9();
    stop.store(true, Ordering::Relaxed);
    for submitter in submitters {
        submitter.join().expect("submitter thread");
    }

    server.restart();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300);
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| server.get(&format!("/jobs/{id}")).status != 200)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged jobs lost after kill -9: {:?}",
        missing.len(),
        acknowledged.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}
