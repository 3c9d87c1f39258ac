//! `pipeline-worker dev`: the whole product on one machine with no Kafka to
//! install. librdkafka's in-process mock cluster serves the Kafka protocol on
//! 127.0.0.1 (any Kafka client can connect while it runs); sample records go
//! in, the real worker path (consumer group, sandbox, idempotent producer,
//! dead-letter topic) processes them, and the enriched records are printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::app;
use crate::config::{Config, KafkaConfig, Limits, PipelineConfig, RuntimeConfig};

const INPUT: &str = "events";
const OUTPUT: &str = "events-enriched";
const DLQ: &str = "events-dlq";
/// Ctrl-C must be done within 2 s: nothing in dev mode is worth waiting longer.
const DEV_DRAIN: Duration = Duration::from_millis(1_000);

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// The function to run. Default: the built enrich_event example
    /// (Python), else its Rust twin.
    #[arg(long)]
    pub component: Option<PathBuf>,
    /// JSON lines to produce as record values. Default: the enrich_event sample.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Exit after printing the results instead of serving until Ctrl-C.
    #[arg(long)]
    pub once: bool,
    /// Give up waiting for results after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

const COMPONENT_CANDIDATES: &[&str] = &[
    "target/components/enrich_event.wasm",
    "target/guests/wasm32-wasip2/release/enrich_rs.wasm",
];

fn default_component() -> anyhow::Result<PathBuf> {
    COMPONENT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "no example component built yet (looked for {}); run `make dev`, which builds it first",
                COMPONENT_CANDIDATES.join(", ")
            )
        })
}

fn sample_values(input: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let default = Path::new("customer-examples/enrich_event/sample.jsonl");
    let path = match input {
        Some(p) => Some(p.to_path_buf()),
        None if default.exists() => Some(default.to_path_buf()),
        None => None,
    };
    if let Some(p) = path {
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        return Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect());
    }
    Ok((0..10)
        .map(|i| {
            format!(
                r#"{{"event_id":"e{i}","user_id":"u{}","session_start":1700000000,"session_end":{}}}"#,
                i % 3,
                1700000000 + 600 * i
            )
        })
        .collect())
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    let component = match args.component {
        Some(c) => c,
        None => default_component()?,
    };
    let values = sample_values(args.input.as_deref())?;

    let cluster = MockCluster::new(1).context("starting the in-process Kafka cluster")?;
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic(INPUT, 4, 1)?;
    cluster.create_topic(OUTPUT, 4, 1)?;
    cluster.create_topic(DLQ, 1, 1)?;
    println!(
        "in-process Kafka cluster on {brokers} (topics {INPUT} → {OUTPUT}, dead letters → {DLQ})"
    );

    let config = Config {
        kafka: KafkaConfig {
            brokers: brokers.clone(),
            group_id: "pipeline-worker-dev".into(),
            auto_offset_reset: "earliest".into(),
            librdkafka: Default::default(),
            worker_id: None,
        },
        runtime: RuntimeConfig {
            drain_timeout_ms: DEV_DRAIN.as_millis() as u64,
            ..RuntimeConfig::default()
        },
        telemetry: Default::default(),
        registry: None,
        control: None,
        tenants: Vec::new(),
        base_dir: ".".into(),
        pipelines: vec![PipelineConfig {
            name: "enrich".into(),
            input_topics: vec![INPUT.into()],
            component: Some(component.clone()),
            tenant: None,
            output_topics: vec![OUTPUT.into()],
            dead_letter_topic: DLQ.into(),
            batch_size: 16,
            concurrency: 2,
            tombstones: Default::default(),
            delivery: Default::default(),
            transaction_interval_ms: 100,
            transaction_max_records: 10_000,
            limits: Limits::default(),
            format: Default::default(),
            schema: None,
        }],
    };
    config.validate()?;
    println!(
        "loading {} (the first load compiles it; later runs use the cache)…",
        component.display()
    );
    let opts = app::sandbox_options(&config)?;
    let functions = app::load_functions(&config, &opts)?;
    let worker = app::Worker::start(&config, functions)?;

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    for (i, v) in values.iter().enumerate() {
        let key = format!("user-{}", i % 3);
        let headers = OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "source",
            value: Some("dev-sample"),
        });
        producer
            .send(BaseRecord::to(INPUT).key(&key).payload(v).headers(headers))
            .map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(10))?;
    println!("produced {} sample records to {INPUT}\n", values.len());

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "pipeline-worker-dev-reader")
        .set("auto.offset.reset", "earliest")
        .create()?;
    reader.subscribe(&[OUTPUT, DLQ])?;
    let mut seen = 0usize;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    while Instant::now() < deadline && seen < values.len() {
        if let Some(m) = reader.poll(Duration::from_millis(200)) {
            let m = m?;
            seen += 1;
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default());
            let key = String::from_utf8_lossy(m.key().unwrap_or_default());
            if m.topic() == DLQ {
                let why = m
                    .headers()
                    .and_then(|h| {
                        h.iter()
                            .find(|h| h.key == crate::sink::headers::ERROR_MESSAGE)
                    })
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                println!("DEAD LETTER key={key}: {value}\n    error: {why}");
            } else {
                println!("{}/{} key={key}: {value}", m.topic(), m.partition());
            }
        }
    }
    if seen < values.len() {
        println!(
            "\nonly {seen} of {} results arrived within {} s",
            values.len(),
            args.timeout_secs
        );
    } else {
        println!("\nall {seen} records processed.");
    }
    let ok = seen == values.len();
    // Our own clients go first: once the cluster is gone they would only log
    // connection errors and block on leaving the group.
    drop(reader);
    drop(producer);
    if !args.once {
        app::wait_for_stop_then(&worker.shutdown, || {
            println!("cluster still serving on {brokers}: point any Kafka client at it (produce to {INPUT}, read {OUTPUT}); Ctrl-C to stop");
        });
    }
    // The worker before the cluster it talks to, so it leaves its group and
    // commits while the cluster still answers.
    let stopped = worker.shutdown(DEV_DRAIN);
    drop(cluster);
    if let Some(e) = stopped {
        anyhow::bail!("worker stopped on an error: {e}");
    }
    anyhow::ensure!(ok, "not every sample record came back");
    Ok(())
}
