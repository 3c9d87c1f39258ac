//! Chaos: the delivery guarantee under faults, against a real broker.
//!
//! One harness for every case: send N unique ids (every 1,000th a poison
//! record the function refuses, so the dead-letter path is counted too) while
//! worker processes run; inject faults at seeded random moments (kill -9,
//! SIGTERM restart, SIGSTOP until the partitions move then SIGCONT, broker
//! restart); then stop the workers and read outputs and dead letters with
//! `read_committed` to the end of every partition and count each id: lost,
//! duplicated, or in the wrong place (a good record dead-lettered, a poison
//! record in the output).
//!
//! Sizes come from the environment, so CI runs a bounded version and
//! `make chaos` a long one: CHAOS_RECORDS (50000) and CHAOS_KILLS (20) for
//! the exactly-once kill test, CHAOS_ALO_RECORDS (10000) and CHAOS_ALO_KILLS
//! (6) for the at-least-once one, CHAOS_GROUP_RECORDS (20000) and
//! CHAOS_GROUP_FAULTS (6) for the two-worker and zombie tests,
//! CHAOS_BROKER_RECORDS (20000) and CHAOS_BROKER_RESTARTS (1),
//! CHAOS_MAX_DELAY_MS (1500: a fault lands 0..this after the worker owns
//! partitions), CHAOS_SEED (replays a printed schedule). The broker-restart
//! test starts its own broker (scripts/kafka.sh, port CHAOS_BROKER_PORT or a
//! free one, data under target/tmp) and never touches the shared one.
//! CHAOS_MODE=at-least-once runs the exactly-once scenarios in
//! at-least-once mode for comparison (loss is checked, duplicates counted).

use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::support::*;

const PARTITIONS: i32 = 4;
const POISON_EVERY: usize = 1_000;
/// Short enough that a member that stopped heartbeating loses its
/// partitions within seconds (the broker's minimum is 6 s).
const SESSION_TIMEOUT_MS: u64 = 6_000;

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid number")),
        Err(_) => default,
    }
}

/// splitmix64: a seeded schedule that a printed seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    AtLeastOnce,
    ExactlyOnce,
}

impl Mode {
    /// `Mode::ExactlyOnce` unless CHAOS_MODE=at-least-once: any scenario
    /// can be run in both modes to compare (then only loss is checked).
    fn chosen() -> Mode {
        match std::env::var("CHAOS_MODE").as_deref() {
            Ok("at-least-once") => Mode::AtLeastOnce,
            Ok("exactly-once") | Err(_) => Mode::ExactlyOnce,
            Ok(other) => panic!("CHAOS_MODE={other:?}: at-least-once or exactly-once"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::AtLeastOnce => "at-least-once",
            Mode::ExactlyOnce => "exactly-once",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// SIGKILL one worker, start it again at once.
    Kill9,
    /// SIGTERM one worker (drain, commit, leave), start it again.
    Term,
    /// SIGSTOP one worker until another one is assigned its partitions, then
    /// SIGCONT: a zombie that still holds an open transaction.
    Stop,
    /// `scripts/kafka.sh restart` of the private broker.
    BrokerRestart,
}

struct Plan<'a> {
    name: &'static str,
    mode: Mode,
    records: usize,
    workers: usize,
    faults: usize,
    /// One is drawn per fault.
    kinds: &'a [Fault],
    /// `group.instance.id` per worker slot: a restarted worker takes its
    /// partitions back at once instead of after the session timeout.
    static_members: bool,
    broker: Option<&'a PrivateBroker>,
}

/// What the final read found.
#[derive(Debug)]
struct Verdict {
    outputs: usize,
    dead_letters: usize,
    // The first ids of each kind, read through Debug in failure messages.
    #[allow(dead_code)]
    lost: Vec<u64>,
    lost_count: usize,
    duplicates: usize,
    #[allow(dead_code)]
    duplicated: Vec<(u64, u32)>,
    misplaced: Vec<String>,
    /// Faults injected before the last id was visible to a reader.
    faults_mid_stream: usize,
    /// Lines of the SIGSTOPped workers' processes that mention fencing.
    fenced_lines: Vec<String>,
    /// Partition assignments with at least one partition, over all
    /// worker processes.
    assignments: usize,
    exits: Vec<String>,
    read_note: Option<String>,
}

fn is_poison(id: usize) -> bool {
    id % POISON_EVERY == POISON_EVERY - 1
}

fn value(id: usize) -> String {
    if is_poison(id) {
        // enrich_rs refuses it (`invalid-input`, naming session_end).
        format!(r#"{{"id":{id},"session_start":0}}"#)
    } else {
        format!(
            r#"{{"id":{id},"session_start":0,"session_end":{}}}"#,
            id % 7200
        )
    }
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

fn create_on(bootstrap: &str, topics: &[(&str, i32)]) {
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in rt
        .block_on(admin(bootstrap).create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .expect("create topics")
    {
        if let Err((t, e)) = r {
            panic!("creating {t} on {bootstrap}: {e}");
        }
    }
}

fn assignments(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("partitions assigned") && l.contains('/'))
        .count()
}

/// One worker slot: its config (its own identity) and its current process;
/// earlier processes' logs are kept for the verdict.
struct Slot {
    config: PathBuf,
    env: Vec<(String, String)>,
    proc: Option<WorkerProcess>,
    old_logs: Vec<String>,
    /// Assignments seen in the current process's log.
    seen_assignments: usize,
}

struct Harness<'a> {
    plan: &'a Plan<'a>,
    bootstrap: String,
    slots: Vec<Slot>,
    exits: Vec<String>,
    started: Instant,
    /// Slots that were SIGSTOPped: the zombies.
    stopped: Vec<usize>,
}

impl Harness<'_> {
    fn event(&self, what: &str) {
        eprintln!(
            "chaos {} +{:.1}s: {what}",
            self.plan.name,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn spawn(&mut self, slot: usize) {
        let mut env: Vec<(&str, &str)> = vec![("PIPELINE_WORKER__KAFKA__BROKERS", &self.bootstrap)];
        env.extend(
            self.slots[slot]
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let p = WorkerProcess::start_env("run", &self.slots[slot].config, &env);
        self.slots[slot].proc = Some(p);
        self.slots[slot].seen_assignments = 0;
    }

    fn log(&self, slot: usize) -> String {
        self.slots[slot]
            .proc
            .as_ref()
            .map(WorkerProcess::log_text)
            .unwrap_or_default()
    }

    fn retire(&mut self, slot: usize, p: WorkerProcess) {
        self.slots[slot].old_logs.push(p.log_text());
    }

    /// Waits until slot's current process owns partitions (a new
    /// assignment since the last call); false after `timeout`.
    fn wait_assigned(&mut self, slot: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let n = assignments(&self.log(slot));
            if n > self.slots[slot].seen_assignments {
                self.slots[slot].seen_assignments = n;
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            self.reap();
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A worker that exited on its own is recorded and started again, so
    /// every slot keeps a live member.
    fn reap(&mut self) {
        for s in 0..self.slots.len() {
            let exited = match self.slots[s].proc.as_mut() {
                Some(p) => p.child.try_wait().unwrap(),
                None => None,
            };
            if let Some(st) = exited {
                let p = self.slots[s].proc.take().unwrap();
                let tail: String = p
                    .log_text()
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" | ");
                self.exits
                    .push(format!("w{s} exited on its own ({st}); last lines: {tail}"));
                self.event(&format!("w{s} exited on its own ({st}); restarting"));
                self.retire(s, p);
                self.spawn(s);
            }
        }
    }

    fn signal(&self, slot: usize, sig: &str) {
        let pid = self.slots[slot].proc.as_ref().unwrap().child.id();
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig} {pid} failed");
    }

    fn inject(&mut self, fault: Fault, slot: usize) {
        match fault {
            Fault::Kill9 => {
                let p = self.slots[slot].proc.take().unwrap();
                self.event(&format!("kill -9 w{slot}"));
                let log_path = p.log.clone();
                p.kill9();
                self.slots[slot]
                    .old_logs
                    .push(std::fs::read_to_string(log_path).unwrap_or_default());
                self.spawn(slot);
            }
            Fault::Term => {
                let p = self.slots[slot].proc.take().unwrap();
                self.event(&format!("SIGTERM w{slot}"));
                let log_path = p.log.clone();
                let code = p.terminate(Duration::from_secs(40));
                if code != Some(0) {
                    self.exits
                        .push(format!("w{slot} exited {code:?} after SIGTERM"));
                }
                self.slots[slot]
                    .old_logs
                    .push(std::fs::read_to_string(log_path).unwrap_or_default());
                self.spawn(slot);
            }
            Fault::Stop => {
                let before: Vec<usize> = (0..self.slots.len())
                    .map(|s| assignments(&self.log(s)))
                    .collect();
                self.signal(slot, "-STOP");
                self.stopped.push(slot);
                self.event(&format!("SIGSTOP w{slot}"));
                let deadline = Instant::now() + Duration::from_millis(SESSION_TIMEOUT_MS * 5);
                let moved = loop {
                    let moved = (0..self.slots.len())
                        .any(|s| s != slot && assignments(&self.log(s)) > before[s]);
                    if moved || Instant::now() > deadline {
                        break moved;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                };
                self.signal(slot, "-CONT");
                self.event(&format!(
                    "SIGCONT w{slot} ({})",
                    if moved {
                        "its partitions moved"
                    } else {
                        "its partitions did NOT move"
                    }
                ));
                assert!(
                    moved,
                    "{}: no other worker was assigned partitions while w{slot} was stopped",
                    self.plan.name
                );
                // The zombie runs on, unaware, until the broker tells it.
                std::thread::sleep(Duration::from_secs(2));
                for s in 0..self.slots.len() {
                    self.slots[s].seen_assignments = assignments(&self.log(s));
                }
            }
            Fault::BrokerRestart => {
                self.event("broker restart");
                self.plan.broker.expect("a private broker").restart();
                self.event("broker back");
            }
        }
    }
}

/// Sends ids 0..n paced at `rate` records/s (changed on the fly), all at
/// once after `rush`; returns how many were sent.
fn paced_producer(
    bootstrap: String,
    topic: String,
    n: usize,
    rate: Arc<AtomicU64>,
    rush: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            // Rides out a broker restart.
            .set("message.timeout.ms", "300000")
            .create()
            .expect("producer");
        let mut next = Instant::now();
        for id in 0..n {
            if !rush.load(Ordering::Relaxed) {
                let r = rate.load(Ordering::Relaxed).max(1);
                next += Duration::from_nanos(1_000_000_000 / r);
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else if now - next > Duration::from_millis(200) {
                    // Never burst to catch up after a stall.
                    next = now;
                }
            }
            let key = format!("k{}", id % 97);
            let v = value(id);
            let mut rec = BaseRecord::<str, str>::to(&topic).key(&key).payload(&v);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        rec = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            sent.store(id + 1, Ordering::Relaxed);
        }
        p.flush(Duration::from_secs(300))
            .expect("flush chaos records");
    })
}

fn id_of(payload: Option<&[u8]>) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(payload?).ok()?;
    v["id"].as_u64()
}

fn consumer(bootstrap: &str, eof: bool) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("chaos-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        .create()
        .expect("reader")
}

fn assign_all(c: &BaseConsumer, topic: &str, partitions: i32) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).expect("assign");
}

/// Counts distinct ids visible to a `read_committed` reader while the run
/// goes on: tells the harness when the stream is through.
fn live_tally(
    bootstrap: String,
    topics: [(String, i32); 2],
    n: usize,
    distinct: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let open = || -> Vec<BaseConsumer> {
            topics
                .iter()
                .map(|(t, parts)| {
                    let c = consumer(&bootstrap, false);
                    assign_all(&c, t, *parts);
                    c
                })
                .collect()
        };
        let mut cs = open();
        let mut seen = vec![false; n];
        let mut moved = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            for c in &cs {
                while let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                    if let Some(id) = id_of(m.payload()).filter(|&i| (i as usize) < n) {
                        if !std::mem::replace(&mut seen[id as usize], true) {
                            distinct.fetch_add(1, Ordering::Relaxed);
                            moved = Instant::now();
                        }
                    }
                }
            }
            // After a broker restart this reader can sit stuck where the
            // workers are not (seen: a minute without progress while the
            // final read found every id); read again from the start.
            if moved.elapsed() > Duration::from_secs(10) && distinct.load(Ordering::Relaxed) < n {
                cs = open();
                moved = Instant::now();
            }
        }
    })
}

/// A record's id (None: not one of ours) and its `pw.error.kind`.
type Seen = (Option<u64>, Option<String>);

/// Every record of `topic` up to the end of each partition (for
/// `read_committed`, the last stable offset), or a note on what was not
/// reached within `timeout`.
fn read_to_end(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> (Vec<Seen>, Option<String>) {
    let c = consumer(bootstrap, true);
    assign_all(&c, topic, partitions);
    let mut at_end = vec![false; partitions as usize];
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while at_end.iter().any(|e| !e) {
        if Instant::now() > deadline {
            let marks: Vec<String> = (0..partitions)
                .map(|p| {
                    let w = c.fetch_watermarks(topic, p, Duration::from_secs(5));
                    format!("{p}: {w:?}")
                })
                .collect();
            return (
                out,
                Some(format!(
                    "{topic}: partitions {:?} not read to the end within {timeout:?} (an open transaction holds the last stable offset?); watermarks {marks:?}",
                    (0..partitions).filter(|p| !at_end[*p as usize]).collect::<Vec<_>>()
                )),
            );
        }
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end[m.partition() as usize] = false;
                let kind = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "pw.error.kind")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                out.push((id_of(m.payload()), kind));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => at_end[p as usize] = true,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    (out, None)
}

fn run(plan: &Plan<'_>) -> Verdict {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("CHAOS_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let max_delay = env_or("CHAOS_MAX_DELAY_MS", 1_500u64);
    let mut rng = Rng(seed);
    let bootstrap = plan.broker.map_or_else(brokers, |b| b.bootstrap());
    eprintln!(
        "chaos {}: seed {seed} (CHAOS_SEED={seed} replays the schedule), {} mode, {} records, {} worker(s), {} faults of {:?}, on {bootstrap}",
        plan.name,
        plan.mode.name(),
        plan.records,
        plan.workers,
        plan.faults,
        plan.kinds
    );
    let input = unique(&format!("chaos-{}-in", plan.name));
    let output = unique(&format!("chaos-{}-out", plan.name));
    let dlq = unique(&format!("chaos-{}-dlq", plan.name));
    create_on(
        &bootstrap,
        &[(&input, PARTITIONS), (&output, PARTITIONS), (&dlq, 1)],
    );
    let group = unique(&format!("chaos-{}", plan.name));
    let component = guest("enrich_rs");
    let delivery = match plan.mode {
        Mode::AtLeastOnce => String::new(),
        Mode::ExactlyOnce => "delivery = \"exactly-once\"\n".to_string(),
    };
    let slots = (0..plan.workers)
        .map(|s| {
            let mut kafka = format!(
                "[kafka.librdkafka]\n\"session.timeout.ms\" = \"{SESSION_TIMEOUT_MS}\"\n\"heartbeat.interval.ms\" = \"1000\"\n"
            );
            if plan.static_members {
                kafka.push_str(&format!("\"group.instance.id\" = \"{group}-w{s}\"\n"));
            }
            let config = write_config(
                &group,
                &[PipelineSpec {
                    name: "chaos",
                    inputs: &[&input],
                    outputs: &[&output],
                    dlq: &dlq,
                    component: &component,
                    // Small batches: many produce/commit rounds for a fault
                    // to land between.
                    extra: &format!("batch_size = 8\nconcurrency = 2\n{delivery}"),
                }],
                &kafka,
            );
            Slot {
                config,
                env: worker_identity(plan.mode, s),
                proc: None,
                old_logs: Vec::new(),
                seen_assignments: 0,
            }
        })
        .collect();
    let mut h = Harness {
        plan,
        bootstrap: bootstrap.clone(),
        slots,
        exits: Vec::new(),
        started: Instant::now(),
        stopped: Vec::new(),
    };
    for s in 0..plan.workers {
        h.spawn(s);
    }
    for s in 0..plan.workers {
        assert!(
            h.wait_assigned(s, Duration::from_secs(90)),
            "{}: w{s} never got partitions; log:\n{}",
            plan.name,
            h.log(s)
        );
    }
    let first_start = h.started.elapsed();
    h.event("all workers own partitions");

    // Spread the records over the faults: a first guess from the start-up
    // time, corrected after each fault from the mean time a fault took.
    let guess = first_start.as_secs_f64() + max_delay as f64 / 2000.0;
    let rate_for = |remaining: usize, faults_left: usize, per_fault: f64| {
        ((remaining as f64) / (faults_left.max(1) as f64 * per_fault.max(0.2))).max(50.0) as u64
    };
    let rate = Arc::new(AtomicU64::new(rate_for(plan.records, plan.faults, guess)));
    let rush = Arc::new(AtomicBool::new(plan.faults == 0));
    let sent = Arc::new(AtomicUsize::new(0));
    let distinct = Arc::new(AtomicUsize::new(0));
    let stop_tally = Arc::new(AtomicBool::new(false));
    let producer = paced_producer(
        bootstrap.clone(),
        input.clone(),
        plan.records,
        rate.clone(),
        rush.clone(),
        sent.clone(),
    );
    let tally = live_tally(
        bootstrap.clone(),
        [(output.clone(), PARTITIONS), (dlq.clone(), 1)],
        plan.records,
        distinct.clone(),
        stop_tally.clone(),
    );

    let faults_started = Instant::now();
    let mut faults_mid_stream = 0;
    let mut progress_mark = 0;
    for f in 0..plan.faults {
        let delay = rng.below(max_delay + 1);
        let slot = rng.below(plan.workers as u64) as usize;
        let kind = plan.kinds[rng.below(plan.kinds.len() as u64) as usize];
        // A fault lands while the worker is working: after it has shown
        // progress since the last fault, at a random moment.
        let gate = Instant::now() + Duration::from_secs(30);
        while distinct.load(Ordering::Relaxed) <= progress_mark
            && sent.load(Ordering::Relaxed) < plan.records
            && Instant::now() < gate
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(delay));
        h.reap();
        if distinct.load(Ordering::Relaxed) < plan.records {
            faults_mid_stream += 1;
        }
        h.event(&format!(
            "fault {}/{}: {kind:?} w{slot} after {delay} ms ({} sent, {} ids visible)",
            f + 1,
            plan.faults,
            sent.load(Ordering::Relaxed),
            distinct.load(Ordering::Relaxed)
        ));
        h.inject(kind, slot);
        if matches!(kind, Fault::Kill9 | Fault::Term)
            && !h.wait_assigned(slot, Duration::from_secs(60))
        {
            h.event(&format!("w{slot} got no partitions within 60 s; going on"));
        }
        progress_mark = distinct.load(Ordering::Relaxed);
        let per_fault = faults_started.elapsed().as_secs_f64() / (f + 1) as f64;
        let remaining = plan.records.saturating_sub(sent.load(Ordering::Relaxed));
        rate.store(
            rate_for(remaining, plan.faults - f - 1, per_fault),
            Ordering::Relaxed,
        );
    }
    rush.store(true, Ordering::Relaxed);
    producer.join().expect("producer thread");
    h.event(&format!("all {} records sent", plan.records));

    // Until every id is visible, or nothing new for a minute.
    let (mut last, mut last_change) = (distinct.load(Ordering::Relaxed), Instant::now());
    while last < plan.records && last_change.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
        h.reap();
        let now = distinct.load(Ordering::Relaxed);
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
    }
    h.event(&format!(
        "{last} of {} ids visible; stopping workers",
        plan.records
    ));
    stop_tally.store(true, Ordering::Relaxed);
    tally.join().expect("tally thread");
    for s in 0..plan.workers {
        if let Some(p) = h.slots[s].proc.take() {
            let log_path = p.log.clone();
            let code = p.terminate(Duration::from_secs(40));
            if code != Some(0) {
                h.exits
                    .push(format!("w{s} exited {code:?} after the final SIGTERM"));
            }
            h.slots[s]
                .old_logs
                .push(std::fs::read_to_string(log_path).unwrap_or_default());
        }
    }

    let (outs, note_out) = read_to_end(&bootstrap, &output, PARTITIONS, Duration::from_secs(90));
    let (dls, note_dlq) = read_to_end(&bootstrap, &dlq, 1, Duration::from_secs(30));
    let mut count = vec![0u32; plan.records];
    let mut misplaced = Vec::new();
    for (topic, recs) in [(&output, &outs), (&dlq, &dls)] {
        let is_dlq = topic == &dlq;
        for (id, kind) in recs.iter() {
            match id.filter(|&i| (i as usize) < plan.records) {
                Some(i) => {
                    count[i as usize] += 1;
                    let poison = is_poison(i as usize);
                    if poison != is_dlq || (is_dlq && kind.as_deref() != Some("invalid-input")) {
                        misplaced.push(format!("id {i} in {topic} (kind {kind:?})"));
                    }
                }
                None => misplaced.push(format!("a record without a known id in {topic}")),
            }
        }
    }
    let lost: Vec<u64> = (0..plan.records as u64)
        .filter(|&i| count[i as usize] == 0)
        .collect();
    let duplicated: Vec<(u64, u32)> = (0..plan.records as u64)
        .filter(|&i| count[i as usize] > 1)
        .map(|i| (i, count[i as usize]))
        .collect();
    let all_logs: Vec<&String> = h.slots.iter().flat_map(|s| s.old_logs.iter()).collect();
    let v = Verdict {
        outputs: outs.len(),
        dead_letters: dls.len(),
        lost_count: lost.len(),
        lost: lost.into_iter().take(20).collect(),
        duplicates: duplicated.iter().map(|(_, c)| (c - 1) as usize).sum(),
        duplicated: duplicated.into_iter().take(20).collect(),
        misplaced: misplaced.into_iter().take(20).collect(),
        faults_mid_stream,
        fenced_lines: h
            .slots
            .iter()
            .enumerate()
            .filter(|(s, _)| h.stopped.contains(s))
            .flat_map(|(_, s)| s.old_logs.iter())
            .flat_map(|l| l.lines())
            .filter(|l| l.to_ascii_lowercase().contains("fenc"))
            .map(|l| l.chars().take(400).collect())
            .collect(),
        assignments: all_logs.iter().map(|l| assignments(l)).sum(),
        exits: h.exits.clone(),
        read_note: note_out.or(note_dlq),
    };
    eprintln!(
        "chaos {} ({}): seed {seed}, {} records ({} poison), {} faults ({} mid-stream), {} assignments; read_committed: {} outputs + {} dead letters; lost {}, duplicates {}, misplaced {}; {:.1}s",
        plan.name,
        plan.mode.name(),
        plan.records,
        (0..plan.records).filter(|&i| is_poison(i)).count(),
        plan.faults,
        v.faults_mid_stream,
        v.assignments,
        v.outputs,
        v.dead_letters,
        v.lost_count,
        v.duplicates,
        v.misplaced.len(),
        h.started.elapsed().as_secs_f64()
    );
    let eos_dups = plan.mode == Mode::ExactlyOnce && v.duplicates > 0;
    if v.lost_count + v.misplaced.len() > 0 || eos_dups || !v.exits.is_empty() {
        let dir = repo_root().join("target/tmp/chaos-logs").join(&group);
        std::fs::create_dir_all(&dir).unwrap();
        for (s, slot) in h.slots.iter().enumerate() {
            for (i, l) in slot.old_logs.iter().enumerate() {
                std::fs::write(dir.join(format!("w{s}-{i}.log")), l).unwrap();
            }
        }
        eprintln!("chaos {}: worker logs kept in {}", plan.name, dir.display());
    }
    v
}

/// The override that gives worker slot `slot` a stable identity across its
/// restarts: the exactly-once producer's `transactional.id` derives from
/// `kafka.worker_id` (default `$HOSTNAME`, which every slot here shares).
fn worker_identity(mode: Mode, slot: usize) -> Vec<(String, String)> {
    match mode {
        Mode::AtLeastOnce => Vec::new(),
        Mode::ExactlyOnce => vec![(
            "PIPELINE_WORKER__KAFKA__WORKER_ID".into(),
            format!("chaos-w{slot}"),
        )],
    }
}

fn check(plan: &Plan<'_>, v: &Verdict) {
    let summary = format!("{}: {v:#?}", plan.name);
    assert!(v.read_note.is_none(), "incomplete read: {summary}");
    assert_eq!(v.lost_count, 0, "lost ids: {summary}");
    assert!(v.misplaced.is_empty(), "misplaced ids: {summary}");
    if plan.mode == Mode::ExactlyOnce {
        assert_eq!(v.duplicates, 0, "duplicates: {summary}");
    }
}

fn kill_plan(mode: Mode, records: usize, kills: usize) -> Plan<'static> {
    Plan {
        name: match mode {
            Mode::ExactlyOnce => "kill9-eos",
            Mode::AtLeastOnce => "kill9-alo",
        },
        mode,
        records,
        workers: 1,
        faults: kills,
        kinds: &[Fault::Kill9],
        static_members: true,
        broker: None,
    }
}

/// Kill -9 at random moments, restart each time: a `read_committed` reader
/// sees every id exactly once across outputs and dead letters.
#[test]
fn kill_9_exactly_once_loses_and_duplicates_nothing() {
    let plan = kill_plan(
        Mode::chosen(),
        env_or("CHAOS_RECORDS", 50_000),
        env_or("CHAOS_KILLS", 20),
    );
    let v = run(&plan);
    check(&plan, &v);
    assert!(
        v.faults_mid_stream * 2 >= plan.faults,
        "only {} of {} kills landed before the stream was through: the test proved little",
        v.faults_mid_stream,
        plan.faults
    );
}

/// The same harness in at-least-once mode: nothing lost, duplicates
/// counted (and there must be some, or the harness could not tell).
#[test]
fn kill_9_at_least_once_loses_nothing_and_duplicates_are_counted() {
    let plan = kill_plan(
        Mode::AtLeastOnce,
        env_or("CHAOS_ALO_RECORDS", 10_000),
        env_or("CHAOS_ALO_KILLS", 6),
    );
    let v = run(&plan);
    check(&plan, &v);
    // What this harness exists to tell apart: at-least-once duplicates what
    // was in flight at a kill, and the count must show it.
    assert!(
        v.duplicates > 0,
        "no duplicates counted after {} kill -9s in at-least-once mode: the harness cannot tell the modes apart: {v:#?}",
        plan.faults
    );
}

/// SIGSTOP one of two workers until its partitions move, SIGCONT it: the
/// zombie's transaction is fenced (and it says so), nothing is duplicated.
#[test]
fn a_zombie_worker_is_fenced_and_duplicates_nothing() {
    let plan = Plan {
        name: "zombie",
        mode: Mode::chosen(),
        records: env_or("CHAOS_GROUP_RECORDS", 20_000) / 2,
        workers: 2,
        faults: 1,
        kinds: &[Fault::Stop],
        static_members: false,
        broker: None,
    };
    let v = run(&plan);
    check(&plan, &v);
    assert!(
        plan.mode == Mode::AtLeastOnce || !v.fenced_lines.is_empty(),
        "the stopped worker never logged that it was fenced: {v:#?}"
    );
}

/// Two workers in one group, exactly-once: SIGTERM and kill -9 restarts
/// move partitions between them under load; every id exactly once.
#[test]
fn two_workers_exactly_once_while_partitions_move() {
    let plan = Plan {
        name: "group",
        mode: Mode::chosen(),
        records: env_or("CHAOS_GROUP_RECORDS", 20_000),
        workers: 2,
        faults: env_or("CHAOS_GROUP_FAULTS", 6),
        kinds: &[Fault::Term, Fault::Kill9],
        static_members: false,
        broker: None,
    };
    let v = run(&plan);
    check(&plan, &v);
    assert!(
        v.assignments > plan.workers,
        "partitions never moved ({} assignments): {v:#?}",
        v.assignments
    );
}

/// The broker restarts mid-stream (a private broker, not the shared one):
/// every id exactly once afterwards.
#[test]
fn broker_restart_mid_stream_exactly_once() {
    let broker = PrivateBroker::start();
    let plan = Plan {
        name: "broker-restart",
        mode: Mode::chosen(),
        records: env_or("CHAOS_BROKER_RECORDS", 20_000),
        workers: 1,
        faults: env_or("CHAOS_BROKER_RESTARTS", 1),
        kinds: &[Fault::BrokerRestart],
        static_members: true,
        broker: Some(&broker),
    };
    let v = run(&plan);
    check(&plan, &v);
}

/// A broker of its own (scripts/kafka.sh with KAFKA_PORT and KAFKA_DATA_DIR),
/// stopped and deleted on drop, also when the test fails.
pub struct PrivateBroker {
    port: u16,
    data: PathBuf,
}

impl PrivateBroker {
    pub fn start() -> Self {
        let port = std::env::var("CHAOS_BROKER_PORT")
            .ok()
            .map(|p| p.parse().expect("CHAOS_BROKER_PORT is a port"))
            .unwrap_or_else(free_port_pair);
        let data = repo_root().join("target/tmp").join(unique("chaos-broker"));
        let b = Self { port, data };
        b.script("start");
        b
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn restart(&self) {
        self.script("restart");
    }

    fn script(&self, verb: &str) {
        let out = self.command(verb).output().expect("scripts/kafka.sh");
        assert!(
            out.status.success(),
            "scripts/kafka.sh {verb} (port {}, data {}) failed:\n{}",
            self.port,
            self.data.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn command(&self, verb: &str) -> Command {
        let mut c = Command::new(repo_root().join("scripts/kafka.sh"));
        c.arg(verb)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_DATA_DIR", &self.data)
            // Beside the shared broker (512 MiB) on a small machine.
            .env(
                "KAFKA_HEAP",
                std::env::var("CHAOS_BROKER_HEAP").unwrap_or_else(|_| "-Xmx256m -Xms64m".into()),
            )
            .env("KAFKA_STOP_TIMEOUT", "20")
            .env("KAFKA_START_TIMEOUT", "120");
        c
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.command("stop").output();
        if std::env::var("CHAOS_KEEP").as_deref() != Ok("1") {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

/// A free port whose successor is free too (the controller listener).
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let p = free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free ports on 127.0.0.1");
}
