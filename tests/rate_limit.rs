//! `SUBMIT_RATE_LIMIT`: a token bucket per client on `POST /jobs` and `POST /jobs/batch`.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn job() -> Vec<u8> {
    serde_json::to_vec(&json!({"payload": {"duration_ms": 0}})).unwrap()
}

/// POST /jobs from the local address `from` (any 127.x.y.z), with extra header fields.
fn submit_from(server: &TestServer, from: [u8; 4], headers: &[(&str, &str)]) -> Response {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(IpAddr::from(from), 0).into())
        .unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    let body = job();
    let mut head = format!(
        "POST /jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    read_response(&mut stream).unwrap()
}

fn post_job(server: &TestServer) -> Response {
    server.post_jobs_raw(&job())
}

/// The RateLimit-* headers as (limit, remaining, reset).
fn rate_headers(response: &Response) -> (String, String, String) {
    let header = |name| {
        response
            .header(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", response.headers))
            .to_string()
    };
    (
        header("RateLimit-Limit"),
        header("RateLimit-Remaining"),
        header("RateLimit-Reset"),
    )
}

fn stored_jobs(server: &TestServer) -> usize {
    server.list("/jobs?limit=1000").0.len()
}

fn strings(limit: &str, remaining: &str, reset: &str) -> (String, String, String) {
    (limit.into(), remaining.into(), reset.into())
}

#[test]
fn a_burst_passes_then_submits_are_refused_429_with_every_header_and_nothing_stored() {
    let server = TestServer::builder()
        .env("SUBMIT_RATE_LIMIT", "3/m")
        .start();
    let expected = [("2", "0"), ("1", "0"), ("0", "20")];
    for (remaining, reset) in expected {
        let response = post_job(&server);
        assert_eq!(response.status, 201, "{}", response.text());
        assert_eq!(rate_headers(&response), strings("3", remaining, reset));
    }
    let refused = post_job(&server);
    let message = assert_error(&refused, 429, "rate_limited");
    assert!(message.contains("try again in 20 s"), "{message}");
    assert_eq!(refused.header("Retry-After"), Some("20"));
    assert_eq!(rate_headers(&refused), strings("3", "0", "20"));
    // A batch is a submit too, refused before it is routed.
    let batch = server.post_json("/jobs/batch", &json!({"jobs": [{"payload": {}}]}));
    assert_error(&batch, 429, "rate_limited");
    // Other routes are not limited, and carry no RateLimit headers.
    let listed = server.get("/jobs");
    assert_eq!(listed.status, 200);
    assert_eq!(listed.header("RateLimit-Limit"), None);
    let bulk = server.post_json("/jobs/cancel", &json!({"status": "pending"}));
    assert_eq!(bulk.status, 200, "{}", bulk.text());
    assert_eq!(stored_jobs(&server), 3);
}

#[test]
fn the_bucket_refills_at_the_rate() {
    let server = TestServer::builder()
        .env("SUBMIT_RATE_LIMIT", "2/s")
        .start();
    assert_eq!(post_job(&server).status, 201);
    assert_eq!(post_job(&server).status, 201);
    let refused = post_job(&server);
    assert_error(&refused, 429, "rate_limited");
    assert_eq!(refused.header("Retry-After"), Some("1"));
    assert_eq!(rate_headers(&refused), strings("2", "0", "1"));
    let refused_at = Instant::now();
    // A token comes back every 500 ms.
    let again = eventually(secs(5), "a submit after the refill", || {
        Some(post_job(&server)).filter(|response| response.status == 201)
    });
    assert!(
        refused_at.elapsed() >= ms(300),
        "{:?}",
        refused_at.elapsed()
    );
    assert_eq!(again.header("RateLimit-Limit"), Some("2"));
    assert_eq!(stored_jobs(&server), 3);
}

#[test]
fn with_auth_the_bucket_is_the_tokens_and_without_it_each_address_has_its_own() {
    let server = TestServer::builder()
        .env("SUBMIT_RATE_LIMIT", "2/m")
        .env("API_TOKEN", "s3cret")
        .start();
    let bearer = [("Authorization", "Bearer s3cret")];
    let wrong = [("Authorization", "Bearer guess")];
    // Requests without a valid token are refused by auth and take nothing from the bucket.
    for _ in 0..3 {
        assert_error(
            &submit_from(&server, [127, 0, 0, 1], &wrong),
            401,
            "unauthorized",
        );
    }
    assert_eq!(submit_from(&server, [127, 0, 0, 1], &bearer).status, 201);
    assert_eq!(submit_from(&server, [127, 0, 0, 2], &bearer).status, 201);
    // The token's bucket is empty, from whatever address it comes.
    let refused = submit_from(&server, [127, 0, 0, 3], &bearer);
    assert_error(&refused, 429, "rate_limited");
    assert_eq!(rate_headers(&refused), strings("2", "0", "30"));

    let open = TestServer::builder()
        .env("SUBMIT_RATE_LIMIT", "2/m")
        .start();
    for _ in 0..2 {
        assert_eq!(submit_from(&open, [127, 0, 0, 1], &[]).status, 201);
    }
    assert_error(
        &submit_from(&open, [127, 0, 0, 1], &[]),
        429,
        "rate_limited",
    );
    // Another address is another client, with its own full bucket.
    let other = submit_from(&open, [127, 0, 0, 2], &[]);
    assert_eq!(other.status, 201, "{}", other.text());
    assert_eq!(rate_headers(&other), strings("2", "1", "0"));
}

#[test]
fn a_refused_submit_is_answered_without_waiting_for_its_body() {
    let server = TestServer::builder()
        .env("SUBMIT_RATE_LIMIT", "1/h")
        .env("HTTP_IDLE_TIMEOUT_SECONDS", "30")
        .start();
    assert_eq!(post_job(&server).status, 201);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    // Half a megabyte declared, a few bytes sent, and the rest never comes.
    let head = "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500000\r\n\r\n{\"payload\": ";
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    let refused = read_response(&mut stream).unwrap();
    assert_error(&refused, 429, "rate_limited");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(refused.header("Retry-After"), Some("3600"));
    // The connection is closed after the answer: the unread body is never taken as a request.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert_eq!(stored_jobs(&server), 1);
}
