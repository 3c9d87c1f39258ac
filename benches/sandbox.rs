//! Sandbox micro-benchmarks, no Kafka: instantiate from `InstancePre`, one
//! call, one batch call, and one record per fresh instance
//! (`instance_max_records = 1`, instantiation + call + teardown per record),
//! for the Rust and the Python enrichment component, with fuel off and on.
//! Prints figures; asserts nothing about speed.
//!
//!   cargo bench -p pipeline-worker --bench sandbox
//!   SANDBOX_BENCH_FILTER=python cargo bench -p pipeline-worker --bench sandbox   (rows whose label contains it)
//!
//! Then the price calculation per record (`price_calculator`, batch entry
//! point) against columnar (`price_columnar`, the schema of its
//! pipeline.toml), batches of SANDBOX_BENCH_BATCH (64) records of the e2e
//! bench's price shape: thread CPU per record, and of it the part outside the
//! guest (decoding the batch, IPC, the result back to JSON values), rounds
//! interleaved, medians (filter label: "price").

#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pipeline_worker::config::{arrow_schema, Limits, SchemaField};
use pipeline_worker::sandbox::{
    ArtifactCache, EpochTicker, Function, InputRecord, Runner, SandboxOptions,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn record(i: usize) -> InputRecord {
    InputRecord {
        key: Some(format!("user-{}", i % 100).into_bytes()),
        value: Some(format!(
            r#"{{"id":{i},"user":"u{}","event_type":"click","session_start":1700000000,"session_end":{},"page":"/products/{}"}}"#,
            i % 1000,
            1700000000 + (i % 120) * 60,
            i % 50
        )
        .into_bytes()),
        headers: vec![],
        topic: "bench".into(),
        partition: 0,
        offset: i as i64,
        timestamp: Some(1_700_000_000_000),
    }
}

/// CPU time this thread has run, from the scheduler (ns precision): less
/// sensitive than wall time to other work sharing the machine. Zero where
/// /proc is not available.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// Minor page faults of the process so far (0 where /proc is not available).
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()?
                .split_whitespace()
                .nth(7)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn per_op(total: Duration, n: usize) -> String {
    let ns = total.as_nanos() as f64 / n as f64;
    if ns > 10_000.0 {
        format!("{:>9.1} µs", ns / 1000.0)
    } else {
        format!("{:>9.2} µs", ns / 1000.0)
    }
}

fn bench(name: &str, path: &Path, fuel: Option<u64>, opts: &SandboxOptions) {
    let limits = Limits {
        fuel,
        ..Limits::default()
    };
    let started = Instant::now();
    let f = Function::load_file(name, path, &limits, opts).expect("load");
    let load = started.elapsed();
    let label = format!(
        "{name} (fuel {})",
        if fuel.is_some() { "on" } else { "off" }
    );
    let big = f.load_report.size_bytes > 1 << 20;
    // Instantiate from InstancePre.
    let n_inst = if big { 200 } else { 2_000 };
    let (t, c) = (Instant::now(), thread_cpu());
    for _ in 0..n_inst {
        f.instantiate_only().unwrap();
    }
    let (inst, inst_cpu) = (t.elapsed(), thread_cpu() - c);
    // wasm time counts the call only; wall adds the host side.
    let mut r = Runner::new(f.clone());
    let n_call = if big { 500 } else { 5_000 };
    let recs: Vec<InputRecord> = (0..64).map(record).collect();
    // One record per call, the instance kept across calls (as the worker
    // does, up to instance_max_records): the per-call cost.
    let single = Function::load_file(name, path, &limits, opts).unwrap();
    let mut rs = Runner::new(single);
    let t = Instant::now();
    let mut calls = 0;
    while calls < n_call {
        for rec in &recs {
            let out = rs.run_batch(std::slice::from_ref(rec));
            assert!(out[0].is_ok(), "{:?}", out[0]);
            calls += 1;
        }
    }
    let single_wall = t.elapsed();
    let single_wasm = Duration::from_nanos(rs.stats.wasm_nanos);
    // Batch calls of 64 (one instance per batch).
    let n_batches = (n_call / 64).max(5);
    let before = r.stats;
    let t = Instant::now();
    for _ in 0..n_batches {
        let out = r.run_batch(&recs);
        assert!(out.iter().all(|o| o.is_ok()));
    }
    let batch_wall = t.elapsed();
    let batch_wasm = Duration::from_nanos(r.stats.wasm_nanos - before.wasm_nanos);
    // A fresh instance for every record (instance_max_records = 1, the
    // strictest isolation): instantiate + call + teardown, end to end.
    let fresh_limits = Limits {
        instance_max_records: 1,
        ..limits.clone()
    };
    let fresh = Function::load_file(name, path, &fresh_limits, opts).unwrap();
    let mut rf = Runner::new(fresh);
    let n_fresh = if big { 200 } else { 2_000 };
    let f1 = minor_faults();
    let (t, c) = (Instant::now(), thread_cpu());
    for i in 0..n_fresh {
        let out = rf.run_batch(std::slice::from_ref(&recs[i % recs.len()]));
        assert!(out[0].is_ok(), "{:?}", out[0]);
    }
    let (fresh_wall, fresh_cpu) = (t.elapsed(), thread_cpu() - c);
    let fresh_faults = (minor_faults() - f1) / n_fresh as u64;
    assert_eq!(rf.stats.instantiations as usize, n_fresh);
    let fresh_inst = Duration::from_nanos(rf.stats.instantiate_nanos);
    println!(
        "{label:<28} {:>8} KB  load {:>6} ms{}  instantiate {} (cpu {})  call {} (wall {})  batch-of-64 per record {} (wall {}){}  fresh instance per record {} (cpu {}, of which instantiate {}; {} page faults)",
        f.load_report.size_bytes / 1024,
        load.as_millis(),
        if f.load_report.from_cache { " (cached)" } else { " (compiled)" },
        per_op(inst, n_inst),
        per_op(inst_cpu, n_inst),
        per_op(single_wasm, calls),
        per_op(single_wall, calls),
        per_op(batch_wasm, n_batches * 64),
        per_op(batch_wall, n_batches * 64),
        if f.exports_batch() { "" } else { " [no batch export]" },
        per_op(fresh_wall, n_fresh),
        per_op(fresh_cpu, n_fresh),
        per_op(fresh_inst, n_fresh),
        fresh_faults,
    );
}

/// The schema customer-examples/price_columnar/pipeline.toml declares.
fn price_schema() -> arrow_schema::SchemaRef {
    let path = root().join("customer-examples/price_columnar/pipeline.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let fields: Vec<SchemaField> = table["pipelines"][0]["schema"].clone().try_into().unwrap();
    std::sync::Arc::new(arrow_schema("schema", &fields).unwrap())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Per-record price function against columnar, in one thread each, rounds
/// interleaved: (CPU, wasm) ns per record of each round.
fn price(opts: &SandboxOptions) {
    let guests = root().join("target/guests/wasm32-wasip2/release");
    let (per_record, columnar) = (
        guests.join("price_calculator.wasm"),
        guests.join("price_columnar.wasm"),
    );
    for p in [&per_record, &columnar] {
        if !p.exists() {
            println!("price: skipped, {} not built (make examples)", p.display());
            return;
        }
    }
    let batch: usize = std::env::var("SANDBOX_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let rounds: usize = std::env::var("SANDBOX_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let limits = Limits::default();
    let records: Vec<InputRecord> = (0..batch * 16)
        .map(|i| InputRecord {
            value: Some(common::price_value(i).into_bytes()),
            ..record(i)
        })
        .collect();
    let mut runners = [
        (
            "per record",
            Runner::new(Function::load_file("price", &per_record, &limits, opts).unwrap()),
        ),
        (
            "columnar",
            Runner::new(Function::load_file("price_columnar", &columnar, &limits, opts).unwrap())
                .with_schema(Some(price_schema())),
        ),
    ];
    let mut figures: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); runners.len()];
    for round in 0..=rounds {
        for (k, (name, r)) in runners.iter_mut().enumerate() {
            let (c, wasm0) = (thread_cpu(), r.stats.wasm_nanos);
            let mut n = 0;
            for chunk in records.chunks(batch) {
                for out in r.run_batch(chunk) {
                    let outs = out.unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(outs.len(), 1, "{name}: one output per record");
                }
                n += chunk.len();
            }
            // Round 0 warms up (instances, allocator, caches).
            if round > 0 {
                let cpu = (thread_cpu() - c).as_nanos() as f64 / n as f64;
                let wasm = (r.stats.wasm_nanos - wasm0) as f64 / n as f64;
                figures[k].0.push(cpu);
                figures[k].1.push(wasm);
            }
        }
    }
    for ((name, _), (cpu, wasm)) in runners.iter().zip(figures) {
        let (cpu, wasm) = (median(cpu), median(wasm));
        println!(
            "price {name:<12} batch {batch:>5}: CPU {:>6.2} µs/record, in the guest call {:>6.2}, outside it {:>6.2} (medians of {rounds} rounds)",
            cpu / 1000.0,
            wasm / 1000.0,
            (cpu - wasm) / 1000.0
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let filter = std::env::var("SANDBOX_BENCH_FILTER").unwrap_or_default();
    let opts = SandboxOptions {
        cache: ArtifactCache::new(root().join(".cache/pipeline-worker-bench")),
        ticker: EpochTicker::start(Duration::from_millis(10)),
        epoch_tick_ms: 10,
        pooling: true,
        max_instances: 2,
    };
    let components = [
        (
            "rust enrich",
            root().join("target/guests/wasm32-wasip2/release/enrich_rs.wasm"),
        ),
        (
            "python enrich",
            root().join("target/components/enrich_event.wasm"),
        ),
    ];
    for (name, path) in &components {
        if !path.exists() {
            println!(
                "{name}: skipped, {} not built (make examples)",
                path.display()
            );
            continue;
        }
        for fuel in [None, Some(u64::MAX / 1024)] {
            let label = format!(
                "{name} (fuel {})",
                if fuel.is_some() { "on" } else { "off" }
            );
            if !filter.is_empty() && !label.contains(filter.as_str()) {
                continue;
            }
            bench(name, path, fuel, &opts);
        }
    }
    if filter.is_empty() || "price".contains(filter.as_str()) {
        price(&opts);
    }
}
