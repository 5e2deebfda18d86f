//! The listening socket and the accept loop. tiny_http's own accept loop ends on the first
//! error other than `ECONNABORTED`, and the read timeout our accepted sockets inherit from the
//! listener makes `accept` itself time out whenever no client connects for that long: a
//! server left idle stopped accepting. This loop uses tiny_http's public accept step but
//! decides for itself which errors are passing (a timeout, a peer gone before accept), which
//! are exhaustion worth a short wait (out of descriptors or memory), and which end it.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::warn;
use nix::errno::Errno;

/// How long the loop keeps retrying while the process is out of descriptors or memory
/// before it gives up, so that a supervisor restarts a server that cannot recover.
const EXHAUSTION_PATIENCE: Duration = Duration::from_secs(2);
/// Pause between accept attempts while exhausted.
const EXHAUSTION_BACKOFF: Duration = Duration::from_millis(50);

/// Binds `addr` with `TCP_NODELAY` and the per-connection timeouts set on the listener; on
/// Linux accepted sockets inherit both (tiny_http sets no timeout of its own). Without Nagle
/// off, a response tiny_http writes in several writes would wait ~40 ms on delayed ACKs.
pub fn bind(addr: SocketAddr, idle_timeout: Duration) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    let socket = socket2::SockRef::from(&listener);
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(idle_timeout))?;
    socket.set_write_timeout(Some(idle_timeout))?;
    Ok(listener)
}

/// Wakes an accept loop blocked in `accept` so it sees the stop request at once.
pub fn interrupt_accept(listener: &TcpListener) {
    let _ = socket2::SockRef::from(listener).shutdown(Shutdown::Both);
}

/// What to do about an accept error.
#[derive(Debug, PartialEq, Eq)]
enum AcceptError {
    /// Nothing is wrong with the server: no client came in time, or one left before it was
    /// accepted (Linux reports some of a new connection's network errors from `accept`).
    Passing,
    /// Out of descriptors or memory: it may pass when connections close.
    Exhausted,
    /// The listener itself is broken.
    Fatal,
}

fn classify(err: &io::Error) -> AcceptError {
    let Some(code) = err.raw_os_error() else {
        return match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {
                AcceptError::Passing
            }
            _ => AcceptError::Fatal,
        };
    };
    match Errno::from_raw(code) {
        Errno::EAGAIN
        | Errno::EINTR
        | Errno::ECONNABORTED
        | Errno::EPROTO
        | Errno::ENOPROTOOPT
        | Errno::EHOSTDOWN
        | Errno::ENONET
        | Errno::EHOSTUNREACH
        | Errno::EOPNOTSUPP
        | Errno::ENETDOWN
        | Errno::ENETUNREACH
        | Errno::EPERM
        | Errno::ETIMEDOUT => AcceptError::Passing,
        Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM => AcceptError::Exhausted,
        _ => AcceptError::Fatal,
    }
}

/// Accepts until `stop` delivers (or its sender is dropped), handing each connection to
/// `dispatch`. Returns `Ok` when stopped, the error when the listener cannot go on.
pub fn accept_loop<C>(
    listener: &tiny_http::Listener,
    stop: &Receiver<()>,
    accept: impl Fn(&tiny_http::Listener) -> io::Result<Option<C>>,
    mut dispatch: impl FnMut(C),
) -> io::Result<()> {
    let mut exhausted_since: Option<Instant> = None;
    loop {
        if stopped(stop, Duration::ZERO) {
            return Ok(());
        }
        // tiny_http duplicates each accepted socket and panics if that fails, which happens
        // when the last descriptor went to `accept` itself: that is exhaustion too.
        let accepted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| accept(listener)))
            .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(Errno::EMFILE as i32)));
        match accepted {
            Ok(Some(connection)) => {
                exhausted_since = None;
                dispatch(connection);
            }
            Ok(None) => {}
            Err(_) if stopped(stop, Duration::ZERO) => return Ok(()),
            Err(err) => match classify(&err) {
                AcceptError::Passing => exhausted_since = None,
                AcceptError::Exhausted => {
                    let since = *exhausted_since.get_or_insert_with(|| {
                        warn!("cannot accept connections: {err}; retrying");
                        Instant::now()
                    });
                    if since.elapsed() >= EXHAUSTION_PATIENCE {
                        return Err(err);
                    }
                    if stopped(stop, EXHAUSTION_BACKOFF) {
                        return Ok(());
                    }
                }
                AcceptError::Fatal => return Err(err),
            },
        }
    }
}

/// Whether a stop was requested, waiting up to `wait` for one.
fn stopped(stop: &Receiver<()>, wait: Duration) -> bool {
    !matches!(
        stop.recv_timeout(wait),
        Err(crossbeam_channel::RecvTimeoutError::Timeout)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_vanished_peers_pass_and_exhaustion_waits() {
        let os = |errno: Errno| io::Error::from_raw_os_error(errno as i32);
        assert_eq!(classify(&os(Errno::EAGAIN)), AcceptError::Passing);
        assert_eq!(classify(&os(Errno::ECONNABORTED)), AcceptError::Passing);
        assert_eq!(classify(&os(Errno::EMFILE)), AcceptError::Exhausted);
        assert_eq!(classify(&os(Errno::ENFILE)), AcceptError::Exhausted);
        assert_eq!(classify(&os(Errno::EBADF)), AcceptError::Fatal);
        assert_eq!(classify(&os(Errno::EINVAL)), AcceptError::Fatal);
    }

    #[test]
    fn an_idle_listener_keeps_accepting_past_its_timeout() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), Duration::from_millis(50)).unwrap();
        let addr = listener.local_addr().unwrap();
        let tiny = tiny_http::Listener::from(listener);
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(1);
        let (accepted_tx, accepted) = crossbeam_channel::unbounded();
        std::thread::scope(|scope| {
            let looping = scope.spawn(|| {
                accept_loop(
                    &tiny,
                    &stop,
                    |listener| tiny_http::Server::accept_connection(listener, &no_tls()),
                    |_connection| {
                        let _ = accepted_tx.send(());
                    },
                )
            });
            // Several accept timeouts pass with no client at all.
            assert!(accepted.recv_timeout(Duration::from_millis(300)).is_err());
            let _client = std::net::TcpStream::connect(addr).unwrap();
            assert!(accepted.recv_timeout(Duration::from_secs(5)).is_ok());
            stop_tx.send(()).unwrap();
            let _wake = std::net::TcpStream::connect(addr);
            assert!(looping.join().unwrap().is_ok());
        });
    }

    fn no_tls() -> tiny_http::SslContextWrap {
        tiny_http::SslContextWrap::build_ssl_capabilities(None).unwrap()
    }
}
