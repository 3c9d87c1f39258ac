use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;

fn assigned_partitions(log: &str) -> bool {
    log.lines()
        .any(|l| l.contains("partitions assigned") && l.contains("/"))
}

/// Two workers in one group share the partitions; when one stops, the other
/// takes over its partitions and nothing is lost.
#[test]
fn two_workers_share_and_take_over() {
    const N: usize = 2_000;
    let topics = TestTopics::create("grp", 4);
    let (input, output) = (topics.input.clone(), topics.output.clone());
    let component = guest("enrich_rs");
    let config = topics.config("enrich", &component, "", "");
    let a = WorkerProcess::start(&config);
    let b = WorkerProcess::start(&config);
    let rec = |i: usize| {
        In::new(
            format!("k{i}"),
            format!(r#"{{"id":{i},"session_start":0,"session_end":60}}"#),
        )
    };
    // Wait until both members own partitions before producing.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(assigned_partitions(&a.log_text()) && assigned_partitions(&b.log_text())) {
        assert!(
            std::time::Instant::now() < deadline,
            "both workers never got partitions;\nA:\n{}\nB:\n{}",
            a.log_text(),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    produce_all(&input, &(0..N).map(rec).collect::<Vec<_>>());
    let out = read_until(&[&output], N, Duration::from_secs(120));
    assert_eq!(out.len(), N);

    // Stop A; B must take over A's partitions.
    assert_eq!(a.terminate(Duration::from_secs(30)), Some(0));
    produce_all(&input, &(N..2 * N).map(rec).collect::<Vec<_>>());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut ids = HashSet::new();
    while std::time::Instant::now() < deadline && ids.len() < 2 * N {
        ids = read_until(&[&output], 2 * N, Duration::from_secs(10))
            .iter()
            .map(|o| o.json()["id"].as_u64().unwrap())
            .collect();
    }
    assert_eq!(
        ids.len(),
        2 * N,
        "B did not take over; B log:\n{}",
        b.log_text()
    );
    assert_eq!(b.terminate(Duration::from_secs(30)), Some(0));
}
