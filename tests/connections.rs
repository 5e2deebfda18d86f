//! Many clients at once: every connection is answered, none is left waiting for another to
//! close (tiny_http's pool can strand connections that arrive in a burst).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::TestServer;

const BURST: usize = 100;

#[test]
fn a_burst_of_keep_alive_connections_is_answered_on_every_connection() {
    let server = TestServer::start();
    // Open them all first, then ask on each: the server sees a burst of new connections, and
    // each stays open (keep-alive) so a stranded one would never be served.
    let mut connections: Vec<TcpStream> = (0..BURST)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    for connection in &mut connections {
        connection
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        connection
            .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("send");
    }
    let mut unanswered = Vec::new();
    for (index, connection) in connections.iter_mut().enumerate() {
        let mut head = [0u8; 12];
        match connection.read_exact(&mut head) {
            Ok(()) if &head == b"HTTP/1.1 200" => {}
            Ok(()) => panic!("connection {index}: {}", String::from_utf8_lossy(&head)),
            Err(err) => unanswered.push(format!("connection {index}: {err}")),
        }
    }
    assert!(
        unanswered.is_empty(),
        "{} of {BURST} unanswered: {unanswered:?}",
        unanswered.len()
    );
}
