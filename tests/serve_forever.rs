//! A job server is left alone for hours: it must accept connections for as long as it runs,
//! close connections that stay silent, and, if it can no longer accept at all, say why and
//! exit non-zero so a supervisor restarts it instead of lingering as a process that answers
//! nothing.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{read_response, run_to_exit, TestServer};

#[test]
fn an_idle_server_still_accepts_connections_after_its_idle_timeout() {
    let server = TestServer::builder()
        .env("HTTP_IDLE_TIMEOUT_SECONDS", "1")
        .start();
    assert_eq!(server.get("/health").status, 200);
    // The idle period itself is what is tested: several idle timeouts with no client at all.
    thread::sleep(Duration::from_secs(4));
    assert_eq!(server.get("/health").status, 200);
    let id = server.submit(json!({"payload": {"result": "after idle"}}));
    let job = server.wait_for_status(&id, "success", Duration::from_secs(10));
    assert_eq!(job["result"], "after idle");
}

#[test]
fn a_silent_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = TestServer::builder()
        .env("HTTP_IDLE_TIMEOUT_SECONDS", "1")
        .start();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream).unwrap().status, 200);
    let silent_since = Instant::now();
    let mut rest = Vec::new();
    let closed = stream.read_to_end(&mut rest);
    // tiny_http writes an empty `400` as it gives up on a silent connection (README,
    // "Security"); nothing else may come, and the connection must end.
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        closed.is_ok() && (rest.is_empty() || rest.starts_with("HTTP/1.1 400 Bad Request\r\n")),
        "{closed:?} {rest:?}"
    );
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn out_of_file_descriptors_the_server_drains_and_exits_non_zero() {
    let mut server = TestServer::builder()
        .open_files_limit(48)
        .env("MAX_CONNECTIONS", "10000")
        .start();
    let id = server.submit(json!({"payload": {}, "delay_seconds": 3600}));
    // Hold connections open until accept fails for lack of descriptors.
    let mut held = Vec::new();
    let exit = loop {
        if let Some(status) = server.try_wait_exit(Duration::from_millis(10)) {
            break status;
        }
        if held.len() < 200 {
            if let Ok(stream) = TcpStream::connect(server.addr) {
                held.push(stream);
            }
        }
        assert!(
            held.len() < 200 || server.try_wait_exit(Duration::from_secs(20)).is_some(),
            "the server kept running without descriptors; stderr:\n{}",
            server.stderr_text()
        );
    };
    assert_eq!(
        exit.code(),
        Some(1),
        "{exit:?}; stderr:\n{}",
        server.stderr_text()
    );
    let stderr = server.stderr_text();
    assert!(
        stderr.contains("stopped accepting connections") && stderr.contains("Too many open files"),
        "the cause is not in the log:\n{stderr}"
    );
    drop(held);
    // The acknowledged job is still there after a normal restart.
    server.set_env("MAX_CONNECTIONS", "1024");
    server.restart_without_limit();
    assert_eq!(server.job(&id)["status"], "pending");
}

#[test]
fn a_non_loopback_address_without_a_token_is_refused_with_exit_2() {
    let finished = run_to_exit(
        &[],
        &[("SERVER_ADDR", "0.0.0.0:0")],
        Duration::from_secs(20),
    );
    assert_eq!(finished.status.code(), Some(2), "{}", finished.stderr);
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("error: SERVER_ADDR:")
            && lines[0].contains("API_TOKEN")
            && lines[0].contains("ALLOW_UNAUTHENTICATED=true"),
        "{lines:?}"
    );
}
