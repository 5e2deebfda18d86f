//! W3C Trace Context: the `traceparent` header a submit may carry, checked here and then kept
//! as sent with each job it submits, so the job's function (`TRACEPARENT`) and every log
//! line about the job can name the trace it belongs to. Only parsing lives here; the header
//! is read in `http::submit`, stored by the store, passed on by the executor.
//!
//! Version `00` must be exactly `00-<trace-id>-<parent-id>-<flags>`: 32 and 16 lowercase hex
//! digits, neither all zeros, and 2 hex digits of flags. A later version is read as the spec
//! asks of a parser that knows only `00` (its first 55 characters must read as version 00's
//! fields, and anything after them must start with `-`), and kept whole, so a function that
//! knows the later version sees all of it. Version `ff` is invalid.

use std::fmt;

use crate::error::{Error, Result};

/// The header's name, as clients send it and as errors name it.
pub const HEADER: &str = "traceparent";

/// The longest value kept: version 00 is 55 characters; room for a later version's
/// additions without storing whatever a client sends.
const MAX_LEN: usize = 512;
/// `00-` + 32 + `-` + 16 + `-` + 2.
const VERSION_00_LEN: usize = 55;

/// A valid `traceparent` value, as it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent(String);

impl TraceParent {
    /// Checks `text` (the header's value) against the rules above.
    pub fn parse(text: &str) -> Result<TraceParent> {
        check(text).map_err(|why| {
            let shown: String = text.chars().take(80).collect();
            Error::Validation(format!(
                "the {HEADER} header must be a W3C Trace Context value such as \
                 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01; got {shown:?}: {why}"
            ))
        })?;
        Ok(TraceParent(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The trace id of a stored `traceparent` (checked when it was submitted): the 32 digits
/// after the version.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.get(3..35)
}

fn check(text: &str) -> std::result::Result<(), &'static str> {
    if text.len() > MAX_LEN {
        return Err("it is longer than 512 characters");
    }
    let bytes = text.as_bytes();
    if text.len() < VERSION_00_LEN {
        return Err("it is shorter than 55 characters");
    }
    let version = &bytes[0..2];
    if !is_lower_hex(version) || bytes[2] != b'-' {
        return Err("it must start with a version of 2 lowercase hex digits and a '-'");
    }
    if version == b"ff" {
        return Err("version ff is invalid");
    }
    let (trace_id, parent_id, flags) = (&bytes[3..35], &bytes[36..52], &bytes[53..55]);
    if !is_lower_hex(trace_id) || bytes[35] != b'-' {
        return Err("the trace-id must be 32 lowercase hex digits followed by '-'");
    }
    if trace_id.iter().all(|&digit| digit == b'0') {
        return Err("the trace-id must not be all zeros");
    }
    if !is_lower_hex(parent_id) || bytes[52] != b'-' {
        return Err("the parent-id must be 16 lowercase hex digits followed by '-'");
    }
    if parent_id.iter().all(|&digit| digit == b'0') {
        return Err("the parent-id must not be all zeros");
    }
    if !is_lower_hex(flags) {
        return Err("the trace-flags must be 2 lowercase hex digits");
    }
    let rest = &bytes[VERSION_00_LEN..];
    if version == b"00" && !rest.is_empty() {
        return Err("version 00 has nothing after the trace-flags");
    }
    if !rest.is_empty() && rest[0] != b'-' {
        return Err("a later version's further fields must follow a '-'");
    }
    if !rest.iter().all(|&byte| byte.is_ascii_graphic()) {
        return Err("it must be visible ASCII without spaces");
    }
    Ok(())
}

fn is_lower_hex(digits: &[u8]) -> bool {
    digits
        .iter()
        .all(|digit| digit.is_ascii_digit() || (b'a'..=b'f').contains(digit))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn refusal(text: &str) -> String {
        match TraceParent::parse(text) {
            Err(Error::Validation(message)) => message,
            other => panic!("{text:?}: expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_version_00_value_is_kept_as_sent_with_its_trace_id() {
        let parsed = TraceParent::parse(VALID).unwrap();
        assert_eq!(parsed.as_str(), VALID);
        assert_eq!(
            trace_id(parsed.as_str()),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for flags in ["00", "ff", "09"] {
            let text = format!("{}{flags}", &VALID[..53]);
            assert!(TraceParent::parse(&text).is_ok(), "{text}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_version_00_rules_and_kept_whole() {
        for text in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        ] {
            assert_eq!(TraceParent::parse(text).unwrap().as_str(), text);
        }
        for text in [
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            refusal(text);
        }
    }

    #[test]
    fn malformed_values_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "shorter"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "shorter",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "trace-id",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "parent-id must not",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bx-01",
                "parent-id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                "trace-flags",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                "nothing after",
            ),
            (
                "0-04bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                "version",
            ),
        ] {
            let message = refusal(text);
            assert!(
                message.starts_with("the traceparent header") && message.contains(why),
                "{text:?}: {message}"
            );
        }
        refusal(&format!("01-{}", "a".repeat(600)));
        // Not ASCII: refused without slicing inside a character.
        refusal("00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01");
    }
}
