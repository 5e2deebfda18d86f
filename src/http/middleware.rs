//! The steps around every request, after its framing is checked and before and after its route:
//! each [`Middleware`] may refuse a request before it is routed, and hears of every answer. The
//! chain is built once (`Chain::new`); auth, the submit rate limit, the request metrics and
//! the access log are the steps. A step refusing a request is answered with its
//! error, and the steps after it never see the request; every step's `after` hears the
//! answer, refused or not. A step letting a request on may add headers to its answer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;

use crate::config::SubmitRate;
use crate::error::Result;
use crate::http::auth::{self, Access};
use crate::http::rate_limit::{self, Client, RateLimiter};
use crate::http::routes;
use crate::metrics::{Metrics, RejectReason};

/// Headers the steps add to a request's answer.
pub type Headers = Vec<(&'static str, String)>;

/// A request as the steps see it: what they may decide on, never its body.
pub struct Seen<'a> {
    pub method: &'a tiny_http::Method,
    /// The request target, query included.
    pub target: &'a str,
    /// Every header field, in order.
    pub fields: &'a [(String, String)],
    /// The client's address, when tiny_http knows it.
    pub peer: Option<IpAddr>,
}

impl Seen<'_> {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// One step around every request.
pub trait Middleware: Send + Sync {
    /// Refuses the request with an error, or lets it on, possibly adding `headers` to its
    /// answer.
    fn before(&self, _request: &Seen<'_>, _headers: &mut Headers) -> Result<()> {
        Ok(())
    }

    /// Hears how the request was answered.
    fn after(&self, _request: &Seen<'_>, _status: u16, _elapsed: Duration) {}
}

/// The steps in order.
pub struct Chain(Vec<Box<dyn Middleware>>);

impl Chain {
    /// Auth (when a token is set), the submit rate limit (when set), then the request
    /// metrics and the access log.
    pub fn new(access: Access, submit_rate: Option<SubmitRate>, metrics: Arc<Metrics>) -> Chain {
        let mut steps: Vec<Box<dyn Middleware>> = Vec::new();
        let by_token = access.token.is_some();
        if by_token {
            steps.push(Box::new(BearerAuth { access }));
        }
        if let Some(rate) = submit_rate {
            steps.push(Box::new(SubmitRateLimit {
                limiter: RateLimiter::new(rate),
                by_token,
                metrics: Arc::clone(&metrics),
            }));
        }
        steps.push(Box::new(RequestMetrics { metrics }));
        steps.push(Box::new(AccessLog));
        Chain(steps)
    }

    /// The headers the steps add to the answer, or the first step's refusal.
    pub fn before(&self, request: &Seen<'_>) -> Result<Headers> {
        let mut headers = Headers::new();
        for step in &self.0 {
            step.before(request, &mut headers)?;
        }
        Ok(headers)
    }

    pub fn after(&self, request: &Seen<'_>, status: u16, elapsed: Duration) {
        for step in &self.0 {
            step.after(request, status, elapsed);
        }
    }
}

/// `API_TOKEN` (and `API_READ_TOKEN`): every route but the public ones needs a bearer token.
struct BearerAuth {
    access: Access,
}

impl Middleware for BearerAuth {
    fn before(&self, request: &Seen<'_>, _headers: &mut Headers) -> Result<()> {
        self.access
            .check(request.method, request.target, request.fields)
    }
}

/// `SUBMIT_RATE_LIMIT`: each client's submits (`POST /jobs`, `POST /jobs/batch`) through its
/// token bucket. After auth, so a request without a valid token never takes one of the token
/// holder's; refused before routing, so a refused submit's body is never read.
struct SubmitRateLimit {
    limiter: RateLimiter,
    /// Whether clients are told apart by their bearer token (auth is on) or their address.
    by_token: bool,
    /// Where a refused submit is counted (`rate_limited`).
    metrics: Arc<Metrics>,
}

impl Middleware for SubmitRateLimit {
    fn before(&self, request: &Seen<'_>, headers: &mut Headers) -> Result<()> {
        if !rate_limit::is_submit(request.method, request.path()) {
            return Ok(());
        }
        let token = if self.by_token {
            auth::bearer_token(request.fields)
        } else {
            None
        };
        let client = match token {
            Some(token) => self.limiter.token_client(token),
            None => Client::Peer(request.peer.unwrap_or(IpAddr::from([0, 0, 0, 0]))),
        };
        let allowance = self
            .limiter
            .take(client, Instant::now())
            .inspect_err(|_| self.metrics.submit_rejected(RejectReason::RateLimited))?;
        headers.extend(allowance.headers());
        Ok(())
    }
}

/// `http_requests_total` and `http_request_duration_seconds`, by the route's template (never
/// the path itself: it may hold a job id) and status.
struct RequestMetrics {
    metrics: Arc<Metrics>,
}

impl Middleware for RequestMetrics {
    fn after(&self, request: &Seen<'_>, status: u16, elapsed: Duration) {
        let route = routes::template(request.method, request.path());
        self.metrics.http_request(route, status, elapsed);
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

    fn with_token(token: Option<&str>) -> Access {
        Access {
            token: token.map(str::to_string),
            read_token: None,
            metrics_public: false,
        }
    }

    fn seen<'a>(target: &'a str, fields: &'a [(String, String)]) -> Seen<'a> {
        Seen {
            method: &tiny_http::Method::Get,
            target,
            fields,
            peer: Some(IpAddr::from([127, 0, 0, 1])),
        }
    }

    #[test]
    fn with_a_token_every_route_but_health_is_refused_without_it() {
        let chain = Chain::new(with_token(Some("secret")), None, Arc::default());
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
        let chain = Chain::new(with_token(None), None, Arc::default());
        assert!(chain.before(&seen("/jobs", &[])).is_ok());
        assert_eq!(seen("/jobs/x?wait=1", &[]).path(), "/jobs/x");
    }

    #[test]
    fn submits_beyond_the_rate_are_refused_and_others_pass_with_headers() {
        let rate = SubmitRate {
            requests: 1,
            per: Duration::from_secs(60),
        };
        let chain = Chain::new(with_token(None), Some(rate), Arc::default());
        let post = |target| Seen {
            method: &tiny_http::Method::Post,
            target,
            fields: &[],
            peer: Some(IpAddr::from([127, 0, 0, 1])),
        };
        let headers = chain.before(&post("/jobs")).unwrap();
        assert_eq!(
            headers,
            [
                ("RateLimit-Limit", "1".to_string()),
                ("RateLimit-Remaining", "0".to_string()),
                ("RateLimit-Reset", "60".to_string()),
            ]
        );
        assert!(matches!(
            chain.before(&post("/jobs/batch")),
            Err(Error::RateLimited { limit: 1, .. })
        ));
        // Other routes are not limited and carry no headers.
        assert_eq!(chain.before(&post("/jobs/retry")).unwrap(), []);
        assert_eq!(chain.before(&seen("/jobs", &[])).unwrap(), []);
    }
}
