//! End-to-end benchmark against the real broker (`make kafka-start`): the
//! worker and its peers on the same broker, the same records and the same
//! enrich logic (customer-examples/enrich_event: parse the JSON value, add
//! `session_duration_minutes` and `engagement_tier`, serialize). Every
//! candidate runs as a child process, so its CPU time and peak RSS are its own:
//!
//! - Java passthrough: KafkaConsumer → KafkaProducer, bytes unchanged
//!   (kafka-clients 4.x, idempotent, acks=all; benches/peers/java);
//! - rdkafka passthrough: the same loop on librdkafka (this binary, re-executed
//!   with `--passthrough`);
//! - Kafka Streams: `stream(in).mapValues(enrich).to(out)`, Jackson, 2 threads;
//! - Quix Streams: the customer's Python function itself, unsandboxed
//!   (benches/peers/quix, in its own venv);
//! - the worker (`pipeline-worker run --config <generated>`) with the Rust and
//!   the Python enrich component, and with Rust and an OTLP span per record;
//! - the price calculation (issue 13), on records of its own shape (both
//!   examples' input; see `price_value`): the rdkafka passthrough over those
//!   records, the worker with customer-examples/price_calculator (one call per
//!   record, JSON in the guest) and with price_columnar (one call per batch,
//!   Arrow, the schema of its pipeline.toml). Their ratio is to the
//!   passthrough over the same records when it ran. The worker candidates
//!   also print what their /metrics say about the backlog: records per
//!   function call (the batch sizes a columnar function really gets) and
//!   time inside the guest per record.
//!
//! Per candidate and round: a backlog of BENCH_RECORDS records (one input topic
//! per round, read by every candidate in its own group) into an output topic
//! with `message.timestamp.type=LogAppendTime`; throughput from the output
//! records' broker timestamps (first → last output, and candidate start → last
//! output); CPU per record from /proc/<pid>/stat between the first and the last
//! output; peak RSS (VmHWM). Then, in a fresh process on fresh topics, latency:
//! records paced at BENCH_RATE/s (after a warm-up), send time stamped in a
//! `sent-ns` header, p50/p99/p999 at the reader. BENCH_ROUNDS interleaved
//! rounds (the order rotates), medians printed with each candidate's ratio to
//! the Java passthrough. Prints figures; asserts nothing about speed.
//! Candidates whose prerequisites are missing print `skipped: why`.
//!
//!   make bench-peers                                  (the Java project and the Quix venv)
//!   cargo bench -p pipeline-worker --bench e2e
//!
//! Environment: BENCH_RECORDS (1000000), BENCH_ROUNDS (3), BENCH_RATE (10000),
//! BENCH_LATENCY_RECORDS (30000), BENCH_WARMUP_RECORDS (2 s at BENCH_RATE),
//! BENCH_CANDIDATES (comma-separated slugs, default all: java-passthrough,
//! rdkafka-passthrough, kafka-streams, quix-streams, worker-rust, worker-python,
//! worker-rust-otlp, rdkafka-passthrough-price, worker-rust-price,
//! worker-rust-price-columnar), BENCH_BATCH_SIZE (the workers' batch_size, 64),
//! BENCH_WORKER_BASE (another pipeline-worker binary: each worker candidate
//! also runs on it, as `<slug>-base`, interleaved, for a before/after in one
//! run), BENCH_PEERS_DIR (target/bench-peers), BENCH_JAVA_OPTS,
//! KAFKA_BOOTSTRAP (127.0.0.1:9092), BENCH_KEEP (1: keep topics and logs).

#[path = "common.rs"]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, Timestamp};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// A candidate whose output count does not move for this long has failed.
const STALL: Duration = Duration::from_secs(120);

fn reader(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap()
}

fn watermarks(c: &BaseConsumer, topic: &str) -> Vec<(i32, i64)> {
    (0..PARTITIONS)
        .map(|p| {
            let hw = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, hw)| hw)
                .unwrap_or(0);
            (p, hw)
        })
        .collect()
}

/// CPU time (user + system, seconds) and peak RSS (MiB) of a live process.
struct ProcStats {
    cpu_s: f64,
    rss_mib: f64,
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn proc_stats(pid: u32) -> Option<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "pid (comm) ": state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: f64 = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(ProcStats {
        cpu_s: ticks / clock_ticks(),
        rss_mib: hwm_kib / 1024.0,
    })
}

#[derive(Clone)]
enum Kind {
    JavaPassthrough,
    RdkafkaPassthrough,
    KafkaStreams,
    Quix,
    /// `extra`: lines added to its `[[pipelines]]` table (a schema).
    /// `bin`: another worker binary than this build's (`BENCH_WORKER_BASE`).
    Worker {
        component: PathBuf,
        otlp: bool,
        extra: String,
        bin: Option<PathBuf>,
    },
}

/// The records a candidate reads and the logic its output is checked for.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Workload {
    Enrich,
    Price,
}

impl Workload {
    fn value(self) -> fn(usize) -> String {
        match self {
            Workload::Enrich => value,
            Workload::Price => price_value,
        }
    }
}

#[derive(Clone)]
struct Candidate {
    name: &'static str,
    slug: &'static str,
    kind: Kind,
    workload: Workload,
}

impl Candidate {
    fn transforms(&self) -> bool {
        !matches!(self.kind, Kind::JavaPassthrough | Kind::RdkafkaPassthrough)
    }

    /// Why it cannot run here, if it cannot.
    fn missing(&self, peers: &Path) -> Option<String> {
        let java_built = peers.join("java/classes/bench/Passthrough.class").exists()
            && peers.join("java/.stamp").exists();
        match &self.kind {
            Kind::JavaPassthrough | Kind::KafkaStreams => {
                if Command::new(java())
                    .arg("-version")
                    .stderr(Stdio::null())
                    .stdout(Stdio::null())
                    .status()
                    .map(|s| !s.success())
                    .unwrap_or(true)
                {
                    Some(format!("no `{}` (Java 17+)", java()))
                } else if !java_built {
                    Some(format!(
                        "Java peers not built in {} (make bench-peers; needs mvn)",
                        peers.join("java").display()
                    ))
                } else {
                    None
                }
            }
            Kind::Quix => (!peers.join("venv/.stamp").exists()
                || !peers.join("venv/bin/python").exists())
            .then(|| {
                format!(
                    "no Quix Streams venv in {} (make bench-peers)",
                    peers.join("venv").display()
                )
            }),
            Kind::RdkafkaPassthrough => None,
            Kind::Worker { component, .. } => (!component.exists())
                .then(|| format!("{} not built (make examples)", component.display())),
        }
    }

    /// `metrics`: a port for a worker's /metrics.
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &self,
        ctx: &Ctx,
        input: &str,
        output: &str,
        dlq: &str,
        group: &str,
        log: &Path,
        metrics: u16,
    ) -> Child {
        let peers = &ctx.peers;
        let mut cmd = match &self.kind {
            Kind::JavaPassthrough | Kind::KafkaStreams => {
                let mut c = Command::new(java());
                if let Ok(opts) = std::env::var("BENCH_JAVA_OPTS") {
                    c.args(opts.split_whitespace());
                }
                c.arg(format!("-Djava.io.tmpdir={}", ctx.dir.display()))
                    .arg("-cp")
                    .arg(format!(
                        "{}:{}/*",
                        peers.join("java/classes").display(),
                        peers.join("java/lib").display()
                    ))
                    .arg(if matches!(self.kind, Kind::JavaPassthrough) {
                        "bench.Passthrough"
                    } else {
                        "bench.StreamsEnrich"
                    })
                    .args([&brokers(), input, output, group]);
                c
            }
            Kind::RdkafkaPassthrough => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.args(["--passthrough", &brokers(), input, output, group]);
                c
            }
            Kind::Quix => {
                let mut c = Command::new(peers.join("venv/bin/python"));
                c.arg(root().join("benches/peers/quix/enrich_quix.py"))
                    .args([&brokers(), input, output, group]);
                c
            }
            Kind::Worker {
                component,
                otlp,
                extra,
                bin,
            } => {
                let mut toml = format!(
                    "[kafka]\nbrokers = \"{}\"\ngroup_id = \"{group}\"\nauto_offset_reset = \"earliest\"\n\n\
                     [runtime]\ncache_dir = \"{}\"\n\n\
                     [telemetry]\nhttp_listen = \"127.0.0.1:{metrics}\"\n",
                    brokers(),
                    root().join(".cache/pipeline-worker-bench").display()
                );
                if *otlp {
                    toml.push_str(&format!(
                        "otlp_endpoint = \"{}\"\notlp_interval_ms = 1000\n",
                        ctx.collector
                    ));
                }
                toml.push_str(&format!(
                    "\n[[pipelines]]\nname = \"bench\"\ninput_topics = [\"{input}\"]\noutput_topics = [\"{output}\"]\n\
                     dead_letter_topic = \"{dlq}\"\ncomponent = \"{}\"\nbatch_size = {}\nconcurrency = 2\n{extra}\n",
                    component.display(),
                    ctx.batch_size
                ));
                let config = log.with_extension("toml");
                std::fs::write(&config, toml).unwrap();
                let mut c = Command::new(
                    bin.as_deref()
                        .unwrap_or(Path::new(env!("CARGO_BIN_EXE_pipeline-worker"))),
                );
                c.arg("run")
                    .arg("--config")
                    .arg(&config)
                    .env("RUST_LOG", "warn");
                c
            }
        };
        let out = std::fs::File::create(log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.name))
    }
}

fn java() -> String {
    if let Ok(j) = std::env::var("JAVA") {
        return j;
    }
    if let Ok(h) = std::env::var("JAVA_HOME") {
        let j = Path::new(&h).join("bin/java");
        if j.exists() {
            return j.display().to_string();
        }
    }
    "java".into()
}

/// A child that is killed (SIGKILL) when dropped; the bench samples what it
/// needs before, and topics and groups are never reused.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn exited(&mut self) -> Option<String> {
        self.0
            .try_wait()
            .ok()
            .flatten()
            .map(|s| format!("exited early ({s})"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Ctx {
    peers: PathBuf,
    /// Logs and configs of this run.
    dir: PathBuf,
    collector: String,
    records: usize,
    rate: u64,
    latency_records: usize,
    warmup_records: usize,
    batch_size: usize,
}

#[derive(Clone, Default)]
struct Figures {
    /// Records/s, first → last output (broker timestamps).
    rate: f64,
    /// Records/s, candidate start → last output.
    rate_from_start: f64,
    /// Candidate start → first output, ms.
    first_ms: f64,
    /// CPU µs per record between the first and the last output.
    cpu_us: f64,
    /// CPU s of the process from its start to the last output.
    cpu_total_s: f64,
    rss_mib: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    /// Latency grew through the paced phase: the rate is above what it sustains.
    behind: bool,
    /// A worker's backlog, from its /metrics: records per function call
    /// (batch) and µs inside the guest per record; NaN for the peers.
    rows_per_call: f64,
    calls: f64,
    wasm_us: f64,
}

struct Sample {
    ts: Timestamp,
    value: Vec<u8>,
    sent_header: bool,
}

/// The records at `offset(hw)` of each non-empty partition.
fn samples(
    topic: &str,
    hws: &[(i32, i64)],
    offset: impl Fn(i64) -> i64,
) -> Result<Vec<Sample>, String> {
    let c = reader(&format!("bench-edges-{}", now_nanos()));
    let mut tpl = TopicPartitionList::new();
    let mut want: HashSet<(i32, i64)> = HashSet::new();
    for &(p, hw) in hws.iter().filter(|(_, hw)| *hw > 0) {
        tpl.add_partition_offset(topic, p, Offset::Offset(offset(hw)))
            .unwrap();
        want.insert((p, offset(hw)));
    }
    c.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while !want.is_empty() {
        if Instant::now() > deadline {
            return Err(format!("could not read back {want:?} of {topic}"));
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            if want.remove(&(m.partition(), m.offset())) {
                out.push(Sample {
                    ts: m.timestamp(),
                    value: m.payload().unwrap_or_default().to_vec(),
                    sent_header: m
                        .headers()
                        .is_some_and(|h| h.iter().any(|h| h.key == "sent-ns")),
                });
            }
        }
    }
    Ok(out)
}

/// An output record is what the candidate should have made of its input.
fn check(cand: &Candidate, s: &Sample) -> Result<(), String> {
    let text = String::from_utf8_lossy(&s.value);
    if !s.sent_header {
        return Err(format!("output lost the sent-ns header: {text}"));
    }
    let v: serde_json::Value = serde_json::from_slice(&s.value)
        .map_err(|e| format!("output is not JSON ({e}): {text}"))?;
    if cand.workload == Workload::Price {
        return check_price(cand, &v, s, &text);
    }
    let id = v["id"].as_u64().ok_or(format!("no id in {text}"))? as usize;
    if !cand.transforms() {
        return (s.value == value(id).as_bytes())
            .then_some(())
            .ok_or(format!("passthrough changed the value: {text}"));
    }
    let minutes = (id % 120) as f64;
    let tier = if minutes > 30.0 { "high" } else { "standard" };
    let mut want: serde_json::Value = serde_json::from_str(&value(id)).unwrap();
    want["session_duration_minutes"] = minutes.into();
    want["engagement_tier"] = tier.into();
    (v == want)
        .then_some(())
        .ok_or(format!("wrong enrichment: {text}, want {want}"))
}

/// A price output: the input's fields and the three computed ones, with the
/// arithmetic both examples do (so the per-record and the columnar function
/// must agree to the bit).
fn check_price(
    cand: &Candidate,
    v: &serde_json::Value,
    s: &Sample,
    text: &str,
) -> Result<(), String> {
    let id: usize = v["item_id"]
        .as_str()
        .and_then(|s| s.strip_prefix("sku-"))
        .and_then(|s| s.parse().ok())
        .ok_or(format!("no item_id sku-<n> in {text}"))?;
    if !cand.transforms() {
        return (s.value == price_value(id).as_bytes())
            .then_some(())
            .ok_or(format!("passthrough changed the value: {text}"));
    }
    let (cents, quantity, tier, currency) = price_fields(id);
    let base: f64 = format!("{}.{:02}", cents / 100, cents % 100)
        .parse()
        .unwrap();
    let rate = match tier.to_ascii_lowercase().as_str() {
        "premium" => 0.15,
        "standard" => 0.05,
        _ => 0.10,
    };
    let round = |x: f64| (x * 100.0).round() / 100.0;
    let unit = round(base * (1.0 - rate));
    let total = round(unit * quantity as f64);
    let want = serde_json::json!({
        "item_id": format!("sku-{id}"),
        "base_price": base,
        "quantity": quantity,
        "context": {"customer_tier": tier, "currency": currency},
        "discount_rate": rate,
        "unit_price": unit,
        "total_price": total,
    });
    // As numbers, not JSON text: the two functions spell floats differently
    // (serde_json's sorted keys against arrow-json's schema order).
    let num = |x: &serde_json::Value| x.as_f64();
    let same = v.as_object().map(|o| o.len()) == Some(7)
        && v["item_id"] == want["item_id"]
        && v["context"] == want["context"]
        && v["quantity"].as_i64() == Some(quantity)
        && ["base_price", "discount_rate", "unit_price", "total_price"]
            .iter()
            .all(|k| num(&v[k]).is_some() && num(&v[k]) == num(&want[k]));
    same.then_some(())
        .ok_or(format!("wrong price: {text}, want {want}"))
}

/// What a worker's /metrics say: (records through the function, function
/// calls, ns inside the guest), summed over versions and threads.
fn worker_metrics(port: u16) -> Option<(f64, f64, f64)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some((
        sum("messaging_process_duration_seconds_count"),
        sum("pipeline_wasm_execution_seconds_count"),
        sum("pipeline_wasm_execution_nanoseconds_total"),
    ))
}

fn ts_millis(s: &Sample) -> Result<i64, String> {
    match s.ts {
        Timestamp::LogAppendTime(t) => Ok(t),
        other => Err(format!("output timestamp is {other:?}, not LogAppendTime")),
    }
}

/// The backlog: start the candidate on `input` (already full), wait for all
/// records on a fresh output topic, sample CPU and RSS, stop it.
fn backlog(
    ctx: &Ctx,
    cand: &Candidate,
    input: &str,
    tag: &str,
    f: &mut Figures,
    garbage: &mut Vec<String>,
) -> Result<(), String> {
    let n = ctx.records as i64;
    let (output, dlq) = (format!("bench-out-{tag}"), format!("bench-dlq-{tag}"));
    create(&[&output], true);
    create(&[&dlq], false);
    let result = (|| {
        let watch = reader(&format!("bench-watch-{tag}"));
        let log = ctx.dir.join(format!("{tag}.log"));
        let start_ms = now_millis();
        let port = free_port();
        let mut child = Proc(cand.spawn(
            ctx,
            input,
            &output,
            &dlq,
            &format!("bench-{tag}"),
            &log,
            port,
        ));
        let mut first: Option<(f64, i64)> = None;
        let (mut seen, mut moved) = (0i64, Instant::now());
        let last_cpu = loop {
            if let Some(why) = child.exited() {
                return Err(format!("{why}; log {}", log.display()));
            }
            let count: i64 = watermarks(&watch, &output).iter().map(|(_, hw)| hw).sum();
            if count > seen {
                (seen, moved) = (count, Instant::now());
            }
            if count > 0 && first.is_none() {
                first = proc_stats(child.pid()).map(|s| (s.cpu_s, count));
            }
            if count >= n {
                break proc_stats(child.pid()).ok_or("process vanished")?;
            }
            if moved.elapsed() > STALL {
                let dead: i64 = watermarks(&watch, &dlq).iter().map(|(_, hw)| hw).sum();
                return Err(format!(
                    "stalled at {count} of {n} records ({dead} dead letters) for {} s; log {}",
                    STALL.as_secs(),
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if let (Kind::Worker { .. }, Some((records, calls, wasm_ns))) =
            (&cand.kind, worker_metrics(port))
        {
            f.rows_per_call = records / calls.max(1.0);
            f.calls = calls;
            f.wasm_us = wasm_ns / 1e3 / records.max(1.0);
        }
        drop(child);
        if seen > n {
            println!("    note: {} duplicate outputs", seen - n);
        }
        let hws = watermarks(&watch, &output);
        let firsts = samples(&output, &hws, |_| 0)?;
        let lasts = samples(&output, &hws, |hw| hw - 1)?;
        for s in firsts.iter().chain(&lasts) {
            check(cand, s)?;
        }
        let t_first = firsts
            .iter()
            .map(ts_millis)
            .collect::<Result<Vec<_>, _>>()?;
        let t_last = lasts.iter().map(ts_millis).collect::<Result<Vec<_>, _>>()?;
        let (t_first, t_last) = (
            *t_first.iter().min().unwrap(),
            *t_last.iter().max().unwrap(),
        );
        f.rate = (n - 1) as f64 / ((t_last - t_first).max(1) as f64 / 1e3);
        f.rate_from_start = n as f64 / ((t_last - start_ms).max(1) as f64 / 1e3);
        f.first_ms = (t_first - start_ms) as f64;
        let (cpu0, count0) = first.unwrap_or((0.0, 0));
        f.cpu_us = (last_cpu.cpu_s - cpu0) * 1e6 / (n - count0).max(1) as f64;
        f.cpu_total_s = last_cpu.cpu_s;
        f.rss_mib = last_cpu.rss_mib;
        Ok(())
    })();
    garbage.extend([output, dlq]);
    result
}

/// Latency: a fresh process on fresh topics, warmed up with paced records
/// until they all came out, then `latency_records` paced records measured.
fn latency(
    ctx: &Ctx,
    cand: &Candidate,
    tag: &str,
    f: &mut Figures,
    garbage: &mut Vec<String>,
) -> Result<(), String> {
    let (input, output, dlq) = (
        format!("bench-lat-in-{tag}"),
        format!("bench-lat-out-{tag}"),
        format!("bench-lat-dlq-{tag}"),
    );
    create(&[&input, &dlq], false);
    create(&[&output], true);
    let result = (|| {
        let log = ctx.dir.join(format!("{tag}-lat.log"));
        let mut child = Proc(cand.spawn(
            ctx,
            &input,
            &output,
            &dlq,
            &format!("bench-{tag}-lat"),
            &log,
            free_port(),
        ));
        let warm = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (want, w, st, out) = (
            ctx.latency_records,
            warm.clone(),
            stop.clone(),
            output.clone(),
        );
        let reader_thread = std::thread::spawn(move || {
            let c = reader(&format!("bench-lat-reader-{}", now_nanos()));
            let mut tpl = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                tpl.add_partition_offset(&out, p, Offset::Beginning)
                    .unwrap();
            }
            c.assign(&tpl).unwrap();
            let mut lat = Vec::with_capacity(want);
            while lat.len() < want && !st.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    let now = now_nanos();
                    let Some(h) = m.headers() else { continue };
                    for h in h.iter() {
                        let sent = || -> u64 {
                            std::str::from_utf8(h.value.unwrap_or_default())
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(now)
                        };
                        match h.key {
                            "sent-ns" => lat.push(now.saturating_sub(sent()) as f64 / 1e6),
                            "warmup-ns" => {
                                w.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        }
                    }
                }
            }
            lat
        });
        let fail = |why: String| {
            stop.store(true, Ordering::Relaxed);
            Err(why)
        };
        let warmup = ctx.warmup_records;
        // One producer for both phases: connected before the measured one.
        let p = producer();
        let value = cand.workload.value();
        produce_values(&p, &input, 0..warmup, Some(ctx.rate), "warmup-ns", value);
        let (mut seen, mut moved) = (0, Instant::now());
        while warm.load(Ordering::Relaxed) < warmup {
            if let Some(why) = child.exited() {
                return fail(format!("{why}; log {}", log.display()));
            }
            let now = warm.load(Ordering::Relaxed);
            if now > seen {
                (seen, moved) = (now, Instant::now());
            }
            if moved.elapsed() > STALL {
                return fail(format!(
                    "warm-up stalled at {now} of {warmup}; log {}",
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let measured = warmup..warmup + ctx.latency_records;
        produce_values(&p, &input, measured, Some(ctx.rate), "sent-ns", value);
        let deadline = Instant::now() + STALL;
        while !reader_thread.is_finished() {
            if Instant::now() > deadline {
                return fail(format!(
                    "latency records did not all arrive; log {}",
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(child);
        let mut lat = reader_thread.join().unwrap();
        // Latency that keeps growing through the paced phase (last tenth of the
        // records, in arrival order, against the first): the candidate does
        // not keep up with the rate, so its percentiles are queueing.
        let tenth = (lat.len() / 10).max(1);
        let early = median(lat[..tenth].to_vec());
        let late = median(lat[lat.len() - tenth..].to_vec());
        f.behind = late > 2.0 * early && late - early > 50.0;
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        (f.p50, f.p99, f.p999) = (pct(0.50), pct(0.99), pct(0.999));
        Ok(())
    })();
    garbage.extend([input, output, dlq]);
    result
}

/// The `[[pipelines.schema]]` tables of customer-examples/price_columnar's
/// pipeline.toml, so the bench decodes with the schema the example ships.
fn price_columnar_schema() -> String {
    let path = root().join("customer-examples/price_columnar/pipeline.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let at = text
        .find("[[pipelines.schema]]")
        .unwrap_or_else(|| panic!("{} declares no [[pipelines.schema]]", path.display()));
    text[at..].to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// 1234567.8 → "1,234,568"
fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 && c != '-' {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--passthrough") {
        passthrough(&args[2..]);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let rate: u64 = env_or("BENCH_RATE", 10_000);
    let run_dir = std::env::temp_dir().join(format!("pw-e2e-{}", now_nanos()));
    std::fs::create_dir_all(&run_dir).unwrap();
    let ctx = Ctx {
        peers: std::env::var("BENCH_PEERS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root().join("target/bench-peers")),
        dir: run_dir,
        collector: sink_collector(),
        records: env_or("BENCH_RECORDS", 1_000_000usize).max(2),
        rate,
        latency_records: env_or("BENCH_LATENCY_RECORDS", 30_000usize).max(1),
        warmup_records: env_or("BENCH_WARMUP_RECORDS", (rate * 2) as usize),
        batch_size: env_or("BENCH_BATCH_SIZE", 64usize).max(1),
    };
    let rounds: usize = env_or("BENCH_ROUNDS", 3usize).max(1);
    let guests = root().join("target/guests/wasm32-wasip2/release");
    let worker = |component: &str, otlp, extra: &str| Kind::Worker {
        component: if component.ends_with(".wasm") {
            root().join(component)
        } else {
            guests.join(format!("{component}.wasm"))
        },
        otlp,
        extra: extra.to_string(),
        bin: None,
    };
    let columnar_schema = price_columnar_schema();
    use Workload::{Enrich, Price};
    let all = [
        (
            "Java passthrough",
            "java-passthrough",
            Kind::JavaPassthrough,
            Enrich,
        ),
        (
            "rdkafka passthrough",
            "rdkafka-passthrough",
            Kind::RdkafkaPassthrough,
            Enrich,
        ),
        (
            "Kafka Streams + Jackson",
            "kafka-streams",
            Kind::KafkaStreams,
            Enrich,
        ),
        ("Quix Streams + Python", "quix-streams", Kind::Quix, Enrich),
        (
            "worker + Rust enrich",
            "worker-rust",
            worker("enrich_rs", false, ""),
            Enrich,
        ),
        (
            "worker + Python enrich",
            "worker-python",
            worker("target/components/enrich_event.wasm", false, ""),
            Enrich,
        ),
        (
            "worker + Rust, OTLP",
            "worker-rust-otlp",
            worker("enrich_rs", true, ""),
            Enrich,
        ),
        (
            "rdkafka passthrough, price records",
            "rdkafka-passthrough-price",
            Kind::RdkafkaPassthrough,
            Price,
        ),
        (
            "worker + Rust price, per record",
            "worker-rust-price",
            worker("price_calculator", false, ""),
            Price,
        ),
        (
            "worker + Rust price, columnar",
            "worker-rust-price-columnar",
            worker("price_columnar", false, &columnar_schema),
            Price,
        ),
    ];
    let only: Option<Vec<String>> = std::env::var("BENCH_CANDIDATES")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.split(',').map(|s| s.trim().to_string()).collect());
    println!(
        "end-to-end: {} records backlog × {rounds} rounds, latency {} records paced at {}/s after {} warm-up, \
         {PARTITIONS} partitions, broker {}",
        thousands(ctx.records as f64),
        thousands(ctx.latency_records as f64),
        thousands(ctx.rate as f64),
        thousands(ctx.warmup_records as f64),
        brokers()
    );
    let base_bin: Option<PathBuf> = std::env::var_os("BENCH_WORKER_BASE").map(PathBuf::from);
    let mut cands = Vec::new();
    for (name, slug, kind, workload) in all {
        let c = Candidate {
            name,
            slug,
            kind,
            workload,
        };
        if only.as_ref().is_some_and(|o| !o.iter().any(|s| s == slug)) {
            continue;
        }
        // A before/after in one run: the same candidate on another build,
        // interleaved with this one's.
        let twin = match (&c.kind, &base_bin) {
            (
                Kind::Worker {
                    component,
                    otlp,
                    extra,
                    ..
                },
                Some(bin),
            ) => Some(Candidate {
                name: Box::leak(format!("{name} (base)").into_boxed_str()),
                slug: Box::leak(format!("{slug}-base").into_boxed_str()),
                kind: Kind::Worker {
                    component: component.clone(),
                    otlp: *otlp,
                    extra: extra.clone(),
                    bin: Some(bin.clone()),
                },
                workload,
            }),
            _ => None,
        };
        match c.missing(&ctx.peers) {
            Some(why) => println!("{name:<24} skipped: {why}"),
            None => cands.extend(twin.into_iter().chain([c])),
        }
    }
    let mut results: BTreeMap<&str, Vec<Figures>> = BTreeMap::new();
    let mut failures = 0;
    let workloads: std::collections::BTreeSet<Workload> =
        cands.iter().map(|c| c.workload).collect();
    for round in 0..rounds {
        let mut garbage = Vec::new();
        // One backlog per workload a candidate of this run reads.
        let mut inputs: BTreeMap<Workload, String> = BTreeMap::new();
        for &w in &workloads {
            let input = format!("bench-in-{w:?}-r{round}-{}", now_nanos()).to_lowercase();
            create(&[&input], false);
            let t = Instant::now();
            produce_values(
                &producer(),
                &input,
                0..ctx.records,
                None,
                "sent-ns",
                w.value(),
            );
            println!(
                "round {}/{rounds}: {w:?} backlog of {} produced in {:.1} s (load average {})",
                round + 1,
                thousands(ctx.records as f64),
                t.elapsed().as_secs_f64(),
                std::fs::read_to_string("/proc/loadavg")
                    .unwrap_or_default()
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            inputs.insert(w, input);
        }
        // Interleaved, the order rotated each round.
        let k = if cands.is_empty() {
            0
        } else {
            round % cands.len()
        };
        for cand in cands[k..].iter().chain(&cands[..k]) {
            let tag = format!("{}-r{round}-{}", cand.slug, now_nanos());
            let mut f = Figures::default();
            let r = backlog(
                &ctx,
                cand,
                &inputs[&cand.workload],
                &tag,
                &mut f,
                &mut garbage,
            )
            .and_then(|()| latency(&ctx, cand, &tag, &mut f, &mut garbage));
            match r {
                Ok(()) => {
                    println!(
                        "  {:<24} {:>9} rec/s (from start {:>9}, first output {:>5.0} ms)  cpu {:>6.2} µs/rec ({:.1} s)  rss {:>5.0} MiB  latency p50 {:>6.2} p99 {:>7.2} p999 {:>7.2} ms{}",
                        cand.name,
                        thousands(f.rate),
                        thousands(f.rate_from_start),
                        f.first_ms,
                        f.cpu_us,
                        f.cpu_total_s,
                        f.rss_mib,
                        f.p50,
                        f.p99,
                        f.p999,
                        if f.behind { "  (falling behind the paced rate)" } else { "" }
                    );
                    if f.calls > 0.0 {
                        println!(
                            "    {:<22} {:.1} records per function call ({} calls), {:.2} µs/rec inside the guest",
                            "",
                            f.rows_per_call,
                            thousands(f.calls),
                            f.wasm_us
                        );
                    }
                    results.entry(cand.slug).or_default().push(f);
                }
                Err(why) => {
                    failures += 1;
                    println!("  {:<24} failed: {why}", cand.name);
                }
            }
        }
        garbage.extend(inputs.into_values());
        delete(&garbage);
    }
    summary(&cands, &results, rounds);
    if failures == 0 && std::env::var("BENCH_KEEP").as_deref() != Ok("1") {
        let _ = std::fs::remove_dir_all(&ctx.dir);
    } else {
        println!("logs: {}", ctx.dir.display());
    }
}

fn summary(cands: &[Candidate], results: &BTreeMap<&str, Vec<Figures>>, rounds: usize) {
    let med = |slug: &str, get: fn(&Figures) -> f64| -> Option<f64> {
        results
            .get(slug)
            .filter(|v| !v.is_empty())
            .map(|v| median(v.iter().map(get).collect()))
    };
    let (base_slug, base_name) = if med("java-passthrough", |f| f.rate).is_some() {
        ("java-passthrough", "Java passthrough")
    } else {
        ("rdkafka-passthrough", "rdkafka passthrough")
    };
    let base = med(base_slug, |f| f.rate);
    // The price candidates read other records: their ratio is to the
    // passthrough over those when it ran.
    let price_base = med("rdkafka-passthrough-price", |f| f.rate);
    let pass_p99 = med("rdkafka-passthrough", |f| f.p99);
    println!();
    println!("medians of {rounds} rounds; throughput first → last output (broker LogAppendTime); ratio to the {base_name}");
    if price_base.is_some() {
        println!("price rows: ratio to the rdkafka passthrough over the price records");
    }
    println!(
        "| candidate | records/s | from start | CPU µs/rec | peak RSS MiB | p50 / p99 / p999 ms | p99 over rdkafka passthrough | records per call | guest µs/rec | vs {base_name} |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut marked = false;
    for c in cands {
        let Some(v) = results.get(c.slug).filter(|v| !v.is_empty()) else {
            println!("| {} | failed | | | | | | | | |", c.name);
            continue;
        };
        let m = |get: fn(&Figures) -> f64| median(v.iter().map(get).collect());
        let added = match (pass_p99, c.slug) {
            (_, "rdkafka-passthrough") | (None, _) => "—".to_string(),
            (Some(p), _) => format!("{:+.1} ms", m(|f| f.p99) - p),
        };
        let b = match c.workload {
            Workload::Price => price_base.or(base),
            Workload::Enrich => base,
        };
        let ratio = b.map_or("—".to_string(), |b| format!("{:.2}", m(|f| f.rate) / b));
        let (per_call, guest_us) = if matches!(c.kind, Kind::Worker { .. }) {
            (
                format!("{:.1}", m(|f| f.rows_per_call)),
                format!("{:.2}", m(|f| f.wasm_us)),
            )
        } else {
            ("—".to_string(), "—".to_string())
        };
        let behind = v.iter().filter(|f| f.behind).count();
        let mark = if behind * 2 > v.len() {
            marked = true;
            " *"
        } else {
            ""
        };
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.1} / {:.1} / {:.1}{mark} | {added} | {per_call} | {guest_us} | {ratio} |",
            c.name,
            thousands(m(|f| f.rate)),
            thousands(m(|f| f.rate_from_start)),
            m(|f| f.cpu_us),
            m(|f| f.rss_mib),
            m(|f| f.p50),
            m(|f| f.p99),
            m(|f| f.p999),
        );
    }
    if !marked {
        return;
    }
    println!(
        "* latency grew through the paced phase in most rounds: the candidate does not sustain \
         BENCH_RATE here, so these percentiles are queueing"
    );
}

/// `--passthrough BROKERS INPUT OUTPUT GROUP`: the rdkafka candidate, run as a
/// child of the bench: consume, produce the same key, value and headers
/// through an idempotent producer (acks=all, linger.ms=5), until killed.
fn passthrough(args: &[String]) {
    let [brokers, input, output, group] = args else {
        eprintln!("usage: e2e --passthrough BROKERS INPUT OUTPUT GROUP");
        std::process::exit(2);
    };
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[input]).unwrap();
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    loop {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let mut rec = BaseRecord::to(output).payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            if let Some(h) = m.headers() {
                rec = rec.headers(h.detach());
            }
            send_retrying(&p, rec);
        }
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
