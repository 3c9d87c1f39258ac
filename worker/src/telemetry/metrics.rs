//! Every metric is declared once, here (the worker's, [`WORKER`] and
//! [`CACHE`]) or in `registry/metrics.rs` (the control plane's): its
//! Prometheus name, its OpenTelemetry name, unit, help, kind, labels and
//! how to read it from the relaxed atomics of `crate::stats`. One
//! [`collect`] at scrape or export time turns the declarations into
//! [`Family`] snapshots, and two encoders take the same snapshot:
//! [`prometheus_text`] (prometheus-client writes the text format of
//! `/metrics`) and `otel::otlp_request` (opentelemetry-proto messages for the
//! OTLP export). So a metric served on `/metrics` is exported over OTLP with
//! the same value, and the other way round.
//!
//! Why not the OpenTelemetry SDK as the one declaration, with
//! opentelemetry-prometheus serving `/metrics`: that exporter is discontinued
//! (its README says 0.29 was meant to be the last release; it depends on the
//! `protobuf` crate with an open advisory), it renames what it serves
//! (`_total` and unit suffixes, `otel_scope_*` labels, `target_info`), and the
//! SDK accepts no pre-aggregated histogram (no asynchronous histogram, and its
//! data types cannot be built outside the crate). Our histograms would have
//! become SDK instruments recorded per record on the hot path, a read-write
//! lock and a mutex per observation. prometheus-client (the Prometheus
//! org's crate; dtoa, itoa, parking_lot) takes values read at scrape time
//! through its `Collector`, writes Prometheus text 0.0.4 with our names as
//! given, and the counters and histograms stay plain atomics.
//!
//! Adding a metric: one [`Metric`] entry in [`WORKER`] (or `CONTROL` in
//! `registry/metrics.rs`) whose `read` loads an atomic the hot path already
//! updates, and a row in the README's metrics table. Both `/metrics` and
//! OTLP carry it from then on; `tests::declarations_are_consistent` checks the
//! names.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::{PipelineView, TelemetryState};
use crate::sandbox::{CacheStats, ERROR_KINDS};
use crate::stats::{Histogram, ThrottleReason, VersionStats, BUCKETS};

/// A label: its Prometheus name and its OpenTelemetry attribute key.
#[derive(Debug, PartialEq, Eq)]
pub struct Label {
    pub prom: &'static str,
    pub otel: &'static str,
}

const fn label(prom: &'static str, otel: &'static str) -> Label {
    Label { prom, otel }
}

pub const SYSTEM: Label = label("messaging_system", "messaging.system");
pub const GROUP: Label = label(
    "messaging_consumer_group_name",
    "messaging.consumer.group.name",
);
pub const PIPELINE: Label = label("pipeline", "pipeline");
pub const FUNCTION: Label = label("function", "pipeline.function");
pub const VERSION: Label = label("function_version", "pipeline.function.version");
pub const DIGEST: Label = label("function_digest", "pipeline.function.digest");
pub const ERROR_KIND: Label = label("error_kind", "error.type");
pub const TENANT: Label = label("tenant", "tenant");
pub const REASON: Label = label("reason", "reason");
pub const TOPIC: Label = label("messaging_destination_name", "messaging.destination.name");
pub const PARTITION: Label = label(
    "messaging_destination_partition_id",
    "messaging.destination.partition.id",
);

/// Labels of what a pipeline did (consumed, lag, in flight, ...).
const P: &[Label] = &[SYSTEM, GROUP, PIPELINE];
/// Labels of what one function version did in a pipeline.
const V: &[Label] = &[SYSTEM, GROUP, PIPELINE, FUNCTION, VERSION];

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Monotonic; its Prometheus name ends in `_total`.
    Counter,
    Gauge,
    /// Fixed buckets: their upper bounds (the overflow bucket is implied).
    Histogram(&'static [f64]),
}

/// Everything about a metric but how to read it.
#[derive(Debug)]
pub struct Desc {
    /// As served on `/metrics`, `_total` included for counters.
    pub prom: &'static str,
    /// As exported over OTLP.
    pub otel: &'static str,
    /// UCUM, as OTLP carries it (`s`, `ns`, `By`, `{record}`); the
    /// Prometheus name already says it.
    pub unit: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [Label],
}

/// A declaration: what the metric is, and a reader over `S` (the state the
/// metric's atomics live in) that pushes one point per label set.
pub struct Metric<S: 'static> {
    pub desc: Desc,
    pub read: fn(&S, &mut Points),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    F64(f64),
    /// Per bucket, not cumulative, the overflow bucket last; the sum in
    /// seconds (or the histogram's unit).
    Histogram {
        buckets: Vec<u64>,
        sum: f64,
    },
}

impl Value {
    pub fn count(&self) -> Option<u64> {
        match self {
            Value::Histogram { buckets, .. } => Some(buckets.iter().sum()),
            _ => None,
        }
    }
}

/// One series: label values in the order of [`Desc::labels`]; an empty value
/// leaves its label off (Prometheus treats `l=""` as no label anyway).
#[derive(Debug, Clone)]
pub struct Point {
    pub labels: Vec<String>,
    pub value: Value,
}

#[derive(Default)]
pub struct Points(Vec<Point>);

impl Points {
    pub fn push(&mut self, labels: Vec<String>, value: Value) {
        self.0.push(Point { labels, value });
    }
    pub fn u64(&mut self, labels: Vec<String>, v: u64) {
        self.push(labels, Value::U64(v));
    }
}

/// A metric's points at one scrape or export.
#[derive(Debug)]
pub struct Family {
    pub desc: &'static Desc,
    pub points: Vec<Point>,
}

impl Family {
    /// (label, value) pairs of a point, empty values left off.
    pub fn labels<'a>(&self, p: &'a Point) -> impl Iterator<Item = (&'static Label, &'a str)> {
        self.desc
            .labels
            .iter()
            .zip(p.labels.iter())
            .filter(|(_, v)| !v.is_empty())
            .map(|(l, v)| (l, v.as_str()))
    }
}

/// Reads every declared metric from `s`. A metric with no series (no
/// partition assigned yet, no version active) is left out of both expositions.
pub fn collect<S>(metrics: &'static [Metric<S>], s: &S, out: &mut Vec<Family>) {
    for m in metrics {
        let mut points = Points::default();
        (m.read)(s, &mut points);
        if !points.0.is_empty() {
            out.push(Family {
                desc: &m.desc,
                points: points.0,
            });
        }
    }
}

/// The worker's families: pipelines, versions, and the artifact cache.
pub fn worker_families(s: &TelemetryState) -> Vec<Family> {
    let mut out = Vec::new();
    collect(WORKER, &WorkerView::of(s), &mut out);
    if let Some(cache) = s.artifact_cache.get() {
        collect(CACHE, &cache.stats(), &mut out);
    }
    out
}

/// The pipelines as one scrape sees them: the list copied (names and
/// `Arc`s) so that no lock is held while the families are read, and the
/// versions listed once for all per-version metrics.
pub struct WorkerView {
    pipelines: Vec<PipelineView>,
    /// (index into `pipelines`, version)
    versions: Vec<(usize, Arc<VersionStats>)>,
}

impl WorkerView {
    pub fn of(s: &TelemetryState) -> Self {
        let pipelines = s
            .pipelines
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let versions = pipelines
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.stats.versions().into_iter().map(move |v| (i, v)))
            .collect();
        WorkerView {
            pipelines,
            versions,
        }
    }

    fn versions(&self) -> impl Iterator<Item = (&PipelineView, &VersionStats)> {
        self.versions
            .iter()
            .map(|(i, v)| (&self.pipelines[*i], v.as_ref()))
    }
}

fn base(p: &PipelineView) -> Vec<String> {
    vec!["kafka".into(), p.group.clone(), p.name.clone()]
}

fn versioned(p: &PipelineView, v: &VersionStats) -> Vec<String> {
    let mut l = base(p);
    l.push(v.function.clone());
    l.push(v.version.clone());
    l
}

fn per_pipeline(w: &WorkerView, out: &mut Points, read: impl Fn(&PipelineView) -> u64) {
    for p in &w.pipelines {
        out.u64(base(p), read(p));
    }
}

fn per_version(w: &WorkerView, out: &mut Points, pick: fn(&VersionStats) -> &AtomicU64) {
    for (p, v) in w.versions() {
        out.u64(versioned(p, v), pick(v).load(Relaxed));
    }
}

fn per_version_histogram(w: &WorkerView, out: &mut Points, pick: fn(&VersionStats) -> &Histogram) {
    for (p, v) in w.versions() {
        let (buckets, sum) = pick(v).snapshot();
        out.push(versioned(p, v), Value::Histogram { buckets, sum });
    }
}

const fn counter(
    prom: &'static str,
    otel: &'static str,
    unit: &'static str,
    help: &'static str,
    labels: &'static [Label],
) -> Desc {
    Desc {
        prom,
        otel,
        unit,
        help,
        kind: Kind::Counter,
        labels,
    }
}

const fn gauge(
    prom: &'static str,
    otel: &'static str,
    unit: &'static str,
    help: &'static str,
    labels: &'static [Label],
) -> Desc {
    Desc {
        kind: Kind::Gauge,
        ..counter(prom, otel, unit, help, labels)
    }
}

const fn histogram(
    prom: &'static str,
    otel: &'static str,
    unit: &'static str,
    help: &'static str,
    buckets: &'static [f64],
    labels: &'static [Label],
) -> Desc {
    Desc {
        kind: Kind::Histogram(buckets),
        ..counter(prom, otel, unit, help, labels)
    }
}

/// The worker's metrics, in the order `/metrics` serves them.
pub static WORKER: &[Metric<WorkerView>] = &[
    Metric {
        desc: counter(
            "messaging_client_consumed_messages_total",
            "messaging.client.consumed.messages",
            "{message}",
            "Records consumed from the input topics.",
            P,
        ),
        read: |w, out| per_pipeline(w, out, |p| p.stats.consumed.load(Relaxed)),
    },
    Metric {
        desc: counter(
            "messaging_client_sent_messages_total",
            "messaging.client.sent.messages",
            "{message}",
            "Output records handed to the producer (dead letters not included).",
            V,
        ),
        read: |w, out| per_version(w, out, |v| &v.produced),
    },
    Metric {
        desc: counter(
            "pipeline_records_filtered_total",
            "pipeline.records.filtered",
            "{record}",
            "Input records for which the function returned no output.",
            V,
        ),
        read: |w, out| per_version(w, out, |v| &v.filtered),
    },
    Metric {
        desc: counter(
            "pipeline_records_dead_lettered_total",
            "pipeline.records.dead_lettered",
            "{record}",
            "Input records sent to the dead-letter topic, by error kind.",
            &[SYSTEM, GROUP, PIPELINE, FUNCTION, VERSION, ERROR_KIND],
        ),
        read: |w, out| {
            for (p, v) in w.versions() {
                for (i, kind) in ERROR_KINDS.iter().enumerate() {
                    let mut l = versioned(p, v);
                    l.push((*kind).to_string());
                    out.u64(l, v.errors_by_kind[i].load(Relaxed));
                }
            }
        },
    },
    Metric {
        desc: counter(
            "pipeline_traps_total",
            "pipeline.traps",
            "{trap}",
            "Records whose function trapped or hit a limit (fuel, deadline, memory, stack, output size, instantiation).",
            V,
        ),
        read: |w, out| per_version(w, out, |v| &v.traps),
    },
    Metric {
        desc: counter(
            "pipeline_fuel_consumed_total",
            "pipeline.fuel.consumed",
            "{fuel}",
            "Wasm fuel consumed (only when limits.fuel is set).",
            V,
        ),
        read: |w, out| per_version(w, out, |v| &v.fuel_consumed),
    },
    Metric {
        desc: counter(
            "pipeline_wasm_execution_nanoseconds_total",
            "pipeline.wasm.execution.time",
            "ns",
            "Time spent inside the function.",
            V,
        ),
        read: |w, out| per_version(w, out, |v| &v.wasm_nanos),
    },
    Metric {
        desc: counter(
            "pipeline_instantiations_total",
            "pipeline.instantiations",
            "{instance}",
            "Fresh instances created (one per batch, plus one after each trap).",
            V,
        ),
        read: |w, out| per_version(w, out, |v| &v.instantiations),
    },
    Metric {
        desc: counter(
            "pipeline_instantiation_nanoseconds_total",
            "pipeline.instantiation.time",
            "ns",
            "Time spent creating instances (divide by pipeline_instantiations_total for the mean).",
            V,
        ),
        read: |w, out| per_version(w, out, |v| &v.instantiate_nanos),
    },
    Metric {
        desc: gauge(
            "pipeline_in_flight_records",
            "pipeline.in_flight",
            "{record}",
            "Records consumed and not yet fully acknowledged downstream.",
            P,
        ),
        read: |w, out| per_pipeline(w, out, |p| p.trackers.in_flight() as u64),
    },
    Metric {
        desc: counter(
            "pipeline_function_load_failures_total",
            "pipeline.function.load_failures",
            "{version}",
            "Activated versions this worker could not load (it kept the previous one).",
            P,
        ),
        read: |w, out| per_pipeline(w, out, |p| p.slot.load_failures.load(Relaxed)),
    },
    Metric {
        desc: gauge(
            "pipeline_function_info",
            "pipeline.function.info",
            "1",
            "The function version each pipeline runs on this worker now (value 1).",
            &[SYSTEM, GROUP, PIPELINE, FUNCTION, VERSION, DIGEST],
        ),
        read: |w, out| {
            for p in &w.pipelines {
                if let Some(f) = p.slot.get() {
                    let mut l = base(p);
                    l.extend([f.name.clone(), f.version.clone(), f.digest.clone()]);
                    out.u64(l, 1);
                }
            }
        },
    },
    Metric {
        desc: counter(
            "pipeline_transactions_committed_total",
            "pipeline.transactions.committed",
            "{transaction}",
            "Exactly-once pipelines: transactions committed.",
            P,
        ),
        read: |w, out| per_pipeline(w, out, |p| p.stats.transactions.committed.load(Relaxed)),
    },
    Metric {
        desc: counter(
            "pipeline_transactions_aborted_total",
            "pipeline.transactions.aborted",
            "{transaction}",
            "Exactly-once pipelines: transactions aborted (and their partitions rewound).",
            P,
        ),
        read: |w, out| per_pipeline(w, out, |p| p.stats.transactions.aborted.load(Relaxed)),
    },
    Metric {
        desc: counter(
            "pipeline_transaction_commit_microseconds_total",
            "pipeline.transaction.commit.time",
            "us",
            "Exactly-once pipelines: time spent committing (divide by pipeline_transactions_committed_total for the mean).",
            P,
        ),
        read: |w, out| per_pipeline(w, out, |p| p.stats.transactions.commit_micros.load(Relaxed)),
    },
    Metric {
        desc: gauge(
            "messaging_kafka_consumer_lag",
            "messaging.kafka.consumer.lag",
            "{message}",
            "Records between the committed position and the partition end, per assigned partition (librdkafka statistics).",
            &[SYSTEM, GROUP, PIPELINE, TOPIC, PARTITION],
        ),
        read: |w, out| {
            for p in &w.pipelines {
                let lag = p.stats.lag.lock().unwrap_or_else(|e| e.into_inner());
                for ((topic, part), v) in lag.iter() {
                    let mut l = base(p);
                    l.extend([topic.clone(), part.to_string()]);
                    // librdkafka says -1 while it does not know yet.
                    out.u64(l, (*v).max(0) as u64);
                }
            }
        },
    },
    Metric {
        desc: histogram(
            "messaging_process_duration_seconds",
            "messaging.process.duration",
            "s",
            "Per record: from its batch entering the sandbox to its outputs being handed to the producer.",
            &BUCKETS,
            V,
        ),
        read: |w, out| per_version_histogram(w, out, |v| &v.process_duration),
    },
    Metric {
        desc: histogram(
            "pipeline_wasm_execution_seconds",
            "pipeline.wasm.execution.duration",
            "s",
            "Time inside the function per batch of records (one observation per batch).",
            &BUCKETS,
            V,
        ),
        read: |w, out| per_version_histogram(w, out, |v| &v.wasm_duration),
    },
    Metric {
        desc: counter(
            "pipeline_throttled_seconds_total",
            "pipeline.throttled",
            "s",
            "Time the pipeline's sandbox threads spent paused by the tenant's quota (records, bytes, cpu) or the backoff of a function that keeps hitting its deadline or another resource cap (deadline-backoff, resource-backoff), summed over its threads.",
            &[SYSTEM, GROUP, PIPELINE, TENANT, REASON],
        ),
        read: |w, out| {
            for p in &w.pipelines {
                for r in ThrottleReason::ALL {
                    let mut l = base(p);
                    l.extend([p.tenant.clone().unwrap_or_default(), r.label().to_string()]);
                    out.push(l, Value::F64(p.stats.throttled_seconds_by(r)));
                }
            }
        },
    },
];

/// The artifact cache's metrics, process-wide (no pipeline labels); the
/// worker and the control plane both serve them.
pub static CACHE: &[Metric<CacheStats>] = &[
    Metric {
        desc: gauge(
            "pipeline_artifact_cache_size_bytes",
            "pipeline.artifact_cache.size",
            "By",
            "Bytes of precompiled artifacts in runtime.cache_dir, as last measured by this process.",
            &[],
        ),
        read: |c, out| out.u64(vec![], c.size_bytes),
    },
    Metric {
        desc: gauge(
            "pipeline_artifact_cache_limit_bytes",
            "pipeline.artifact_cache.limit",
            "By",
            "runtime.cache_max_bytes; the size exceeds it only when artifacts in use alone do.",
            &[],
        ),
        read: |c, out| out.u64(vec![], c.limit_bytes),
    },
    Metric {
        desc: counter(
            "pipeline_artifact_cache_evictions_total",
            "pipeline.artifact_cache.evictions",
            "{artifact}",
            "Artifacts this process evicted (least recently used first) to stay within runtime.cache_max_bytes.",
            &[],
        ),
        read: |c, out| out.u64(vec![], c.evictions),
    },
    Metric {
        desc: gauge(
            "pipeline_artifact_cache_over_limit",
            "pipeline.artifact_cache.over_limit",
            "1",
            "1 when the artifacts in use alone exceeded runtime.cache_max_bytes at the last write.",
            &[],
        ),
        read: |c, out| out.u64(vec![], u64::from(c.over_limit)),
    },
    Metric {
        desc: counter(
            "pipeline_artifact_cache_rejected_total",
            "pipeline.artifact_cache.rejected",
            "{artifact}",
            "Cached artifacts not loaded, each recompiled instead: hash-mismatch (tampered or corrupt), bad-mac (its sidecar does not verify with this cache key: tampered, or another key), unknown-hash (no sidecar, nothing trusted vouches for it).",
            &[REASON],
        ),
        read: |c, out| {
            out.u64(vec!["hash-mismatch".into()], c.rejected_mismatch);
            out.u64(vec!["bad-mac".into()], c.rejected_bad_mac);
            out.u64(vec!["unknown-hash".into()], c.rejected_unknown);
        },
    },
];

/// The snapshot as prometheus-client's collector, for one encode.
#[derive(Debug)]
struct Snapshot(Vec<Family>);

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let d = f.desc;
            let (name, kind) = match d.kind {
                // prometheus-client appends `_total` itself.
                Kind::Counter => (
                    d.prom.strip_suffix("_total").unwrap_or(d.prom),
                    MetricType::Counter,
                ),
                Kind::Gauge => (d.prom, MetricType::Gauge),
                Kind::Histogram(_) => (d.prom, MetricType::Histogram),
            };
            let mut metric = encoder.encode_descriptor(name, d.help, None, kind)?;
            for p in &f.points {
                let labels: Vec<(&str, &str)> = f.labels(p).map(|(l, v)| (l.prom, v)).collect();
                let mut series = metric.encode_family(&labels)?;
                match (&p.value, d.kind) {
                    (Value::U64(v), Kind::Counter) => {
                        series.encode_counter::<NoLabelSet, _, u64>(v, None)?
                    }
                    (Value::F64(v), Kind::Counter) => {
                        series.encode_counter::<NoLabelSet, _, f64>(v, None)?
                    }
                    (Value::U64(v), _) => series.encode_gauge(v)?,
                    (Value::F64(v), _) => series.encode_gauge(v)?,
                    (v @ Value::Histogram { buckets, sum }, Kind::Histogram(bounds)) => {
                        let pairs: Vec<(f64, u64)> = bounds
                            .iter()
                            .copied()
                            .zip(buckets.iter().copied())
                            .collect();
                        series.encode_histogram::<NoLabelSet>(
                            *sum,
                            v.count().unwrap_or(0),
                            &pairs,
                            None,
                        )?
                    }
                    // A declaration whose reader pushes a histogram for a
                    // counter or gauge: `declarations_are_consistent` catches
                    // it; serve the rest rather than fail the scrape.
                    (Value::Histogram { .. }, _) => {}
                }
            }
        }
        Ok(())
    }
}

/// Prometheus text exposition (format 0.0.4) of `families`.
pub fn prometheus_text(families: Vec<Family>) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Snapshot(families)));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Names unique and well formed, counters ending in `_total`, every
    /// reader pushing as many label values as the metric declares and a
    /// value of its kind. Control-plane declarations go through it too.
    pub(crate) fn check<S>(metrics: &'static [Metric<S>], s: &S, may_be_empty: &[&str]) {
        let valid = |n: &str, sep: char| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == sep)
        };
        for m in metrics {
            let d = &m.desc;
            assert!(valid(d.prom, '_'), "{}", d.prom);
            assert!(valid(d.otel, '.'), "{}", d.otel);
            assert!(!d.unit.is_empty() && !d.help.is_empty(), "{}", d.prom);
            assert_eq!(
                d.kind == Kind::Counter,
                d.prom.ends_with("_total"),
                "{}: counters, and only they, end in _total",
                d.prom
            );
            if let Kind::Histogram(b) = d.kind {
                assert!(b.windows(2).all(|w| w[0] < w[1]), "{} buckets", d.prom);
            }
            let mut points = Points::default();
            (m.read)(s, &mut points);
            assert!(
                !points.0.is_empty() || may_be_empty.contains(&d.prom),
                "{} read nothing from the test state",
                d.prom
            );
            for p in &points.0 {
                assert_eq!(p.labels.len(), d.labels.len(), "{}", d.prom);
                match (&p.value, d.kind) {
                    (Value::Histogram { buckets, .. }, Kind::Histogram(b)) => {
                        assert_eq!(buckets.len(), b.len() + 1, "{}", d.prom)
                    }
                    (Value::Histogram { .. }, _) => panic!("{}: histogram value", d.prom),
                    (_, Kind::Histogram(_)) => panic!("{}: not a histogram value", d.prom),
                    _ => {}
                }
            }
        }
        for (i, a) in metrics.iter().enumerate() {
            for b in &metrics[i + 1..] {
                assert_ne!(a.desc.prom, b.desc.prom);
                assert_ne!(a.desc.otel, b.desc.otel);
            }
        }
    }

    pub(crate) fn cache_stats() -> CacheStats {
        CacheStats {
            size_bytes: 7,
            limit_bytes: 10,
            evictions: 2,
            rejected_mismatch: 1,
            rejected_unknown: 0,
            rejected_bad_mac: 3,
            over_limit: false,
        }
    }

    /// A state in which every worker metric has a series: one pipeline with
    /// a loaded function that ran, an assigned partition with lag.
    /// A state in which every worker metric but `pipeline_function_info`
    /// (it needs a loaded component) has a series: one pipeline whose
    /// version ran, an assigned partition with lag.
    pub(crate) fn busy_state() -> TelemetryState {
        let view = PipelineView {
            name: "p\"1".into(),
            group: "g.p1".into(),
            tenant: None,
            slot: Arc::new(crate::pipeline::FunctionSlot::new(None)),
            stats: Arc::default(),
            trackers: Arc::default(),
        };
        view.stats.consumed.store(54, Relaxed);
        let v = view.stats.version_named("enrich", "v7");
        v.produced.store(50, Relaxed);
        v.errors_by_kind[0].store(2, Relaxed);
        v.process_duration
            .observe(std::time::Duration::from_millis(3), 4);
        v.process_duration
            .observe(std::time::Duration::from_secs(60), 1);
        view.stats.lag.lock().unwrap().insert(("in".into(), 3), 12);
        view.stats.add_throttled(
            ThrottleReason::Bytes,
            std::time::Duration::from_millis(1500),
        );
        let s = TelemetryState::default();
        s.pipelines.write().unwrap().push(view);
        s
    }

    #[test]
    fn declarations_are_consistent() {
        check(
            WORKER,
            &WorkerView::of(&busy_state()),
            &["pipeline_function_info"],
        );
        check(CACHE, &cache_stats(), &[]);
        for (a, b) in WORKER
            .iter()
            .map(|m| &m.desc)
            .flat_map(|a| CACHE.iter().map(move |b| (a, &b.desc)))
        {
            assert_ne!(a.prom, b.prom);
            assert_ne!(a.otel, b.otel);
        }
    }

    #[test]
    fn prometheus_text_keeps_the_documented_names_and_labels() {
        let text = prometheus_text(worker_families(&busy_state()));
        let base =
            r#"messaging_system="kafka",messaging_consumer_group_name="g.p1",pipeline="p\"1""#;
        let v = format!(r#"{base},function="enrich",function_version="v7""#);
        for line in [
            format!("messaging_client_consumed_messages_total{{{base}}} 54"),
            format!("messaging_client_sent_messages_total{{{v}}} 50"),
            format!(
                "pipeline_records_dead_lettered_total{{{v},error_kind=\"{}\"}} 2",
                ERROR_KINDS[0]
            ),
            format!("messaging_process_duration_seconds_bucket{{{v},le=\"0.0025\"}} 0"),
            format!("messaging_process_duration_seconds_bucket{{{v},le=\"0.005\"}} 4"),
            format!("messaging_process_duration_seconds_bucket{{{v},le=\"10\"}} 4"),
            format!("messaging_process_duration_seconds_bucket{{{v},le=\"+Inf\"}} 5"),
            format!("messaging_process_duration_seconds_count{{{v}}} 5"),
            format!("messaging_kafka_consumer_lag{{{base},messaging_destination_name=\"in\",messaging_destination_partition_id=\"3\"}} 12"),
            // No tenant: the label is left off rather than empty.
            format!("pipeline_throttled_seconds_total{{{base},reason=\"bytes\"}} 1.5"),
            "# TYPE pipeline_traps_total counter".to_string(),
            "# TYPE messaging_process_duration_seconds histogram".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
