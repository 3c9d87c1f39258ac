//! OpenTelemetry export over OTLP (HTTP/protobuf): a span per record and the
//! pipeline metrics. Off unless `[telemetry] otlp_endpoint` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; when off, the hot path pays one
//! `OnceLock` load per batch and nothing else.
//!
//! Spans follow the messaging semantic conventions: `process <topic>`, kind
//! consumer, parent from the input record's W3C `traceparent` header, and
//! the span's own `traceparent` written on every output and dead letter.
//! Metrics are the families `/metrics` serves, from the same declarations
//! (`super::metrics`): every `otlp_interval_ms` one snapshot of the atomics
//! becomes an `ExportMetricsServiceRequest` (cumulative sums, gauges,
//! explicit-bucket histograms) POSTed to `<endpoint>/v1/metrics`. Nothing is
//! recorded on the record path for it.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1 as pb_common;
use opentelemetry_proto::tonic::metrics::v1 as pb;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use super::metrics::{Family, Kind, Value};
use super::TelemetryState;
use crate::sandbox::{Header, InputRecord};

pub const TRACEPARENT: &str = "traceparent";

#[derive(Debug, thiserror::Error)]
#[error("telemetry.otlp_endpoint {endpoint:?}: {message}")]
pub struct OtelError {
    endpoint: String,
    message: String,
}

pub struct Otel {
    tracer: SdkTracer,
    tracer_provider: SdkTracerProvider,
    metrics: Mutex<Option<MetricsExport>>,
    propagator: TraceContextPropagator,
}

static OTEL: OnceLock<Otel> = OnceLock::new();

/// The exporter, if one was started.
pub fn get() -> Option<&'static Otel> {
    OTEL.get()
}

/// The endpoint from the config, else from `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub fn endpoint(configured: Option<&str>) -> Option<String> {
    configured
        .map(str::to_string)
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
}

/// Starts the exporters (once per process); the metrics export reads the
/// declared metrics over `state`.
pub fn init(
    endpoint: &str,
    state: Arc<TelemetryState>,
    export_interval: Duration,
    sample_ratio: f64,
) -> Result<&'static Otel, OtelError> {
    if let Some(o) = OTEL.get() {
        return Ok(o);
    }
    let oerr = |e: &dyn std::fmt::Display| OtelError {
        endpoint: endpoint.to_string(),
        message: e.to_string(),
    };
    if !endpoint.starts_with("http://") {
        return Err(oerr(&"must be an http:// URL of an OTLP/HTTP receiver (e.g. http://otel-collector:4318); TLS is not built in, run a collector next to the worker"));
    }
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "pipeline-worker".into());
    let resource = Resource::builder().with_service_name(service).build();
    let spans = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{endpoint}/v1/traces"))
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| oerr(&e))?;
    let processor = BatchSpanProcessor::builder(spans)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(export_interval)
                .with_max_queue_size(65_536)
                .build(),
        )
        .build();
    // A sampled-out record still gets a (non-recording) span and passes a
    // `traceparent` on; a parent's decision is followed.
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(sample_ratio)));
    let tracer_provider = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_span_processor(processor)
        .with_resource(resource.clone())
        .build();
    let metrics = MetricsExport::start(
        format!("{endpoint}/v1/metrics"),
        export_interval,
        &resource,
        Box::new(move || super::metrics::worker_families(&state)),
    )
    .map_err(|e| oerr(&e))?;
    let otel = Otel {
        tracer: tracer_provider.tracer("pipeline-worker"),
        tracer_provider,
        metrics: Mutex::new(Some(metrics)),
        propagator: TraceContextPropagator::new(),
    };
    let _ = OTEL.set(otel);
    tracing::info!(endpoint, "exporting traces and metrics over OTLP/HTTP");
    Ok(OTEL.get().expect("set above"))
}

/// Flushes pending spans and a last metrics export.
pub fn shutdown() {
    if let Some(o) = OTEL.get() {
        if let Err(e) = o.tracer_provider.shutdown() {
            tracing::warn!(error = %e, "OTLP trace export at shutdown");
        }
        let metrics = o.metrics.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(m) = metrics {
            m.stop();
        }
    }
}

struct HeaderExtractor<'a>(&'a [Header]);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .and_then(|h| std::str::from_utf8(&h.value).ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|h| h.key.as_str()).collect()
    }
}

/// One record's span; its `traceparent` goes on the record's outputs.
pub struct RecordSpan {
    span: opentelemetry_sdk::trace::Span,
    pub traceparent: String,
}

impl RecordSpan {
    pub fn end(mut self, error_kind: Option<&str>, outputs: usize) {
        match error_kind {
            Some(kind) => {
                self.span
                    .set_attribute(KeyValue::new("error.type", kind.to_string()));
                self.span.set_status(Status::error(kind.to_string()));
            }
            None => self
                .span
                .set_attribute(KeyValue::new("pipeline.outputs", outputs as i64)),
        }
        self.span.end();
    }
}

impl Otel {
    pub fn record_span(
        &self,
        input: &InputRecord,
        pipeline: &str,
        group: &str,
        function_version: &str,
    ) -> RecordSpan {
        let parent: Context = self.propagator.extract(&HeaderExtractor(&input.headers));
        let span = self
            .tracer
            .span_builder(format!("process {}", input.topic))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", input.topic.clone()),
                KeyValue::new(
                    "messaging.destination.partition.id",
                    input.partition.to_string(),
                ),
                KeyValue::new("messaging.kafka.offset", input.offset),
                KeyValue::new("messaging.consumer.group.name", group.to_string()),
                KeyValue::new("pipeline", pipeline.to_string()),
                KeyValue::new("pipeline.function.version", function_version.to_string()),
            ])
            .start_with_context(&self.tracer, &parent);
        let sc = span.span_context();
        let traceparent = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        RecordSpan { span, traceparent }
    }
}

/// What the metrics export reads at each interval.
type Source = Box<dyn Fn() -> Vec<Family> + Send>;

/// The metrics export thread: one POST per interval, a last one at stop.
struct MetricsExport {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl MetricsExport {
    fn start(
        url: String,
        interval: Duration,
        resource: &Resource,
        source: Source,
    ) -> Result<Self, String> {
        let resource: Vec<pb_common::KeyValue> = resource
            .iter()
            .map(|(k, v)| attribute(k.as_str(), &v.to_string()))
            .collect();
        let started = unix_nanos(SystemTime::now());
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("otlp-metrics".into())
            .spawn(move || {
                // Built on this thread: a blocking client must not be made or
                // dropped inside the async runtime `init` may be called from.
                let client = match reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(url = %url, error = %e, "OTLP metric export not started");
                        return;
                    }
                };
                let mut failing = false;
                loop {
                    // A stop (or the sender gone) still exports once more, so
                    // the last interval's counts are not lost.
                    let last = !matches!(
                        stopped.recv_timeout(interval),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    );
                    let body = otlp_request(
                        &source(),
                        &resource,
                        started,
                        unix_nanos(SystemTime::now()),
                    );
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/x-protobuf")
                        .body(prost::Message::encode_to_vec(&body))
                        .send()
                        .map_err(|e| e.to_string())
                        .and_then(|r| match r.status() {
                            s if s.is_success() => Ok(()),
                            s => Err(format!("HTTP {s}")),
                        });
                    // One line when the export starts failing and one when it
                    // recovers, not one per interval.
                    match sent {
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(url = %url, error = %e, "OTLP metric export failed; retrying every interval");
                        }
                        Ok(()) if failing => {
                            failing = false;
                            tracing::info!(url = %url, "OTLP metric export recovered");
                        }
                        _ => {}
                    }
                    if last {
                        return;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(MetricsExport { stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::warn!("OTLP metric export thread panicked");
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn attribute(key: &str, value: &str) -> pb_common::KeyValue {
    pb_common::KeyValue {
        key: key.to_string(),
        value: Some(pb_common::AnyValue {
            value: Some(pb_common::any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// The OTLP form of `families`: counters as cumulative monotonic sums,
/// gauges as gauges, histograms with the declared bucket bounds. Names,
/// units, descriptions and attribute keys are the declarations' OTel ones.
pub fn otlp_request(
    families: &[Family],
    resource: &[pb_common::KeyValue],
    start: u64,
    now: u64,
) -> ExportMetricsServiceRequest {
    let cumulative = pb::AggregationTemporality::Cumulative as i32;
    let metrics = families
        .iter()
        .map(|f| {
            let d = f.desc;
            let attributes = |p: &super::metrics::Point| {
                f.labels(p)
                    .map(|(l, v)| attribute(l.otel, v))
                    .collect::<Vec<_>>()
            };
            let number = |p: &super::metrics::Point| pb::NumberDataPoint {
                attributes: attributes(p),
                start_time_unix_nano: start,
                time_unix_nano: now,
                value: Some(match p.value {
                    Value::U64(v) => pb::number_data_point::Value::AsInt(v as i64),
                    Value::F64(v) => pb::number_data_point::Value::AsDouble(v),
                    // Not a number: the declaration tests rule it out.
                    Value::Histogram { .. } => pb::number_data_point::Value::AsInt(0),
                }),
                ..Default::default()
            };
            let data = match d.kind {
                Kind::Counter => pb::metric::Data::Sum(pb::Sum {
                    data_points: f.points.iter().map(number).collect(),
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                }),
                Kind::Gauge => pb::metric::Data::Gauge(pb::Gauge {
                    data_points: f.points.iter().map(number).collect(),
                }),
                Kind::Histogram(bounds) => pb::metric::Data::Histogram(pb::Histogram {
                    data_points: f
                        .points
                        .iter()
                        .filter_map(|p| match &p.value {
                            v @ Value::Histogram { buckets, sum } => Some(pb::HistogramDataPoint {
                                attributes: attributes(p),
                                start_time_unix_nano: start,
                                time_unix_nano: now,
                                count: v.count().unwrap_or(0),
                                sum: Some(*sum),
                                bucket_counts: buckets.clone(),
                                explicit_bounds: bounds.to_vec(),
                                ..Default::default()
                            }),
                            _ => None,
                        })
                        .collect(),
                    aggregation_temporality: cumulative,
                }),
            };
            pb::Metric {
                name: d.otel.to_string(),
                description: d.help.to_string(),
                unit: d.unit.to_string(),
                data: Some(data),
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![pb::ResourceMetrics {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: resource.to_vec(),
                ..Default::default()
            }),
            scope_metrics: vec![pb::ScopeMetrics {
                scope: Some(pb_common::InstrumentationScope {
                    name: "pipeline-worker".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::super::metrics::{self, tests::busy_state};
    use super::*;

    /// Declared once ⇒ both: the OTLP request has one metric per family
    /// `/metrics` serves, with the same series and values.
    #[test]
    fn otlp_carries_the_families_of_the_prometheus_text() {
        let s = busy_state();
        let text = metrics::prometheus_text(metrics::worker_families(&s));
        let req = otlp_request(&metrics::worker_families(&s), &[], 1, 2);
        let otlp = &req.resource_metrics[0].scope_metrics[0].metrics;
        let served: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let declared = |otel: &str| {
            metrics::WORKER
                .iter()
                .map(|m| &m.desc)
                .find(|d| d.otel == otel)
                .unwrap_or_else(|| panic!("{otel} is not declared"))
                .prom
        };
        let exported: Vec<&str> = otlp.iter().map(|m| declared(&m.name)).collect();
        assert_eq!(served, exported);
        let consumed = otlp
            .iter()
            .find(|m| m.name == "messaging.client.consumed.messages")
            .unwrap();
        let Some(pb::metric::Data::Sum(sum)) = &consumed.data else {
            panic!("{consumed:?}")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.data_points[0].value,
            Some(pb::number_data_point::Value::AsInt(54))
        );
        let keys: Vec<&str> = sum.data_points[0]
            .attributes
            .iter()
            .map(|a| a.key.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "messaging.system",
                "messaging.consumer.group.name",
                "pipeline"
            ]
        );
        let hist = otlp
            .iter()
            .find(|m| m.name == "messaging.process.duration")
            .unwrap();
        let Some(pb::metric::Data::Histogram(h)) = &hist.data else {
            panic!("{hist:?}")
        };
        let p = &h.data_points[0];
        assert_eq!(
            (p.count, p.explicit_bounds.len(), p.bucket_counts.len()),
            (5, 14, 15)
        );
        assert_eq!(p.bucket_counts[3], 4, "3 ms in the 5 ms bucket");
        assert_eq!(p.bucket_counts[14], 1, "60 s in the overflow bucket");
        assert!((p.sum.unwrap() - 60.012).abs() < 1e-9, "{:?}", p.sum);
        assert_eq!(hist.unit, "s");
    }
}
