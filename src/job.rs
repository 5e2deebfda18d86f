//! The job model: statuses, the stored job, and validation of a submit request.
//! Depends on nothing else in the crate but `error`, `time` and `trace`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::time::Timestamp;

pub const MAX_TIMEOUT_SECONDS: u64 = 86_400;
pub const MAX_RETRIES_LIMIT: u64 = 100;
pub const MAX_PRIORITY: u64 = 9;
/// Ten years of 365 days (315,360,000 s): far enough for any schedule, small enough that
/// timestamps never overflow. Documented in the README and `openapi.json`.
pub const MAX_DELAY_SECONDS: u64 = 10 * 365 * 86_400;
/// The queue of a job whose submit names none.
pub const DEFAULT_QUEUE: &str = "default";
/// The longest queue name.
pub const MAX_QUEUE_NAME: usize = 64;

/// `name` if it can name a queue: 1 to 64 of `a-z`, `0-9`, `_` and `-`. Names are compared as
/// written, so the rule keeps out look-alikes (`Emails`, `emails `) that would split a queue.
pub fn queue_name(name: &str) -> Result<&str> {
    let allowed =
        |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"_-".contains(&byte);
    if (1..=MAX_QUEUE_NAME).contains(&name.len()) && name.bytes().all(allowed) {
        return Ok(name);
    }
    let shown: String = name.chars().take(MAX_QUEUE_NAME + 1).collect();
    Err(Error::Validation(format!(
        "queue must be 1 to {MAX_QUEUE_NAME} characters of a-z, 0-9, _ and -, got {shown:?}"
    )))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Success,
    Failed,
    Timeout,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Success,
        JobStatus::Failed,
        JobStatus::Timeout,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
            JobStatus::Timeout => "timeout",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Terminal jobs never run again unless someone asks for a retry.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Success | JobStatus::Failed | JobStatus::Timeout | JobStatus::Cancelled
        )
    }

    /// Only jobs that ended without success can be retried by hand.
    pub fn is_retryable(self) -> bool {
        self.is_terminal() && self != JobStatus::Success
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| Error::CorruptRow(format!("unknown job status {text:?}")))
    }
}

/// A job as stored and as every endpoint returns it.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub id: String,
    pub payload: Value,
    pub status: JobStatus,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub retry_count: u32,
    pub max_retries: u32,
    pub timeout_seconds: u32,
    pub result: Option<Value>,
    pub error_message: Option<String>,
    pub priority: u8,
    pub run_at: Timestamp,
    /// The function the job runs, or `None` for a simulated job.
    pub function: Option<String>,
    /// The named queue the job waits in (`default` unless the submit named one).
    pub queue: String,
    /// The W3C `traceparent` the job was submitted with, as sent (checked by `trace`).
    pub traceparent: Option<String>,
    /// The number of the job's current (or last) attempt: with the job, the attempt's
    /// identity. A claim sets it; an outcome lands only on the attempt it names (internal).
    #[serde(skip)]
    pub attempt: Option<u32>,
    /// The node running the job's current attempt, while it runs (internal).
    #[serde(skip)]
    pub node: Option<String>,
    /// A cancel of the running attempt was requested, for its node to act on (internal).
    #[serde(skip)]
    pub cancel_requested: bool,
    /// The row's key in the store (internal).
    #[serde(skip)]
    pub seq: i64,
}

impl Job {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.timeout_seconds))
    }

    /// The number of the attempt being run, as `GET /jobs/:id/attempts` shows it: the claim
    /// sets it. `retry_count + 1` is only a fallback for a job never claimed, because a
    /// manual retry resets `retry_count` but not the count of attempts.
    pub fn attempt_number(&self) -> u32 {
        self.attempt.unwrap_or(self.retry_count + 1)
    }

    /// The trace id of the job's `traceparent`, for its log lines.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(crate::trace::trace_id)
    }
}

#[cfg(test)]
impl Job {
    /// A job as a worker holds it after its first claim, for unit tests.
    pub fn running_for_test(payload: Value, max_retries: u32, timeout_seconds: u32) -> Job {
        Job {
            id: "test".into(),
            payload,
            status: JobStatus::Running,
            created_at: Timestamp::from_micros(0),
            started_at: None,
            finished_at: None,
            retry_count: 0,
            max_retries,
            timeout_seconds,
            result: None,
            error_message: None,
            priority: 0,
            run_at: Timestamp::from_micros(0),
            function: None,
            queue: DEFAULT_QUEUE.into(),
            traceparent: None,
            attempt: None,
            node: None,
            cancel_requested: false,
            seq: 0,
        }
    }
}

/// One attempt of a job, as `GET /jobs/:id/attempts` returns it.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    /// 1-based, counting every attempt of the job, automatic or manual retry alike.
    pub attempt: u32,
    pub status: AttemptStatus,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub duration_ms: Option<i64>,
    pub result: Option<Value>,
    pub error_message: Option<String>,
    /// For attempts that run a process; null for simulated jobs.
    pub exit_code: Option<i32>,
    pub stderr_tail: Option<String>,
    /// The node that ran it.
    pub node: Option<String>,
}

/// How one attempt's record ends. `interrupted`: the server stopped it (a shutdown), and it
/// did not count against the retry budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptStatus {
    Running,
    Success,
    Failed,
    Timeout,
    Cancelled,
    Interrupted,
}

impl AttemptStatus {
    pub const ALL: [AttemptStatus; 6] = [
        AttemptStatus::Running,
        AttemptStatus::Success,
        AttemptStatus::Failed,
        AttemptStatus::Timeout,
        AttemptStatus::Cancelled,
        AttemptStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Running => "running",
            AttemptStatus::Success => "success",
            AttemptStatus::Failed => "failed",
            AttemptStatus::Timeout => "timeout",
            AttemptStatus::Cancelled => "cancelled",
            AttemptStatus::Interrupted => "interrupted",
        }
    }
}

impl FromStr for AttemptStatus {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        AttemptStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| Error::CorruptRow(format!("unknown attempt status {text:?}")))
    }
}

/// What an attempt that ran a process leaves besides its outcome; empty for simulated jobs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AttemptDetails {
    pub exit_code: Option<i32>,
    pub stderr_tail: Option<String>,
}

/// How one attempt of a running job ended, as the store records it.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptEnd {
    Succeeded {
        result: Value,
    },
    /// `retry_at` set: the job goes back to `pending` with one more retry counted.
    Failed {
        error: String,
        retry_at: Option<Timestamp>,
    },
    TimedOut {
        error: String,
    },
    /// Stopped by `POST /jobs/:id/cancel` or a delete; the job ends `cancelled`.
    Cancelled {
        reason: String,
    },
    /// The server stopped the attempt (shutdown); the job goes back to `pending` and the
    /// attempt is not counted against the retry budget.
    Released {
        reason: String,
    },
}

/// What the end of an attempt does to its job and to the attempt's own record: every backend
/// stores this, and none decides it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The job's status afterwards: `pending` again for a scheduled retry or a release.
    pub job_status: JobStatus,
    pub attempt_status: AttemptStatus,
    /// A scheduled retry: due again then, with one more retry counted.
    pub retry_at: Option<Timestamp>,
    pub result: Option<Value>,
    pub error: Option<String>,
}

impl Transition {
    /// The result as the JSON text a backend stores.
    pub fn result_text(&self) -> Result<Option<String>> {
        self.result
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|err| Error::Internal(format!("cannot encode result: {err}")))
    }
}

impl AttemptEnd {
    /// The job's and the attempt's new state.
    pub fn transition(&self) -> Transition {
        let (job_status, attempt_status) = match self {
            AttemptEnd::Succeeded { .. } => (JobStatus::Success, AttemptStatus::Success),
            AttemptEnd::Failed {
                retry_at: Some(_), ..
            } => (JobStatus::Pending, AttemptStatus::Failed),
            AttemptEnd::Failed { retry_at: None, .. } => (JobStatus::Failed, AttemptStatus::Failed),
            AttemptEnd::TimedOut { .. } => (JobStatus::Timeout, AttemptStatus::Timeout),
            AttemptEnd::Cancelled { .. } => (JobStatus::Cancelled, AttemptStatus::Cancelled),
            AttemptEnd::Released { .. } => (JobStatus::Pending, AttemptStatus::Interrupted),
        };
        let (result, error, retry_at) = match self {
            AttemptEnd::Succeeded { result } => (Some(result.clone()), None, None),
            AttemptEnd::Failed { error, retry_at } => (None, Some(error.clone()), *retry_at),
            AttemptEnd::TimedOut { error } => (None, Some(error.clone()), None),
            AttemptEnd::Cancelled { reason } | AttemptEnd::Released { reason } => {
                (None, Some(reason.clone()), None)
            }
        };
        Transition {
            job_status,
            attempt_status,
            retry_at,
            result,
            error,
        }
    }

    /// The terminal status the job ends in, or `None` when this end puts it back in the queue
    /// (a scheduled retry, a release).
    pub fn final_status(&self) -> Option<JobStatus> {
        Some(self.transition().job_status).filter(|status| status.is_terminal())
    }
}

#[cfg(test)]
impl NewJob {
    /// A simulated job of `priority`, due at `run_at` µs (or at once), for unit tests.
    pub fn for_test(priority: u8, run_at: Option<i64>) -> NewJob {
        NewJob {
            payload: serde_json::json!({"n": priority}),
            timeout_seconds: 5,
            max_retries: 1,
            priority,
            run_at: run_at.map(Timestamp::from_micros),
            function: None,
            queue: DEFAULT_QUEUE.into(),
            traceparent: None,
        }
    }
}

/// The defaults a submit request falls back to, taken from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct JobDefaults {
    pub timeout_seconds: u32,
    pub max_retries: u32,
}

/// A validated `POST /jobs` body, not yet stored.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub payload: Value,
    pub timeout_seconds: u32,
    pub max_retries: u32,
    pub priority: u8,
    /// When the job becomes due; `None` means at submission time.
    pub run_at: Option<Timestamp>,
    /// The function to run; `None` simulates.
    pub function: Option<String>,
    /// The queue it waits in.
    pub queue: String,
    /// The request's `traceparent` header (not a body field), checked by `trace`.
    pub traceparent: Option<String>,
}

const SUBMIT_FIELDS: [&str; 8] = [
    "payload",
    "function",
    "timeout_seconds",
    "max_retries",
    "priority",
    "run_at",
    "delay_seconds",
    "queue",
];

impl NewJob {
    /// The trace id of the job's `traceparent`, for its log lines.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(crate::trace::trace_id)
    }

    /// Whether `name` is a field of a submit body.
    pub fn is_field(name: &str) -> bool {
        SUBMIT_FIELDS.contains(&name)
    }

    /// Validates a submit body. `now` anchors `delay_seconds`.
    pub fn from_json(body: Value, defaults: JobDefaults, now: Timestamp) -> Result<NewJob> {
        let Value::Object(mut fields) = body else {
            return Err(Error::Validation(
                "the request body must be a JSON object with a \"payload\" field".into(),
            ));
        };
        if let Some(unknown) = fields
            .keys()
            .find(|key| !SUBMIT_FIELDS.contains(&key.as_str()))
        {
            return Err(Error::Validation(format!(
                "unknown field {unknown:?}; allowed fields are {}",
                SUBMIT_FIELDS.join(", ")
            )));
        }
        let payload = match fields.remove("payload") {
            None | Some(Value::Null) => {
                return Err(Error::Validation(
                    "payload is required and must not be null".into(),
                ))
            }
            Some(payload) => payload,
        };
        let timeout_seconds = optional_integer(&fields, "timeout_seconds", 1, MAX_TIMEOUT_SECONDS)?
            .map_or(defaults.timeout_seconds, to_u32);
        let max_retries = optional_integer(&fields, "max_retries", 0, MAX_RETRIES_LIMIT)?
            .map_or(defaults.max_retries, to_u32);
        let priority = optional_integer(&fields, "priority", 0, MAX_PRIORITY)?
            .map_or(0, |value| u8::try_from(value).unwrap_or(u8::MAX));
        let run_at = schedule(&fields, now)?;
        let function = match fields.remove("function") {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) => Some(name),
            Some(other) => {
                return Err(Error::Validation(format!(
                    "function must be the name of a function, got {other}"
                )))
            }
        };
        let queue = match fields.remove("queue") {
            None | Some(Value::Null) => DEFAULT_QUEUE.to_string(),
            Some(Value::String(name)) => queue_name(&name)?.to_string(),
            Some(other) => {
                return Err(Error::Validation(format!(
                    "queue must be a queue name (a string), got {other}"
                )))
            }
        };
        Ok(NewJob {
            payload,
            timeout_seconds,
            max_retries,
            priority,
            run_at,
            function,
            queue,
            traceparent: None,
        })
    }
}

fn to_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// An optional integer field within `min..=max`. `null` means absent (the default applies),
/// for every optional field of a submit; any other value that is not such an integer, a
/// string or `1.5` for example, is refused.
pub fn optional_integer(
    fields: &Map<String, Value>,
    name: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match whole_number(value) {
            Some(number) if (min..=max).contains(&number) => Ok(Some(number)),
            _ => Err(Error::Validation(format!(
                "{name} must be an integer from {min} to {max}, got {value}"
            ))),
        },
    }
}

/// When the job becomes due. Every time stored must render as RFC 3339, so a time outside
/// years 0000 to 9999 in UTC is refused rather than stored and later printed as `+10000-…`.
/// The value as a `u64` if it is a JSON number whose exact value is a whole number that fits:
/// `3`, and also `3.0` or `3e0`, which JSON Schema's `integer` (and so `openapi.json`) counts
/// as integers too. Decided on the number's text (serde_json keeps it, see Cargo.toml), so
/// `3.0000000000000000001` is not rounded into one.
pub fn whole_number(value: &Value) -> Option<u64> {
    let Value::Number(number) = value else {
        return None;
    };
    if let Some(plain) = number.as_u64() {
        return Some(plain);
    }
    let text = number.to_string();
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i64>().ok()?),
        None => (text.as_str(), 0),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = [whole, fraction].concat();
    // Where the decimal point falls in `digits` once the exponent is applied.
    let point = i64::try_from(whole.len()).ok()?.checked_add(exponent)?;
    let split = usize::try_from(point.clamp(0, i64::try_from(digits.len()).ok()?)).ok()?;
    let (integer, rest) = digits.split_at(split);
    if rest.bytes().any(|digit| digit != b'0') {
        return None;
    }
    let integer = integer.trim_start_matches('0');
    if integer.is_empty() {
        return Some(0);
    }
    // Zeros the exponent adds past the written digits; more than 20 digits exceed u64 anyway.
    let padding = usize::try_from(point).ok()? - split;
    if negative || integer.len() + padding > 20 {
        return None;
    }
    format!("{integer}{}", "0".repeat(padding)).parse().ok()
}

fn schedule(fields: &Map<String, Value>, now: Timestamp) -> Result<Option<Timestamp>> {
    let run_at = match fields.get("run_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => {
            let at = Timestamp::parse_rfc3339(text).ok_or_else(|| {
                Error::Validation(format!(
                    "run_at must be an RFC 3339 time such as 2030-01-01T00:00:00Z, got {text:?}"
                ))
            })?;
            if !at.is_rfc3339() {
                return Err(Error::Validation(format!(
                    "run_at must lie within the years 0000 to 9999 in UTC; {text:?} is {at} in UTC"
                )));
            }
            Some(at)
        }
        Some(other) => {
            return Err(Error::Validation(format!(
                "run_at must be an RFC 3339 time string, got {other}"
            )))
        }
    };
    let delay = optional_integer(fields, "delay_seconds", 0, MAX_DELAY_SECONDS)?;
    match (run_at, delay) {
        (Some(_), Some(_)) => Err(Error::Validation(
            "run_at and delay_seconds cannot both be given; choose one".into(),
        )),
        (Some(at), None) => Ok(Some(at)),
        (None, Some(seconds)) => {
            let at = now.plus(Duration::from_secs(seconds));
            if !at.is_rfc3339() {
                return Err(Error::Validation(format!(
                    "delay_seconds {seconds} would make the job due after 9999-12-31T23:59:59.999999Z"
                )));
            }
            Ok(Some(at))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEFAULTS: JobDefaults = JobDefaults {
        timeout_seconds: 30,
        max_retries: 3,
    };

    fn validate(body: Value) -> Result<NewJob> {
        NewJob::from_json(body, DEFAULTS, Timestamp::from_micros(1_000_000))
    }

    fn validation_message(body: Value) -> String {
        match validate(body) {
            Err(Error::Validation(message)) => message,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_what_the_request_leaves_out() {
        let job = validate(json!({"payload": "x"})).unwrap();
        assert_eq!(
            job,
            NewJob {
                payload: json!("x"),
                timeout_seconds: 30,
                max_retries: 3,
                priority: 0,
                run_at: None,
                function: None,
                queue: DEFAULT_QUEUE.into(),
                traceparent: None,
            }
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        assert!(
            validation_message(json!({"payload": 1, "timeout_second": 5}))
                .contains("\"timeout_second\"")
        );
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        for (field, value) in [
            ("timeout_seconds", json!(0)),
            ("timeout_seconds", json!(86_401)),
            ("timeout_seconds", json!(1.5)),
            ("timeout_seconds", json!(86_400.5)),
            ("max_retries", json!(101)),
            ("max_retries", json!(-1)),
            ("priority", json!(10)),
            ("priority", json!("high")),
            ("delay_seconds", json!(-5)),
        ] {
            let mut body = json!({"payload": {}});
            body[field] = value;
            assert!(validation_message(body).starts_with(field), "{field}");
        }
    }

    #[test]
    fn whole_numbers_are_integers_in_any_spelling() {
        let parse = |text: &str| whole_number(&serde_json::from_str(text).unwrap());
        for (text, expected) in [
            ("3", Some(3)),
            ("3.0", Some(3)),
            ("3.000", Some(3)),
            ("3e0", Some(3)),
            ("0.3e1", Some(3)),
            ("30e-1", Some(3)),
            ("1.5e2", Some(150)),
            ("1E3", Some(1000)),
            ("0", Some(0)),
            ("-0", Some(0)),
            ("-0.0", Some(0)),
            ("0e5", Some(0)),
            ("18446744073709551615", Some(u64::MAX)),
            ("1.8446744073709551615e19", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("1e20", None),
            ("1e400", None),
            ("1.5", None),
            ("3.0000000000000000001", None),
            ("3e-1", None),
            ("-1", None),
            ("-1.0", None),
            ("\"3\"", None),
            ("true", None),
        ] {
            assert_eq!(parse(text), expected, "{text}");
        }
    }

    #[test]
    fn null_or_missing_payload_is_refused() {
        assert!(validation_message(json!({})).contains("payload"));
        assert!(validation_message(json!({"payload": null})).contains("payload"));
        assert!(validation_message(json!([1, 2])).contains("object"));
    }

    #[test]
    fn delay_is_relative_to_now_and_excludes_run_at() {
        let job = validate(json!({"payload": 1, "delay_seconds": 2})).unwrap();
        assert_eq!(job.run_at, Some(Timestamp::from_micros(3_000_000)));
        let both = json!({"payload": 1, "delay_seconds": 2, "run_at": "2030-01-01T00:00:00Z"});
        assert!(validation_message(both).contains("both"));
        assert!(validation_message(json!({"payload": 1, "run_at": "soon"})).starts_with("run_at"));
    }

    #[test]
    fn run_at_outside_years_0000_to_9999_in_utc_is_refused() {
        for text in ["9999-12-31T23:59:59-00:01", "0000-01-01T00:00:00+00:01"] {
            let message = validation_message(json!({"payload": 1, "run_at": text}));
            assert!(
                message.starts_with("run_at") && message.contains("0000 to 9999"),
                "{message}"
            );
        }
        let last = validate(json!({"payload": 1, "run_at": "9999-12-31T23:59:59.999999Z"}));
        assert_eq!(last.unwrap().run_at, Some(Timestamp::MAX));
        let first = validate(json!({"payload": 1, "run_at": "0000-01-01T00:30:00+00:30"}));
        assert_eq!(first.unwrap().run_at, Some(Timestamp::MIN));
    }

    #[test]
    fn a_delay_that_ends_after_year_9999_is_refused() {
        let second_to_last = Timestamp::from_micros(Timestamp::MAX.as_micros() - 1_000_000);
        let body = json!({"payload": 1, "delay_seconds": 2});
        match NewJob::from_json(body, DEFAULTS, second_to_last) {
            Err(Error::Validation(message)) => assert!(message.starts_with("delay_seconds")),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn null_optional_fields_take_their_defaults_but_wrong_types_are_refused() {
        let body = json!({"payload": 1, "function": null, "timeout_seconds": null,
            "max_retries": null, "priority": null, "run_at": null, "delay_seconds": null});
        assert_eq!(
            validate(body).unwrap(),
            validate(json!({"payload": 1})).unwrap()
        );
        for field in [
            "timeout_seconds",
            "max_retries",
            "priority",
            "delay_seconds",
        ] {
            let mut body = json!({"payload": 1});
            body[field] = json!("1");
            assert!(validation_message(body).starts_with(field), "{field}");
        }
        // A null run_at or delay_seconds does not count as given.
        let job = validate(json!({"payload": 1, "run_at": null, "delay_seconds": 2})).unwrap();
        assert_eq!(job.run_at, Some(Timestamp::from_micros(3_000_000)));
    }

    #[test]
    fn status_round_trips_and_rejects_unknown_text() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>().unwrap(), status);
        }
        assert!("done".parse::<JobStatus>().is_err());
        assert!(JobStatus::Timeout.is_terminal() && !JobStatus::Pending.is_terminal());
    }

    #[test]
    fn an_attempt_end_is_final_unless_it_puts_the_job_back_in_the_queue() {
        let failed = |retry_at| AttemptEnd::Failed {
            error: "boom".into(),
            retry_at,
        };
        let reason = || "why".to_string();
        let ends = [
            (
                AttemptEnd::Succeeded { result: json!(1) },
                Some(JobStatus::Success),
            ),
            (failed(None), Some(JobStatus::Failed)),
            (failed(Some(Timestamp::from_micros(1))), None),
            (
                AttemptEnd::TimedOut { error: reason() },
                Some(JobStatus::Timeout),
            ),
            (
                AttemptEnd::Cancelled { reason: reason() },
                Some(JobStatus::Cancelled),
            ),
            (AttemptEnd::Released { reason: reason() }, None),
        ];
        for (end, status) in ends {
            assert_eq!(end.final_status(), status, "{end:?}");
            assert!(status.is_none_or(JobStatus::is_terminal));
        }
    }
}
