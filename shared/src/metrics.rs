//! A small Prometheus registry, one per process (or per app in tests), rendered as the text
//! exposition format. Counters and histograms with labels; nothing global, so two apps in
//! one test process keep their own numbers.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histogram buckets for latencies, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A counter family: one value per combination of label values.
#[derive(Debug)]
pub struct Counter {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<Vec<(Vec<String>, u64)>>,
}

/// Finds the entry for `label_values` or adds it. A linear scan without allocating: a family
/// has a handful of series, and this runs on every request.
fn entry<'a, T>(
    values: &'a mut Vec<(Vec<String>, T)>,
    label_values: &[&str],
    new: impl FnOnce() -> T,
) -> &'a mut T {
    let found = values.iter().position(|(key, _)| {
        key.iter()
            .map(String::as_str)
            .eq(label_values.iter().copied())
    });
    let index = match found {
        Some(index) => index,
        None => {
            values.push((
                label_values.iter().map(|v| (*v).to_owned()).collect(),
                new(),
            ));
            values.len() - 1
        }
    };
    &mut values[index].1
}

/// The series in a stable order for rendering.
fn sorted<T: Clone>(values: &[(Vec<String>, T)]) -> Vec<(Vec<String>, T)> {
    let mut copy = values.to_vec();
    copy.sort_by(|a, b| a.0.cmp(&b.0));
    copy
}

impl Counter {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            help,
            labels,
            values: Mutex::new(Vec::new()),
        }
    }

    pub fn inc(&self, label_values: &[&str]) {
        self.add(label_values, 1);
    }

    pub fn add(&self, label_values: &[&str], n: u64) {
        if let Ok(mut values) = self.values.lock() {
            *entry(&mut values, label_values, || 0) += n;
        }
    }

    /// The current value for one combination of labels (0 if never counted).
    pub fn get(&self, label_values: &[&str]) -> u64 {
        self.values
            .lock()
            .map(|values| {
                values
                    .iter()
                    .find(|(key, _)| {
                        key.iter()
                            .map(String::as_str)
                            .eq(label_values.iter().copied())
                    })
                    .map_or(0, |(_, v)| *v)
            })
            .unwrap_or(0)
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        if let Ok(values) = self.values.lock() {
            for (key, value) in values.iter() {
                let _ = writeln!(
                    out,
                    "{}{} {value}",
                    self.name,
                    labels(self.labels, key, None)
                );
            }
        }
    }
}

/// A gauge without labels, set from outside (e.g. read from JetStream at scrape time).
#[derive(Debug)]
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Gauge {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    pub fn set(&self, value: u64) {
        self.value.store(value, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} gauge", self.name);
        let _ = writeln!(out, "{} {}", self.name, self.value.load(Ordering::Relaxed));
    }
}

#[derive(Debug, Default, Clone)]
struct Buckets {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram family with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    values: Mutex<Vec<(Vec<String>, Buckets)>>,
}

impl Histogram {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Self {
        Self {
            name,
            help,
            labels,
            bounds,
            values: Mutex::new(Vec::new()),
        }
    }

    pub fn observe(&self, label_values: &[&str], value: f64) {
        if let Ok(mut values) = self.values.lock() {
            let buckets = entry(&mut values, label_values, || Buckets {
                counts: vec![0; self.bounds.len()],
                ..Buckets::default()
            });
            for (bound, count) in self.bounds.iter().zip(buckets.counts.iter_mut()) {
                if value <= *bound {
                    *count += 1;
                }
            }
            buckets.sum += value;
            buckets.count += 1;
        }
    }

    pub fn observe_duration(&self, label_values: &[&str], elapsed: Duration) {
        self.observe(label_values, elapsed.as_secs_f64());
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let values = self.values.lock().map(|v| sorted(&v)).unwrap_or_default();
        {
            for (key, buckets) in &values {
                for (bound, count) in self.bounds.iter().zip(&buckets.counts) {
                    let le = bound.to_string();
                    let _ = writeln!(
                        out,
                        "{}_bucket{} {count}",
                        self.name,
                        labels(self.labels, key, Some(&le))
                    );
                }
                let _ = writeln!(
                    out,
                    "{}_bucket{} {}",
                    self.name,
                    labels(self.labels, key, Some("+Inf")),
                    buckets.count
                );
                let _ = writeln!(
                    out,
                    "{}_sum{} {}",
                    self.name,
                    labels(self.labels, key, None),
                    buckets.sum
                );
                let _ = writeln!(
                    out,
                    "{}_count{} {}",
                    self.name,
                    labels(self.labels, key, None),
                    buckets.count
                );
            }
        }
    }
}

fn labels(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_per_label_combination() {
        let c = Counter::new("requests_total", "Requests.", &["route", "status"]);
        c.inc(&["/a", "200"]);
        c.inc(&["/a", "200"]);
        c.inc(&["/a", "404"]);
        let mut out = String::new();
        c.render(&mut out);
        assert!(out.contains("# TYPE requests_total counter"));
        assert!(out.contains("requests_total{route=\"/a\",status=\"200\"} 2"));
        assert!(out.contains("requests_total{route=\"/a\",status=\"404\"} 1"));
        assert_eq!(c.get(&["/a", "200"]), 2);
    }

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::new("latency_seconds", "Latency.", &[], &[0.1, 1.0]);
        h.observe(&[], 0.05);
        h.observe(&[], 0.5);
        h.observe(&[], 5.0);
        let mut out = String::new();
        h.render(&mut out);
        assert!(
            out.contains("latency_seconds_bucket{le=\"0.1\"} 1"),
            "{out}"
        );
        assert!(out.contains("latency_seconds_bucket{le=\"1\"} 2"), "{out}");
        assert!(
            out.contains("latency_seconds_bucket{le=\"+Inf\"} 3"),
            "{out}"
        );
        assert!(out.contains("latency_seconds_count 3"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let c = Counter::new("x_total", "X.", &["l"]);
        c.inc(&["a\"b\\c"]);
        let mut out = String::new();
        c.render(&mut out);
        assert!(out.contains(r#"x_total{l="a\"b\\c"} 1"#), "{out}");
    }
}
