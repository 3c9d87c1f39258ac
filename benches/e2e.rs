//! End-to-end benchmark against the real broker (`make kafka-start`):
//! throughput and latency of a plain rdkafka consume→produce passthrough and
//! of the worker with a Rust and a Python component, on the same broker and
//! the same records, in one run. Prints figures and the worker/passthrough
//! ratio; asserts nothing about speed.
//!
//!   cargo bench -p pipeline-worker --bench e2e            (BENCH_RECORDS=50000 by default)

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use pipeline_worker::app;
use pipeline_worker::config::{
    Config, KafkaConfig, Limits, PipelineConfig, RuntimeConfig, TelemetryConfig,
};

const PARTITIONS: i32 = 4;

fn brokers() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn create(topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(admin.create_topics(&new, &AdminOptions::new()))
        .unwrap();
}

fn producer() -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces `n` records; with `rate`, paced (records/s) and stamped with the
/// send time for latency.
fn produce(topic: &str, n: usize, rate: Option<u64>) {
    let p = producer();
    let start = Instant::now();
    for i in 0..n {
        if let Some(r) = rate {
            let due = Duration::from_nanos(i as u64 * 1_000_000_000 / r);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let value = format!(
            r#"{{"id":{i},"user":"u{}","event_type":"click","session_start":1700000000,"session_end":{},"page":"/products/{}"}}"#,
            i % 1000,
            1700000000 + (i % 120) * 60,
            i % 50
        );
        let sent = now_nanos().to_string();
        let key = format!("u{}", i % 1000);
        let mut rec =
            BaseRecord::to(topic)
                .key(&key)
                .payload(&value)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "sent-ns",
                    value: Some(&sent),
                }));
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

struct Figures {
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Reads `n` records from `topic`; returns (first arrival, last arrival, latencies).
fn drain(topic: &str, n: usize, timeout: Duration) -> (Instant, Instant, Vec<f64>) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("bench-reader-{}", now_nanos()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut got = 0;
    let mut lat = Vec::with_capacity(n);
    let mut first = None;
    let mut last = Instant::now();
    let deadline = Instant::now() + timeout;
    while got < n {
        assert!(
            Instant::now() < deadline,
            "only {got} of {n} records arrived on {topic}"
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            got += 1;
            last = Instant::now();
            first.get_or_insert(last);
            if let Some(h) = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "sent-ns"))
            {
                let sent: u64 = std::str::from_utf8(h.value.unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                lat.push((now_nanos().saturating_sub(sent)) as f64 / 1e6);
            }
        }
    }
    (first.unwrap_or(last), last, lat)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Something that moves records from `input` to `output` until stopped.
trait Candidate {
    fn start(&mut self, input: &str, output: &str, dlq: &str);
    fn stop(&mut self);
}

struct Passthrough {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Candidate for Passthrough {
    fn start(&mut self, input: &str, output: &str, _dlq: &str) {
        let (input, output, stop) = (input.to_string(), output.to_string(), self.stop.clone());
        stop.store(false, Ordering::Relaxed);
        self.thread = Some(std::thread::spawn(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers())
                .set("group.id", format!("bench-pass-{}", now_nanos()))
                .set("auto.offset.reset", "earliest")
                .create()
                .unwrap();
            c.subscribe(&[&input]).unwrap();
            let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", brokers())
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                .create()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    let mut rec = BaseRecord::to(&output).payload(m.payload().unwrap_or_default());
                    if let Some(k) = m.key() {
                        rec = rec.key(k);
                    }
                    if let Some(h) = m.headers() {
                        rec = rec.headers(h.detach());
                    }
                    loop {
                        match p.send(rec) {
                            Ok(()) => break,
                            Err((_, back)) => {
                                rec = back;
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                    }
                }
            }
            p.flush(Duration::from_secs(10)).ok();
        }));
    }
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

struct WorkerCandidate {
    component: PathBuf,
    worker: Option<app::Worker>,
    /// OTLP receiver: spans for every record (the exporter is process-wide,
    /// so this candidate runs last).
    otlp: Option<String>,
}

impl Candidate for WorkerCandidate {
    fn start(&mut self, input: &str, output: &str, dlq: &str) {
        let config = Config {
            kafka: KafkaConfig {
                brokers: brokers(),
                group_id: format!("bench-worker-{}", now_nanos()),
                auto_offset_reset: "earliest".into(),
                librdkafka: Default::default(),
            },
            runtime: RuntimeConfig {
                cache_dir: root().join(".cache/pipeline-worker-bench"),
                ..RuntimeConfig::default()
            },
            telemetry: TelemetryConfig {
                otlp_endpoint: self.otlp.clone(),
                otlp_interval_ms: 1000,
                ..Default::default()
            },
            registry: None,
            control: None,
            base_dir: Default::default(),
            pipelines: vec![PipelineConfig {
                name: "bench".into(),
                input_topics: vec![input.into()],
                component: Some(self.component.clone()),
                tenant: None,
                output_topics: vec![output.into()],
                dead_letter_topic: dlq.into(),
                batch_size: 64,
                concurrency: 2,
                tombstones: Default::default(),
                limits: Limits::default(),
            }],
        };
        let opts = app::sandbox_options(&config);
        let fs = app::load_functions(&config, &opts).unwrap();
        self.worker = Some(app::Worker::start(&config, fs).unwrap());
    }
    fn stop(&mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown(Duration::from_secs(20));
        }
    }
}

fn measure(name: &str, cand: &mut dyn Candidate, n: usize, latency_n: usize, rate: u64) -> Figures {
    let slug: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let tag = format!("{slug}-{}", now_nanos());
    let (input, output, dlq) = (
        format!("bench-in-{tag}"),
        format!("bench-out-{tag}"),
        format!("bench-dlq-{tag}"),
    );
    create(&[&input, &output, &dlq]);
    // Throughput: a backlog of n records, drained from a standing start.
    produce(&input, n, None);
    let start = Instant::now();
    cand.start(&input, &output, &dlq);
    let started = start.elapsed();
    let (first, last, _) = drain(&output, n, Duration::from_secs(600));
    let throughput = n as f64 / last.duration_since(start).as_secs_f64();
    let to_first = first.duration_since(start);
    // After the first output: the rate once the group is joined and the
    // function loaded, apart from start-up.
    let steady = (n - 1) as f64 / last.duration_since(first).as_secs_f64().max(1e-9);
    // Latency: paced records while the candidate is warm.
    let (lin, lout) = (format!("{input}-lat"), format!("{output}-lat"));
    cand.stop();
    create(&[&lin, &lout]);
    cand.start(&lin, &lout, &dlq);
    std::thread::sleep(Duration::from_secs(3));
    let reader = std::thread::spawn(move || drain(&lout, latency_n, Duration::from_secs(300)).2);
    produce(&lin, latency_n, Some(rate));
    let mut lat = reader.join().unwrap();
    cand.stop();
    let f = Figures {
        throughput,
        p50_ms: percentile(&mut lat, 0.50),
        p99_ms: percentile(&mut lat, 0.99),
    };
    println!(
        "{name:<22} {:>10.0} records/s   p50 {:>7.2} ms   p99 {:>7.2} ms   (start {:>5} ms, first output {:>5} ms, then {:>7.0} records/s)",
        f.throughput,
        f.p50_ms,
        f.p99_ms,
        started.as_millis(),
        to_first.as_millis(),
        steady
    );
    f
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let n: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let latency_n: usize = 5_000;
    let rate: u64 = 2_000;
    println!("end-to-end, {n} records backlog + {latency_n} paced at {rate}/s, {PARTITIONS} partitions, broker {}", brokers());
    let pass = measure(
        "rdkafka passthrough",
        &mut Passthrough {
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        },
        n,
        latency_n,
        rate,
    );
    let rust = root().join("target/guests/wasm32-wasip2/release/enrich_rs.wasm");
    let python = root().join("target/components/enrich_event.wasm");
    let collector = sink_collector();
    for (name, path, otlp) in [
        ("worker + Rust enrich", rust.clone(), None),
        ("worker + Python enrich", python, None),
        ("  ... Rust, OTLP spans", rust, Some(collector)),
    ] {
        if !path.exists() {
            println!(
                "{name:<22} skipped: {} not built (make examples)",
                path.display()
            );
            continue;
        }
        let f = measure(
            name,
            &mut WorkerCandidate {
                component: path,
                worker: None,
                otlp,
            },
            n,
            latency_n,
            rate,
        );
        println!(
            "{:<22} throughput ratio worker/passthrough = {:.2}",
            "",
            f.throughput / pass.throughput
        );
    }
}

/// An OTLP/HTTP receiver that answers 200 and discards what it gets.
fn sink_collector() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = stream.try_clone().unwrap();
                let mut r = BufReader::new(stream);
                loop {
                    let mut len = 0usize;
                    let mut first = true;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if !first && h.trim().is_empty() {
                            break;
                        }
                        first = false;
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err()
                        || w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}
