//! A minimal keep-alive HTTP/1.1 client over `std::net::TcpStream`, the one client that measures
//! both the ceiling and the real server. It shares two cores with the server under test, so it
//! does as little as possible per request: requests are prebuilt bytes written with one
//! `write_all`, responses are parsed in place from a `BufReader` into buffers that are reused,
//! and only the status, the framing headers and the body are looked at.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Long enough for any honest response under load; short enough that a stuck server ends the
/// run with an error instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the bytes of one request. `Content-Type` is sent with a body because the server
/// refuses a declared non-JSON type and we want the same header work a real client causes.
pub fn request(method: &str, path: &str, json_body: Option<&str>) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    match json_body {
        Some(body) => {
            text.push_str("Content-Type: application/json\r\n");
            text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        }
        None => text.push_str("\r\n"),
    }
    text.into_bytes()
}

/// One keep-alive connection. After an I/O error or a `Connection: close` the next exchange
/// reconnects first, so a caller can simply keep calling `exchange`.
pub struct Connection {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    line: Vec<u8>,
    body: Vec<u8>,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> io::Result<Connection> {
        let mut connection = Connection {
            addr,
            stream: None,
            line: Vec::with_capacity(256),
            body: Vec::with_capacity(1024),
        };
        connection.connect()?;
        Ok(connection)
    }

    fn connect(&mut self) -> io::Result<()> {
        let stream = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT)?;
        // Requests are written in one piece; without NODELAY a small request can wait for the
        // previous response's delayed ACK (Nagle) and the figure measures the kernel's timer.
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        self.stream = Some(BufReader::with_capacity(16 * 1024, stream));
        Ok(())
    }

    /// Sends one prebuilt request and reads the whole response; returns its status. The body
    /// stays available through `body` until the next exchange.
    pub fn exchange(&mut self, request: &[u8]) -> io::Result<u16> {
        let result = self.try_exchange(request);
        if result.is_err() {
            // The connection's state is unknown after an error: never reuse it.
            self.stream = None;
        }
        result
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    fn try_exchange(&mut self, request: &[u8]) -> io::Result<u16> {
        if self.stream.is_none() {
            self.connect()?;
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(io::Error::other("not connected"));
        };
        stream.get_mut().write_all(request)?;
        let head = read_head(stream, &mut self.line)?;
        self.body.clear();
        match head.framing {
            Framing::Length(length) => {
                self.body.resize(length, 0);
                stream.read_exact(&mut self.body)?;
            }
            Framing::Chunked => read_chunked(stream, &mut self.line, &mut self.body)?,
            Framing::Empty => {}
            Framing::UntilClose => {
                stream.read_to_end(&mut self.body)?;
            }
        }
        if !head.keep_alive || head.framing == Framing::UntilClose {
            self.stream = None;
        }
        Ok(head.status)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    Empty,
    UntilClose,
}

struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
}

/// Reads the status line and headers. Only the headers that decide framing and reuse are
/// parsed; the rest are skipped without allocating.
fn read_head(stream: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> io::Result<Head> {
    read_line(stream, line)?;
    // "HTTP/1.1 201 Created\r\n": the status is the three digits after the first space.
    let status = line
        .get(9..12)
        .filter(|_| line.starts_with(b"HTTP/1."))
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse::<u16>().ok())
        .ok_or_else(|| {
            invalid(format!(
                "bad status line {:?}",
                String::from_utf8_lossy(line)
            ))
        })?;
    let mut length = None;
    let mut chunked = false;
    let mut keep_alive = line.starts_with(b"HTTP/1.1");
    loop {
        read_line(stream, line)?;
        let header = trim_end(line);
        if header.is_empty() {
            break;
        }
        let Some(colon) = header.iter().position(|&byte| byte == b':') else {
            continue;
        };
        let (name, value) = (&header[..colon], trim(&header[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            let text = std::str::from_utf8(value).unwrap_or("?");
            length = Some(
                text.parse::<usize>()
                    .map_err(|_| invalid(format!("bad Content-Length {text:?}")))?,
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = contains_ignore_case(value, b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            if contains_ignore_case(value, b"close") {
                keep_alive = false;
            } else if contains_ignore_case(value, b"keep-alive") {
                keep_alive = true;
            }
        }
    }
    let framing = if status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(length) = length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    Ok(Head {
        status,
        framing,
        keep_alive,
    })
}

/// tiny_http switches to chunked encoding for bodies of 32 KiB and more, which a page of 100
/// jobs is, so the list figures need this.
fn read_chunked(
    stream: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        read_line(stream, line)?;
        let size_text = trim(
            trim_end(line)
                .split(|&byte| byte == b';')
                .next()
                .unwrap_or(b""),
        );
        let size_text = std::str::from_utf8(size_text).unwrap_or("?");
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                read_line(stream, line)?;
                if trim_end(line).is_empty() {
                    return Ok(());
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        stream.read_exact(&mut body[start..])?;
        read_line(stream, line)?;
    }
}

fn read_line(stream: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    if stream.read_until(b'\n', line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    Ok(())
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|byte| !byte.is_ascii_whitespace())
        .map_or(0, |last| last + 1);
    &bytes[..end]
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    trim_end(&bytes[start..])
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
