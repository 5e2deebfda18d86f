//! The ceiling: a bare tiny_http server with the real server's shape and none of its work.
//! Same crate and version, the same listener set-up (`mini_lambda_rust::listen_http`: no
//! Nagle, the same idle connection threads), as many handler threads calling `recv` as the
//! server under test runs (counted from it, see `phases::ceiling`), the request body read in
//! full, a fixed 201 JSON answer the size of a real submit response; no parsing, no database,
//! no logging. Whatever the real server reaches is measured against this.
//!
//! It runs in its own process (the loadgen re-executed as `loadgen bare-server`), so its
//! threads, memory and start-up time are measured like the real server's.

use std::io::Write;
use std::thread;

use crate::error::{Context, Error, Result};

const BODY: &[u8] = br#"{"job_id":"00000000-0000-0000-0000-000000000000","status":"pending"}"#;

/// Serves on `addr` with `threads` handler threads until SIGTERM. Prints
/// `listening on http://ADDR` once ready, the same line the real server prints, so one
/// start-up routine handles both.
pub fn serve(addr: &str, threads: usize) -> Result<()> {
    let socket_addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|err| Error::new(format!("bad address {addr}: {err}")))?;
    let (server, local) = mini_lambda_rust::listen_http(socket_addr)
        .map_err(|err| Error::new(format!("cannot listen on {addr}: {err}")))?;
    let content_type = tiny_http::Header::from_bytes("Content-Type", "application/json")
        .map_err(|_| Error::new("bad Content-Type header"))?;
    // Exit 0 on SIGTERM like the real server, so one stop routine can expect a clean exit.
    // Nothing is in flight that matters: the benchmark has stopped sending by then.
    ctrlc::set_handler(|| std::process::exit(0)).context("cannot install the SIGTERM handler")?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{local}").context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")?;
    thread::scope(|scope| {
        for _ in 0..threads {
            let server = &server;
            let content_type = &content_type;
            scope.spawn(move || {
                let mut body = Vec::with_capacity(1024);
                while let Ok(received) = server.recv() {
                    let Ok(mut request) = received else { continue };
                    body.clear();
                    // Read the body like the real server does; a read error only means the
                    // client went away, and the response below then fails quietly too.
                    let _ = request.as_reader().read_to_end(&mut body);
                    let response = tiny_http::Response::from_data(BODY)
                        .with_status_code(201)
                        .with_header(content_type.clone());
                    let _ = request.respond(response);
                }
            });
        }
    });
    Ok(())
}
