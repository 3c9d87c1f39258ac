//! Hostile components: every trap is typed, the worker goes on, the next
//! record runs in a fresh instance. First in-process through the sandbox
//! (precise kinds), then through Kafka (dead letters, flow continues).

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipeline_worker::config::Limits;
use pipeline_worker::sandbox::{Function, InputRecord, RecordError, Runner, SandboxOptions};

use crate::support::*;

fn opts() -> SandboxOptions {
    sandbox_opts(test_cache(), true, 2)
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
        value: Some(value.as_bytes().to_vec()),
        headers: vec![],
        topic: "in".into(),
        partition: 0,
        offset: 0,
        timestamp: Some(1),
    }
}

fn raw_record(value: &[u8]) -> InputRecord {
    InputRecord {
        value: Some(value.to_vec()),
        ..record("")
    }
}

fn hostile(fuel: Option<u64>) -> Arc<Function> {
    Function::load_file("hostile", &guest("hostile"), &limits(fuel), &opts()).expect("load hostile")
}

fn hostile_with(limits: &Limits) -> Arc<Function> {
    Function::load_file("hostile", &guest("hostile"), limits, &opts()).expect("load hostile")
}

/// Fuel that no test record exhausts: metering is on but never trips.
const AMPLE_FUEL: u64 = 1 << 50;

fn kinds(
    results: &[Result<Vec<pipeline_worker::sandbox::OutputRecord>, RecordError>],
) -> Vec<&str> {
    results
        .iter()
        .map(|r| r.as_ref().map(|_| "ok").unwrap_or_else(|e| e.kind()))
        .collect()
}

/// A record that blocks in the host is stopped at its deadline (not before,
/// not much after) with kind `deadline`, and the next record runs.
fn assert_stopped_at_deadline(r: &mut Runner, value: &str, deadline_ms: u64) {
    let started = Instant::now();
    let e = run_one(r, value).unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(e.kind(), "deadline", "{value}: {e}");
    assert!(
        elapsed >= Duration::from_millis(deadline_ms - 20),
        "{value}: stopped after {elapsed:?}, before the {deadline_ms} ms deadline"
    );
    assert!(
        elapsed < Duration::from_millis(deadline_ms) + Duration::from_secs(2),
        "{value}: stopped only after {elapsed:?} (deadline {deadline_ms} ms)"
    );
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
    let v: serde_json::Value = serde_json::from_slice(out[0].value.as_deref().unwrap()).unwrap();
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

#[test]
fn blocking_in_wasi_hits_the_deadline_with_and_without_fuel() {
    for fuel in [None, Some(AMPLE_FUEL)] {
        let mut r = Runner::new(hostile(fuel));
        for action in ["sleep", "poll", "poll-instant"] {
            assert_stopped_at_deadline(&mut r, &format!(r#"{{"action":"{action}"}}"#), 300);
            assert_ok_after(&mut r);
        }
    }
}

/// stdin is empty: a read to its end returns with nothing, never blocks.
/// A blocked read would end in a deadline error; the deadline is long so a
/// loaded machine's slow call is not taken for one.
#[test]
fn reading_stdin_returns_at_once_with_nothing() {
    let mut r = Runner::new(hostile_with(&Limits {
        deadline_ms: 10_000,
        ..limits(None)
    }));
    let out = run_one(&mut r, r#"{"action":"stdin"}"#).expect("stdin action: a read that blocked");
    let v: serde_json::Value = serde_json::from_slice(out[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(v["stdin_bytes"], 0, "{v}");
}

#[test]
fn python_time_sleep_hits_the_deadline_with_and_without_fuel() {
    for fuel in [None, Some(AMPLE_FUEL)] {
        let f = Function::load_file(
            "sleeps",
            &python_component("py_sleeps"),
            &limits(fuel),
            &opts(),
        )
        .expect("load py_sleeps");
        let mut r = Runner::new(f);
        let started = Instant::now();
        let e = r
            .run_batch(&[raw_record(b"sleep")])
            .pop()
            .unwrap()
            .unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(e.kind(), "deadline", "fuel {fuel:?}: {e}");
        assert!(
            elapsed < Duration::from_millis(300 + 2000),
            "fuel {fuel:?}: {elapsed:?}"
        );
        let out = r
            .run_batch(&[raw_record(b"next")])
            .pop()
            .unwrap()
            .expect("next record");
        assert_eq!(out[0].value.as_deref(), Some(&b"next"[..]));
    }
}

/// Through the binary: `pipeline-worker test` reports the deadline and goes
/// on to the next line instead of hanging.
#[test]
fn pipeline_worker_test_stops_a_sleeping_python_function() {
    let dir = std::env::temp_dir().join(unique("pw-sleep-test"));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        "sleep
next
",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .args(["test", "--deadline-ms", "500", "--component"])
        .arg(python_component("py_sleeps"))
        .arg("--input")
        .arg(&input)
        .arg("--cache-dir")
        .arg(cache_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pipeline-worker test");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`pipeline-worker test` still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(!status.success(), "a deadline error is a problem: {stdout}");
    assert!(stdout.contains("in.jsonl:1: ERROR [deadline]"), "{stdout}");
    assert!(stdout.contains("in.jsonl:2: 1 output(s)"), "{stdout}");
}

/// Wasm runs on its own fiber stack: 8 MiB of wasm stack works from a thread
/// with a small stack of its own, and unbounded recursion is still `stack`.
#[test]
fn eight_mib_of_wasm_stack_on_a_small_thread() {
    let limits = Limits {
        max_stack_bytes: 8 << 20,
        ..limits(None)
    };
    let f = hostile_with(&limits);
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            let mut r = Runner::new(f);
            let e = run_one(&mut r, r#"{"action":"recurse-locals"}"#).unwrap_err();
            assert_eq!(e.kind(), "stack", "{e}");
            assert_ok_after(&mut r);
        })
        .unwrap()
        .join()
        .expect("the sandbox thread survives");
}

/// One looping or sleeping record in a batch of 8 costs one batch deadline,
/// then its own deadline in the replay: well under 3 deadlines in total, not
/// 8 of them.
#[test]
fn a_stuck_record_in_a_batch_costs_about_one_deadline() {
    let mut r = Runner::new(hostile(None));
    assert!(r.function().exports_batch());
    for stuck in ["loop", "sleep"] {
        let batch: Vec<InputRecord> = (0..8)
            .map(|i| {
                let a = if i == 5 { stuck } else { "ok" };
                record(&format!(r#"{{"action":"{a}","id":{i}}}"#))
            })
            .collect();
        let started = Instant::now();
        let results = r.run_batch(&batch);
        let elapsed = started.elapsed();
        assert_eq!(
            kinds(&results),
            ["ok", "ok", "ok", "ok", "ok", "deadline", "ok", "ok"],
            "{stuck}"
        );
        assert!(
            elapsed < Duration::from_millis(3 * 300),
            "{stuck}: batch took {elapsed:?}"
        );
    }
}

/// A host call's bytes are bounded whatever the batch size: an 4 MiB `log`
/// fails its record (it would have fit in 8 × the per-record budget).
#[test]
fn a_huge_log_call_in_a_batch_is_refused() {
    let mut r = Runner::new(hostile(None));
    let batch: Vec<InputRecord> = (0..8)
        .map(|i| {
            if i == 2 {
                record(r#"{"action":"log-huge","size":4194304}"#)
            } else {
                record(&format!(r#"{{"action":"ok","id":{i}}}"#))
            }
        })
        .collect();
    let results = r.run_batch(&batch);
    assert_eq!(
        kinds(&results),
        ["ok", "ok", "output-size", "ok", "ok", "ok", "ok", "ok"]
    );
    // The per-call budget is ~1 MiB: a log under it still goes through.
    let out = run_one(&mut r, r#"{"action":"log-huge","size":100000}"#).expect("small log");
    assert_eq!(out.len(), 1);
}

#[test]
fn fan_out_past_max_outputs_is_output_count() {
    let mut r = Runner::new(hostile(None));
    let max = Limits::default().max_outputs;
    match run_one(&mut r, r#"{"action":"fanout-empty","n":5000}"#) {
        Err(RecordError::OutputCount { count, limit }) => {
            assert_eq!((count, limit), (5000, max))
        }
        other => panic!("expected output-count, got {other:?}"),
    }
    let out = run_one(&mut r, &format!(r#"{{"action":"fanout-empty","n":{max}}}"#))
        .expect("exactly max_outputs is allowed");
    assert_eq!(out.len(), max);
    assert!(out.iter().all(|o| o.value.as_deref() == Some(&b""[..])));
}

/// A `pipeline:transform@0.1` component (built with wit-bindgen against
/// sdk-wit/wit-0.1) runs next to a 0.2 one: a null value reaches it as
/// empty, its outputs come back as present values.
#[test]
fn a_0_1_component_runs_next_to_a_0_2_one() {
    let old = Function::load_file("v01", &guest("v01_echo"), &limits(None), &opts())
        .expect("load v01-echo");
    assert_eq!(old.world, "pipeline:transform/transformer@0.1.0");
    assert!(old.wit_version.starts_with("0.1."), "{}", old.wit_version);
    assert!(!old.accepts_null_values());
    let new = Function::load_file(
        "sleeps",
        &python_component("py_sleeps"),
        &limits(None),
        &opts(),
    )
    .expect("load py_sleeps");
    assert!(new.wit_version.starts_with("0.2."), "{}", new.wit_version);
    assert!(new.accepts_null_values());
    let (mut old, mut new) = (Runner::new(old), Runner::new(new));
    let tombstone = InputRecord {
        value: None,
        ..raw_record(b"")
    };
    for _ in 0..2 {
        let out = old.run_batch(&[raw_record(b"abc"), tombstone.clone()]);
        let out: Vec<_> = out.into_iter().map(|r| r.expect("v01 echo")).collect();
        assert_eq!(out[0][0].value.as_deref(), Some(&b"abc"[..]));
        assert_eq!(out[0][0].key.as_deref(), Some(&b"k"[..]));
        let len = |o: &pipeline_worker::sandbox::OutputRecord| {
            o.headers
                .iter()
                .find(|h| h.key == "v01-value-len")
                .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        };
        assert_eq!(len(&out[0][0]).as_deref(), Some("3"));
        assert_eq!(
            out[1][0].value.as_deref(),
            Some(&b""[..]),
            "null → empty → present"
        );
        assert_eq!(len(&out[1][0]).as_deref(), Some("0"));
        let e = old
            .run_batch(&[raw_record(b"fail")])
            .pop()
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), "failed", "{e}");
        // The 0.2 component keeps the null.
        let out = new
            .run_batch(std::slice::from_ref(&tombstone))
            .pop()
            .unwrap()
            .expect("0.2 echo");
        assert_eq!(out[0].value, None);
    }
}

#[test]
fn other_minors_of_the_world_are_refused_naming_the_version() {
    let cases = [
        r#"(component (instance $i) (export "pipeline:transform/transformer@0.3.0" (instance $i)))"#,
        r#"(component (import "pipeline:transform/host@0.3.0" (instance)) (instance $i) (export "pipeline:transform/transformer@0.2.0" (instance $i)))"#,
    ];
    for wat in cases {
        let bytes = wat::parse_str(wat).unwrap();
        match Function::load_bytes("x", "case", &bytes, &limits(None), &opts()) {
            Err(e @ pipeline_worker::sandbox::LoadError::UnsupportedWorldVersion { .. }) => {
                let m = e.to_string();
                assert!(m.contains("0.3.0") && m.contains("0.1.x or 0.2.x"), "{m}");
            }
            Err(e) => panic!("{wat}: expected unsupported-world-version, got {e}"),
            Ok(_) => panic!("{wat}: loaded"),
        }
    }
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
