//! Per model version statistics, in the shape of Triton's statistics extension
//! (`GET /v2/models/stats`), so that `tritonclient`'s `get_inference_statistics` reads them, and
//! as labelled series on `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// How many times something happened and the time it took in all.
#[derive(Debug, Default)]
pub struct Tally {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Tally {
    /// One more, taking `took`.
    pub fn add(&self, took: Duration) {
        self.add_many(1, took);
    }

    /// `count` more, taking `took` in all.
    pub fn add_many(&self, count: u64, took: Duration) {
        self.count.fetch_add(count, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The count and the nanoseconds so far.
    pub fn read(&self) -> (u64, u64) {
        (self.count(), self.ns.load(Ordering::Relaxed))
    }

    fn json(&self) -> Value {
        let (count, ns) = self.read();
        json!({ "count": count, "ns": ns })
    }
}

/// What one model version has done since it was loaded.
#[derive(Debug, Default)]
pub struct ModelStats {
    /// Images run through the model.
    pub inference_count: AtomicU64,
    /// Forward passes (batches).
    pub execution_count: AtomicU64,
    /// Requests answered, and their whole time.
    pub success: Tally,
    /// Requests that failed once they had reached this model version.
    pub fail: Tally,
    /// Time requests waited in the batch queue.
    pub queue: Tally,
    /// Time spent decoding request bodies into model input.
    pub compute_input: Tally,
    /// Time spent in the forward pass, counted for every request of the batch.
    pub compute_infer: Tally,
    /// Time spent encoding answers.
    pub compute_output: Tally,
    /// When the last request was answered, in milliseconds since the Unix epoch (0: never).
    last_inference_ms: AtomicU64,
}

impl ModelStats {
    /// One request answered (`ok`) or failed, taking `took` in all.
    pub fn request(&self, ok: bool, took: Duration) {
        if ok {
            self.success.add(took);
        } else {
            self.fail.add(took);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    /// One forward pass over `images` images.
    pub fn execution(&self, images: usize) {
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.inference_count
            .fetch_add(images as u64, Ordering::Relaxed);
    }

    /// When the last request was answered, in milliseconds since the Unix epoch (0: never).
    pub fn last_inference_ms(&self) -> u64 {
        self.last_inference_ms.load(Ordering::Relaxed)
    }

    /// One entry of Triton's `model_stats` list.
    pub fn json(&self, name: &str, version: u64) -> Value {
        json!({
            "name": name,
            "version": version.to_string(),
            "last_inference": self.last_inference_ms(),
            "inference_count": self.inference_count.load(Ordering::Relaxed),
            "execution_count": self.execution_count.load(Ordering::Relaxed),
            "inference_stats": {
                "success": self.success.json(),
                "fail": self.fail.json(),
                "queue": self.queue.json(),
                "compute_input": self.compute_input.json(),
                "compute_infer": self.compute_infer.json(),
                "compute_output": self.compute_output.json(),
                "cache_hit": { "count": 0, "ns": 0 },
                "cache_miss": { "count": 0, "ns": 0 },
            },
            "batch_stats": [],
        })
    }
}

/// The per model version series of `/metrics`, each metric's samples together under its header
/// as the text format wants them.
pub fn write_metrics<'a>(out: &mut String, versions: &[(&'a str, u64, &'a ModelStats)]) {
    type Sample = fn(&ModelStats) -> Vec<(&'static str, u64)>;
    let metrics: [(&str, &str, Sample); 3] = [
        (
            "maas_model_inferences_total",
            "Images run through the model, by model and version.",
            |s| vec![("", s.inference_count.load(Ordering::Relaxed))],
        ),
        (
            "maas_model_executions_total",
            "Forward passes of the model, by model and version.",
            |s| vec![("", s.execution_count.load(Ordering::Relaxed))],
        ),
        (
            "maas_model_requests_total",
            "Inference requests answered, by model, version and result.",
            |s| vec![("success", s.success.count()), ("fail", s.fail.count())],
        ),
    ];
    for (metric, help, samples) in metrics {
        let _ = writeln!(out, "# HELP {metric} {help}");
        let _ = writeln!(out, "# TYPE {metric} counter");
        for (name, version, stats) in versions {
            let labels = format!(
                "model=\"{}\",version=\"{version}\"",
                super::metrics::escape(name)
            );
            for (result, value) in samples(stats) {
                if result.is_empty() {
                    let _ = writeln!(out, "{metric}{{{labels}}} {value}");
                } else {
                    let _ = writeln!(out, "{metric}{{{labels},result=\"{result}\"}} {value}");
                }
            }
        }
    }
}
