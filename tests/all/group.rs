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

/// A second member joins while the first is saturated by a slow function
/// (every record runs to its 500 ms deadline, batches of 16 take ~8 s, more
/// than `max.poll.interval.ms`): the first member keeps polling (its full
/// partitions are paused, not blocked on), so it never loses its assignment,
/// the second gets partitions, every record is handled, and duplicates stay
/// within the in-flight window. Both stop within drain_timeout + 2 s.
#[test]
fn rebalance_under_saturation_keeps_the_assignment() {
    const N: usize = 48;
    let topics = TestTopics::create("sat", 4);
    let component = guest("hostile");
    let runtime = "max_in_flight = 16\n\n[kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n\"max.poll.interval.ms\" = \"6000\"\n";
    let config = topics.config(
        "slow",
        &component,
        "batch_size = 16\nconcurrency = 1\n\n[pipelines.limits]\ndeadline_ms = 500\n",
        runtime,
    );
    produce_all(
        &topics.input,
        &(0..N)
            .map(|i| In::new(format!("k{i}"), format!(r#"{{"action":"loop","id":{i}}}"#)))
            .collect::<Vec<_>>(),
    );
    let a = WorkerProcess::start(&config);
    // A is saturated once its first deadlines land in the dead-letter topic.
    let first = read_until(&[&topics.dlq], 2, Duration::from_secs(60));
    assert_eq!(first.len(), 2, "A never started; log:\n{}", a.log_text());
    let b = WorkerProcess::start(&config);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !assigned_partitions(&b.log_text()) {
        assert!(
            std::time::Instant::now() < deadline,
            "B never got partitions while A was saturated;\nA:\n{}\nB:\n{}",
            a.log_text(),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Duplicates (records in flight at the revoke) may arrive before the
    // last originals: read until every id is there.
    let id_of = |d: &Out| {
        assert_eq!(d.header("pw.error.kind"), "deadline");
        serde_json::from_str::<serde_json::Value>(&d.value).unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut all = Vec::new();
    while std::time::Instant::now() < deadline {
        all = read_until(&[&topics.dlq], 2 * N, Duration::from_secs(5));
        if all.iter().map(id_of).collect::<HashSet<_>>().len() == N {
            break;
        }
    }
    let unique: HashSet<u64> = all.iter().map(id_of).collect();
    let (la, lb) = (a.log_text(), b.log_text());
    assert_eq!(unique.len(), N, "records missing;\nA:\n{la}\nB:\n{lb}");
    assert!(
        all.len() - N <= 16,
        "{} duplicates, more than one member's in-flight window (16)",
        all.len() - N
    );
    for (who, log) in [("A", &la), ("B", &lb)] {
        assert!(
            !log.contains("assignment lost") && !log.contains("maximum poll interval"),
            "{who} lost its assignment:\n{log}"
        );
    }
    for w in [a, b] {
        let started = std::time::Instant::now();
        assert_eq!(w.terminate(Duration::from_secs(30)), Some(0));
        assert!(
            started.elapsed() < Duration::from_millis(15_000 + 2_000),
            "stop took {:?}",
            started.elapsed()
        );
    }
}

/// Partitions are spread over the sandbox threads (one each here), and a
/// thread stuck on slow records does not hold up the other: partition 0's 16
/// records each run to their 200 ms deadline, and its thread backs off
/// between them (up to 2 s: about 28 s in all), while partition 1's 200 quick
/// ones all come out, long before partition 0 is done. Then every record of
/// both is handled, and the process stops cleanly.
#[test]
fn a_slow_partition_does_not_hold_up_the_others() {
    const SLOW: usize = 16;
    const FAST: usize = 200;
    let topics = TestTopics::create("lanes", 2);
    let config = topics.config(
        "lanes",
        &guest("hostile"),
        "batch_size = 1\nconcurrency = 2\n\n[pipelines.limits]\ndeadline_ms = 200\n",
        "",
    );
    let mut records: Vec<In> = (0..SLOW)
        .map(|i| In {
            partition: Some(0),
            ..In::new(format!("s{i}"), format!(r#"{{"action":"sleep","id":{i}}}"#))
        })
        .collect();
    records.extend((0..FAST).map(|i| In {
        partition: Some(1),
        ..In::new(format!("f{i}"), format!(r#"{{"action":"ok","id":{i}}}"#))
    }));
    produce_all(&topics.input, &records);
    let w = WorkerProcess::start(&config);
    let fast = read_until(&[&topics.output], FAST, Duration::from_secs(60));
    assert_eq!(fast.len(), FAST, "log:\n{}", w.log_text());
    let slow_so_far = read_until(&[&topics.dlq], SLOW, Duration::from_millis(200)).len();
    assert!(
        slow_so_far < SLOW / 2,
        "the quick partition finished only after {slow_so_far} of the {SLOW} slow records: it waited behind them"
    );
    let slow = read_until(&[&topics.dlq], SLOW, Duration::from_secs(60));
    assert_eq!(slow.len(), SLOW, "log:\n{}", w.log_text());
    assert!(slow.iter().all(|d| d.header("pw.error.kind") == "deadline"));
    assert!(
        w.log_text().contains("pipeline backing off"),
        "the thread stuck on deadlines never backed off:\n{}",
        w.log_text()
    );
    assert_eq!(w.terminate(Duration::from_secs(30)), Some(0));
}

/// SIGTERM while saturated by a slow function (120 records of ~250 ms
/// queued): the lanes stop taking queued records, the process exits 0 within
/// drain_timeout_ms (15 s) + 2 s, and what was never started is left for the
/// next owner (a restart handles every record).
#[test]
fn sigterm_while_saturated_exits_in_bounds() {
    const N: usize = 120;
    let topics = TestTopics::create("satstop", 2);
    let config = topics.config(
        "slow",
        &guest("hostile"),
        "batch_size = 4\nconcurrency = 2\n\n[pipelines.limits]\ndeadline_ms = 250\n",
        "max_in_flight = 32\n",
    );
    produce_all(
        &topics.input,
        &(0..N)
            .map(|i| In::new(format!("k{i}"), format!(r#"{{"action":"loop","id":{i}}}"#)))
            .collect::<Vec<_>>(),
    );
    let w = WorkerProcess::start(&config);
    let first = read_until(&[&topics.dlq], 4, Duration::from_secs(60));
    assert_eq!(first.len(), 4, "never started; log:\n{}", w.log_text());
    let started = std::time::Instant::now();
    assert_eq!(w.terminate(Duration::from_secs(30)), Some(0));
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(15_000 + 2_000),
        "stop took {took:?}"
    );
    let done = read_until(&[&topics.dlq], N, Duration::from_secs(5)).len();
    assert!(
        done < N / 2,
        "{done} records handled: the queue was not left"
    );
    // A restart picks up the rest.
    let w = WorkerProcess::start(&config);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut ids = HashSet::new();
    while ids.len() < N && std::time::Instant::now() < deadline {
        ids = read_until(&[&topics.dlq], 2 * N, Duration::from_secs(5))
            .iter()
            .map(|d| {
                serde_json::from_str::<serde_json::Value>(&d.value).unwrap()["id"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
    }
    assert_eq!(ids.len(), N, "log:\n{}", w.log_text());
    assert_eq!(w.terminate(Duration::from_secs(30)), Some(0));
}
