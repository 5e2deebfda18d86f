//! Reading a request: the JSON body through a size cap and a media-type check, and the query
//! string into name/value pairs.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::http::framing::Body;

/// How much body a request may send, and how long it may take to send it.
#[derive(Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    /// From the first read of the body to its last byte. Each read also gives up after
    /// `HTTP_IDLE_TIMEOUT_SECONDS` of silence, so a body holds its connection thread for at
    /// most this plus one idle timeout, however slowly it trickles in.
    pub patience: Duration,
}

/// Reads a JSON body of at most `limits.max_bytes` bytes as sent (the bytes an idempotency
/// fingerprint is taken of), sets `body_read` once it was read to its end. A missing
/// `Content-Type` is taken as JSON (handy with plain curl); any other declared type is
/// refused. [`parse_json`] parses it.
pub fn read_json_bytes(
    request: &mut tiny_http::Request,
    framing: &Body,
    limits: BodyLimits,
    body_read: &mut bool,
) -> Result<Vec<u8>> {
    if let Some(content_type) = request.headers().get("Content-Type") {
        check_json_media_type(content_type.as_str())?;
    }
    let limit = limits.max_bytes;
    let declared = match framing {
        Body::Length(length) => Some(*length),
        Body::Empty => None,
    };
    if declared.is_some_and(|length| length > u64::try_from(limit).unwrap_or(u64::MAX)) {
        return Err(Error::PayloadTooLarge { limit });
    }
    let started = Instant::now();
    let reader = request.as_reader();
    let mut body = Vec::with_capacity(declared.map_or(0, |length| length as usize).min(limit));
    let mut chunk = [0_u8; 8192];
    loop {
        if started.elapsed() > limits.patience {
            return Err(body_too_slow(limits.patience));
        }
        let read = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(body_too_slow(limits.patience))
            }
            Err(err) => {
                return Err(Error::BadRequest(format!(
                    "could not read the request body: {err}"
                )))
            }
        };
        if body.len() + read > limit {
            return Err(Error::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk[..read]);
    }
    // tiny_http ends a body at the end of the connection, declared length or not.
    if let Some(declared) = declared.filter(|declared| *declared != body.len() as u64) {
        return Err(Error::BadRequest(format!(
            "the connection ended after {} of the {declared} body bytes declared",
            body.len()
        )));
    }
    *body_read = true;
    Ok(body)
}

fn body_too_slow(patience: Duration) -> Error {
    Error::RequestTimeout(format!(
        "the request body did not arrive within {} s",
        patience.as_secs()
    ))
}

pub fn parse_json(body: &[u8]) -> Result<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::InvalidJson(
            "the request body is empty; send a JSON object such as {\"payload\": {}}".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|err| Error::InvalidJson(format!("the request body is not valid JSON: {err}")))
}

fn check_json_media_type(content_type: &str) -> Result<()> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType(format!(
            "Content-Type must be application/json, got {content_type:?} (with curl use --json or -H 'Content-Type: application/json')"
        )))
    }
}

/// Splits a query string into decoded name/value pairs.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (byte, hex) {
            (b'%', Some(value)) => {
                decoded.push(value);
                index += 3;
            }
            (b'+', _) => {
                decoded.push(b' ');
                index += 1;
            }
            _ => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_accepted_with_parameters() {
        assert!(check_json_media_type("application/json").is_ok());
        assert!(check_json_media_type("Application/JSON; charset=utf-8").is_ok());
        assert!(check_json_media_type("application/vnd.api+json").is_ok());
        assert!(matches!(
            check_json_media_type("application/x-www-form-urlencoded"),
            Err(Error::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn query_pairs_are_decoded() {
        assert_eq!(
            query_pairs("status=failed&limit=5&x=a%20b+c&flag"),
            vec![
                ("status".to_string(), "failed".to_string()),
                ("limit".to_string(), "5".to_string()),
                ("x".to_string(), "a b c".to_string()),
                ("flag".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn empty_and_malformed_bodies_are_invalid_json() {
        assert!(matches!(parse_json(b"  "), Err(Error::InvalidJson(_))));
        assert!(matches!(
            parse_json(b"{\"payload\":"),
            Err(Error::InvalidJson(_))
        ));
    }
}
