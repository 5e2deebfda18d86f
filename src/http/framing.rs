//! Checks on a parsed request head that tiny_http leaves to us: a body length that cannot be
//! misread, no framing two parsers could disagree on, and bounds on the head and the target.
//!
//! tiny_http takes the first `Content-Length` it finds and treats one it cannot parse as "no
//! body", so the bytes a client declared as body would be read as the next request. Every
//! ambiguity is therefore refused here, before routing, and the connection is closed after
//! the answer. The limits on the head bound what a request may make us *process*; tiny_http
//! has already read the head into memory by the time we see it (README, "Security").

use crate::error::{Error, Result};

/// Header fields a request may carry.
pub const MAX_HEADER_FIELDS: usize = 100;
/// Bytes of request line and header fields together.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Bytes of the request target (path and query).
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

/// How the request's body is delimited, once the framing is known to be unambiguous.
#[derive(Debug, PartialEq, Eq)]
pub enum Body {
    /// No `Content-Length` and no `Transfer-Encoding`: there is no body.
    Empty,
    /// Exactly this many bytes follow the head.
    Length(u64),
}

/// The head as this module needs it: the target and every header field in order.
pub struct Head<'a> {
    pub target: &'a str,
    pub fields: Vec<(String, String)>,
}

/// Every header field of a parsed request, in order. tiny_http 0.12.17's `Headers` offers
/// lookup by name (first match) but no iteration, so the fields are read back from its `Debug`
/// form, which prints each one as `Header { field: HeaderField(Ascii("NAME")), value:
/// HeaderFieldValueAscii("VALUE") }` with Rust string escapes. A value cannot forge that
/// pattern: its own quotes come out escaped. `fields_are_read_back_exactly` pins the format.
pub fn fields_of(headers: &tiny_http::Headers) -> Vec<(String, String)> {
    const NAME: &str = "field: HeaderField(Ascii(\"";
    const VALUE: &str = "value: HeaderFieldValueAscii(\"";
    let debug = format!("{headers:?}");
    let mut fields = Vec::new();
    let mut rest = debug.as_str();
    while let Some(start) = rest.find(NAME) {
        let (name, after_name) = debug_string(&rest[start + NAME.len()..]);
        let Some(value_start) = after_name.find(VALUE) else {
            break;
        };
        let (value, after_value) = debug_string(&after_name[value_start + VALUE.len()..]);
        fields.push((name, value));
        rest = after_value;
    }
    fields
}

/// Reads a `Debug`-escaped string up to its closing quote; returns it and what follows.
fn debug_string(text: &str) -> (String, &str) {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return (out, &text[index + 1..]),
            '\\' => match chars.next().map(|(_, escaped)| escaped) {
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('n') => out.push('\n'),
                Some('0') => out.push('\0'),
                Some('u') => {
                    let code: String = chars
                        .by_ref()
                        .map(|(_, c)| c)
                        .skip_while(|c| *c == '{')
                        .take_while(|c| *c != '}')
                        .collect();
                    let decoded = u32::from_str_radix(&code, 16).ok().and_then(char::from_u32);
                    out.push(decoded.unwrap_or(char::REPLACEMENT_CHARACTER));
                }
                Some(other) => out.push(other),
                None => break,
            },
            other => out.push(other),
        }
    }
    (out, "")
}

/// Validates the head and says how its body is framed.
pub fn check(head: &Head<'_>) -> Result<Body> {
    if head.target.len() > MAX_TARGET_BYTES {
        return Err(Error::UriTooLong {
            limit: MAX_TARGET_BYTES,
        });
    }
    if head.fields.len() > MAX_HEADER_FIELDS {
        return Err(Error::HeaderTooLarge(format!(
            "the request has {} header fields; at most {MAX_HEADER_FIELDS} are accepted",
            head.fields.len()
        )));
    }
    let head_bytes = head.target.len()
        + head
            .fields
            .iter()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum::<usize>();
    if head_bytes > MAX_HEAD_BYTES {
        return Err(Error::HeaderTooLarge(format!(
            "the request head is larger than the limit of {MAX_HEAD_BYTES} bytes"
        )));
    }
    let named = |wanted: &str| -> Vec<&str> {
        head.fields
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value.as_str())
            .collect()
    };
    // tiny_http hands an upgrade request the raw socket as its body, past any length.
    if named("Connection")
        .iter()
        .any(|value| value.to_ascii_lowercase().contains("upgrade"))
    {
        return Err(Error::BadRequest(
            "connection upgrades are not supported".into(),
        ));
    }
    let lengths = named("Content-Length");
    let codings = named("Transfer-Encoding");
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => Ok(Body::Empty),
        ([length], []) => content_length(length).map(Body::Length),
        // tiny_http's chunked decoder reads a chunk-size line without any bound, so a chunked
        // body could grow memory without end: bodies must declare their length.
        ([], [coding]) if coding.trim().eq_ignore_ascii_case("chunked") => {
            Err(Error::LengthRequired)
        }
        ([], [coding]) => Err(Error::BadRequest(format!(
            "Transfer-Encoding {:?} is not supported; send the body with a Content-Length",
            shorten(coding)
        ))),
        ([], _) => Err(Error::BadRequest(
            "the request has more than one Transfer-Encoding header".into(),
        )),
        (_, []) => Err(Error::BadRequest(
            "the request has more than one Content-Length header".into(),
        )),
        (_, _) => Err(Error::BadRequest(
            "the request has both Content-Length and Transfer-Encoding; send one".into(),
        )),
    }
}

/// Only plain decimal digits: no sign, no list, nothing a second parser might read otherwise.
fn content_length(value: &str) -> Result<u64> {
    let digits = value.trim();
    let malformed = || {
        Error::BadRequest(format!(
            "Content-Length must be a decimal number of bytes, got {:?}",
            shorten(digits)
        ))
    };
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(malformed());
    }
    digits.parse::<u64>().map_err(|_| malformed())
}

/// Keeps error messages small whatever the client sent.
fn shorten(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(fields: &[(&str, &str)]) -> Head<'static> {
        Head {
            target: "/jobs",
            fields: fields
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        }
    }

    fn code(result: Result<Body>) -> &'static str {
        match result {
            Err(Error::BadRequest(_)) => "bad_request",
            Err(Error::HeaderTooLarge(_)) => "header_too_large",
            Err(Error::UriTooLong { .. }) => "uri_too_long",
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn fields_are_read_back_exactly() {
        let mut headers = tiny_http::Headers::new();
        let tricky = r#"a"b\c Header { field: HeaderField(Ascii("Content-Length")), value: x"#;
        for (name, value) in [
            ("Host", tricky),
            ("Content-Length", "5"),
            ("X-Quote", "it's"),
        ] {
            headers.push(tiny_http::Header::from_bytes(name, value).unwrap());
        }
        assert_eq!(
            fields_of(&headers),
            vec![
                ("Host".to_string(), tricky.to_string()),
                ("Content-Length".to_string(), "5".to_string()),
                ("X-Quote".to_string(), "it's".to_string()),
            ]
        );
        assert!(fields_of(&tiny_http::Headers::new()).is_empty());
    }

    #[test]
    fn chunked_bodies_need_a_length_and_upgrades_are_refused() {
        assert!(matches!(
            check(&head(&[("Transfer-Encoding", "chunked")])),
            Err(Error::LengthRequired)
        ));
        let upgrade = head(&[("Connection", "Upgrade"), ("Content-Length", "1")]);
        assert_eq!(code(check(&upgrade)), "bad_request");
    }

    #[test]
    fn plain_framing_is_accepted() {
        assert_eq!(check(&head(&[])).unwrap(), Body::Empty);
        assert_eq!(
            check(&head(&[("content-length", " 12 ")])).unwrap(),
            Body::Length(12)
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for bad in [
            "1x",
            "",
            "+5",
            "-1",
            "5, 5",
            "0x10",
            "99999999999999999999999",
        ] {
            assert_eq!(
                code(check(&head(&[("Content-Length", bad)]))),
                "bad_request"
            );
        }
        let twice = head(&[("Content-Length", "5"), ("content-length", "5")]);
        assert_eq!(code(check(&twice)), "bad_request");
        let both = head(&[("Content-Length", "5"), ("Transfer-Encoding", "chunked")]);
        assert_eq!(code(check(&both)), "bad_request");
        let bad_length_and_chunked =
            head(&[("Content-Length", "1x"), ("Transfer-Encoding", "chunked")]);
        assert_eq!(code(check(&bad_length_and_chunked)), "bad_request");
        let gzip = head(&[("Transfer-Encoding", "gzip, chunked")]);
        assert_eq!(code(check(&gzip)), "bad_request");
        let two_codings = head(&[
            ("Transfer-Encoding", "chunked"),
            ("Transfer-Encoding", "chunked"),
        ]);
        assert_eq!(code(check(&two_codings)), "bad_request");
    }

    #[test]
    fn oversized_heads_and_targets_are_refused() {
        let many: Vec<(String, String)> = (0..=MAX_HEADER_FIELDS)
            .map(|n| (format!("X-{n}"), "v".to_string()))
            .collect();
        let too_many = Head {
            target: "/",
            fields: many,
        };
        assert_eq!(code(check(&too_many)), "header_too_large");
        let big = "v".repeat(MAX_HEAD_BYTES);
        assert_eq!(code(check(&head(&[("X-Big", &big)]))), "header_too_large");
        let long_target = format!("/jobs/{}", "a".repeat(MAX_TARGET_BYTES));
        let long = Head {
            target: &long_target,
            fields: Vec::new(),
        };
        assert_eq!(code(check(&long)), "uri_too_long");
    }
}
