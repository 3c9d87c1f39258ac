//! Declared once ⇒ both: every metric family a worker serves on `/metrics` is
//! in its OTLP export and the other way round, and a counter and a histogram
//! move in both when records flow.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
use pipeline_worker::telemetry::metrics::{CACHE, WORKER};
use prost::Message as _;

use crate::support::*;
use crate::telemetry::{fake_collector, Posts};

/// The Prometheus name of an OTLP metric, by the declarations.
fn prom_name(otel: &str) -> &'static str {
    WORKER
        .iter()
        .map(|m| &m.desc)
        .chain(CACHE.iter().map(|m| &m.desc))
        .find(|d| d.otel == otel)
        .unwrap_or_else(|| panic!("OTLP metric {otel} is not declared"))
        .prom
}

/// What one side says: its family names (Prometheus form), the records
/// consumed by pipeline `p` and its process-duration count.
#[derive(Debug, PartialEq)]
struct Seen {
    families: BTreeSet<String>,
    consumed: Option<u64>,
    processed: Option<u64>,
}

fn scrape(port: u16) -> Option<Seen> {
    let (200, m) = http_get(port, "/metrics")? else {
        return None;
    };
    let value = |series: &str| {
        m.lines()
            .find(|l| l.starts_with(series) && l.contains("pipeline=\"p\""))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    Some(Seen {
        families: m
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect(),
        consumed: value("messaging_client_consumed_messages_total{"),
        processed: value("messaging_process_duration_seconds_count{"),
    })
}

fn last_export(posts: &Posts) -> Option<Seen> {
    let body = posts
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(path, _)| path == "/v1/metrics")?
        .1
        .clone();
    let req = ExportMetricsServiceRequest::decode(body.as_slice()).expect("an OTLP request");
    let metrics: Vec<_> = req
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .collect();
    let mut seen = Seen {
        families: metrics
            .iter()
            .map(|m| prom_name(&m.name).to_string())
            .collect(),
        consumed: None,
        processed: None,
    };
    let of_p = |attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
        attrs.iter().any(|a| {
            a.key == "pipeline"
                && matches!(
                    &a.value.as_ref().and_then(|v| v.value.clone()),
                    Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) if s == "p"
                )
        })
    };
    for m in metrics {
        match (m.name.as_str(), &m.data) {
            ("messaging.client.consumed.messages", Some(Data::Sum(s))) => {
                seen.consumed = s
                    .data_points
                    .iter()
                    .find(|p| of_p(&p.attributes))
                    .and_then(|p| match p.value {
                        Some(Value::AsInt(v)) => Some(v as u64),
                        _ => None,
                    });
            }
            ("messaging.process.duration", Some(Data::Histogram(h))) => {
                seen.processed = h
                    .data_points
                    .iter()
                    .find(|p| of_p(&p.attributes))
                    .map(|p| p.count);
            }
            _ => {}
        }
    }
    Some(seen)
}

/// Waits until `/metrics` and the latest OTLP export agree and `want` holds
/// for both; returns what they said.
fn agree(port: u16, posts: &Posts, want: impl Fn(&Seen) -> bool, log: impl Fn() -> String) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (prom, otlp) = (scrape(port), last_export(posts));
        if let (Some(a), Some(b)) = (&prom, &otlp) {
            if a == b && want(a) {
                return prom.unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "/metrics and OTLP never agreed:\n/metrics {prom:?}\nOTLP     {otlp:?}\nlog:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_family_is_on_metrics_and_in_otlp_and_moves_in_both() {
    let topics = TestTopics::create("mo", 1);
    let (collector, posts) = fake_collector();
    let config = topics.config(
        "p",
        &guest("enrich_rs"),
        "",
        &format!(
            "[telemetry]\nhttp_listen = \"127.0.0.1:0\"\notlp_endpoint = \"http://127.0.0.1:{collector}\"\notlp_interval_ms = 200\n"
        ),
    );
    let worker = WorkerProcess::start(&config);
    let port = bound_port(&worker, "serving /livez", Duration::from_secs(60));
    // Before any record: the pipeline's counters are there at 0 on both
    // sides; no version has run, so there is no histogram series yet.
    let before = agree(
        port,
        &posts,
        |s| s.consumed == Some(0),
        || worker.log_text(),
    );
    assert_eq!(before.processed, None, "{before:?}");

    let mut records: Vec<In> = (0..10)
        .map(|i| {
            In::new(
                format!("k{i}"),
                format!(r#"{{"id":{i},"session_start":0,"session_end":60}}"#),
            )
        })
        .collect();
    records.push(In::new("bad", r#"{"id":99,"session_start":0}"#));
    produce_all(&topics.input, &records);
    assert_eq!(
        read_until(&[&topics.output], 10, Duration::from_secs(60)).len(),
        10
    );
    assert_eq!(
        read_until(&[&topics.dlq], 1, Duration::from_secs(30)).len(),
        1
    );
    let after = agree(
        port,
        &posts,
        |s| s.consumed == Some(11) && s.processed == Some(11),
        || worker.log_text(),
    );
    // The families of a worker that ran records: all its declarations but
    // those that need an assigned partition's statistics to have arrived
    // (lag) — and that one too once it has, as the equality above says.
    let declared: BTreeSet<String> = WORKER
        .iter()
        .map(|m| &m.desc)
        .chain(CACHE.iter().map(|m| &m.desc))
        .map(|d| d.prom.to_string())
        .collect();
    let missing: Vec<&String> = declared
        .difference(&after.families)
        .filter(|n| *n != "messaging_kafka_consumer_lag")
        .collect();
    assert!(
        missing.is_empty(),
        "declared but served by neither: {missing:?}"
    );
    assert!(after.families.is_subset(&declared), "{after:?}");
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}
