//! Interleaved A/B of components doing the same job: CPU µs per record in
//! batches of 64 (the worker's default), kept instance, fuel off, rounds
//! alternating so a noisy machine hits both alike. Prints medians.
//!
//!   cargo run --release -p pipeline-worker --example component_ab -- A.wasm B.wasm [records]

use std::time::{Duration, Instant};

use pipeline_worker::config::Limits;
use pipeline_worker::sandbox::{
    ArtifactCache, EpochTicker, Function, InputRecord, Runner, SandboxOptions,
};

fn record(i: usize) -> InputRecord {
    InputRecord {
        key: Some(format!("user-{}", i % 100).into_bytes()),
        value: Some(
            format!(
                r#"{{"id":{i},"user":"u{}","event_type":"click","session_start":1700000000,"session_end":{},"page":"/products/{}"}}"#,
                i % 1000,
                1700000000 + (i % 120) * 60,
                i % 50
            )
            .into_bytes(),
        ),
        headers: vec![],
        topic: "bench".into(),
        partition: 0,
        offset: i as i64,
        timestamp: Some(1_700_000_000_000),
    }
}

/// This thread's time on a CPU, in ns (`/proc/thread-self/schedstat`): what
/// a shared machine's contention changes least.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(6_400);
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let opts = SandboxOptions {
        cache: ArtifactCache::new(root.join(".cache/pipeline-worker-bench")),
        ticker: EpochTicker::start(Duration::from_millis(10)),
        epoch_tick_ms: 10,
        pooling: true,
        max_instances: 2,
    };
    let limits = Limits::default();
    let recs: Vec<InputRecord> = (0..64).map(record).collect();
    let mut runners: Vec<(String, Runner, Vec<f64>)> = args[..2]
        .iter()
        .map(|p| {
            let f = Function::load_file(p, std::path::Path::new(p), &limits, &opts).expect("load");
            let mut r = Runner::new(f);
            r.run_batch(&recs); // warm
            (p.clone(), r, Vec::new())
        })
        .collect();
    for _round in 0..7 {
        for (_, r, times) in runners.iter_mut() {
            let (t, c) = (Instant::now(), cpu_ns());
            for _ in 0..n / 64 {
                for res in r.run_batch(&recs) {
                    res.expect("record ok");
                }
            }
            let _wall = t.elapsed();
            times.push((cpu_ns() - c) as f64 / 1000.0 / (n / 64 * 64) as f64);
        }
    }
    for (name, _, times) in &mut runners {
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{name:<50} median {:>7.1} µs CPU/record  (rounds {:?})",
            times[times.len() / 2],
            times.iter().map(|t| t.round()).collect::<Vec<_>>()
        );
    }
}
