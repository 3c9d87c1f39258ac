use std::collections::HashSet;
use std::time::Duration;

use crate::support::*;

/// kill -9 mid-stream, restart: every input id is in the output (duplicates
/// allowed only for the in-flight window, which at-least-once permits).
#[test]
fn kill_9_mid_stream_loses_nothing() {
    const N: usize = 6_000;
    let topics = TestTopics::create("crash", 4);
    let (input, output, dlq) = (
        topics.input.clone(),
        topics.output.clone(),
        topics.dlq.clone(),
    );
    let records: Vec<In> = (0..N)
        .map(|i| {
            In::new(
                format!("k{}", i % 31),
                format!(
                    r#"{{"id":{i},"session_start":0,"session_end":{}}}"#,
                    i % 4000
                ),
            )
        })
        .collect();
    produce_all(&input, &records);
    let component = guest("enrich_rs");
    let config = topics.config(
        "enrich",
        &component,
        // Small batches: many produce/commit rounds, so the kill lands
        // between a produce and its offset commit.
        "batch_size = 8",
        "",
    );
    let first = WorkerProcess::start(&config);
    let partial = read_until(&[&output], N / 4, Duration::from_secs(120));
    assert!(
        partial.len() >= N / 4,
        "no progress before the kill; log:\n{}",
        first.log_text()
    );
    first.kill9();

    let second = WorkerProcess::start(&config);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut ids = HashSet::new();
    let mut total = 0;
    while std::time::Instant::now() < deadline {
        let out = read_until(&[&output, &dlq], usize::MAX, Duration::from_secs(5));
        total = out.len();
        ids = out
            .iter()
            .map(|o| o.json()["id"].as_u64().unwrap())
            .collect();
        if ids.len() == N {
            break;
        }
    }
    let missing: Vec<u64> = (0..N as u64)
        .filter(|i| !ids.contains(i))
        .take(20)
        .collect();
    assert!(
        missing.is_empty(),
        "lost ids (first 20): {missing:?}; log:\n{}",
        second.log_text()
    );
    eprintln!(
        "kill -9 test: {total} records for {N} ids ({} duplicates)",
        total - N
    );
    assert_eq!(second.terminate(Duration::from_secs(30)), Some(0));
}

/// A pipeline thread that panics (fault injection) is logged as one line
/// naming the thread, the message and the location, and `run` exits with
/// the dead-thread code (4), distinct from start-up (1) and data-path (3)
/// errors, within seconds.
#[test]
fn a_panicking_thread_is_logged_once_and_exits_with_its_code() {
    let topics = TestTopics::create("panic", 1);
    let config = topics.config("doomed", &guest("enrich_rs"), "", "");
    let mut worker = WorkerProcess::start_env(
        "run",
        &config,
        &[("PIPELINE_WORKER_FAULT_PANIC_AT_OFFSET", "2")],
    );
    produce_all(
        &topics.input,
        &(0..5)
            .map(|i| {
                In::new(
                    format!("k{i}"),
                    format!(r#"{{"id":{i},"session_start":0,"session_end":1}}"#),
                )
            })
            .collect::<Vec<_>>(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(st) = worker.child.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker kept running:\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = worker.log_text();
    assert_eq!(code, Some(4), "dead-thread exit code; log:\n{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("thread panicked"))
        .collect();
    assert_eq!(lines.len(), 1, "one panic line; log:\n{log}");
    let line = lines[0];
    assert!(
        line.contains("sandbox-doomed")
            && line.contains("fault injection")
            && line.contains("pipeline.rs:"),
        "thread, message and location in one line: {line}"
    );
}
