//! The control plane's `/metrics` (Prometheus text), named like the worker's:
//! uploads by result, compile time, activations, and its artifact cache.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::sandbox::CacheStats;

/// Seconds. A Rust component compiles in under a second, a Python one in
/// 8-22 s, so the worker's buckets (which stop at 10 s) would not do.
const COMPILE_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
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
        let mut out = String::new();
        let name = "pipeline_control_uploads_total";
        let _ = writeln!(
            out,
            "# HELP {name} Uploads by result (accepted, rejected: 4xx, error: 5xx) and reason (the API error code).\n# TYPE {name} counter"
        );
        let uploads = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if uploads.is_empty() {
            let _ = writeln!(out, "{name}{{result=\"accepted\"}} 0");
        }
        for ((result, reason), n) in uploads.iter() {
            if reason.is_empty() {
                let _ = writeln!(out, "{name}{{result=\"{result}\"}} {n}");
            } else {
                let _ = writeln!(out, "{name}{{result=\"{result}\",reason=\"{reason}\"}} {n}");
            }
        }
        drop(uploads);

        let name = "pipeline_control_compile_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Validation and precompilation of an upload, every engine configuration of its tenant.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, b) in COMPILE_BUCKETS.iter().enumerate() {
            cumulative += self.compile_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.compile_buckets[COMPILE_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.compile_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");

        let name = "pipeline_control_activations_total";
        let _ = writeln!(
            out,
            "# HELP {name} Activations written to the activation log, by action (activate, rollback).\n# TYPE {name} counter"
        );
        for (action, n) in self
            .activations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "{name}{{action=\"{action}\"}} {n}");
        }
        let name = "pipeline_control_http_timeouts_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests cut off by control.header_read_timeout_ms (phase=headers) or control.body_read_timeout_ms (phase=body).\n# TYPE {name} counter"
        );
        for (phase, c) in [
            ("headers", &self.header_timeouts),
            ("body", &self.body_timeouts),
        ] {
            let _ = writeln!(
                out,
                "{name}{{phase=\"{phase}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let name = "pipeline_control_upload_body_bytes_total";
        let _ = writeln!(
            out,
            "# HELP {name} Upload body bytes read, all after the token was accepted.\n# TYPE {name} counter\n{name} {}",
            self.body_bytes.load(Ordering::Relaxed)
        );
        crate::telemetry::render_artifact_cache(&mut out, cache);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
