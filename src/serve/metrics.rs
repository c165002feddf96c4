//! Counters and histograms, written in the Prometheus text exposition format (version 0.0.4).
//!
//! The format is simple enough that a hand-written writer is shorter than a dependency; the
//! test below parses the output back to keep it honest.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch-size buckets, in images.
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// A histogram over fixed buckets.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds` for +Inf.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[slot] += 1;
        self.sum += value;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count;
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Everything `/metrics` reports; shared by the routes and the model worker.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    batches: Mutex<Histogram>,
    /// Seconds as f64 bits: set once, read often.
    load_seconds: AtomicU64,
    /// Requests accepted by the batcher and not yet taken by the worker.
    pub queue_depth: AtomicUsize,
    /// Requests admitted to the model routes and not yet answered; the batcher stops waiting
    /// for more once every one of them is in its batch.
    pub in_progress: AtomicUsize,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A poisoned lock only means another request panicked mid-update; the numbers are still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Metrics {
    /// All zero.
    pub fn new() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(BTreeMap::new()),
            batches: Mutex::new(Histogram::new(&BATCH_BUCKETS)),
            load_seconds: AtomicU64::new(0f64.to_bits()),
            queue_depth: AtomicUsize::new(0),
            in_progress: AtomicUsize::new(0),
        }
    }

    /// One answered request. `route` is the route's template, so the label set stays small.
    pub fn observe_request(&self, route: &str, status: u16, elapsed: Duration) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_insert(0) += 1;
        lock(&self.latency)
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    /// One forward pass over `images` images.
    pub fn observe_batch(&self, images: usize) {
        lock(&self.batches).observe(images as f64);
    }

    /// How long loading the model took.
    pub fn set_model_load_seconds(&self, seconds: f64) {
        self.load_seconds
            .store(seconds.to_bits(), Ordering::Relaxed);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP maas_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE maas_requests_total counter\n");
        for ((route, status), count) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "maas_requests_total{{route=\"{}\",status=\"{status}\"}} {count}",
                escape(route)
            );
        }
        out.push_str("# HELP maas_request_duration_seconds Time to answer a request, by route.\n");
        out.push_str("# TYPE maas_request_duration_seconds histogram\n");
        for (route, histogram) in lock(&self.latency).iter() {
            histogram.write(
                &mut out,
                "maas_request_duration_seconds",
                &format!("route=\"{}\"", escape(route)),
            );
        }
        out.push_str("# HELP maas_batch_size Images per forward pass of the model.\n");
        out.push_str("# TYPE maas_batch_size histogram\n");
        lock(&self.batches).write(&mut out, "maas_batch_size", "");
        out.push_str("# HELP maas_model_load_seconds Time taken to load the model and place it on its device.\n");
        out.push_str("# TYPE maas_model_load_seconds gauge\n");
        let _ = writeln!(
            out,
            "maas_model_load_seconds {}",
            f64::from_bits(self.load_seconds.load(Ordering::Relaxed))
        );
        out.push_str("# HELP maas_queue_depth Requests waiting for the model.\n");
        out.push_str("# TYPE maas_queue_depth gauge\n");
        let _ = writeln!(
            out,
            "maas_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP maas_requests_in_progress Requests being read, decoded or run by the model.\n",
        );
        out.push_str("# TYPE maas_requests_in_progress gauge\n");
        let _ = writeln!(
            out,
            "maas_requests_in_progress {}",
            self.in_progress.load(Ordering::Relaxed)
        );
        out
    }
}

/// Label values escape backslash, double quote and newline.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One sample: metric name, labels in order, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// A strict reader of the text format, enough to check what `render` writes.
    fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE twice: {name}"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), Vec::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').unwrap();
                    let mut labels = Vec::new();
                    let mut chars = body.chars().peekable();
                    while chars.peek().is_some() {
                        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                        assert_eq!(chars.next(), Some('"'));
                        let mut value = String::new();
                        while let Some(c) = chars.next() {
                            match c {
                                '\\' => match chars.next().unwrap() {
                                    'n' => value.push('\n'),
                                    other => value.push(other),
                                },
                                '"' => break,
                                c => value.push(c),
                            }
                        }
                        labels.push((key, value));
                        if chars.peek() == Some(&',') {
                            chars.next();
                        }
                    }
                    (name.to_string(), labels)
                }
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name.as_str());
            assert!(
                types.contains_key(family),
                "{name} has no TYPE line before it"
            );
            samples.push((name, labels, value));
        }
        (types, samples)
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && l.iter().zip(labels).all(|(a, b)| a.0 == b.0 && a.1 == b.1)
            })
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
            .2
    }

    #[test]
    fn renders_parseable_counters_histograms_and_gauges() {
        let m = Metrics::new();
        m.observe_request("/v2/models/{name}/infer", 200, Duration::from_millis(3));
        m.observe_request("/v2/models/{name}/infer", 200, Duration::from_millis(40));
        m.observe_request("/v2/models/{name}/infer", 400, Duration::from_micros(200));
        m.observe_request("odd \"route\"\\\n", 404, Duration::from_secs(100));
        m.observe_batch(1);
        m.observe_batch(3);
        m.observe_batch(64);
        m.set_model_load_seconds(0.25);
        m.queue_depth.store(7, Ordering::Relaxed);
        let (types, samples) = parse(&m.render());
        assert_eq!(types["maas_requests_total"], "counter");
        assert_eq!(types["maas_request_duration_seconds"], "histogram");
        assert_eq!(types["maas_batch_size"], "histogram");
        assert_eq!(types["maas_model_load_seconds"], "gauge");
        assert_eq!(types["maas_queue_depth"], "gauge");
        let infer = "/v2/models/{name}/infer";
        assert_eq!(
            value(
                &samples,
                "maas_requests_total",
                &[("route", infer), ("status", "200")]
            ),
            2.0
        );
        assert_eq!(
            value(
                &samples,
                "maas_requests_total",
                &[("route", infer), ("status", "400")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &samples,
                "maas_requests_total",
                &[("route", "odd \"route\"\\\n"), ("status", "404")]
            ),
            1.0
        );
        let d = "maas_request_duration_seconds";
        assert_eq!(
            value(
                &samples,
                &format!("{d}_bucket"),
                &[("route", infer), ("le", "0.001")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &samples,
                &format!("{d}_bucket"),
                &[("route", infer), ("le", "0.005")]
            ),
            2.0
        );
        assert_eq!(
            value(
                &samples,
                &format!("{d}_bucket"),
                &[("route", infer), ("le", "+Inf")]
            ),
            3.0
        );
        assert_eq!(
            value(&samples, &format!("{d}_count"), &[("route", infer)]),
            3.0
        );
        assert!((value(&samples, &format!("{d}_sum"), &[("route", infer)]) - 0.0432).abs() < 1e-9);
        assert_eq!(
            value(&samples, "maas_batch_size_bucket", &[("le", "2")]),
            1.0
        );
        assert_eq!(
            value(&samples, "maas_batch_size_bucket", &[("le", "4")]),
            2.0
        );
        assert_eq!(
            value(&samples, "maas_batch_size_bucket", &[("le", "64")]),
            3.0
        );
        assert_eq!(value(&samples, "maas_batch_size_count", &[]), 3.0);
        assert_eq!(value(&samples, "maas_batch_size_sum", &[]), 68.0);
        assert_eq!(value(&samples, "maas_model_load_seconds", &[]), 0.25);
        assert_eq!(value(&samples, "maas_queue_depth", &[]), 7.0);
        assert_eq!(value(&samples, "maas_requests_in_progress", &[]), 0.0);
        // Buckets are cumulative: never decreasing, ending at the count.
        for family in [
            "maas_batch_size_bucket",
            "maas_request_duration_seconds_bucket",
        ] {
            let mut last: BTreeMap<String, f64> = BTreeMap::new();
            for (_, labels, v) in samples.iter().filter(|s| s.0 == family) {
                let key = labels
                    .iter()
                    .filter(|l| l.0 != "le")
                    .map(|l| l.1.clone())
                    .collect::<Vec<_>>()
                    .join(",");
                let prev = last.insert(key, *v).unwrap_or(0.0);
                assert!(*v >= prev, "{family} decreases");
            }
        }
    }

    #[test]
    fn model_series_carry_model_and_version_labels_after_the_server_families() {
        use crate::serve::stats::{ModelStats, write_metrics};
        let (a, b) = (ModelStats::default(), ModelStats::default());
        a.execution(3);
        a.request(true, Duration::from_millis(2));
        b.request(false, Duration::from_millis(1));
        let mut text = Metrics::new().render();
        write_metrics(&mut text, &[("cifar", 1, &a), ("odd\"name", 2, &b)]);
        let (types, samples) = parse(&text);
        assert_eq!(types["maas_model_requests_total"], "counter");
        let cifar = [("model", "cifar"), ("version", "1")];
        assert_eq!(value(&samples, "maas_model_inferences_total", &cifar), 3.0);
        assert_eq!(value(&samples, "maas_model_executions_total", &cifar), 1.0);
        let ok = [("model", "cifar"), ("version", "1"), ("result", "success")];
        assert_eq!(value(&samples, "maas_model_requests_total", &ok), 1.0);
        let failed = [("model", "odd\"name"), ("version", "2"), ("result", "fail")];
        assert_eq!(value(&samples, "maas_model_requests_total", &failed), 1.0);
    }

    #[test]
    fn empty_metrics_still_render_every_family() {
        let (types, samples) = parse(&Metrics::new().render());
        assert_eq!(types.len(), 6);
        assert_eq!(value(&samples, "maas_batch_size_count", &[]), 0.0);
    }
}
