//! The bearer token: when `API_TOKEN` is set, every route but `GET /health` needs
//! `Authorization: Bearer <token>`. The comparison takes the same time wherever the first
//! wrong byte is, so response times do not reveal how much of a guess was right.

use crate::error::{Error, Result};

/// Routes a load balancer or supervisor probes without credentials.
pub fn is_public(method: &tiny_http::Method, url: &str) -> bool {
    let path = url.split('?').next().unwrap_or_default();
    *method == tiny_http::Method::Get && path.trim_end_matches('/') == "/health"
}

/// Checks the request's `Authorization` fields against `expected`; no token configured lets
/// everything through.
pub fn authorize(expected: Option<&str>, public: bool, fields: &[(String, String)]) -> Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    if public {
        return Ok(());
    }
    let mut offered = fields
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("Authorization"))
        .map(|(_, value)| value.as_str());
    let (Some(value), None) = (offered.next(), offered.next()) else {
        return Err(Error::Unauthorized(
            "this server needs Authorization: Bearer <token> (one Authorization header)".into(),
        ));
    };
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim());
    match token {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(Error::Unauthorized("the bearer token is not valid".into())),
        None => Err(Error::Unauthorized(
            "the Authorization header must use the Bearer scheme".into(),
        )),
    }
}

/// The bearer token the request carries in its one `Authorization` field, checked or not.
pub fn bearer_token(fields: &[(String, String)]) -> Option<&str> {
    let mut offered = fields
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("Authorization"))
        .map(|(_, value)| value.as_str());
    let (Some(value), None) = (offered.next(), offered.next()) else {
        return None;
    };
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim())
}

/// Equal slices compare equal; the time depends only on the lengths, never on the contents.
fn constant_time_eq(offered: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(offered.len() != expected.len());
    for (index, expected_byte) in expected.iter().enumerate() {
        let offered_byte = offered.get(index).copied().unwrap_or(!expected_byte);
        difference |= offered_byte ^ expected_byte;
    }
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: Option<&str>) -> Result<()> {
        let fields: Vec<(String, String)> = value
            .map(|value| vec![("authorization".to_string(), value.to_string())])
            .unwrap_or_default();
        authorize(Some("s3cret"), false, &fields)
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        assert!(auth(Some("Bearer s3cret")).is_ok());
        assert!(auth(Some("bearer s3cret")).is_ok());
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
            Some("s3cret"),
            Some("Bearer "),
        ] {
            assert!(matches!(auth(bad), Err(Error::Unauthorized(_))), "{bad:?}");
        }
        assert!(authorize(None, false, &[]).is_ok());
        assert!(authorize(Some("s3cret"), true, &[]).is_ok());
    }

    #[test]
    fn health_alone_is_public() {
        assert!(is_public(&tiny_http::Method::Get, "/health"));
        assert!(is_public(&tiny_http::Method::Get, "/health?x=1"));
        assert!(!is_public(&tiny_http::Method::Post, "/health"));
        assert!(!is_public(&tiny_http::Method::Get, "/jobs"));
        assert!(!is_public(&tiny_http::Method::Get, "/openapi.json"));
    }

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
