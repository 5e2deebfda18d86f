//! Ending the reading side of one connection, found by its addresses. tiny_http keeps each
//! connection's socket to itself, and reads (to discard it) whatever is left of a body we
//! refused as the request is dropped: for a client that keeps trickling, or sends gigabytes,
//! that read has no end. Shutting the socket's reading side first makes it end at once.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use nix::sys::socket::{getpeername, getsockname, shutdown, Shutdown, SockaddrStorage};

/// Shuts down reading on the socket from `peer` to our port `local_port` (the address may be
/// any of the machine's when the listener is on `0.0.0.0`); `false` if there is none. Only the
/// one live TCP connection has this pair (tiny_http holds it under two descriptors, one
/// socket), so a descriptor that another thread closes and reuses meanwhile cannot match.
pub fn stop_reading(local_port: u16, peer: SocketAddr) -> bool {
    let Ok(descriptors) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    for entry in descriptors.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if is_socket
            && address(getpeername::<SockaddrStorage>(fd)) == Some(peer)
            && address(getsockname::<SockaddrStorage>(fd)).map(|local| local.port())
                == Some(local_port)
        {
            return shutdown(fd, Shutdown::Read).is_ok();
        }
    }
    false
}

fn address(found: nix::Result<SockaddrStorage>) -> Option<SocketAddr> {
    let storage = found.ok()?;
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    let v6 = storage.as_sockaddr_in6()?;
    Some(SocketAddr::V6((*v6).into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_blocked_read_on_the_matching_socket_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut served, peer) = listener.accept().unwrap();
        let local = served.local_addr().unwrap().port();
        client.write_all(b"abc").unwrap();
        let mut buf = [0_u8; 16];
        assert_eq!(served.read(&mut buf).unwrap(), 3);
        assert!(stop_reading(local, peer));
        // The client keeps sending; the server's reads now end instead of waiting for more.
        client.write_all(b"more").unwrap();
        served
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        let ended = served.read_to_end(&mut rest);
        assert!(ended.is_ok(), "{ended:?}");
        assert!(!stop_reading(local, "127.0.0.1:1".parse().unwrap()));
    }
}
