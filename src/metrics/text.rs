//! The Prometheus text exposition format, version 0.0.4: a `# HELP` and a `# TYPE` line per
//! family, then its samples, label values escaped. Knows nothing of what is measured.

use std::fmt::Write;

use super::series::HistogramValues;

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// A scrape's text, built family by family.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a family: its help text and type (`counter`, `gauge`, `histogram`).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample of an integer value.
    pub fn int(&mut self, name: &str, labels: Labels<'_>, value: u64) {
        self.name_and_labels(name, labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    /// One sample of a real value.
    pub fn real(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        self.name_and_labels(name, labels, None);
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// A histogram's `_bucket` samples (with `le`), `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, labels: Labels<'_>, values: &HistogramValues) {
        let bucket = format!("{name}_bucket");
        for (bound, count) in values.bounds.iter().zip(&values.cumulative) {
            self.name_and_labels(&bucket, labels, Some(&number(*bound)));
            let _ = writeln!(self.text, " {count}");
        }
        self.name_and_labels(&bucket, labels, Some("+Inf"));
        let _ = writeln!(self.text, " {}", values.count);
        self.real(&format!("{name}_sum"), labels, values.sum_seconds);
        self.int(&format!("{name}_count"), labels, values.count);
    }

    pub fn into_text(self) -> String {
        self.text
    }

    fn name_and_labels(&mut self, name: &str, labels: Labels<'_>, le: Option<&str>) {
        self.text.push_str(name);
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.text.push('{');
        let le = le.map(|le| ("le", le));
        for (index, (label, value)) in labels.iter().copied().chain(le).enumerate() {
            if index > 0 {
                self.text.push(',');
            }
            let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
        }
        self.text.push('}');
    }
}

/// A value as the format writes it: `+Inf`, `-Inf`, `NaN` by name, others in decimal.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// A label value: backslash, double quote and line feed escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Help text: backslash and line feed escaped.
fn escape_help(help: &str) -> String {
    help.replace('\\', r"\\").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::series::Histogram;
    use std::time::Duration;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.family("x_total", "counter", "a \\ help\nline");
        out.int("x_total", &[("queue", "a\"b\\c\nd")], 3);
        assert_eq!(
            out.into_text(),
            "# HELP x_total a \\\\ help\\nline\n# TYPE x_total counter\n\
             x_total{queue=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_inf_sum_and_count() {
        let histogram = Histogram::new(&[0.5, 1.0]);
        histogram.observe(Duration::from_millis(250));
        histogram.observe(Duration::from_secs(2));
        let mut out = Exposition::default();
        out.histogram("h_seconds", &[("queue", "q")], &histogram.values());
        assert_eq!(
            out.into_text(),
            "h_seconds_bucket{queue=\"q\",le=\"0.5\"} 1\n\
             h_seconds_bucket{queue=\"q\",le=\"1\"} 1\n\
             h_seconds_bucket{queue=\"q\",le=\"+Inf\"} 2\n\
             h_seconds_sum{queue=\"q\"} 2.25\n\
             h_seconds_count{queue=\"q\"} 2\n"
        );
    }
}
