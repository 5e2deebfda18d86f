//! How a log line is written, for `LOG_FORMAT`: `text`, env_logger's own format, or `json`,
//! one JSON object per line (`time`, `level`, `target`, `message`, then the line's fields).
//! A line about one job carries the job's fields (`job_id`, `queue`, `attempt`, `trace_id`)
//! as `log` key-values, attached by [`job_line!`]; the text format appends them as
//! ` key=value`. A field without a value (a job never run has no attempt, a job submitted
//! without `traceparent` no trace id) is left out in both formats.
//!
//! This module only formats; `main` installs the logger.

use std::io::{self, Write};

use log::kv::{self, Key, Source, Value, VisitSource, VisitValue};
use log::Record;
use serde_json::{Map, Value as Json};

use crate::config::LogFormat;
use crate::time::Timestamp;

/// Logs a line about a job at `level` (`info`, `warn`, ...) with its fields: `job_line!(info,
/// &job, "job {} started", job.id)`, optionally with a `target: ...,` first. `job` is a
/// `&Job`; its attempt is the one claimed last (absent before the first claim).
macro_rules! job_line {
    (target: $target:expr, $level:ident, $job:expr, $($arg:tt)+) => {{
        let about: &$crate::job::Job = $job;
        log::$level!(
            target: $target,
            job_id = about.id.as_str(),
            queue = about.queue.as_str(),
            attempt = about.attempt,
            trace_id = about.trace_id();
            $($arg)+
        )
    }};
    ($level:ident, $job:expr, $($arg:tt)+) => {{
        let about: &$crate::job::Job = $job;
        log::$level!(
            job_id = about.id.as_str(),
            queue = about.queue.as_str(),
            attempt = about.attempt,
            trace_id = about.trace_id();
            $($arg)+
        )
    }};
}
pub(crate) use job_line;

/// Sets `builder` up to write lines in `format`.
pub fn configure(builder: &mut env_logger::Builder, format: LogFormat) {
    match format {
        LogFormat::Text => {
            builder.format_key_values(write_text_fields);
        }
        LogFormat::Json => {
            builder.format(write_json);
        }
    }
}

/// The fields of a text line: ` key=value` each, leaving out those without a value.
fn write_text_fields(out: &mut env_logger::fmt::Formatter, fields: &dyn Source) -> io::Result<()> {
    let mut line = String::new();
    fields
        .visit(&mut TextFields(&mut line))
        .map_err(io::Error::other)?;
    out.write_all(line.as_bytes())
}

struct TextFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        if let Some(value) = json_of(&value) {
            let shown = match value {
                Json::String(text) => text,
                other => other.to_string(),
            };
            self.0.push_str(&format!(" {key}={shown}"));
        }
        Ok(())
    }
}

/// Writes `record` as one line of JSON. serde_json escapes whatever the message holds, so a
/// message with quotes, newlines or control characters stays one valid line.
pub fn write_json(out: &mut impl Write, record: &Record<'_>) -> io::Result<()> {
    let mut line = Map::new();
    line.insert("time".into(), Timestamp::now().to_rfc3339_millis().into());
    line.insert("level".into(), record.level().as_str().into());
    line.insert("target".into(), record.target().into());
    line.insert("message".into(), record.args().to_string().into());
    record
        .key_values()
        .visit(&mut JsonFields(&mut line))
        .map_err(io::Error::other)?;
    let mut text = serde_json::to_vec(&line).map_err(io::Error::other)?;
    text.push(b'\n');
    // One write per line, so that lines from several threads never interleave.
    out.write_all(&text)
}

struct JsonFields<'a>(&'a mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        if let Some(value) = json_of(&value) {
            self.0.insert(key.as_str().to_string(), value);
        }
        Ok(())
    }
}

/// A field's value as JSON: unsigned integers as numbers, anything else as its text;
/// `None` for a field without a value.
fn json_of(value: &Value<'_>) -> Option<Json> {
    let mut kind = Kind::Other;
    let _ = value.visit(&mut kind);
    match kind {
        Kind::Null => None,
        Kind::Unsigned(number) => Some(number.into()),
        Kind::Other => Some(value.to_string().into()),
    }
}

enum Kind {
    Null,
    Unsigned(u64),
    Other,
}

impl<'v> VisitValue<'v> for Kind {
    fn visit_any(&mut self, _: Value<'_>) -> Result<(), kv::Error> {
        *self = Kind::Other;
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), kv::Error> {
        *self = Kind::Null;
        Ok(())
    }

    fn visit_u64(&mut self, number: u64) -> Result<(), kv::Error> {
        *self = Kind::Unsigned(number);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::kv::ToValue;

    /// A field without a value, as `Option::None` is logged.
    const NONE: Option<u32> = None;

    fn json_line(record: &Record<'_>) -> serde_json::Map<String, Json> {
        let mut out = Vec::new();
        write_json(&mut out, record).unwrap();
        assert_eq!(out.iter().filter(|&&byte| byte == b'\n').count(), 1);
        assert!(out.ends_with(b"\n"));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_json_line_has_the_record_and_its_fields_and_escapes_the_message() {
        let fields: [(&str, Value<'_>); 4] = [
            ("job_id", Value::from("0199-x")),
            ("queue", Value::from("emails")),
            ("attempt", Value::from(2u32)),
            ("trace_id", NONE.to_value()),
        ];
        let message = "quote \" newline \n tab \t nul \u{0} done";
        let line = json_line(
            &Record::builder()
                .args(format_args!("{message}"))
                .level(log::Level::Warn)
                .target("mini_lambda_rust::worker")
                .key_values(&fields)
                .build(),
        );
        let keys: Vec<&str> = line.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["time", "level", "target", "message", "job_id", "queue", "attempt"]
        );
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["target"], "mini_lambda_rust::worker");
        assert_eq!(line["message"], message);
        assert_eq!(line["job_id"], "0199-x");
        assert_eq!(line["attempt"], 2);
        let time = line["time"].as_str().unwrap();
        assert_eq!(time.len(), "2026-01-01T00:00:00.000Z".len(), "{time}");
        assert!(time.ends_with('Z') && Timestamp::parse_rfc3339(time).is_some());
    }

    #[test]
    fn text_fields_leave_out_those_without_a_value() {
        let fields: [(&str, Value<'_>); 3] = [
            ("job_id", Value::from("j")),
            ("attempt", NONE.to_value()),
            ("queue", Value::from("default")),
        ];
        let mut line = String::new();
        fields.visit(&mut TextFields(&mut line)).unwrap();
        assert_eq!(line, " job_id=j queue=default");
    }
}
