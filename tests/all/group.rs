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
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
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

/// A lane that cannot keep up holds what does not fit in its queue up to a
/// watermark (8 queues' worth), then pauses the partitions: what the worker
/// has consumed but not finished stays bounded however long the backlog, the
/// paused partitions show on /metrics, and they resume (every record is
/// handled once, none left behind).
#[test]
fn saturated_lane_pauses_and_bounds_what_it_holds() {
    const N: usize = 400;
    // One lane with a queue of 2: it holds at most 16 before pausing.
    const QUEUE: u64 = 2;
    const HOLD: u64 = 8 * QUEUE;
    let topics = TestTopics::create("hold", 2);
    let port = free_port();
    let config = topics.config(
        "slow",
        &guest("hostile"),
        "batch_size = 1\nconcurrency = 1\n\n[pipelines.limits]\ndeadline_ms = 20\n",
        &format!("max_in_flight = {QUEUE}\n\n[telemetry]\nhttp_listen = \"127.0.0.1:{port}\"\n"),
    );
    produce_all(
        &topics.input,
        &(0..N)
            .map(|i| In::new(format!("k{i}"), format!(r#"{{"action":"sleep","id":{i}}}"#)))
            .collect::<Vec<_>>(),
    );
    let w = WorkerProcess::start(&config);
    let label = "pipeline=\"slow\"";
    let (mut max_open, mut max_paused, mut done) = (0, 0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while done < N as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "{done} of {N} handled; log:\n{}",
            w.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
        let Some((200, m)) = http_get(port, "/metrics") else {
            continue;
        };
        if !m.contains("pipeline_records_dead_lettered_total{") {
            continue;
        }
        let consumed = sample(&m, "messaging_client_consumed_messages_total", label);
        done = sample(
            &m,
            "pipeline_records_dead_lettered_total",
            "error_kind=\"deadline\"",
        );
        max_open = max_open.max(consumed.saturating_sub(done));
        max_paused = max_paused.max(sample(&m, "pipeline_paused_partitions", label));
    }
    // Queue + held + one record per partition that arrives as it is paused
    // + the record being run.
    let bound = QUEUE + HOLD + 2 + 1;
    assert!(
        max_open <= bound,
        "{max_open} records consumed and not finished at once, more than {bound}"
    );
    assert!(max_paused >= 1, "no partition was ever paused");
    let ids: HashSet<u64> = read_until(&[&topics.dlq], N, Duration::from_secs(30))
        .iter()
        .map(|d| d.json()["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), N, "log:\n{}", w.log_text());
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
