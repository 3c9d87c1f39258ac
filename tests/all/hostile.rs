//! Hostile components: every trap is typed, the worker goes on, the next
//! record runs in a fresh instance. First in-process through the sandbox
//! (precise kinds), then through Kafka (dead letters, flow continues).

use std::sync::Arc;
use std::time::Duration;

use pipeline_worker::config::Limits;
use pipeline_worker::sandbox::{
    ArtifactCache, EpochTicker, Function, InputRecord, RecordError, Runner, SandboxOptions,
};

use crate::support::*;

fn opts() -> SandboxOptions {
    SandboxOptions {
        cache: ArtifactCache::new(repo_root().join(".cache/pipeline-worker-tests")),
        ticker: EpochTicker::start(Duration::from_millis(10)),
        epoch_tick_ms: 10,
        pooling: true,
        max_instances: 2,
    }
}

fn limits(fuel: Option<u64>) -> Limits {
    Limits {
        fuel,
        deadline_ms: 300,
        memory_bytes: 32 << 20,
        max_output_bytes: 256 << 10,
        ..Limits::default()
    }
}

fn record(value: &str) -> InputRecord {
    InputRecord {
        key: Some(b"k".to_vec()),
        value: value.as_bytes().to_vec(),
        headers: vec![],
        topic: "in".into(),
        partition: 0,
        offset: 0,
        timestamp: Some(1),
    }
}

fn hostile(fuel: Option<u64>) -> Arc<Function> {
    Function::load_file("hostile", &guest("hostile"), &limits(fuel), &opts()).expect("load hostile")
}

fn run_one(
    runner: &mut Runner,
    value: &str,
) -> Result<Vec<pipeline_worker::sandbox::OutputRecord>, RecordError> {
    runner.run_batch(&[record(value)]).pop().unwrap()
}

fn assert_ok_after(runner: &mut Runner) {
    let out = run_one(runner, r#"{"action":"ok","id":1}"#)
        .expect("a good record after a trap still works");
    assert_eq!(out.len(), 1);
}

#[test]
fn infinite_loop_hits_the_deadline() {
    let mut r = Runner::new(hostile(None));
    let e = run_one(&mut r, r#"{"action":"loop"}"#).unwrap_err();
    assert_eq!(e.kind(), "deadline", "{e}");
    assert_ok_after(&mut r);
}

#[test]
fn fuel_exhaustion_traps() {
    let mut r = Runner::new(hostile(Some(50_000_000)));
    let e = run_one(&mut r, r#"{"action":"loop"}"#).unwrap_err();
    assert_eq!(e.kind(), "fuel", "{e}");
    assert_ok_after(&mut r);
}

#[test]
fn memory_growth_past_the_cap_traps() {
    let mut r = Runner::new(hostile(None));
    let e = run_one(&mut r, r#"{"action":"alloc"}"#).unwrap_err();
    assert_eq!(e.kind(), "memory", "{e}");
    assert_ok_after(&mut r);
}

#[test]
fn deep_recursion_overflows_the_stack() {
    let mut r = Runner::new(hostile(None));
    let e = run_one(&mut r, r#"{"action":"recurse-native"}"#).unwrap_err();
    assert_eq!(e.kind(), "stack", "{e}");
    assert_ok_after(&mut r);
}

#[test]
fn oversized_output_is_refused() {
    let mut r = Runner::new(hostile(None));
    let e = run_one(&mut r, r#"{"action":"big-output","size":1000000}"#).unwrap_err();
    assert_eq!(e.kind(), "output-size", "{e}");
    assert_ok_after(&mut r);
}

#[test]
fn opening_a_file_fails_inside_the_guest() {
    let mut r = Runner::new(hostile(None));
    match run_one(&mut r, r#"{"action":"open-file"}"#) {
        Err(RecordError::Failed(m)) => assert!(m.starts_with("open-file:"), "{m}"),
        other => panic!("expected the guest to report a failed open, got {other:?}"),
    }
}

#[test]
fn opening_a_socket_fails_inside_the_guest() {
    let mut r = Runner::new(hostile(None));
    match run_one(&mut r, r#"{"action":"socket"}"#) {
        Err(RecordError::Failed(m)) => assert!(m.starts_with("socket:"), "{m}"),
        other => panic!("expected the guest to report a failed connect, got {other:?}"),
    }
}

#[test]
fn no_environment_or_arguments_are_visible() {
    let mut r = Runner::new(hostile(None));
    let out = run_one(&mut r, r#"{"action":"env"}"#).expect("env action");
    let v: serde_json::Value = serde_json::from_slice(&out[0].value).unwrap();
    assert_eq!(v["vars"], serde_json::json!({}), "{v}");
    assert_eq!(v["args"], serde_json::json!([]), "{v}");
}

#[test]
fn a_panic_is_a_trap_not_a_crash() {
    let mut r = Runner::new(hostile(None));
    let e = run_one(&mut r, r#"{"action":"panic"}"#).unwrap_err();
    assert_eq!(e.kind(), "trap", "{e}");
    assert_ok_after(&mut r);
}

#[test]
fn a_trap_inside_a_batch_only_fails_its_record() {
    let mut r = Runner::new(hostile(None));
    let batch: Vec<InputRecord> = ["ok", "ok", "panic", "ok", "recurse-native", "ok"]
        .iter()
        .map(|a| record(&format!(r#"{{"action":"{a}"}}"#)))
        .collect();
    let results = r.run_batch(&batch);
    let kinds: Vec<&str> = results
        .iter()
        .map(|r| r.as_ref().map(|_| "ok").unwrap_or_else(|e| e.kind()))
        .collect();
    assert_eq!(kinds, ["ok", "ok", "trap", "ok", "stack", "ok"]);
}

/// Through Kafka: each hostile record is dead-lettered with its kind while the
/// good ones between them are produced.
#[test]
fn hostile_records_through_kafka() {
    let topics = TestTopics::create("ho", 1);
    let (input, output, dlq) = (
        topics.input.clone(),
        topics.output.clone(),
        topics.dlq.clone(),
    );
    let actions = [
        "loop",
        "alloc",
        "recurse-native",
        "big-output",
        "open-file",
        "socket",
        "panic",
        "route",
    ];
    let mut records = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        records.push(In::new(
            format!("bad{i}"),
            format!(r#"{{"action":"{a}","size":2000000,"topic":"nope"}}"#),
        ));
        records.push(In::new(
            format!("good{i}"),
            format!(r#"{{"action":"ok","id":{i}}}"#),
        ));
    }
    produce_all(&input, &records);
    let component = guest("hostile");
    let config = topics.config("hostile", &component, "[pipelines.limits]\ndeadline_ms = 300\nmemory_bytes = 33554432\nmax_output_bytes = 262144\n", "");
    let worker = WorkerProcess::start(&config);
    let good = read_until(&[&output], actions.len(), Duration::from_secs(120));
    let bad = read_until(&[&dlq], actions.len(), Duration::from_secs(60));
    assert_eq!(good.len(), actions.len(), "log:\n{}", worker.log_text());
    let mut kinds: Vec<(String, String)> = bad
        .iter()
        .map(|d| {
            (
                d.key.clone().unwrap(),
                d.header("pw.error.kind").to_string(),
            )
        })
        .collect();
    kinds.sort();
    let expected = [
        "deadline",
        "memory",
        "stack",
        "output-size",
        "failed",
        "failed",
        "trap",
        "unknown-topic",
    ];
    let mut want: Vec<(String, String)> = expected
        .iter()
        .enumerate()
        .map(|(i, k)| (format!("bad{i}"), k.to_string()))
        .collect();
    want.sort();
    assert_eq!(kinds, want);
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}
