//! `POST /jobs/retry`, `POST /jobs/cancel` and `POST /jobs/delete`: a filter body in,
//! `200 {"affected": N}` out. The filter is `{"status", "queue", "function", "ids"}`, each
//! optional but at least one given; a job must match every field given. What each action does
//! to the jobs it matches is the queue's (`Queue::bulk`).

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::http::handlers::AppState;
use crate::http::response::ApiResponse;
use crate::job::{queue_name, JobStatus};
use crate::queue::{canonical_id, BulkAction, BulkFilter, MAX_FILTER_IDS};

const FILTER_FIELDS: [&str; 4] = ["status", "queue", "function", "ids"];

#[derive(Serialize)]
struct Affected {
    affected: u64,
}

pub fn bulk(state: &AppState, action: BulkAction, body: Value) -> Result<ApiResponse> {
    let filter = parse_filter(body)?;
    let affected = state.queue.bulk(action, &filter)?;
    Ok(ApiResponse::json(200, &Affected { affected }))
}

/// A filter body: unknown fields, wrong types (`null` too) and an empty filter are
/// `Validation` errors naming the field.
fn parse_filter(body: Value) -> Result<BulkFilter> {
    let Value::Object(fields) = body else {
        return Err(Error::Validation(
            "the request body must be a JSON object such as {\"status\": \"failed\"}".into(),
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|key| !FILTER_FIELDS.contains(&key.as_str()))
    {
        return Err(Error::Validation(format!(
            "unknown field {unknown:?}; allowed fields are {}",
            FILTER_FIELDS.join(", ")
        )));
    }
    let text = |name: &str| -> Result<Option<&str>> {
        match fields.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(Error::Validation(format!(
                "{name} must be a string, got {other}"
            ))),
        }
    };
    let status = text("status")?
        .map(|value| {
            value.parse::<JobStatus>().map_err(|_| {
                Error::Validation(format!(
                    "status must be one of pending, running, success, failed, timeout, cancelled; got {value:?}"
                ))
            })
        })
        .transpose()?;
    let queue = text("queue")?
        .map(|name| queue_name(name).map(str::to_string))
        .transpose()?;
    let function = text("function")?
        .map(|name| {
            if is_function_name(name) {
                Ok(name.to_string())
            } else {
                let shown: String = name.chars().take(65).collect();
                Err(Error::Validation(format!(
                    "function must be a function name ([A-Za-z0-9._-], 1 to 64, no leading dot), got {shown:?}"
                )))
            }
        })
        .transpose()?;
    let ids = match fields.get("ids") {
        None => None,
        Some(Value::Array(items)) => Some(parse_ids(items)?),
        Some(other) => {
            return Err(Error::Validation(format!(
                "ids must be an array of job ids, got {other}"
            )))
        }
    };
    let filter = BulkFilter {
        status,
        queue,
        function,
        ids,
    };
    if filter == BulkFilter::default() {
        return Err(Error::Validation(
            "give at least one of status, queue, function, ids: an empty filter would match every job".into(),
        ));
    }
    Ok(filter)
}

/// What `openapi.json`'s `FunctionName` allows.
fn is_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Up to `MAX_FILTER_IDS` job ids, canonical and without repeats, in the order given.
fn parse_ids(items: &[Value]) -> Result<Vec<String>> {
    if items.len() > MAX_FILTER_IDS {
        return Err(Error::Validation(format!(
            "ids may name at most {MAX_FILTER_IDS} jobs, got {}",
            items.len()
        )));
    }
    let mut ids: Vec<String> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let id = item
            .as_str()
            .and_then(|text| canonical_id(text).ok())
            .ok_or_else(|| {
                let shown: String = item.to_string().chars().take(80).collect();
                Error::Validation(format!(
                    "ids[{index}] must be a job id (a UUID), got {shown}"
                ))
            })?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refused(body: Value) -> String {
        match parse_filter(body) {
            Err(Error::Validation(message)) => message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_filter_needs_a_field_and_takes_only_known_ones() {
        assert!(refused(json!({})).starts_with("give at least one of"));
        assert!(refused(json!({"status": null})).starts_with("status must be a string"));
        assert!(refused(json!({"function": "../x"})).starts_with("function must be"));
        assert!(refused(json!({"state": "failed"})).starts_with("unknown field \"state\""));
        assert!(refused(json!([])).starts_with("the request body must be a JSON object"));
        assert!(refused(json!({"status": "done"})).starts_with("status must be one of"));
        assert!(refused(json!({"status": 3})).starts_with("status must be a string"));
        assert!(refused(json!({"queue": "Bad Name"})).starts_with("queue must be"));
        assert!(refused(json!({"ids": "x"})).starts_with("ids must be an array"));
        assert_eq!(
            refused(json!({"ids": ["0192f6c4-0000-7000-8000-000000000001", 7]})),
            "ids[1] must be a job id (a UUID), got 7"
        );
        let too_many: Vec<String> = (0..=MAX_FILTER_IDS)
            .map(|n| format!("00000000-0000-7000-8000-{n:012}"))
            .collect();
        assert!(refused(json!({ "ids": too_many })).starts_with("ids may name at most 1000"));
    }

    #[test]
    fn fields_are_parsed_and_ids_made_canonical_once_each() {
        let filter = parse_filter(json!({
            "status": "failed",
            "queue": "emails",
            "function": "send",
            "ids": [
                "0192F6C4-0000-7000-8000-000000000001",
                "0192f6c4-0000-7000-8000-000000000001",
            ],
        }))
        .unwrap();
        assert_eq!(
            filter,
            BulkFilter {
                status: Some(JobStatus::Failed),
                queue: Some("emails".into()),
                function: Some("send".into()),
                ids: Some(vec!["0192f6c4-0000-7000-8000-000000000001".into()]),
            }
        );
        // An empty list is a filter that matches nothing.
        assert_eq!(parse_filter(json!({"ids": []})).unwrap().ids, Some(vec![]));
    }
}
