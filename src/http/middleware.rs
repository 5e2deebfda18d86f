//! The steps around every request, after its framing is checked and before and after its route:
//! each [`Middleware`] may refuse a request before it is routed, and hears of every answer. The
//! chain is built once (`Middleware::chain`); auth and the access log are the steps today,
//! metrics hang here next. A step refusing a request is answered with its error, and the steps
//! after it never see the request; every step's `after` hears the answer, refused or not.

use std::time::Duration;

use log::info;

use crate::error::Result;
use crate::http::auth;

/// A request as the steps see it: what they may decide on, never its body.
pub struct Seen<'a> {
    pub method: &'a tiny_http::Method,
    /// The request target, query included.
    pub target: &'a str,
    /// Every header field, in order.
    pub fields: &'a [(String, String)],
}

impl Seen<'_> {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// One step around every request.
pub trait Middleware: Send + Sync {
    /// Refuses the request with an error, or lets it on.
    fn before(&self, _request: &Seen<'_>) -> Result<()> {
        Ok(())
    }

    /// Hears how the request was answered.
    fn after(&self, _request: &Seen<'_>, _status: u16, _elapsed: Duration) {}
}

/// The steps in order.
pub struct Chain(Vec<Box<dyn Middleware>>);

impl Chain {
    /// Auth (when a token is set), then the access log.
    pub fn new(api_token: Option<String>) -> Chain {
        let mut steps: Vec<Box<dyn Middleware>> = Vec::new();
        if let Some(token) = api_token {
            steps.push(Box::new(BearerAuth { token }));
        }
        steps.push(Box::new(AccessLog));
        Chain(steps)
    }

    pub fn before(&self, request: &Seen<'_>) -> Result<()> {
        self.0.iter().try_for_each(|step| step.before(request))
    }

    pub fn after(&self, request: &Seen<'_>, status: u16, elapsed: Duration) {
        for step in &self.0 {
            step.after(request, status, elapsed);
        }
    }
}

/// `API_TOKEN`: every route but `GET /health` needs the bearer token.
struct BearerAuth {
    token: String,
}

impl Middleware for BearerAuth {
    fn before(&self, request: &Seen<'_>) -> Result<()> {
        let public = auth::is_public(request.method, request.target);
        auth::authorize(Some(&self.token), public, request.fields)
    }
}

/// Where access lines are logged: where they were before this step existed, so `RUST_LOG`
/// filters keep working.
const ACCESS_LOG_TARGET: &str = "mini_lambda_rust::http::exchange";

/// One line per request: method, path (at most 200 characters, no query), status, time.
struct AccessLog;

impl Middleware for AccessLog {
    fn after(&self, request: &Seen<'_>, status: u16, elapsed: Duration) {
        if log::log_enabled!(target: ACCESS_LOG_TARGET, log::Level::Info) {
            let path: String = request.path().chars().take(200).collect();
            info!(
                target: ACCESS_LOG_TARGET,
                "{} {path} {status} {:.3}ms",
                request.method,
                elapsed.as_secs_f64() * 1000.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn seen<'a>(target: &'a str, fields: &'a [(String, String)]) -> Seen<'a> {
        Seen {
            method: &tiny_http::Method::Get,
            target,
            fields,
        }
    }

    #[test]
    fn with_a_token_every_route_but_health_is_refused_without_it() {
        let chain = Chain::new(Some("secret".into()));
        let none = [];
        assert!(chain.before(&seen("/health", &none)).is_ok());
        assert!(matches!(
            chain.before(&seen("/jobs?status=failed", &none)),
            Err(Error::Unauthorized(_))
        ));
        let bearer = [("Authorization".to_string(), "Bearer secret".to_string())];
        assert!(chain.before(&seen("/jobs", &bearer)).is_ok());
    }

    #[test]
    fn without_a_token_nothing_is_refused() {
        let chain = Chain::new(None);
        assert!(chain.before(&seen("/jobs", &[])).is_ok());
        assert_eq!(seen("/jobs/x?wait=1", &[]).path(), "/jobs/x");
    }
}
