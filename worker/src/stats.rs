//! The counters and histograms of the running pipelines. Below every other
//! module: the source, the sandbox lanes and the sink write them, telemetry
//! reads them, and none of those has to import another to do so.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::sandbox::Function;

/// Upper bounds (seconds) of the duration histograms' buckets.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A lock-free fixed-bucket histogram (Prometheus `_bucket`/`_sum`/`_count`;
/// the count is the buckets' sum).
#[derive(Default, Debug)]
pub struct Histogram {
    buckets: [std::sync::atomic::AtomicU64; BUCKETS.len() + 1],
    sum_nanos: std::sync::atomic::AtomicU64,
}

impl Histogram {
    /// Records `n` observations of `d`.
    pub fn observe(&self, d: std::time::Duration, n: u64) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(n, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64 * n, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative, the overflow bucket last) and
    /// the sum in seconds, as the telemetry module exports them. Each
    /// atomic is read once, without a lock: a scrape racing an observation
    /// may see it in its bucket before the sum has it, or the other way
    /// round; the next scrape sees both, and no count ever goes down.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let buckets = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        (buckets, self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

/// Counters of one pipeline (exported as metrics by the telemetry module).
/// What a function did is counted per function version ([`VersionStats`]),
/// so a counter labelled with a version counts only that version's records.
#[derive(Default, Debug)]
pub struct PipelineStats {
    /// Set once the consumer received its first assignment.
    pub joined: AtomicBool,
    /// Whether a broker answers, as the consumer last heard (join, commit,
    /// statistics, "all brokers down"; see `source::SourceContext`).
    pub broker_up: AtomicBool,
    /// Consumer lag per assigned partition, from librdkafka statistics.
    pub lag: std::sync::Mutex<std::collections::BTreeMap<(String, i32), i64>>,
    pub consumed: AtomicU64,
    /// Why a thread of this pipeline died (panic or error), if one did:
    /// `/readyz` names it while the process exits on the fatal error.
    pub dead_thread: std::sync::Mutex<Option<String>>,
    versions: std::sync::RwLock<Vec<Arc<VersionStats>>>,
    /// Time sandbox threads spent held by a quota or backoff, per
    /// [`ThrottleReason`], summed over the pipeline's threads.
    pub throttled_nanos: [AtomicU64; ThrottleReason::ALL.len()],
    /// Exactly-once pipelines (`crate::txn`): transactions committed and
    /// aborted, and the time spent committing (send offsets + commit).
    pub transactions: TransactionStats,
}

/// Why a sandbox thread waited before a batch (`quota` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleReason {
    Records,
    Bytes,
    Cpu,
    DeadlineBackoff,
    /// Backing off a function whose records keep hitting a resource cap
    /// other than (or besides) the deadline: memory, fuel, stack, output.
    ResourceBackoff,
}

impl ThrottleReason {
    pub const ALL: [ThrottleReason; 5] = [
        ThrottleReason::Records,
        ThrottleReason::Bytes,
        ThrottleReason::Cpu,
        ThrottleReason::DeadlineBackoff,
        ThrottleReason::ResourceBackoff,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ThrottleReason::Records => "records",
            ThrottleReason::Bytes => "bytes",
            ThrottleReason::Cpu => "cpu",
            ThrottleReason::DeadlineBackoff => "deadline-backoff",
            ThrottleReason::ResourceBackoff => "resource-backoff",
        }
    }
}

impl PipelineStats {
    pub fn add_throttled(&self, reason: ThrottleReason, d: std::time::Duration) {
        self.throttled_nanos[reason as usize].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn throttled_seconds_by(&self, reason: ThrottleReason) -> f64 {
        self.throttled_nanos[reason as usize].load(Ordering::Relaxed) as f64 / 1e9
    }

    pub fn throttled_seconds(&self) -> f64 {
        ThrottleReason::ALL
            .iter()
            .map(|r| self.throttled_seconds_by(*r))
            .sum()
    }
}

#[derive(Default, Debug)]
pub struct TransactionStats {
    pub committed: AtomicU64,
    pub aborted: AtomicU64,
    pub commit_micros: AtomicU64,
}

/// What one function version did in one pipeline on this worker.
#[derive(Default, Debug)]
pub struct VersionStats {
    pub function: String,
    pub version: String,
    /// Dead letters by error kind (index into `crate::sandbox::ERROR_KINDS`).
    pub errors_by_kind: [AtomicU64; crate::sandbox::ERROR_KINDS.len()],
    pub produced: AtomicU64,
    pub filtered: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub traps: AtomicU64,
    pub fuel_consumed: AtomicU64,
    pub wasm_nanos: AtomicU64,
    pub instantiations: AtomicU64,
    pub instantiate_nanos: AtomicU64,
    pub process_duration: Histogram,
    pub wasm_duration: Histogram,
}

impl PipelineStats {
    /// The counters of `f`'s version (created on first use, kept after a
    /// swap so a rollback continues them).
    pub fn version(&self, f: &Function) -> Arc<VersionStats> {
        self.version_named(&f.name, &f.version)
    }

    pub fn version_named(&self, function: &str, version: &str) -> Arc<VersionStats> {
        let find = |vs: &[Arc<VersionStats>]| {
            vs.iter()
                .find(|v| v.function == function && v.version == version)
                .cloned()
        };
        if let Some(v) = find(&self.versions.read().unwrap_or_else(|p| p.into_inner())) {
            return v;
        }
        let mut vs = self.versions.write().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = find(&vs) {
            return v;
        }
        let v = Arc::new(VersionStats {
            function: function.to_string(),
            version: version.to_string(),
            ..Default::default()
        });
        vs.push(v.clone());
        v
    }

    pub fn thread_died(&self, why: String) {
        let mut d = self.dead_thread.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            *d = Some(why);
        }
    }

    pub fn dead_thread(&self) -> Option<String> {
        self.dead_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn versions(&self) -> Vec<Arc<VersionStats>> {
        self.versions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Totals over every version, for the shutdown log line.
    pub fn snapshot(&self) -> [(&'static str, u64); 8] {
        let vs = self.versions();
        let sum = |pick: fn(&VersionStats) -> &AtomicU64| {
            vs.iter()
                .map(|v| pick(v).load(Ordering::Relaxed))
                .sum::<u64>()
        };
        [
            ("consumed", self.consumed.load(Ordering::Relaxed)),
            ("produced", sum(|v| &v.produced)),
            ("filtered", sum(|v| &v.filtered)),
            ("dead_lettered", sum(|v| &v.dead_lettered)),
            ("traps", sum(|v| &v.traps)),
            ("fuel_consumed", sum(|v| &v.fuel_consumed)),
            ("wasm_nanos", sum(|v| &v.wasm_nanos)),
            ("instantiations", sum(|v| &v.instantiations)),
        ]
    }
}
