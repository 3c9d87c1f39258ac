//! A tenant's produced bytes count against its bytes quota: a function that
//! writes far more than it reads is held to the tenant's bytes/s by pausing
//! its partitions, and nothing is lost or dead-lettered for it.

use std::time::{Duration, Instant};

use crate::quotas::throttled_seconds;
use crate::support::*;

/// 30 records of a few bytes each produce 100 KB apiece (3 MB), and 10
/// records of 2 KB are dead-lettered, against a quota of 1 MB/s with a
/// 256 KB burst. The input alone (about 21 KB) fits the burst, so only the
/// charged outputs can make the pipeline wait: at least 2.7 s of it.
#[test]
fn produced_bytes_are_held_to_the_tenant_bytes_quota_without_loss() {
    const BIG: usize = 30;
    const FAILING: usize = 10;
    const SIZE: usize = 100_000;
    let t = TestTopics::create("tenant-out", 1);
    let pad = "p".repeat(2_000);
    let records: Vec<In> = (0..BIG + FAILING)
        .map(|i| {
            let v = if i % 4 == 3 {
                format!(r#"{{"action":"error","pad":"{pad}"}}"#)
            } else {
                format!(r#"{{"action":"big-output","size":{SIZE}}}"#)
            };
            In::new(format!("k{i}"), v)
        })
        .collect();
    assert_eq!(
        records.iter().filter(|r| r.value.contains("error")).count(),
        FAILING
    );
    produce_all(&t.input, &records);
    let port = free_port();
    let config = write_config(
        &unique("tenant-out-group"),
        &[PipelineSpec {
            name: "writer",
            inputs: &[&t.input],
            outputs: &[&t.output],
            dlq: &t.dlq,
            component: &guest("hostile"),
            // Several batches, so the debt of one holds back the next.
            extra: "tenant = \"acme\"\nbatch_size = 4\nconcurrency = 1",
        }],
        &format!(
            "\n[telemetry]\nhttp_listen = \"127.0.0.1:{port}\"\n\n[[tenants]]\nname = \"acme\"\nbytes_per_second = 1000000\nbytes_burst = 256000\n"
        ),
    );
    let worker = WorkerProcess::start(&config);
    let started = Instant::now();
    let out = read_until(&[&t.output], BIG, Duration::from_secs(60));
    let dead = read_until(&[&t.dlq], FAILING, Duration::from_secs(30));
    let metrics = http_get(port, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let log = worker.log_text();
    worker.terminate(Duration::from_secs(20));
    let held = throttled_seconds(&metrics, "writer", "bytes");
    println!(
        "tenant output: {} outputs, {} dead letters in {:.1} s, held {held:.2} s on bytes",
        out.len(),
        dead.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.len(), BIG, "every output arrives; log:\n{log}");
    let mut keys: Vec<&str> = out.iter().filter_map(|o| o.key.as_deref()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), BIG, "each exactly once");
    assert!(
        out.iter().all(|o| o.value.len() == SIZE),
        "outputs whole, not cut"
    );
    assert_eq!(dead.len(), FAILING, "only the failing records: {dead:?}");
    assert!(
        dead.iter()
            .all(|d| d.header("pw.error.kind") == "invalid-input"),
        "dead-lettered by the function, not the quota: {:?}",
        dead.iter()
            .map(|d| d.header("pw.error.kind"))
            .collect::<Vec<_>>()
    );
    assert!(
        held > 0.5,
        "the bytes quota held the pipeline for its outputs: {held} s\n{metrics}"
    );
    let episode = log
        .lines()
        .find(|l| l.contains("pipeline throttled"))
        .unwrap_or_else(|| panic!("a throttling episode is logged:\n{log}"));
    assert!(episode.contains("bytes"), "{episode}");
}
