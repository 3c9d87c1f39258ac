//! /metrics counts what went through; /readyz follows start, a broker outage
//! (librdkafka's mock cluster takes its broker down) and a drain.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::*;

use crate::support::http_get as get;

fn wait_for(port: u16, path: &str, code: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let got = get(port, path);
        if let Some((c, body)) = &got {
            if *c == code {
                return body.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {code}; last: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_count_records_and_traps() {
    let topics = TestTopics::create("tm", 2);
    let (input, output, dlq) = (
        topics.input.clone(),
        topics.output.clone(),
        topics.dlq.clone(),
    );
    let mut records: Vec<In> = (0..50)
        .map(|i| In::new(format!("k{i}"), format!(r#"{{"action":"ok","id":{i}}}"#)))
        .collect();
    records.push(In::new("x1", r#"{"action":"loop"}"#));
    records.push(In::new("x2", r#"{"action":"panic"}"#));
    records.push(In::new("x3", r#"{"action":"filter"}"#));
    records.push(In::new("x4", r#"{"action":"error"}"#));
    produce_all(&input, &records);
    let component = guest("hostile");
    let config = topics.config(
        "hostile",
        &component,
        "[pipelines.limits]\ndeadline_ms = 200\n",
        "[telemetry]\nhttp_listen = \"127.0.0.1:0\"\n",
    );
    let worker = WorkerProcess::start(&config);
    let port = bound_port(&worker, "serving /livez", Duration::from_secs(60));
    wait_for(port, "/livez", 200, Duration::from_secs(60));
    wait_for(port, "/readyz", 200, Duration::from_secs(60));
    assert_eq!(read_until(&[&dlq], 3, Duration::from_secs(60)).len(), 3);
    assert_eq!(
        read_until(&[&output], 50, Duration::from_secs(60)).len(),
        50
    );
    // Counters are updated right after the produce is enqueued; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        let (_, m) = get(port, "/metrics").expect("metrics");
        if sample(
            &m,
            "messaging_client_consumed_messages_total",
            "pipeline=\"hostile\"",
        ) == 54
            && sample(
                &m,
                "pipeline_records_dead_lettered_total",
                "error_kind=\"failed\"",
            ) + sample(
                &m,
                "pipeline_records_dead_lettered_total",
                "error_kind=\"invalid-input\"",
            ) == 1
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never settled:\n{m}\nlog:\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        sample(
            &m,
            "messaging_client_sent_messages_total",
            "pipeline=\"hostile\""
        ),
        50
    );
    assert_eq!(
        sample(
            &m,
            "pipeline_records_filtered_total",
            "pipeline=\"hostile\""
        ),
        1
    );
    assert_eq!(
        sample(
            &m,
            "pipeline_records_dead_lettered_total",
            "error_kind=\"deadline\""
        ),
        1
    );
    assert_eq!(
        sample(
            &m,
            "pipeline_records_dead_lettered_total",
            "error_kind=\"trap\""
        ),
        1
    );
    assert_eq!(
        sample(&m, "pipeline_traps_total", "pipeline=\"hostile\""),
        2
    );
    assert!(m.contains("messaging_consumer_group_name="), "{m}");
    // Every record is one observation of the process-duration histogram.
    assert_eq!(
        sample(
            &m,
            "messaging_process_duration_seconds_count",
            "pipeline=\"hostile\""
        ),
        54
    );
    assert!(
        sample(
            &m,
            "pipeline_wasm_execution_seconds_count",
            "pipeline=\"hostile\""
        ) > 0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "pipeline_function_info", "function_digest=\"sha256:"),
        1
    );
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// A minimal OTLP/HTTP receiver: remembers each POST's path and body.
/// (path, body) of every POST received.
pub type Posts = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

pub fn fake_collector() -> (u16, Posts) {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut w = stream.try_clone().unwrap();
                let mut r = std::io::BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    g.lock().unwrap().push((path, body));
                    if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, got)
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// With an OTLP endpoint: each record gets a span whose parent is the input's
/// `traceparent`; outputs and dead letters carry the span's `traceparent`
/// (same trace, new span); spans and metrics reach the collector.
#[test]
fn traceparent_is_continued_and_exported_over_otlp() {
    let topics = TestTopics::create("otel", 1);
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";
    let tp = format!("00-{TRACE}-{PARENT}-01");
    produce_all(
        &topics.input,
        &[
            In::new("a", r#"{"id":1,"session_start":0,"session_end":60}"#)
                .header("traceparent", &tp),
            In::new("b", r#"{"id":2,"session_start":0}"#).header("traceparent", &tp),
            In::new("c", r#"{"id":3,"session_start":0,"session_end":60}"#),
        ],
    );
    let (port, got) = fake_collector();
    let config = topics.config(
        "traced",
        &guest("enrich_rs"),
        "",
        &format!(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\notlp_interval_ms = 300\n"
        ),
    );
    let worker = WorkerProcess::start(&config);
    let out = read_until(&[&topics.output], 2, Duration::from_secs(60));
    let dlq = read_until(&[&topics.dlq], 1, Duration::from_secs(30));
    assert_eq!(
        (out.len(), dlq.len()),
        (2, 1),
        "log:\n{}",
        worker.log_text()
    );
    let traced = out.iter().find(|o| o.key.as_deref() == Some("a")).unwrap();
    let check = |h: &str| {
        let parts: Vec<&str> = h.split('-').collect();
        assert_eq!(parts.len(), 4, "{h}");
        assert_eq!(parts[1], TRACE, "same trace: {h}");
        assert_ne!(parts[2], PARENT, "a new span: {h}");
        parts[2].to_string()
    };
    let span_a = check(traced.header("traceparent"));
    let span_b = check(dlq[0].header("traceparent"));
    assert_ne!(span_a, span_b, "one span per record");
    // A record without a traceparent starts a new trace.
    let fresh = out.iter().find(|o| o.key.as_deref() == Some("c")).unwrap();
    assert!(!fresh.header("traceparent").contains(TRACE));

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bodies = got.lock().unwrap().clone();
        let traces: Vec<&Vec<u8>> = bodies
            .iter()
            .filter(|(p, _)| p == "/v1/traces")
            .map(|(_, b)| b)
            .collect();
        let metrics: Vec<&Vec<u8>> = bodies
            .iter()
            .filter(|(p, _)| p == "/v1/metrics")
            .map(|(_, b)| b)
            .collect();
        let has = |bs: &[&Vec<u8>], needle: &[u8]| {
            bs.iter()
                .any(|b| b.windows(needle.len()).any(|w| w == needle))
        };
        if has(&traces, &hex_bytes(TRACE))
            && has(&traces, &hex_bytes(&span_b))
            && has(&traces, &hex_bytes(PARENT))
            && has(&metrics, b"messaging.client.consumed.messages")
            && has(&metrics, b"messaging.process.duration")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "collector got {} trace and {} metric posts without the expected content",
            traces.len(),
            metrics.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// A worker on librdkafka's mock cluster (topics in, out, dlq) serving
/// `/readyz` on the returned port, with librdkafka statistics every
/// `statistics_ms`.
fn mock_worker(
    cluster: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    statistics_ms: u64,
) -> (pipeline_worker::app::Worker, u16) {
    use pipeline_worker::app;
    use pipeline_worker::config::{
        Config, KafkaConfig, Limits, PipelineConfig, RuntimeConfig, TelemetryConfig,
    };

    cluster.create_topic("in", 2, 1).unwrap();
    cluster.create_topic("out", 2, 1).unwrap();
    cluster.create_topic("dlq", 1, 1).unwrap();
    let port = free_port();
    let config = Config {
        kafka: KafkaConfig {
            brokers: cluster.bootstrap_servers(),
            group_id: unique("ready"),
            auto_offset_reset: "earliest".into(),
            librdkafka: [(
                "statistics.interval.ms".to_string(),
                statistics_ms.to_string(),
            )]
            .into_iter()
            .collect(),
            worker_id: None,
        },
        runtime: RuntimeConfig {
            cache_dir: cache_dir(),
            ..RuntimeConfig::default()
        },
        telemetry: TelemetryConfig {
            http_listen: Some(format!("127.0.0.1:{port}").parse().unwrap()),
            ..TelemetryConfig::default()
        },
        registry: None,
        control: None,
        tenants: Vec::new(),
        base_dir: Default::default(),
        pipelines: vec![PipelineConfig {
            name: "p".into(),
            input_topics: vec!["in".into()],
            component: Some(guest("enrich_rs")),
            tenant: None,
            output_topics: vec!["out".into()],
            dead_letter_topic: "dlq".into(),
            batch_size: 8,
            concurrency: 1,
            tombstones: Default::default(),
            delivery: Default::default(),
            transaction_interval_ms: 100,
            transaction_max_records: 10_000,
            limits: Limits::default(),
            format: Default::default(),
            schema: None,
        }],
    };
    let opts = app::sandbox_options(&config).unwrap();
    let fs = app::load_functions(&config, &opts).unwrap();
    (app::Worker::start(&config, fs).unwrap(), port)
}

/// Readiness through a start, a broker outage and a drain, on the mock cluster.
#[test]
fn readiness_follows_broker_outage_and_drain() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let (worker, port) = mock_worker(&cluster, 500);
    wait_for(port, "/readyz", 200, Duration::from_secs(60));
    cluster.broker_down(1).unwrap();
    let body = wait_for(port, "/readyz", 503, Duration::from_secs(60));
    assert!(body.contains("broker"), "{body}");
    assert_eq!(
        get(port, "/livez").map(|r| r.0),
        Some(200),
        "alive while the broker is down"
    );
    cluster.broker_up(1).unwrap();
    wait_for(port, "/readyz", 200, Duration::from_secs(60));
    worker.request_stop();
    let body = wait_for(port, "/readyz", 503, Duration::from_secs(5));
    assert!(body.contains("draining"), "{body}");
    assert_eq!(worker.shutdown(Duration::from_secs(10)), None);
}

/// With statistics only every 10 minutes, readiness still follows the
/// client: ready once joined, and not ready when librdkafka reports all
/// brokers down, long before any statistics tick.
#[test]
fn readiness_follows_the_client_without_statistics() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let (worker, port) = mock_worker(&cluster, 600_000);
    wait_for(port, "/readyz", 200, Duration::from_secs(60));
    cluster.broker_down(1).unwrap();
    let body = wait_for(port, "/readyz", 503, Duration::from_secs(60));
    assert!(body.contains("no broker reachable"), "{body}");
    cluster.broker_up(1).unwrap();
    assert_eq!(worker.shutdown(Duration::from_secs(10)), None);
}

/// Runs a worker whose sandbox thread panics (fault injection) with
/// `env`; returns its exit code and everything it wrote to stderr (a file).
fn panicking_worker(prefix: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let topics = TestTopics::create(prefix, 1);
    let config = topics.config("doomed", &guest("enrich_rs"), "", "");
    let mut env = env.to_vec();
    env.push(("PIPELINE_WORKER_FAULT_PANIC_AT_OFFSET", "1"));
    let mut worker = WorkerProcess::start_env("run", &config, &env);
    produce_all(
        &topics.input,
        &(0..3)
            .map(|i| {
                In::new(
                    format!("k{i}"),
                    format!(r#"{{"id":{i},"session_start":0,"session_end":1}}"#),
                )
            })
            .collect::<Vec<_>>(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(st) = worker.child.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            Instant::now() < deadline,
            "worker kept running:\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, worker.log_text())
}

/// Logs written to a file carry no ANSI colour codes, and a panic in text
/// logs is one line (no default multi-line report after it).
#[test]
fn text_logs_in_a_file_have_no_colour_and_one_line_per_panic() {
    let (code, log) = panicking_worker("tlog", &[("PIPELINE_WORKER_LOG_FORMAT", "text")]);
    assert_eq!(code, Some(4), "dead-thread exit; log:\n{log}");
    assert!(log.contains("INFO"), "the log has lines: {log}");
    assert!(!log.contains("\x1b["), "ANSI codes in a file: {log:?}");
    let panics: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("thread panicked"))
        .collect();
    assert_eq!(panics.len(), 1, "one line per panic; log:\n{log}");
    assert!(
        panics[0].contains("fault injection") && panics[0].contains("pipeline.rs:"),
        "message and location on the one line: {}",
        panics[0]
    );
    // Rust's own report starts "thread '<name>' panicked at <file>:" and
    // continues on further lines.
    assert!(
        !log.contains("' panicked at ") && !log.contains("note: run with `RUST_BACKTRACE"),
        "the default report was printed too:\n{log}"
    );
}

/// In JSON logs every line is one JSON object, the panic included, with its
/// backtrace inside the event when RUST_BACKTRACE asks for one.
#[test]
fn a_panic_in_json_logs_is_one_json_line() {
    let (code, log) = panicking_worker(
        "jlog",
        &[
            ("PIPELINE_WORKER_LOG_FORMAT", "json"),
            ("RUST_BACKTRACE", "1"),
        ],
    );
    assert_eq!(code, Some(4), "dead-thread exit; log:\n{log}");
    let mut panics = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nlog:\n{log}"));
        if v["message"] == "thread panicked" {
            panics.push(v);
        }
    }
    assert_eq!(panics.len(), 1, "one panic event; log:\n{log}");
    let p = &panics[0];
    assert!(
        p["thread"]
            .as_str()
            .unwrap_or("")
            .starts_with("sandbox-doomed")
            && p["panic"]
                .as_str()
                .unwrap_or("")
                .contains("fault injection")
            && p["location"]
                .as_str()
                .unwrap_or("")
                .contains("pipeline.rs:"),
        "{p}"
    );
    assert!(
        p["backtrace"].as_str().is_some_and(|b| b.contains('\n')),
        "backtrace inside the one event: {p}"
    );
}
