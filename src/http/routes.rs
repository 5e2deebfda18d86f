//! Routing: one `match` on method and path segments ([`resolve`]) names the endpoint, and
//! [`route`] calls its handler. A known path with the wrong method is a 405 with `Allow`;
//! anything else is a 404. [`ROUTES`] lists what the match routes, for the tests that keep
//! it and `openapi.json` in step.

use tiny_http::{Method, Request};

use crate::error::{Error, Result};
use crate::http::framing::Body;
use crate::http::handlers::{self, AppState};
use crate::http::openapi;
use crate::http::queues;
use crate::http::request::{parse_json, read_json_bytes, BodyLimits};
use crate::http::response::ApiResponse;
use crate::http::submit;
use crate::http::{bulk, dashboard, function, metrics, stats};
use crate::metrics::RejectReason;
use crate::queue::BulkAction;

/// Every (method, path template) pair the router answers; `{id}` stands for a job id and
/// `{name}` for a queue's or a function's name. Tests
/// check it against the match in [`resolve`] and against the paths of `openapi.json`; the
/// request metrics label requests with the same templates ([`template`]).
#[cfg_attr(not(test), allow(dead_code))] // Read by those tests only.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/functions"),
    ("GET", "/functions/{name}"),
    ("POST", "/jobs"),
    ("POST", "/jobs/batch"),
    ("POST", "/jobs/retry"),
    ("POST", "/jobs/cancel"),
    ("POST", "/jobs/delete"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{id}"),
    ("DELETE", "/jobs/{id}"),
    ("POST", "/jobs/{id}/retry"),
    ("POST", "/jobs/{id}/cancel"),
    ("GET", "/jobs/{id}/attempts"),
    // Named queues.
    ("GET", "/queues"),
    ("PUT", "/queues/{name}"),
    ("POST", "/queues/{name}/pause"),
    ("POST", "/queues/{name}/resume"),
    // Observing: Prometheus metrics, the dashboard's counters, the dashboard itself.
    ("GET", "/metrics"),
    ("GET", "/stats"),
    ("GET", "/"),
    ("GET", "/assets/{name}"),
];

/// What a request asks for, decided from its method and path alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Health,
    OpenApi,
    Functions,
    Function(&'a str),
    Submit,
    SubmitBatch,
    Bulk(BulkAction),
    List,
    Get(&'a str),
    Delete(&'a str),
    Retry(&'a str),
    Cancel(&'a str),
    Attempts(&'a str),
    Queues,
    ConfigureQueue(&'a str),
    PauseQueue(&'a str),
    ResumeQueue(&'a str),
    Metrics,
    Stats,
    Dashboard,
    Asset(&'a str),
}

impl Endpoint<'_> {
    /// The path template of [`ROUTES`] the endpoint answers.
    fn template(self) -> &'static str {
        match self {
            Endpoint::Health => "/health",
            Endpoint::OpenApi => "/openapi.json",
            Endpoint::Functions => "/functions",
            Endpoint::Function(_) => "/functions/{name}",
            Endpoint::Submit | Endpoint::List => "/jobs",
            Endpoint::SubmitBatch => "/jobs/batch",
            Endpoint::Bulk(BulkAction::Retry) => "/jobs/retry",
            Endpoint::Bulk(BulkAction::Cancel) => "/jobs/cancel",
            Endpoint::Bulk(BulkAction::Delete) => "/jobs/delete",
            Endpoint::Get(_) | Endpoint::Delete(_) => "/jobs/{id}",
            Endpoint::Retry(_) => "/jobs/{id}/retry",
            Endpoint::Cancel(_) => "/jobs/{id}/cancel",
            Endpoint::Attempts(_) => "/jobs/{id}/attempts",
            Endpoint::Queues => "/queues",
            Endpoint::ConfigureQueue(_) => "/queues/{name}",
            Endpoint::PauseQueue(_) => "/queues/{name}/pause",
            Endpoint::ResumeQueue(_) => "/queues/{name}/resume",
            Endpoint::Metrics => "/metrics",
            Endpoint::Stats => "/stats",
            Endpoint::Dashboard => "/",
            Endpoint::Asset(_) => "/assets/{name}",
        }
    }
}

/// The route template (of [`ROUTES`]) a request's method and path (without the query) are
/// answered by, for labels: `"other"` for a path or method no route answers, so a label never
/// holds a job id or anything else a client made up.
pub fn template(method: &Method, path: &str) -> &'static str {
    resolve(method, path).map_or("other", Endpoint::template)
}

/// Routes one request; `target` is its URL without the base path. `body_read` is set once its body has been read to the end, so the
/// connection knows whether the next bytes on it start a new request.
pub fn route(
    state: &AppState,
    target: &str,
    request: &mut Request,
    body: &Body,
    body_read: &mut bool,
) -> Result<ApiResponse> {
    if state.is_shutting_down() {
        return Err(Error::Unavailable(
            "the server is shutting down; try again after it restarts".into(),
        ));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let method = request.method().clone();
    let endpoint = resolve(&method, path)?;
    match endpoint {
        Endpoint::Health => Ok(handlers::health(state)),
        Endpoint::OpenApi => Ok(openapi::document()),
        Endpoint::Functions => Ok(handlers::functions(state)),
        Endpoint::Submit | Endpoint::SubmitBatch => {
            let submitted = (|| {
                let headers = submit::SubmitHeaders::of(request)?;
                let body = read_json_bytes(request, body, body_limits(state), body_read)?;
                match endpoint {
                    Endpoint::Submit => submit::submit(state, headers, &body),
                    _ => submit::submit_batch(state, headers, &body),
                }
            })();
            if let Err(err) = &submitted {
                state.queue.metrics().submit_rejected(reject_reason(err));
            }
            submitted
        }
        Endpoint::Function(name) => function::function(state, name),
        Endpoint::Bulk(action) => {
            let body = read_json_value(request, body, state, body_read)?;
            bulk::bulk(state, action, body)
        }
        Endpoint::List => handlers::list(state, query),
        Endpoint::Get(id) => handlers::get(state, id, query),
        Endpoint::Delete(id) => handlers::delete(state, id),
        Endpoint::Retry(id) => handlers::retry(state, id),
        Endpoint::Cancel(id) => handlers::cancel(state, id),
        Endpoint::Attempts(id) => handlers::attempts(state, id),
        Endpoint::Queues => queues::list(state),
        Endpoint::ConfigureQueue(name) => {
            let body = read_json_value(request, body, state, body_read)?;
            queues::configure(state, name, body)
        }
        Endpoint::PauseQueue(name) => queues::pause(state, name),
        Endpoint::ResumeQueue(name) => queues::resume(state, name),
        Endpoint::Metrics => metrics::metrics(state),
        Endpoint::Stats => stats::stats(state),
        Endpoint::Dashboard => dashboard::page(state),
        Endpoint::Asset(name) => dashboard::asset(name),
    }
}

/// Why a submit was refused, as `submits_rejected_total` says it.
fn reject_reason(err: &Error) -> RejectReason {
    match err {
        Error::UnknownFunction(_) => RejectReason::UnknownFunction,
        Error::QueueFull { .. } => RejectReason::QueueFull,
        Error::RateLimited { .. } => RejectReason::RateLimited,
        Error::IdempotencyKeyReused(_) => RejectReason::IdempotencyKeyReused,
        Error::SchemaUnusable(_) => RejectReason::Schema,
        // A payload failing its function's schema is a validation error that says so
        // (`schemas::Contract::check`); in a batch its message is behind the item's index.
        Error::Validation(message) if message.contains("does not match the schema") => {
            RejectReason::Schema
        }
        Error::Unavailable(_) | Error::Storage { .. } | Error::TooManyConnections { .. } => {
            RejectReason::Unavailable
        }
        Error::Internal(_) | Error::CorruptRow(_) => RejectReason::Internal,
        _ => RejectReason::Validation,
    }
}

/// The body as JSON, read within the body limits.
fn read_json_value(
    request: &mut Request,
    body: &Body,
    state: &AppState,
    body_read: &mut bool,
) -> Result<serde_json::Value> {
    parse_json(&read_json_bytes(
        request,
        body,
        body_limits(state),
        body_read,
    )?)
}

fn body_limits(state: &AppState) -> BodyLimits {
    BodyLimits {
        max_bytes: state.max_body_bytes,
        patience: state.body_patience,
    }
}

/// The one routing `match`. Every `(Method::…, [...])` arm here has its row in [`ROUTES`].
/// The bulk paths (`/jobs/retry`, …) come before `/jobs/{id}`: no job id is such a word.
fn resolve<'a>(method: &Method, path: &'a str) -> Result<Endpoint<'a>> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (method, segments.as_slice()) {
        (Method::Get, ["health"]) => Ok(Endpoint::Health),
        (Method::Get, ["openapi.json"]) => Ok(Endpoint::OpenApi),
        (Method::Get, ["functions"]) => Ok(Endpoint::Functions),
        (Method::Get, ["functions", name]) => Ok(Endpoint::Function(name)),
        (Method::Post, ["jobs"]) => Ok(Endpoint::Submit),
        // Before `["jobs", id]`: "batch" is no job id (ids are UUIDs).
        (Method::Post, ["jobs", "batch"]) => Ok(Endpoint::SubmitBatch),
        (_, ["jobs", "batch"]) => Err(Error::MethodNotAllowed { allow: "POST" }),
        (Method::Post, ["jobs", "retry"]) => Ok(Endpoint::Bulk(BulkAction::Retry)),
        (Method::Post, ["jobs", "cancel"]) => Ok(Endpoint::Bulk(BulkAction::Cancel)),
        (Method::Post, ["jobs", "delete"]) => Ok(Endpoint::Bulk(BulkAction::Delete)),
        (_, ["jobs", "retry" | "cancel" | "delete"]) => {
            Err(Error::MethodNotAllowed { allow: "POST" })
        }
        (Method::Get, ["jobs"]) => Ok(Endpoint::List),
        (Method::Get, ["jobs", id]) => Ok(Endpoint::Get(id)),
        (Method::Delete, ["jobs", id]) => Ok(Endpoint::Delete(id)),
        (Method::Post, ["jobs", id, "retry"]) => Ok(Endpoint::Retry(id)),
        (Method::Post, ["jobs", id, "cancel"]) => Ok(Endpoint::Cancel(id)),
        (Method::Get, ["jobs", id, "attempts"]) => Ok(Endpoint::Attempts(id)),
        (Method::Get, ["queues"]) => Ok(Endpoint::Queues),
        (Method::Put, ["queues", name]) => Ok(Endpoint::ConfigureQueue(name)),
        (Method::Post, ["queues", name, "pause"]) => Ok(Endpoint::PauseQueue(name)),
        (Method::Post, ["queues", name, "resume"]) => Ok(Endpoint::ResumeQueue(name)),
        (Method::Get, ["metrics"]) => Ok(Endpoint::Metrics),
        (Method::Get, ["stats"]) => Ok(Endpoint::Stats),
        (Method::Get, []) => Ok(Endpoint::Dashboard),
        (Method::Get, ["assets", name]) => Ok(Endpoint::Asset(name)),
        (_, ["health" | "openapi.json" | "functions"] | ["functions", _]) => {
            Err(Error::MethodNotAllowed { allow: "GET" })
        }
        (_, ["jobs"]) => Err(Error::MethodNotAllowed { allow: "GET, POST" }),
        (_, ["jobs", _]) => Err(Error::MethodNotAllowed {
            allow: "GET, DELETE",
        }),
        (_, ["jobs", _, "retry" | "cancel"]) => Err(Error::MethodNotAllowed { allow: "POST" }),
        (_, ["jobs", _, "attempts"]) => Err(Error::MethodNotAllowed { allow: "GET" }),
        (_, ["queues"]) => Err(Error::MethodNotAllowed { allow: "GET" }),
        (_, ["queues", _]) => Err(Error::MethodNotAllowed { allow: "PUT" }),
        (_, ["queues", _, "pause" | "resume"]) => Err(Error::MethodNotAllowed { allow: "POST" }),
        (_, [] | ["metrics" | "stats"] | ["assets", _]) => {
            Err(Error::MethodNotAllowed { allow: "GET" })
        }
        _ => Err(Error::NotFound(format!(
            "no route for {}",
            path.chars().take(100).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const SAMPLE_ID: &str = "0192f6c4-0000-7000-8000-000000000001";
    const SAMPLE_NAME: &str = "emails";

    fn sample_path(template: &str) -> String {
        template
            .replace("{id}", SAMPLE_ID)
            .replace("{name}", SAMPLE_NAME)
    }

    fn method(name: &str) -> Method {
        name.parse()
            .unwrap_or_else(|()| panic!("{name} is not a method"))
    }

    #[test]
    fn every_route_labels_its_requests_with_its_template_and_others_are_other() {
        for (name, template) in ROUTES {
            assert_eq!(
                super::template(&method(name), &sample_path(template)),
                *template
            );
        }
        assert_eq!(
            super::template(&Method::Get, &format!("/jobs/{SAMPLE_ID}/")),
            "/jobs/{id}"
        );
        assert_eq!(super::template(&Method::Get, "/nothing/here"), "other");
        assert_eq!(
            super::template(&Method::Patch, &format!("/jobs/{SAMPLE_ID}")),
            "other"
        );
    }

    /// The (method, template) pairs of the `(Method::…, [...])` arms in `resolve`, read from
    /// this file's source: an arm added without its row in `ROUTES` shows up here.
    fn arms_of_resolve() -> BTreeSet<(String, String)> {
        let source = include_str!("routes.rs");
        let start = source.find("fn resolve").expect("fn resolve");
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").expect("the end of fn resolve")];
        body.split("(Method::")
            .skip(1)
            .map(|arm| {
                let (name, rest) = arm
                    .split_once(", [")
                    .expect("an arm of (Method, [segments])");
                let segments = &rest[..rest.find("])").expect("the end of the segments")];
                if segments.is_empty() {
                    return (name.to_ascii_uppercase(), "/".to_string());
                }
                let path: String = segments
                    .split(", ")
                    .map(|segment| match segment.strip_prefix('"') {
                        Some(literal) => format!("/{}", literal.trim_end_matches('"')),
                        None => format!("/{{{segment}}}"),
                    })
                    .collect();
                (name.to_ascii_uppercase(), path)
            })
            .collect()
    }

    #[test]
    fn routes_lists_exactly_the_arms_of_the_router() {
        let listed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|&(method, path)| (method.to_string(), path.to_string()))
            .collect();
        assert_eq!(listed.len(), ROUTES.len(), "ROUTES has a duplicate row");
        assert_eq!(arms_of_resolve(), listed);
    }

    #[test]
    fn a_base_path_may_start_with_no_route() {
        for &(_, template) in ROUTES {
            let first = template[1..].split('/').next().unwrap_or_default();
            assert!(
                first.is_empty() || crate::config::ROUTE_ROOTS.contains(&first),
                "config::ROUTE_ROOTS lacks {first:?} of {template}"
            );
        }
    }

    #[test]
    fn every_listed_route_reaches_its_own_endpoint_with_the_id() {
        let mut reached = Vec::new();
        for &(name, template) in ROUTES {
            let path = sample_path(template);
            let endpoint = resolve(&method(name), &path)
                .unwrap_or_else(|err| panic!("{name} {template} is not routed: {err}"));
            let id = match endpoint {
                Endpoint::Get(id)
                | Endpoint::Delete(id)
                | Endpoint::Retry(id)
                | Endpoint::Cancel(id)
                | Endpoint::Attempts(id) => Some(id),
                _ => None,
            };
            assert_eq!(id.is_some(), template.contains("{id}"), "{name} {template}");
            assert!(id.is_none_or(|id| id == SAMPLE_ID), "{name} {template}");
            let name_given = match endpoint {
                Endpoint::ConfigureQueue(name)
                | Endpoint::PauseQueue(name)
                | Endpoint::ResumeQueue(name)
                | Endpoint::Function(name)
                | Endpoint::Asset(name) => Some(name),
                _ => None,
            };
            assert_eq!(
                name_given.is_some(),
                template.contains("{name}"),
                "{name} {template}"
            );
            assert!(
                name_given.is_none_or(|given| given == SAMPLE_NAME),
                "{name} {template}"
            );
            // Every id is the sample, so the debug form tells the variants apart.
            let reached_now = format!("{endpoint:?}");
            assert!(
                !reached.contains(&reached_now),
                "two routes reach {endpoint:?}"
            );
            reached.push(reached_now);
        }
    }

    #[test]
    fn a_listed_path_with_another_method_is_405_and_others_are_404() {
        for &(_, template) in ROUTES {
            let path = sample_path(template);
            let allowed: Vec<&str> = ROUTES
                .iter()
                .filter(|&&(_, other)| other == template)
                .map(|&(name, _)| name)
                .collect();
            for name in ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] {
                match resolve(&method(name), &path) {
                    Ok(_) => assert!(allowed.contains(&name), "{name} {template}"),
                    Err(Error::MethodNotAllowed { allow }) => {
                        let mut allow: Vec<&str> = allow.split(", ").collect();
                        let mut want = allowed.clone();
                        allow.sort_unstable();
                        want.sort_unstable();
                        assert_eq!(allow, want, "Allow of {name} {template}");
                    }
                    Err(other) => panic!("{name} {template}: {other}"),
                }
            }
        }
        for path in [
            "/assets/a/b",
            "/jobs/x/y",
            "/nope",
            "/jobs/x/retry/more",
            "/functions/a/b",
        ] {
            assert!(matches!(
                resolve(&Method::Get, path),
                Err(Error::NotFound(_))
            ));
        }
    }

    #[test]
    fn bulk_paths_never_reach_a_job_route() {
        for action in ["retry", "cancel", "delete"] {
            let path = format!("/jobs/{action}");
            assert!(matches!(
                resolve(&Method::Post, &path),
                Ok(Endpoint::Bulk(_))
            ));
            for other in [Method::Get, Method::Delete] {
                assert!(matches!(
                    resolve(&other, &path),
                    Err(Error::MethodNotAllowed { allow: "POST" })
                ));
            }
        }
        let by_id = format!("/jobs/{SAMPLE_ID}/retry");
        assert_eq!(
            resolve(&Method::Post, &by_id).unwrap(),
            Endpoint::Retry(SAMPLE_ID)
        );
        assert_eq!(
            resolve(&Method::Get, &format!("/jobs/{SAMPLE_ID}")).unwrap(),
            Endpoint::Get(SAMPLE_ID)
        );
    }
}
