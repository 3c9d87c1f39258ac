//! The control plane's metrics, named like the worker's: uploads by result,
//! compile time, activations, HTTP timeouts, body bytes, and its artifact
//! cache. Declared once in [`CONTROL`] (see `crate::telemetry::metrics` for
//! the scheme); prometheus-client writes the `/metrics` text.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::sandbox::CacheStats;
use crate::telemetry::metrics::{self, Desc, Kind, Label, Metric, Value, CACHE};

/// Seconds. A Rust component compiles in under a second, a Python one in
/// 8-22 s, so the worker's buckets (which stop at 10 s) would not do.
const COMPILE_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

const RESULT: Label = Label {
    prom: "result",
    otel: "result",
};
const ACTION: Label = Label {
    prom: "action",
    otel: "action",
};
const PHASE: Label = Label {
    prom: "phase",
    otel: "phase",
};

/// The control plane's metrics, in the order `/metrics` serves them.
pub static CONTROL: &[Metric<ControlMetrics>] = &[
    Metric {
        desc: Desc {
            prom: "pipeline_control_uploads_total",
            otel: "pipeline.control.uploads",
            unit: "{upload}",
            help: "Uploads by result (accepted, rejected: 4xx, error: 5xx) and reason (the API error code).",
            kind: Kind::Counter,
            labels: &[RESULT, metrics::REASON],
        },
        read: |m, out| {
            let uploads = m.uploads.lock().unwrap_or_else(|p| p.into_inner());
            if uploads.is_empty() {
                // A series from the start, so that rate() sees the first upload.
                out.u64(vec!["accepted".into(), String::new()], 0);
            }
            for ((result, reason), n) in uploads.iter() {
                out.u64(vec![(*result).into(), (*reason).into()], *n);
            }
        },
    },
    Metric {
        desc: Desc {
            prom: "pipeline_control_compile_duration_seconds",
            otel: "pipeline.control.compile.duration",
            unit: "s",
            help: "Validation and precompilation of an upload, every engine configuration of its tenant.",
            kind: Kind::Histogram(&COMPILE_BUCKETS),
            labels: &[],
        },
        read: |m, out| {
            let buckets = m
                .compile_buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
            let sum = m.compile_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            out.push(vec![], Value::Histogram { buckets, sum });
        },
    },
    Metric {
        desc: Desc {
            prom: "pipeline_control_activations_total",
            otel: "pipeline.control.activations",
            unit: "{activation}",
            help: "Activations written to the activation log, by action (activate, rollback).",
            kind: Kind::Counter,
            labels: &[ACTION],
        },
        read: |m, out| {
            for (action, n) in m
                .activations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                out.u64(vec![(*action).into()], *n);
            }
        },
    },
    Metric {
        desc: Desc {
            prom: "pipeline_control_http_timeouts_total",
            otel: "pipeline.control.http.timeouts",
            unit: "{request}",
            help: "Requests cut off by control.header_read_timeout_ms (phase=headers) or control.body_read_timeout_ms (phase=body).",
            kind: Kind::Counter,
            labels: &[PHASE],
        },
        read: |m, out| {
            out.u64(vec!["headers".into()], m.header_timeouts.load(Ordering::Relaxed));
            out.u64(vec!["body".into()], m.body_timeouts.load(Ordering::Relaxed));
        },
    },
    Metric {
        desc: Desc {
            prom: "pipeline_control_upload_body_bytes_total",
            otel: "pipeline.control.upload.body",
            unit: "By",
            help: "Upload body bytes read, all after the token was accepted.",
            kind: Kind::Counter,
            labels: &[],
        },
        read: |m, out| out.u64(vec![], m.body_bytes.load(Ordering::Relaxed)),
    },
];

#[derive(Default)]
pub struct ControlMetrics {
    /// (result, reason) → uploads. `reason` is the API error code, a fixed set.
    uploads: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// action → activations written. No pipeline label: `/metrics` needs no
    /// token, and pipeline names would tell one tenant about the others.
    activations: Mutex<BTreeMap<&'static str, u64>>,
    compile_buckets: [AtomicU64; COMPILE_BUCKETS.len() + 1],
    compile_sum_nanos: AtomicU64,
    header_timeouts: AtomicU64,
    body_timeouts: AtomicU64,
    /// Upload body bytes the server read (after the token was accepted).
    body_bytes: AtomicU64,
}

impl ControlMetrics {
    /// `status` 0 for an accepted upload; else the HTTP status of the answer.
    pub fn upload(&self, status: u16, code: &'static str) {
        let result = match status {
            0 => "accepted",
            400..=499 => "rejected",
            _ => "error",
        };
        *self
            .uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((result, code))
            .or_default() += 1;
    }

    pub fn compiled(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = COMPILE_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(COMPILE_BUCKETS.len());
        self.compile_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.compile_sum_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// `phase`: "headers" (hyper cut the connection) or "body".
    pub fn http_timeout(&self, phase: &str) {
        let c = if phase == "headers" {
            &self.header_timeouts
        } else {
            &self.body_timeouts
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn body_bytes(&self, n: usize) {
        self.body_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn activation(&self, action: &str) {
        let action = if action == "rollback" {
            "rollback"
        } else {
            "activate"
        };
        *self
            .activations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(action)
            .or_default() += 1;
    }

    pub fn render(&self, cache: &CacheStats) -> String {
        let mut families = Vec::new();
        metrics::collect(CONTROL, self, &mut families);
        metrics::collect(CACHE, cache, &mut families);
        metrics::prometheus_text(families)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_consistent() {
        let m = ControlMetrics::default();
        m.activation("activate");
        metrics::tests::check(CONTROL, &m, &[]);
        let others = metrics::WORKER
            .iter()
            .map(|m| &m.desc)
            .chain(CACHE.iter().map(|m| &m.desc));
        for b in others {
            for a in CONTROL {
                assert_ne!(a.desc.prom, b.prom);
                assert_ne!(a.desc.otel, b.otel);
            }
        }
    }

    #[test]
    fn renders_uploads_compile_time_and_activations() {
        let m = ControlMetrics::default();
        let empty = m.render(&CacheStats {
            size_bytes: 0,
            limit_bytes: 10,
            evictions: 0,
            rejected_mismatch: 0,
            rejected_unknown: 0,
            rejected_bad_mac: 3,
            over_limit: false,
        });
        assert!(empty.contains("pipeline_control_uploads_total{result=\"accepted\"} 0\n"));
        m.upload(0, "");
        m.upload(422, "forbidden-import");
        m.upload(422, "forbidden-import");
        m.upload(500, "internal");
        m.compiled(Duration::from_millis(300));
        m.compiled(Duration::from_secs(15));
        m.activation("activate");
        m.activation("rollback");
        m.upload(429, "too-many-uploads");
        m.http_timeout("headers");
        m.http_timeout("body");
        m.http_timeout("body");
        m.body_bytes(10);
        m.body_bytes(5);
        let text = m.render(&CacheStats {
            size_bytes: 7,
            limit_bytes: 10,
            evictions: 2,
            rejected_mismatch: 1,
            rejected_unknown: 0,
            rejected_bad_mac: 3,
            over_limit: false,
        });
        for line in [
            "pipeline_control_uploads_total{result=\"accepted\"} 1",
            "pipeline_control_uploads_total{result=\"rejected\",reason=\"forbidden-import\"} 2",
            "pipeline_control_uploads_total{result=\"error\",reason=\"internal\"} 1",
            "pipeline_control_compile_duration_seconds_bucket{le=\"0.25\"} 0",
            "pipeline_control_compile_duration_seconds_bucket{le=\"0.5\"} 1",
            "pipeline_control_compile_duration_seconds_bucket{le=\"10\"} 1",
            "pipeline_control_compile_duration_seconds_bucket{le=\"20\"} 2",
            "pipeline_control_compile_duration_seconds_count 2",
            "pipeline_control_activations_total{action=\"activate\"} 1",
            "pipeline_control_activations_total{action=\"rollback\"} 1",
            "pipeline_control_uploads_total{result=\"rejected\",reason=\"too-many-uploads\"} 1",
            "pipeline_control_http_timeouts_total{phase=\"headers\"} 1",
            "pipeline_control_http_timeouts_total{phase=\"body\"} 2",
            "pipeline_control_upload_body_bytes_total 15",
            "pipeline_artifact_cache_size_bytes 7",
            "pipeline_artifact_cache_evictions_total 2",
            "pipeline_artifact_cache_rejected_total{reason=\"hash-mismatch\"} 1",
            "pipeline_artifact_cache_rejected_total{reason=\"bad-mac\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("{result=\"accepted\"} 0"), "{text}");
    }
}
