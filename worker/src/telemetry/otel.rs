//! OpenTelemetry export over OTLP (HTTP/protobuf): a span per record and the
//! pipeline metrics. Off unless `[telemetry] otlp_endpoint` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; when off, the hot path pays one
//! `OnceLock` load per batch and nothing else.
//!
//! Spans follow the messaging semantic conventions: `process <topic>`, kind
//! consumer, parent from the input record's W3C `traceparent` header, and
//! the span's own `traceparent` written on every output and dead letter.
//! Metrics are the same counters `/metrics` serves (read from the same
//! atomics by observable instruments) plus the duration histograms.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

use super::TelemetryState;
use crate::sandbox::{Header, InputRecord, ERROR_KINDS};
use crate::stats::VersionStats;

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
    meter_provider: SdkMeterProvider,
    pub process_duration: Histogram<f64>,
    pub wasm_duration: Histogram<f64>,
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

/// Starts the exporters (once per process) and registers the observable
/// instruments over `state`.
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
    let metrics = MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{endpoint}/v1/metrics"))
        .with_timeout(Duration::from_secs(5))
        .with_temporality(Temporality::Cumulative)
        .build()
        .map_err(|e| oerr(&e))?;
    let meter_provider = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(metrics)
                .with_interval(export_interval)
                .build(),
        )
        .with_resource(resource)
        .build();
    let meter = meter_provider.meter("pipeline-worker");
    register_observables(&meter, state);
    let otel = Otel {
        tracer: tracer_provider.tracer("pipeline-worker"),
        process_duration: meter
            .f64_histogram("messaging.process.duration")
            .with_unit("s")
            .with_description("Time from a record's batch entering the sandbox to its outputs being handed to the producer.")
            .build(),
        wasm_duration: meter
            .f64_histogram("pipeline.wasm.execution.duration")
            .with_unit("s")
            .with_description("Time inside the function per batch of records.")
            .build(),
        tracer_provider,
        meter_provider,
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
        if let Err(e) = o.meter_provider.shutdown() {
            tracing::warn!(error = %e, "OTLP metric export at shutdown");
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

fn register_observables(meter: &Meter, state: Arc<TelemetryState>) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    type Pick = fn(&VersionStats) -> &AtomicU64;
    let per_version: [(&'static str, &'static str, Pick); 7] = [
        (
            "messaging.client.sent.messages",
            "Output records handed to the producer.",
            |v| &v.produced,
        ),
        (
            "pipeline.records.filtered",
            "Input records for which the function returned no output.",
            |v| &v.filtered,
        ),
        (
            "pipeline.records.dead_lettered",
            "Input records sent to the dead-letter topic.",
            |v| &v.dead_lettered,
        ),
        (
            "pipeline.traps",
            "Records whose function trapped or hit a limit.",
            |v| &v.traps,
        ),
        (
            "pipeline.fuel.consumed",
            "Wasm fuel consumed (only with limits.fuel).",
            |v| &v.fuel_consumed,
        ),
        ("pipeline.instantiations", "Fresh instances created.", |v| {
            &v.instantiations
        }),
        (
            "pipeline.wasm.execution.time",
            "Nanoseconds inside the function.",
            |v| &v.wasm_nanos,
        ),
    ];
    for (name, description, pick) in per_version {
        let state = state.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |obs| {
                for p in state
                    .pipelines
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                {
                    for v in p.stats.versions() {
                        obs.observe(pick(&v).load(Relaxed), &version_attributes(p, &v));
                    }
                }
            })
            .build();
    }
    let s = state.clone();
    meter
        .u64_observable_counter("pipeline.errors")
        .with_description("Dead-lettered records by error kind.")
        .with_callback(move |obs| {
            for p in s.pipelines.read().unwrap_or_else(|e| e.into_inner()).iter() {
                for v in p.stats.versions() {
                    for (i, kind) in ERROR_KINDS.iter().enumerate() {
                        let mut attrs = version_attributes(p, &v);
                        attrs.push(KeyValue::new("error.type", *kind));
                        obs.observe(v.errors_by_kind[i].load(Relaxed), &attrs);
                    }
                }
            }
        })
        .build();
    type Read = fn(&super::PipelineView) -> u64;
    let per_pipeline: [(&'static str, &'static str, Read); 2] = [
        (
            "messaging.client.consumed.messages",
            "Records consumed from the input topics.",
            |p| p.stats.consumed.load(Relaxed),
        ),
        (
            "pipeline.function.load_failures",
            "Activated versions this worker could not load.",
            |p| p.slot.load_failures.load(Relaxed),
        ),
    ];
    for (name, description, read) in per_pipeline {
        let s = state.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |obs| {
                for p in s.pipelines.read().unwrap_or_else(|e| e.into_inner()).iter() {
                    obs.observe(read(p), &attributes(p));
                }
            })
            .build();
    }
    let s = state.clone();
    meter
        .f64_observable_counter("pipeline.throttled")
        .with_unit("s")
        .with_description("Time the pipeline's sandbox threads spent paused by the tenant's quota or the deadline backoff, summed over its threads.")
        .with_callback(move |obs| {
            for p in s.pipelines.read().unwrap_or_else(|e| e.into_inner()).iter() {
                for r in crate::stats::ThrottleReason::ALL {
                    let mut attrs = attributes(p);
                    attrs.push(KeyValue::new("tenant", p.tenant.clone().unwrap_or_default()));
                    attrs.push(KeyValue::new("reason", r.label()));
                    obs.observe(p.stats.throttled_seconds_by(r), &attrs);
                }
            }
        })
        .build();
    let s = state.clone();
    meter
        .i64_observable_gauge("pipeline.in_flight")
        .with_description("Records consumed and not yet acknowledged downstream.")
        .with_callback(move |obs| {
            for p in s.pipelines.read().unwrap_or_else(|e| e.into_inner()).iter() {
                obs.observe(p.trackers.in_flight() as i64, &attributes(p));
            }
        })
        .build();
    meter
        .i64_observable_gauge("messaging.kafka.consumer.lag")
        .with_description("Records between the committed position and the partition end.")
        .with_callback(move |obs| {
            for p in state
                .pipelines
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                let lag = p.stats.lag.lock().unwrap_or_else(|e| e.into_inner());
                for ((topic, part), v) in lag.iter() {
                    let mut attrs = attributes(p);
                    attrs.push(KeyValue::new("messaging.destination.name", topic.clone()));
                    attrs.push(KeyValue::new(
                        "messaging.destination.partition.id",
                        part.to_string(),
                    ));
                    obs.observe(*v, &attrs);
                }
            }
        })
        .build();
}

/// Pipeline-level attributes.
pub fn attributes(p: &super::PipelineView) -> Vec<KeyValue> {
    vec![
        KeyValue::new("messaging.system", "kafka"),
        KeyValue::new("messaging.consumer.group.name", p.group.clone()),
        KeyValue::new("pipeline", p.name.clone()),
    ]
}

fn version_attributes(p: &super::PipelineView, v: &VersionStats) -> Vec<KeyValue> {
    let mut a = attributes(p);
    a.push(KeyValue::new("pipeline.function", v.function.clone()));
    a.push(KeyValue::new(
        "pipeline.function.version",
        v.version.clone(),
    ));
    a
}
