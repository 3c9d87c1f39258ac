//! What caps librdkafka on this broker: consumer-only and producer-only
//! rates under a few settings, on the same records.
//!
//!   cargo run --release -p pipeline-worker --example kafka_probe -- [records]
//!
//! Prints one line per variant; asserts nothing. `PROBE=<text>` runs only
//! the variants whose name contains it. `PROBE_WORKER=<component.wasm>` runs
//! the worker in process on the same records instead and prints the CPU each
//! of its threads used (`PROBE_LANES`, `PROBE_BATCH`, `PROBE_RDKAFKA=k=v,...`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn brokers() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Process CPU (user + system) from /proc, in clock ticks of 10 ms.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

fn create(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(admin.create_topics(
        &[NewTopic::new(topic, 4, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap();
}

fn value(i: usize) -> String {
    format!(
        r#"{{"id":{i},"user":"u{}","event_type":"click","session_start":1700000000,"session_end":{},"page":"/products/{}"}}"#,
        i % 1000,
        1700000000 + (i % 3600),
        i % 500
    )
}

fn produce(topic: &str, n: usize, extra: &[(&str, &str)]) -> (f64, f64) {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    let p: BaseProducer = c.create().unwrap();
    let vals: Vec<(String, String)> = (0..n).map(|i| (format!("k{i}"), value(i))).collect();
    let (t0, c0) = (Instant::now(), cpu_secs());
    for (k, v) in &vals {
        let mut rec = BaseRecord::to(topic).key(k).payload(v);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(1));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();
    (t0.elapsed().as_secs_f64(), cpu_secs() - c0)
}

fn consume(topic: &str, n: usize, extra: &[(&str, &str)]) -> (f64, f64) {
    let group = format!(
        "probe-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers())
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    let consumer: BaseConsumer = c.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    // Start the clock at the first record: group join is not the point here.
    let mut got = 0usize;
    let mut bytes = 0usize;
    let mut start = None;
    while got < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            use rdkafka::Message;
            start.get_or_insert_with(|| (Instant::now(), cpu_secs()));
            bytes += m.payload().map_or(0, <[u8]>::len);
            got += 1;
        }
    }
    let _ = bytes;
    let (t0, c0) = start.unwrap();
    (t0.elapsed().as_secs_f64(), cpu_secs() - c0)
}

/// CPU seconds per thread name (summed over threads with the same name).
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut m = std::collections::BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map_or("", |(_, n)| n).to_string();
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        *m.entry(name).or_insert(0.0) += (f[11] + f[12]) / 100.0;
    }
    m
}

/// The worker on the probe topic, in process: rate first → last output and
/// CPU per thread.
fn worker(topic: &str, n: usize, component: &str, extra: &[(String, String)]) {
    use pipeline_worker::config::*;
    let out = format!(
        "{topic}-wout-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let dlq = format!("{out}-dlq");
    create(&out);
    create(&dlq);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let config = Config {
        kafka: KafkaConfig {
            brokers: brokers(),
            group_id: format!("probe-worker-{out}"),
            auto_offset_reset: "earliest".into(),
            librdkafka: extra.iter().cloned().collect(),
            worker_id: None,
        },
        runtime: RuntimeConfig {
            cache_dir: root.join(".cache/pipeline-worker-bench"),
            ..RuntimeConfig::default()
        },
        telemetry: Default::default(),
        registry: None,
        control: None,
        tenants: Vec::new(),
        base_dir: Default::default(),
        pipelines: vec![PipelineConfig {
            name: "probe".into(),
            input_topics: vec![topic.into()],
            component: Some(root.join(component)),
            tenant: None,
            output_topics: vec![out.clone()],
            dead_letter_topic: dlq,
            batch_size: std::env::var("PROBE_BATCH")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(64),
            concurrency: std::env::var("PROBE_LANES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
            tombstones: Default::default(),
            delivery: Default::default(),
            transaction_interval_ms: 100,
            transaction_max_records: 10_000,
            limits: Limits::default(),
            format: Default::default(),
            schema: None,
        }],
    };
    let opts = pipeline_worker::app::sandbox_options(&config).unwrap();
    let fs = pipeline_worker::app::load_functions(&config, &opts).unwrap();
    let before = thread_cpu();
    let w = pipeline_worker::app::Worker::start(&config, fs).unwrap();
    // Count outputs with a reader of its own.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("probe-reader-{out}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&out]).unwrap();
    let mut got = 0;
    let mut first = None;
    let mut cpu_first = None;
    while got < n {
        if let Some(Ok(_)) = reader.poll(Duration::from_millis(100)) {
            got += 1;
            if first.is_none() {
                first = Some(Instant::now());
                cpu_first = Some(thread_cpu());
            }
        }
    }
    let wall = first.unwrap().elapsed().as_secs_f64();
    let after = thread_cpu();
    w.shutdown(Duration::from_secs(20));
    let base = cpu_first.unwrap_or(before);
    println!(
        "worker + {component}: {:.0} rec/s first → last",
        n as f64 / wall
    );
    let mut total = 0.0;
    for (name, c) in &after {
        let d = c - base.get(name).unwrap_or(&0.0);
        if d > 0.05 {
            total += d;
            println!(
                "  {name:<18} {:>6.2} s  {:>5.2} µs/rec  {:>4.0}% of a core",
                d,
                d * 1e6 / n as f64,
                d * 100.0 / wall
            );
        }
    }
    println!(
        "  total (incl. reader) {:.2} µs/rec",
        total * 1e6 / n as f64
    );
}

type Variant<'a> = (&'a str, &'a [(&'a str, &'a str)]);

fn main() {
    if let Ok(component) = std::env::var("PROBE_WORKER") {
        let n: usize = std::env::args()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let topic = format!(
            "probe-w-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        create(&topic);
        produce(&topic, n, &[]);
        let extra: Vec<(String, String)> = std::env::var("PROBE_RDKAFKA")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        worker(&topic, n, &component, &extra);
        return;
    }
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let topic = format!(
        "probe-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    create(&topic);
    let line = |name: &str, (wall, cpu): (f64, f64)| {
        println!(
            "{name:<58} {:>9.0} rec/s  {:>5.2} µs CPU/rec",
            n as f64 / wall,
            cpu * 1e6 / n as f64
        )
    };
    let which = std::env::var("PROBE").unwrap_or_default();
    let p_variants: &[Variant] = &[
        ("produce: linger 5 (worker default)", &[]),
        ("produce: linger 20", &[("linger.ms", "20")]),
        (
            "produce: linger 20, batch.size 4 MB",
            &[("linger.ms", "20"), ("batch.size", "4000000")],
        ),
        (
            "produce: linger 5, batch.num.messages 100k, batch.size 8 MB",
            &[("batch.num.messages", "100000"), ("batch.size", "8000000")],
        ),
    ];
    let mut first = true;
    for (name, cfg) in p_variants {
        if !first && !which.is_empty() && !name.contains(&which) {
            continue;
        }
        let t = if first {
            first = false;
            topic.clone()
        } else {
            let t = format!("{topic}-{}", name.len());
            create(&t);
            t
        };
        line(name, produce(&t, n, cfg));
    }
    // rd_kafka_consume_batch_queue on the consumer's queue never returns a
    // record here: rust-rdkafka enables librdkafka's event API, whose
    // rebalance events that call does not serve. Batches come from split
    // partition queues instead (what the worker does).
    let c_variants: &[Variant] = &[
        ("consume: poll per message, defaults", &[]),
        (
            "consume: max.partition.fetch.bytes 8 MB",
            &[("max.partition.fetch.bytes", "8388608")],
        ),
        (
            "consume: queued.min.messages 10k, fetch.queue.backoff.ms 10",
            &[
                ("queued.min.messages", "10000"),
                ("fetch.queue.backoff.ms", "10"),
            ],
        ),
        (
            "consume: queued.min.messages 10k, backoff 1 s (librdkafka's)",
            &[("queued.min.messages", "10000")],
        ),
    ];
    for (name, cfg) in c_variants {
        if !which.is_empty() && !name.contains(&which) {
            continue;
        }
        line(name, consume(&topic, n, cfg));
    }
}
