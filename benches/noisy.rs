//! Noisy neighbour: pipeline B (tenant b, the Rust enrich function) alone on
//! a worker, then on a worker shared with tenant a running a hostile mix,
//! four pipelines of the hostile guest: one loops to its deadline on every
//! record, one sleeps past it, one grows memory to its cap, one emits
//! maximum-size outputs (tenant a has a 200 records/s quota, so the last is
//! bounded to about 180 MB/s of output). Against the real broker
//! (`scripts/kafka.sh start`) with guests from `scripts/build-rust-guests.sh`.
//!
//! Per round and mode (alone, beside A): a fresh worker and fresh topics; A
//! gets a warm-up so it is past its first batches; then B's throughput from
//! a backlog of NOISY_RECORDS (first → last broker append time of its
//! outputs), then B's latency with records paced at NOISY_RATE/s for
//! NOISY_LATENCY_SECS (send time in a header, p50/p99 at the reader).
//! NOISY_ROUNDS rounds; medians, B's throughput ratio (goal ≥ 0.9) and p99
//! difference printed. Asserts nothing about speed.
//!
//!   cargo bench -p pipeline-worker --bench noisy
//!
//! Environment: NOISY_RECORDS (30000), NOISY_ROUNDS (3), NOISY_RATE (2000),
//! NOISY_LATENCY_SECS (5), NOISY_WARMUP_SECS (5), KAFKA_BOOTSTRAP (127.0.0.1:9092),
//! NOISY_ACTIONS (part of the mix: loop,sleep,alloc,big; default all),
//! NOISY_A_CPU_SHARE (tenant a's `cpu_share`; default the equal share, 0.5),
//! NOISY_A_BYTES_PER_SECOND (tenant a's bytes quota, which its outputs count
//! against; default none), NOISY_THREADS (print the worker's CPU per thread).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn brokers() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn guest(name: &str) -> PathBuf {
    let dir = std::env::var("NOISY_GUESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/guests"));
    dir.join(format!("wasm32-wasip2/release/{name}.wasm"))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn create(topics: &[(&str, bool)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, append)| {
            let n = NewTopic::new(t, 1, TopicReplication::Fixed(1));
            if *append {
                n.set("message.timestamp.type", "LogAppendTime")
            } else {
                n
            }
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for r in rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .expect("create topics")
    {
        r.expect("topic created");
    }
}

fn producer() -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

fn enrich_value(i: u64) -> String {
    format!(r#"{{"id":{i},"session_start":1700000000,"session_end":1700000600}}"#)
}

fn produce(topic: &str, values: impl Iterator<Item = String>) {
    let p = producer();
    for v in values {
        loop {
            match p.send(BaseRecord::<(), String>::to(topic).payload(&v)) {
                Ok(()) => break,
                Err((_, _)) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

fn reader(topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("noisy-reader-{}", now_ns()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Run {
    throughput: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn run(tag: &str, neighbour: bool) -> Run {
    let records = env_or("NOISY_RECORDS", 30_000);
    let rate = env_or("NOISY_RATE", 2_000);
    let latency_secs = env_or("NOISY_LATENCY_SECS", 5);
    let warmup = Duration::from_secs(env_or("NOISY_WARMUP_SECS", 5));
    let id = format!("noisy-{tag}-{}", now_ns());
    let t = |s: &str| format!("{id}-{s}");
    let mut topics = vec![
        (t("b-in"), false),
        (t("b-out"), true),
        (t("b-lat-in"), false),
        (t("dlq"), false),
    ];
    let actions = [
        ("loop", r#"{"action":"loop"}"#.to_string()),
        ("sleep", r#"{"action":"sleep"}"#.to_string()),
        ("alloc", r#"{"action":"alloc"}"#.to_string()),
        (
            "big",
            r#"{"action":"big-output","size":998000}"#.to_string(),
        ),
    ];
    // NOISY_ACTIONS picks part of the mix (e.g. "alloc,big"), to see which
    // part costs B what.
    let only = std::env::var("NOISY_ACTIONS").unwrap_or_default();
    let actions: Vec<_> = actions
        .into_iter()
        .filter(|(a, _)| only.is_empty() || only.split(',').any(|o| o.trim() == *a))
        .collect();
    for (a, _) in &actions {
        topics.push((t(&format!("a-{a}-in")), false));
        topics.push((t(&format!("a-{a}-out")), false));
    }
    let refs: Vec<(&str, bool)> = topics.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    create(&refs);
    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"{id}\"\n[runtime]\ncache_dir = \"{}\"\n\n[[tenants]]\nname = \"a\"\nrecords_per_second = 200\n{}\n[[tenants]]\nname = \"b\"\n\n[[pipelines]]\nname = \"b\"\ntenant = \"b\"\ninput_topics = [\"{}\", \"{}\"]\noutput_topics = [\"{}\"]\ndead_letter_topic = \"{}\"\ncomponent = \"{}\"\nconcurrency = 1\n",
        brokers(),
        root().join(".cache/pipeline-worker-bench").display(),
        std::env::var("NOISY_A_CPU_SHARE")
            .map(|s| format!("cpu_share = {s}\n"))
            .unwrap_or_default()
            + &std::env::var("NOISY_A_BYTES_PER_SECOND")
                .map(|s| format!("bytes_per_second = {s}\n"))
                .unwrap_or_default(),
        t("b-in"),
        t("b-lat-in"),
        t("b-out"),
        t("dlq"),
        guest("enrich_rs").display()
    );
    if neighbour {
        for (a, _) in &actions {
            cfg.push_str(&format!(
                "\n[[pipelines]]\nname = \"a-{a}\"\ntenant = \"a\"\ninput_topics = [\"{}\"]\noutput_topics = [\"{}\"]\ndead_letter_topic = \"{}\"\ncomponent = \"{}\"\nconcurrency = 1\n[pipelines.limits]\ndeadline_ms = 50\nmemory_bytes = 67108864\n",
                t(&format!("a-{a}-in")),
                t(&format!("a-{a}-out")),
                t("dlq"),
                guest("hostile").display()
            ));
        }
        for (a, v) in &actions {
            produce(&t(&format!("a-{a}-in")), (0..2_000).map(|_| v.clone()));
        }
    }
    let config = dir.join("worker.toml");
    std::fs::write(&config, cfg).unwrap();
    let log = std::fs::File::create(dir.join("worker.log")).unwrap();
    let _worker = Worker(
        Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start worker"),
    );
    std::thread::sleep(warmup);
    let cpu_before = thread_cpu(_worker.0.id());
    let broker = broker_pid();
    // What tenant a wrote meanwhile: outputs of the big-output pipeline and
    // dead letters of the others (B writes none).
    let a_outs: Vec<(String, String)> = if neighbour {
        actions
            .iter()
            .map(|(a, _)| (a.to_string(), t(&format!("a-{a}-out"))))
            .chain([("dead letters".to_string(), t("dlq"))])
            .collect()
    } else {
        Vec::new()
    };
    let a_before = appended(&a_outs);
    let phase_before = Phase::now(_worker.0.id(), broker);

    // Throughput: a backlog, measured at the broker.
    let produce_start = Instant::now();
    produce(&t("b-in"), (0..records).map(enrich_value));
    println!(
        "  {tag} backlog produced in {:.2} s",
        produce_start.elapsed().as_secs_f64()
    );
    let out = reader(&t("b-out"));
    let (mut first, mut last, mut n) = (i64::MAX, i64::MIN, 0u64);
    let stall = Duration::from_secs(60);
    let mut moved = Instant::now();
    while n < records && moved.elapsed() < stall {
        if let Some(Ok(m)) = out.poll(Duration::from_millis(200)) {
            let ts = m.timestamp().to_millis().unwrap_or(0);
            first = first.min(ts);
            last = last.max(ts);
            n += 1;
            moved = Instant::now();
        }
    }
    let throughput = n as f64 / ((last - first).max(1) as f64 / 1000.0);
    let phase = Phase::now(_worker.0.id(), broker).since(&phase_before);
    let a_written: Vec<String> = appended(&a_outs)
        .iter()
        .zip(&a_before)
        .map(|((name, n), (_, b))| format!("{name} {}", n.saturating_sub(*b)))
        .collect();

    // Latency: paced, send time in a header.
    let lat_in = t("b-lat-in");
    let total = rate * latency_secs;
    let sender = std::thread::spawn(move || {
        let p = producer();
        let start = Instant::now();
        for i in 0..total {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let sent = now_ns().to_string();
            let v = enrich_value(i);
            let _ = p.send(BaseRecord::<(), String>::to(&lat_in).payload(&v).headers(
                OwnedHeaders::new().insert(Header {
                    key: "sent-ns",
                    value: Some(&sent),
                }),
            ));
        }
        p.flush(Duration::from_secs(30)).expect("flush");
    });
    let mut lat = Vec::with_capacity(total as usize);
    let mut moved = Instant::now();
    while (lat.len() as u64) < total && moved.elapsed() < stall {
        if let Some(Ok(m)) = out.poll(Duration::from_millis(200)) {
            moved = Instant::now();
            let sent = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "sent-ns")
                    .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<u64>().ok())
            });
            if let Some(s) = sent {
                lat.push(now_ns().saturating_sub(s) as f64 / 1e6);
            }
        }
    }
    let _ = sender.join();
    lat.sort_by(|a, b| a.total_cmp(b));
    let worker_cpu = |f: fn(&str) -> bool| -> f64 {
        phase
            .worker_threads
            .iter()
            .filter(|(k, _)| f(k))
            .map(|(_, v)| v)
            .sum()
    };
    // Where the two cores went while B worked off its backlog: whether B
    // alone already had the machine to itself, and what A's mix added.
    println!(
        "  {tag} backlog phase {:.1} s: machine busy {:.2} of {} cores; worker {:.2} cores (B's lane {:.2}, tenant a's lanes {:.2}, librdkafka {:.2}), broker {:.2}, bench {:.2}; tenant a appended: {}",
        phase.wall,
        phase.machine_busy / phase.wall,
        phase.cores,
        worker_cpu(|_| true) / phase.wall,
        worker_cpu(|k| k == "sandbox-b-") / phase.wall,
        worker_cpu(|k| k.starts_with("sandbox-a-")) / phase.wall,
        worker_cpu(|k| k.starts_with("rdk:")) / phase.wall,
        phase.broker / phase.wall,
        phase.bench / phase.wall,
        if a_written.is_empty() {
            "-".to_string()
        } else {
            a_written.join(", ")
        },
    );
    if std::env::var("NOISY_THREADS").is_ok() {
        // Where the worker's CPU went while B was measured, by thread name.
        let after = thread_cpu(_worker.0.id());
        let mut by: Vec<(String, f64)> = after
            .iter()
            .map(|(k, v)| (k.clone(), v - cpu_before.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, v)| *v >= 0.05)
            .collect();
        by.sort_by(|a, b| b.1.total_cmp(&a.1));
        let shown: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v:.2}s")).collect();
        println!("  {tag} worker CPU by thread: {}", shown.join(", "));
    }
    Run {
        throughput,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
    }
}

/// CPU seconds at one moment: the worker's threads, the broker, this bench
/// process, and the whole machine (busy jiffies of /proc/stat, other users'
/// builds included).
struct Phase {
    at: Instant,
    wall: f64,
    worker_threads: std::collections::BTreeMap<String, f64>,
    broker: f64,
    bench: f64,
    machine_busy: f64,
    cores: usize,
}

impl Phase {
    fn now(worker: u32, broker: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            wall: 0.0,
            worker_threads: thread_cpu(worker),
            broker: broker.map_or(0.0, |p| thread_cpu(p).values().sum()),
            bench: thread_cpu(std::process::id()).values().sum(),
            machine_busy: machine_busy(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn since(self, before: &Phase) -> Phase {
        let mut worker_threads = self.worker_threads;
        for (k, v) in worker_threads.iter_mut() {
            *v -= before.worker_threads.get(k).copied().unwrap_or(0.0);
        }
        Phase {
            at: self.at,
            wall: self.at.duration_since(before.at).as_secs_f64().max(1e-3),
            worker_threads,
            broker: self.broker - before.broker,
            bench: self.bench - before.bench,
            machine_busy: self.machine_busy - before.machine_busy,
            cores: self.cores,
        }
    }
}

/// Records appended so far to each (name, topic) (its high watermark).
fn appended(topics: &[(String, String)]) -> Vec<(String, u64)> {
    if topics.is_empty() {
        return Vec::new();
    }
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("watermark client");
    topics
        .iter()
        .map(|(name, t)| {
            let high = c
                .fetch_watermarks(t, 0, Duration::from_secs(5))
                .map_or(0, |(_, h)| h.max(0) as u64);
            (name.clone(), high)
        })
        .collect()
}

/// The broker on this machine: the java process running `kafka.Kafka`.
fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.starts_with("java") || cmd.contains("/java\0"))
            .then_some(())
            .filter(|_| cmd.contains("kafka.Kafka"))
            .map(|_| pid)
    })
}

/// Busy CPU seconds of the whole machine since boot (all but idle and
/// iowait, from the `cpu` line of /proc/stat).
fn machine_busy() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let all: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (all - idle) / 100.0
}

/// CPU seconds (user + system) per thread name of a process, from /proc.
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in rd.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // comm is in parentheses and may hold spaces; fields follow it.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].trim_end_matches(|c: char| c.is_ascii_digit());
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime, stime: fields 14 and 15 of stat, 11 and 12 after comm.
        *out.entry(name.to_string()).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    for g in ["enrich_rs", "hostile"] {
        if !guest(g).exists() {
            println!(
                "skipped: {} missing (scripts/build-rust-guests.sh)",
                guest(g).display()
            );
            return;
        }
    }
    let rounds = env_or("NOISY_ROUNDS", 3);
    let (mut alone, mut beside) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate the order so drift on a shared machine hits both.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for neighbour in order {
            let r = run(if neighbour { "beside" } else { "alone" }, neighbour);
            println!(
                "round {round} {:<7} B: {:>8.0} records/s, p50 {:>7.1} ms, p99 {:>7.1} ms",
                if neighbour { "beside" } else { "alone" },
                r.throughput,
                r.p50_ms,
                r.p99_ms
            );
            if neighbour {
                beside.push(r);
            } else {
                alone.push(r);
            }
        }
    }
    let m = |v: &[Run], f: fn(&Run) -> f64| median(v.iter().map(f).collect());
    let (ta, tb) = (m(&alone, |r| r.throughput), m(&beside, |r| r.throughput));
    let (pa, pb) = (m(&alone, |r| r.p99_ms), m(&beside, |r| r.p99_ms));
    println!(
        "noisy: B alone {ta:.0} records/s (p99 {pa:.1} ms), beside A {tb:.0} records/s (p99 {pb:.1} ms): throughput ratio {:.2} (goal >= 0.90), p99 difference {:+.1} ms (goal <= +10)",
        tb / ta,
        pb - pa
    );
}
