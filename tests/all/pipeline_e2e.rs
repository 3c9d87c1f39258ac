use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::support::*;

/// 10,000 records with unique ids through the Rust enrichment component:
/// every id exactly once, per-key (so per-partition) order kept, keys and
/// headers passed through; SIGTERM exits 0 and commits, so a second worker in
/// the same group reprocesses nothing.
#[test]
fn ten_thousand_records_exactly_once_in_order() {
    const N: usize = 10_000;
    let topics = TestTopics::create("e2e", 4);
    let (input, output, dlq) = (
        topics.input.clone(),
        topics.output.clone(),
        topics.dlq.clone(),
    );

    let values: Vec<String> = (0..N)
        .map(|i| {
            format!(
                r#"{{"id":{i},"session_start":1700000000,"session_end":{}}}"#,
                1700000000 + (i % 90) * 60
            )
        })
        .collect();
    let keys: Vec<String> = (0..N).map(|i| format!("user-{}", i % 97)).collect();
    let traces: Vec<String> = (0..N).map(|i| format!("t-{i}")).collect();
    let records: Vec<In> = (0..N)
        .map(|i| In::new(&keys[i], &values[i]).header("trace-id", &traces[i]))
        .collect();
    produce_all(&input, &records);

    let component = guest("enrich_rs");
    let config = topics.config("enrich", &component, "batch_size = 64", "");
    let worker = WorkerProcess::start(&config);
    let out = read_until(&[&output], N, Duration::from_secs(180));
    assert_eq!(out.len(), N, "worker log:\n{}", worker.log_text());

    let mut seen = HashSet::new();
    let mut last_per_key: HashMap<String, i64> = HashMap::new();
    let mut key_partition: HashMap<String, i32> = HashMap::new();
    for o in &out {
        let v = o.json();
        let id = v["id"].as_i64().unwrap();
        assert!(seen.insert(id), "id {id} produced twice");
        assert_eq!(o.topic, output);
        assert!(
            o.timestamp.is_some_and(|t| t > 1_700_000_000_000),
            "timestamp kept: {:?}",
            o.timestamp
        );
        let key = o.key.clone().expect("key kept");
        assert_eq!(key, keys[id as usize], "key of id {id}");
        assert_eq!(
            o.header("trace-id"),
            traces[id as usize],
            "headers of id {id}"
        );
        let minutes = (id as usize % 90) as f64;
        assert_eq!(
            v["session_duration_minutes"].as_f64(),
            Some(minutes),
            "enrichment of id {id}"
        );
        let tier = if minutes > 30.0 { "high" } else { "standard" };
        assert_eq!(v["engagement_tier"], tier);
        // Same key → same partition, ids of one key strictly increasing.
        let p = *key_partition.entry(key.clone()).or_insert(o.partition);
        assert_eq!(p, o.partition, "key {key} spread over partitions");
        if let Some(prev) = last_per_key.insert(key.clone(), id) {
            assert!(prev < id, "order broken for key {key}: {prev} before {id}");
        }
    }
    assert_eq!(seen.len(), N);
    assert!(
        read_until(&[&dlq], 1, Duration::from_secs(2)).is_empty(),
        "nothing dead-lettered"
    );

    let code = worker.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "SIGTERM exits 0");

    // Offsets were committed: a new member of the group finds nothing to do.
    // One new record per partition: once their outputs are out, the new
    // member has consumed every partition past its committed offset, so
    // anything it processed again would be out too.
    let again = WorkerProcess::start(&config);
    let sentinels: Vec<In> = (0..4)
        .map(|p| In {
            partition: Some(p),
            ..In::new(
                format!("sentinel-{p}"),
                format!(
                    r#"{{"id":{},"session_start":1700000000,"session_end":1700000060}}"#,
                    N + p as usize
                ),
            )
        })
        .collect();
    produce_all(&input, &sentinels);
    let after = read_until(&[&output], N + 4, Duration::from_secs(90));
    let after_all = read_until(&[&output], N + 5, Duration::from_secs(3));
    assert_eq!(
        (after.len(), after_all.len()),
        (N + 4, N + 4),
        "records were processed again after a clean stop (or the new ones never came); log:\n{}",
        again.log_text()
    );
    assert_eq!(again.terminate(Duration::from_secs(30)), Some(0));
}
