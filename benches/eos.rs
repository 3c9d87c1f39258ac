//! Exactly-once against at-least-once, in one run, against the real broker
//! (`make kafka-start`): the worker with the Rust enrich guest, as a child
//! process, in `delivery = "at-least-once"` and in `"exactly-once"` at
//! `transaction_interval_ms` 50, 100 and 500.
//!
//! Per candidate and round:
//! - throughput: a backlog of BENCH_EOS_RECORDS records (one input topic per
//!   round, each candidate in its own group) read to the end; records/s from
//!   the first to the last output visible to a `read_committed` reader (what
//!   a downstream consumer of exactly-once output can see);
//! - latency: fresh topics, records paced at BENCH_EOS_RATE/s after a
//!   warm-up, the send time in a `sent-ns` header, p50/p99 at a
//!   `read_committed` reader (for exactly-once this includes waiting for the
//!   transaction's commit, the price of the interval).
//!
//! BENCH_EOS_ROUNDS rounds (the order rotates), medians printed with each
//! candidate's ratio to at-least-once; the goal is exactly-once at
//! 100 ms ≥ 0.7× at-least-once's throughput. Prints figures, asserts nothing
//! about speed.
//!
//!   cargo bench -p pipeline-worker --bench eos
//!
//! Environment: BENCH_EOS_RECORDS (200000), BENCH_EOS_ROUNDS (3),
//! BENCH_EOS_RATE (5000), BENCH_EOS_LATENCY_RECORDS (20000),
//! BENCH_EOS_INTERVALS (50,100,500), BENCH_EOS_KAFKA (extra `[kafka]` lines),
//! KAFKA_BOOTSTRAP (127.0.0.1:9092), BENCH_KEEP (1: keep topics).

#[path = "common.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// A candidate whose visible output does not move for this long has failed.
const STALL: Duration = Duration::from_secs(60);

/// A `read_committed` reader of every partition of `topic` from the start.
fn reader(topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("bench-eos-reader-{}", now_nanos()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

#[derive(Clone, Copy)]
struct Candidate {
    /// None: at-least-once; Some(ms): exactly-once at that interval.
    interval_ms: Option<u64>,
}

impl Candidate {
    fn label(&self) -> String {
        match self.interval_ms {
            None => "at-least-once".into(),
            Some(ms) => format!("exactly-once {ms} ms"),
        }
    }

    fn spawn(&self, input: &str, output: &str, dlq: &str, tag: &str, log: &Path) -> Proc {
        // kafka.worker_id names the transactional producer; each run gets
        // its own so no two candidates fence each other.
        let (identity, delivery) = match self.interval_ms {
            None => (String::new(), String::new()),
            Some(ms) => (
                format!("worker_id = \"bench-eos-{tag}\"\n"),
                format!("delivery = \"exactly-once\"\ntransaction_interval_ms = {ms}\n"),
            ),
        };
        // BENCH_EOS_KAFKA: extra `[kafka]` lines for every candidate (e.g.
        // a `librdkafka = { … }` map to compare client settings).
        let extra = std::env::var("BENCH_EOS_KAFKA").unwrap_or_default();
        let config = format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"bench-eos-{tag}\"\n{identity}{extra}\n\n[runtime]\ncache_dir = \"{}\"\n\n[[pipelines]]\nname = \"enrich\"\ninput_topics = [\"{input}\"]\noutput_topics = [\"{output}\"]\ndead_letter_topic = \"{dlq}\"\ncomponent = \"{}\"\n{delivery}",
            brokers(),
            root().join(".cache/pipeline-worker-bench").display(),
            guest().display(),
        );
        let path = log.with_extension("toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
            .args(["run", "--config"])
            .arg(&path)
            // The coordinator's one debug line per commit carries its
            // timings (see `Profile`).
            .env("RUST_LOG", "warn,pipeline_worker::txn=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn worker");
        Proc(child)
    }
}

fn guest() -> std::path::PathBuf {
    root().join("target/guests/wasm32-wasip2/release/enrich_rs.wasm")
}

struct Proc(Child);

impl Proc {
    fn exited(&mut self) -> Option<String> {
        self.0
            .try_wait()
            .unwrap()
            .map(|st| format!("worker exited ({st})"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where an exactly-once worker's time went during a backlog, from the
/// `transaction committed` debug lines of `pipeline_worker::txn`: per
/// commit the wait for the gate (lanes finishing their batch), the
/// offsets RPC, the commit (which flushes what the producer still holds),
/// and how long the sandbox threads were held out in all.
#[derive(Default, Clone, Copy)]
struct Profile {
    commits: f64,
    records_per_commit: f64,
    gate_wait_ms: f64,
    offsets_ms: f64,
    commit_ms: f64,
    /// Share of the backlog's wall time the gate was held exclusively.
    held_share: f64,
}

fn field(line: &str, name: &str) -> Option<f64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split_whitespace().next()?.parse().ok()
}

fn profile(log: &Path, secs: f64) -> Profile {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("transaction committed") && l.contains("why=\"interval\""))
        .collect();
    let n = lines.len() as f64;
    if n == 0.0 {
        return Profile::default();
    }
    let sum = |f: &str| lines.iter().filter_map(|l| field(l, f)).sum::<f64>();
    Profile {
        commits: n,
        records_per_commit: sum("records") / n,
        gate_wait_ms: sum("gate_wait_us") / n / 1e3,
        offsets_ms: sum("offsets_us") / n / 1e3,
        commit_ms: sum("commit_us") / n / 1e3,
        held_share: sum("held_us") / 1e6 / secs.max(1e-3),
    }
}

#[derive(Default, Clone, Copy)]
struct Figures {
    throughput: f64,
    p50: f64,
    p99: f64,
    profile: Profile,
}

/// Records/s from the first to the last of `n` outputs visible at a
/// `read_committed` reader, the worker started on a full `input`.
fn backlog(
    cand: Candidate,
    input: &str,
    n: usize,
    tag: &str,
    dir: &Path,
) -> Result<(f64, Profile), String> {
    let (output, dlq) = (
        format!("bench-eos-out-{tag}"),
        format!("bench-eos-dlq-{tag}"),
    );
    create(&[&output, &dlq], false);
    let log = dir.join(format!("{tag}.log"));
    let result = (|| {
        let c = reader(&output);
        let mut child = cand.spawn(input, &output, &dlq, tag, &log);
        let (mut seen, mut first, mut moved) = (0usize, None, Instant::now());
        while seen < n {
            if let Some(why) = child.exited() {
                return Err(format!("{why}; log {}", log.display()));
            }
            if moved.elapsed() > STALL {
                return Err(format!("stalled at {seen} of {n}; log {}", log.display()));
            }
            if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
                first.get_or_insert_with(Instant::now);
                seen += 1;
                moved = Instant::now();
            }
        }
        let secs = first.unwrap().elapsed().as_secs_f64();
        // Stopped (SIGTERM, final commit) before its log is read.
        drop(child);
        Ok((n as f64 / secs.max(1e-3), profile(&log, secs)))
    })();
    delete(&[output, dlq]);
    result
}

/// p50 and p99 end-to-end latency (ms) of records paced at `rate`/s.
fn latency(
    cand: Candidate,
    n: usize,
    rate: u64,
    tag: &str,
    dir: &Path,
) -> Result<(f64, f64), String> {
    let (input, output, dlq) = (
        format!("bench-eos-lat-in-{tag}"),
        format!("bench-eos-lat-out-{tag}"),
        format!("bench-eos-lat-dlq-{tag}"),
    );
    create(&[&input, &output, &dlq], false);
    let log = dir.join(format!("{tag}-lat.log"));
    let result = (|| {
        let mut child = cand.spawn(&input, &output, &dlq, &format!("{tag}-lat"), &log);
        let stop = Arc::new(AtomicBool::new(false));
        let warmup = (rate * 2) as usize;
        let (st, out) = (stop.clone(), output.clone());
        let reader_thread = std::thread::spawn(move || {
            let c = reader(&out);
            let mut lat = Vec::with_capacity(n);
            while lat.len() < n && !st.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    let now = now_nanos();
                    let Some(h) = m.headers() else { continue };
                    for h in h.iter().filter(|h| h.key == "sent-ns") {
                        let sent: u64 = std::str::from_utf8(h.value.unwrap_or_default())
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(now);
                        lat.push(now.saturating_sub(sent) as f64 / 1e6);
                    }
                }
            }
            lat
        });
        let p = producer();
        produce(&p, &input, 0..warmup, Some(rate), "warmup-ns");
        produce(&p, &input, warmup..warmup + n, Some(rate), "sent-ns");
        let deadline = Instant::now() + STALL;
        while !reader_thread.is_finished() {
            if let Some(why) = child.exited() {
                stop.store(true, Ordering::Relaxed);
                return Err(format!("{why}; log {}", log.display()));
            }
            if Instant::now() > deadline {
                stop.store(true, Ordering::Relaxed);
                return Err(format!(
                    "latency records did not all arrive; log {}",
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut lat = reader_thread.join().unwrap();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        Ok((pct(0.50), pct(0.99)))
    })();
    delete(&[input, output, dlq]);
    result
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let records: usize = env_or("BENCH_EOS_RECORDS", 200_000);
    let rounds: usize = env_or("BENCH_EOS_ROUNDS", 3);
    let rate: u64 = env_or("BENCH_EOS_RATE", 5_000);
    let lat_records: usize = env_or("BENCH_EOS_LATENCY_RECORDS", 20_000);
    let intervals: Vec<u64> = std::env::var("BENCH_EOS_INTERVALS")
        .unwrap_or_else(|_| "50,100,500".into())
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .expect("BENCH_EOS_INTERVALS: comma-separated ms")
        })
        .collect();
    if !guest().exists() {
        eprintln!("skipped: {} is missing (make guests)", guest().display());
        return;
    }
    let mut cands = vec![Candidate { interval_ms: None }];
    cands.extend(intervals.iter().map(|&ms| Candidate {
        interval_ms: Some(ms),
    }));
    let run_id = now_nanos();
    let dir = root().join(format!("target/tmp/bench-eos-{run_id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "eos bench: {records} records backlog, latency {lat_records} records at {rate}/s, {rounds} rounds, {PARTITIONS} partitions, Rust enrich guest; load average {}; logs in {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        dir.display()
    );
    let mut figs: Vec<Vec<Figures>> = vec![Vec::new(); cands.len()];
    for round in 0..rounds {
        let input = format!("bench-eos-in-{run_id}-{round}");
        create(&[&input], false);
        produce(&producer(), &input, 0..records, None, "backlog-ns");
        for k in 0..cands.len() {
            // Rotate the order so no candidate always runs first (cold
            // broker caches) or last.
            let i = (k + round) % cands.len();
            let cand = cands[i];
            let tag = format!("{run_id}-{round}-{i}");
            let tp = backlog(cand, &input, records, &tag, &dir);
            let lat = latency(cand, lat_records, rate, &tag, &dir);
            match (tp, lat) {
                (Ok((throughput, profile)), Ok((p50, p99))) => {
                    println!(
                        "round {}: {:<20} {:>9.0} records/s   p50 {:>7.1} ms   p99 {:>7.1} ms",
                        round + 1,
                        cand.label(),
                        throughput,
                        p50,
                        p99
                    );
                    figs[i].push(Figures {
                        throughput,
                        p50,
                        p99,
                        profile,
                    });
                }
                (a, b) => println!(
                    "round {}: {:<20} failed: {}",
                    round + 1,
                    cand.label(),
                    [a.err(), b.err()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            }
        }
        delete(&[input]);
    }
    let med = |i: usize, f: fn(&Figures) -> f64| median(figs[i].iter().map(f).collect());
    let base = med(0, |f| f.throughput);
    println!("\nmedians of {rounds} rounds (throughput ratio to at-least-once):");
    for (i, c) in cands.iter().enumerate() {
        println!(
            "  {:<20} {:>9.0} records/s  {:>5.2}x   p50 {:>7.1} ms   p99 {:>7.1} ms   ({} rounds ok)",
            c.label(),
            med(i, |f| f.throughput),
            med(i, |f| f.throughput) / base,
            med(i, |f| f.p50),
            med(i, |f| f.p99),
            figs[i].len()
        );
    }
    println!("\nexactly-once commits during the backlog (medians; per commit):");
    for (i, c) in cands
        .iter()
        .enumerate()
        .filter(|(_, c)| c.interval_ms.is_some())
    {
        println!(
            "  {:<20} {:>5.0} commits  {:>6.0} records  gate wait {:>5.1} ms  offsets {:>5.1} ms  commit {:>5.1} ms  lanes held out {:>4.1} % of the time",
            c.label(),
            med(i, |f| f.profile.commits),
            med(i, |f| f.profile.records_per_commit),
            med(i, |f| f.profile.gate_wait_ms),
            med(i, |f| f.profile.offsets_ms),
            med(i, |f| f.profile.commit_ms),
            med(i, |f| f.profile.held_share) * 100.0,
        );
    }
    if let Some(i) = cands.iter().position(|c| c.interval_ms == Some(100)) {
        let r = med(i, |f| f.throughput) / base;
        println!(
            "goal (exactly-once at 100 ms >= 0.70x at-least-once throughput): {:.2}x, {}",
            r,
            if r >= 0.7 { "met" } else { "NOT met" }
        );
    }
}
