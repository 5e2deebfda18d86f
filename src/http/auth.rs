//! The bearer tokens: when `API_TOKEN` is set, every route but the public ones needs
//! `Authorization: Bearer <token>`; `API_READ_TOKEN`, when set too, is a second token that
//! may only read (every `GET`). The comparison takes the same time wherever the first wrong
//! byte is, so response times do not reveal how much of a guess was right.

use crate::error::{Error, Result};

/// Who may do what: the tokens, and whether the metrics are public.
pub struct Access {
    /// `API_TOKEN`: everything. No token configured lets everything through.
    pub token: Option<String>,
    /// `API_READ_TOKEN`: `GET` requests only.
    pub read_token: Option<String>,
    /// `METRICS_PUBLIC`: `GET /metrics` without a token.
    pub metrics_public: bool,
}

impl Access {
    /// Lets the request through, or says why not: `Unauthorized` without a valid token,
    /// `Forbidden` for the read token on anything but a `GET`.
    pub fn check(
        &self,
        method: &tiny_http::Method,
        url: &str,
        fields: &[(String, String)],
    ) -> Result<()> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        if is_public(method, url, self.metrics_public) {
            return Ok(());
        }
        let offered = offered_token(fields)?;
        if constant_time_eq(offered.as_bytes(), token.as_bytes()) {
            return Ok(());
        }
        let Some(read_token) = &self.read_token else {
            return Err(invalid_token());
        };
        if !constant_time_eq(offered.as_bytes(), read_token.as_bytes()) {
            return Err(invalid_token());
        }
        if *method == tiny_http::Method::Get {
            Ok(())
        } else {
            Err(Error::Forbidden(
                "this token may only read (GET requests); changes need API_TOKEN".into(),
            ))
        }
    }
}

/// Routes answered without credentials: what a load balancer probes, the dashboard's page
/// and its files (they hold no data: the page asks for a token before it reads any), and
/// the metrics when `METRICS_PUBLIC` is set. `url` is the path without the base path.
pub fn is_public(method: &tiny_http::Method, url: &str, metrics_public: bool) -> bool {
    let path = url.split('?').next().unwrap_or_default();
    if *method != tiny_http::Method::Get {
        return false;
    }
    let trimmed = path.trim_end_matches('/');
    trimmed == "/health"
        || path == "/"
        || path.starts_with("/assets/")
        || (metrics_public && trimmed == "/metrics")
}

fn invalid_token() -> Error {
    Error::Unauthorized("the bearer token is not valid".into())
}

/// The token of the request's one `Authorization: Bearer` field.
fn offered_token(fields: &[(String, String)]) -> Result<&str> {
    let mut offered = fields
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("Authorization"))
        .map(|(_, value)| value.as_str());
    let (Some(value), None) = (offered.next(), offered.next()) else {
        return Err(Error::Unauthorized(
            "this server needs Authorization: Bearer <token> (one Authorization header)".into(),
        ));
    };
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| {
            Error::Unauthorized("the Authorization header must use the Bearer scheme".into())
        })
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
    use tiny_http::Method;

    fn access(read_token: Option<&str>, metrics_public: bool) -> Access {
        Access {
            token: Some("s3cret".into()),
            read_token: read_token.map(str::to_string),
            metrics_public,
        }
    }

    fn check(access: &Access, method: Method, url: &str, value: Option<&str>) -> Result<()> {
        let fields: Vec<(String, String)> = value
            .map(|value| vec![("authorization".to_string(), value.to_string())])
            .unwrap_or_default();
        access.check(&method, url, &fields)
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let access = access(None, false);
        let auth = |value| check(&access, Method::Get, "/jobs", value);
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
        let open = Access {
            token: None,
            read_token: None,
            metrics_public: false,
        };
        assert!(check(&open, Method::Post, "/jobs", None).is_ok());
    }

    #[test]
    fn the_read_token_reads_and_is_forbidden_to_write() {
        let access = access(Some("reader"), false);
        let read = Some("Bearer reader");
        assert!(check(&access, Method::Get, "/jobs?status=failed", read).is_ok());
        assert!(check(&access, Method::Get, "/metrics", read).is_ok());
        for (method, url) in [
            (Method::Post, "/jobs"),
            (Method::Delete, "/jobs/x"),
            (Method::Put, "/queues/q"),
        ] {
            assert!(matches!(
                check(&access, method.clone(), url, read),
                Err(Error::Forbidden(_))
            ));
            assert!(check(&access, method, url, Some("Bearer s3cret")).is_ok());
        }
        // Without a read token configured, that token is just wrong.
        assert!(matches!(
            check(&self::access(None, false), Method::Get, "/jobs", read),
            Err(Error::Unauthorized(_))
        ));
    }

    #[test]
    fn health_the_dashboard_and_public_metrics_need_no_token() {
        for url in [
            "/health",
            "/health?x=1",
            "/",
            "/?view=jobs",
            "/assets/app.js",
        ] {
            assert!(is_public(&Method::Get, url, false), "{url}");
        }
        assert!(!is_public(&Method::Post, "/health", false));
        for url in ["/jobs", "/openapi.json", "/metrics", "/stats", "/assets"] {
            assert!(!is_public(&Method::Get, url, false), "{url}");
        }
        assert!(is_public(&Method::Get, "/metrics", true));
        assert!(!is_public(&Method::Post, "/metrics", true));
        assert!(matches!(
            check(&access(None, true), Method::Get, "/stats", None),
            Err(Error::Unauthorized(_))
        ));
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
