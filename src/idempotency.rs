//! Idempotency keys of submits: what a key may be, and the fingerprint of the request sent
//! with it. A key names one submit for `IDEMPOTENCY_TTL_SECONDS`: a repeat with the same
//! fingerprint is answered as the first was, and creates nothing; one with another fingerprint
//! is refused. Keys are global (not per client or token). Depends on nothing else in the crate
//! but `error`; the store keeps the keys, the queue decides what a found key means.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The longest key accepted.
pub const MAX_KEY_LENGTH: usize = 255;

/// A submit's key and the fingerprint of its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    /// SHA-256 of the route and the raw body, hex.
    pub fingerprint: String,
}

impl Idempotency {
    /// `key` as sent in the `Idempotency-Key` header: 1 to 255 visible ASCII characters (no
    /// spaces, no control characters). `route` and `body` make the fingerprint: the same body
    /// sent to another route is another request.
    pub fn new(key: &str, route: &str, body: &[u8]) -> Result<Idempotency> {
        let visible = |byte: u8| byte.is_ascii_graphic();
        if !(1..=MAX_KEY_LENGTH).contains(&key.len()) || !key.bytes().all(visible) {
            return Err(Error::Validation(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (no spaces), got {} bytes",
                key.len()
            )));
        }
        Ok(Idempotency {
            key: key.to_string(),
            fingerprint: fingerprint(route, body),
        })
    }
}

/// The hash of the route and the body's bytes exactly as sent (not of the parsed JSON: two
/// bodies that differ in a byte are two requests). Cryptographic, so no crafted body can share
/// another's fingerprint and be answered with the other's jobs.
fn fingerprint(route: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(route.as_bytes());
    // The route never contains a NUL, so route and body cannot run into each other.
    hash.update([0]);
    hash.update(body);
    format!("{:x}", hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_1_to_255_visible_ascii_characters() {
        for good in ["a", "order-42/attempt:1", &"k".repeat(255), "~!@#$%^&*()"] {
            assert!(Idempotency::new(good, "/jobs", b"{}").is_ok(), "{good:?}");
        }
        for bad in [
            "",
            " ",
            "two words",
            "tab\tkey",
            "é",
            &"k".repeat(256),
            "nul\0",
        ] {
            match Idempotency::new(bad, "/jobs", b"{}") {
                Err(Error::Validation(message)) => {
                    assert!(message.starts_with("Idempotency-Key must be"), "{message}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_fingerprint_is_of_the_route_and_the_exact_bytes() {
        let of = |route: &str, body: &[u8]| Idempotency::new("k", route, body).unwrap();
        let first = of("/jobs", br#"{"payload":1}"#);
        assert_eq!(first, of("/jobs", br#"{"payload":1}"#));
        assert_eq!(first.fingerprint.len(), 64);
        assert_ne!(first, of("/jobs", br#"{"payload": 1}"#));
        assert_ne!(first, of("/jobs/batch", br#"{"payload":1}"#));
        // The known SHA-256 of the empty route, a NUL, and an empty body.
        assert_eq!(
            of("", b"").fingerprint,
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }
}
