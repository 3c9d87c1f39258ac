//! Errors a customer can act on: what a guest printed when it failed (a
//! Rust panic, a Python traceback) reaches that record's dead letter and one
//! log line naming its offset, bounded and sanitized, and a record replayed
//! after a batch trap is reported once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pipeline_worker::config::Limits;
use pipeline_worker::sandbox::text::MAX_ERROR_MESSAGE;
use pipeline_worker::sandbox::{Function, InputRecord, RecordError, Runner, SandboxOptions};

use crate::support::*;

fn opts() -> SandboxOptions {
    sandbox_opts(test_cache(), false, 1)
}

fn record(offset: i64, value: &str) -> InputRecord {
    InputRecord {
        key: Some(b"k".to_vec()),
        value: Some(value.as_bytes().to_vec()),
        headers: vec![],
        topic: "in".into(),
        partition: 0,
        offset,
        timestamp: Some(1),
    }
}

fn action(a: &str) -> String {
    format!(r#"{{"action":"{a}"}}"#)
}

/// Everything `tracing` writes on this thread while `f` runs (the runner
/// calls the guest on the calling thread).
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, text)
}

fn assert_clean(msg: &str) {
    assert!(msg.len() <= MAX_ERROR_MESSAGE, "{} bytes: {msg}", msg.len());
    assert!(
        !msg.chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "control characters in {msg:?}"
    );
}

/// In the sandbox: a panic's message and location are in the trap's error;
/// in a batch, the record replayed alone carries it, and the guest's text
/// is not logged at all (neither by the batch nor by the replay): it is in
/// the error, which the pipeline logs once.
#[test]
fn a_panic_inside_a_batch_is_reported_by_its_replay_only() {
    let f = Function::load_file("hostile", &guest("hostile"), &Limits::default(), &opts())
        .expect("load hostile");
    assert!(f.exports_batch());
    let mut r = Runner::new(f);
    let batch: Vec<InputRecord> = ["ok", "ok", "index-oob", "log", "ok"]
        .iter()
        .enumerate()
        .map(|(i, a)| record(i as i64, &action(a)))
        .collect();
    let (results, log) = logged(|| r.run_batch(&batch));
    let kinds: Vec<&str> = results
        .iter()
        .map(|r| r.as_ref().map(|_| "ok").unwrap_or_else(|e| e.kind()))
        .collect();
    assert_eq!(kinds, ["ok", "ok", "trap", "ok", "ok"]);
    let e = results[2].as_ref().unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("trap: wasm trap: wasm `unreachable` instruction executed"),
        "{msg}"
    );
    assert!(
        msg.contains("index out of bounds: the len is 3 but the index is 7"),
        "{msg}"
    );
    assert!(msg.contains("src/lib.rs:"), "{msg}");
    assert!(
        matches!(e, RecordError::Trap { guest, .. } if guest.as_str().starts_with("panicked at ")),
        "{e:?}"
    );
    assert_clean(&msg);
    assert_eq!(
        log.matches("index out of bounds").count(),
        0,
        "the panic is in the error, not in guest log lines:\n{log}"
    );
    // The `log` record's lines: logged once, though its batch ran and was
    // replayed.
    assert_eq!(
        log.matches("hostile: warn line").count(),
        1,
        "each guest line once:\n{log}"
    );
}

/// A guest that prints 1 MiB to stderr (an ANSI escape first) before it
/// panics: the error keeps the head and the panic at the end, within the
/// bound, with no escape left.
#[test]
fn a_flood_before_a_panic_is_bounded() {
    // A generous deadline: the flood is a thousand host calls on a shared machine.
    let limits = Limits {
        deadline_ms: 20_000,
        ..Limits::default()
    };
    let f =
        Function::load_file("hostile", &guest("hostile"), &limits, &opts()).expect("load hostile");
    let mut r = Runner::new(f);
    let (results, log) = logged(|| r.run_batch(&[record(0, &action("print-then-panic"))]));
    assert_eq!(
        results[0]
            .as_ref()
            .map(|_| "ok")
            .unwrap_or_else(|e| e.kind()),
        "trap"
    );
    let msg = results[0].as_ref().unwrap_err().to_string();
    assert_clean(&msg);
    assert!(msg.contains("flood starts"), "the head is kept: {msg}");
    assert!(msg.contains("bytes cut]"), "{msg}");
    assert!(
        msg.contains("index out of bounds") && msg.contains("src/lib.rs:"),
        "the panic at the end is kept: {msg}"
    );
    assert!(!log.contains('\u{1b}'), "no escape reaches the log either");
}

fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Through Kafka, batches of 8: a panicking record between good ones (so
/// the batch traps and is replayed) and one that floods stderr first. Each
/// gets exactly one dead letter with its panic in `pw.error.message`,
/// exactly one log line for its offset, and is counted once.
#[test]
fn a_rust_panic_reaches_its_dead_letter_once() {
    let topics = TestTopics::create("gerr", 1);
    let actions = [
        "ok",
        "ok",
        "index-oob",
        "ok",
        "ok",
        "print-then-panic",
        "ok",
    ];
    let records: Vec<In> = actions
        .iter()
        .enumerate()
        .map(|(i, a)| In::new(format!("k{i}"), format!(r#"{{"action":"{a}","id":{i}}}"#)))
        .collect();
    produce_all(&topics.input, &records);
    let config = topics.config(
        "panics",
        &guest("hostile"),
        "batch_size = 8\n[pipelines.limits]\ndeadline_ms = 20000\n",
        "\n[telemetry]\nhttp_listen = \"127.0.0.1:0\"\nlog_format = \"json\"\n",
    );
    let worker = WorkerProcess::start(&config);
    let port = bound_port(&worker, "serving /livez", Duration::from_secs(60));
    let good = read_until(&[&topics.output], 5, Duration::from_secs(120));
    assert_eq!(good.len(), 5, "log:\n{}", worker.log_text());
    // Whatever would double a dead letter has happened by the time all
    // good records are out; look a while longer anyway.
    let bad = read_until(&[&topics.dlq], 3, Duration::from_secs(10));
    assert_eq!(
        bad.len(),
        2,
        "one dead letter per panic; log:\n{}",
        worker.log_text()
    );
    for d in &bad {
        let offset: i64 = d.header("pw.origin.offset").parse().unwrap();
        assert_eq!(
            d.key.as_deref(),
            Some(format!("k{offset}").as_str()),
            "the dead letter is the record that panicked"
        );
        assert!(
            actions[offset as usize].ends_with("panic") || actions[offset as usize] == "index-oob"
        );
        assert_eq!(d.header("pw.error.kind"), "trap");
        let msg = d.header("pw.error.message");
        assert!(
            msg.contains("index out of bounds: the len is 3 but the index is 7"),
            "{msg}"
        );
        assert!(msg.contains("src/lib.rs:"), "{msg}");
        assert_clean(msg);
        if actions[offset as usize] == "print-then-panic" {
            assert!(msg.contains("bytes cut]"), "{msg}");
        }
    }
    // The counters: once each.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = http_get(port, "/metrics")
            .map(|(_, m)| m)
            .unwrap_or_default();
        if m.contains("pipeline_traps_total{") {
            let traps = sample(&m, "pipeline_traps_total", "pipeline=\"panics\"");
            let dl = sample(
                &m,
                "pipeline_records_dead_lettered_total",
                "error_kind=\"trap\"",
            );
            if traps == 2 && dl == 2 {
                break;
            }
            assert!(traps <= 2 && dl <= 2, "counted twice:\n{m}");
        }
        assert!(Instant::now() < deadline, "metrics never settled:\n{m}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = worker.log_text();
    let lines = json_lines(&log);
    for (i, a) in actions.iter().enumerate() {
        let for_offset: Vec<_> = lines
            .iter()
            .filter(|l| l["topic"] == topics.input.as_str() && l["offset"] == i as i64)
            .collect();
        let want = usize::from(*a != "ok");
        assert_eq!(
            for_offset.len(),
            want,
            "offset {i} ({a}): {for_offset:?}\nlog:\n{log}"
        );
        if let Some(l) = for_offset.first() {
            assert_eq!(l["pipeline"], "panics");
            assert_eq!(l["partition"], 0);
            // A file-configured function is named after its pipeline.
            assert_eq!(l["function"], "panics");
            assert_eq!(l["kind"], "trap");
            assert!(l["function_version"]
                .as_str()
                .is_some_and(|v| !v.is_empty()));
            let e = l["error"].as_str().unwrap();
            assert!(e.contains("index out of bounds"), "{e}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }
    assert_eq!(
        log.matches("index out of bounds").count(),
        2,
        "each panic in exactly one line (its record's):\n{log}"
    );
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// A Python exception: the function returns `failed` with the exception,
/// where it was raised and the traceback, whose last line names it.
#[test]
fn a_python_traceback_reaches_the_dead_letter() {
    let topics = TestTopics::create("gerr-py", 1);
    produce_all(&topics.input, &[In::new("k0", r#"{"amount":1}"#)]);
    let config = topics.config("raises", &python_component("py_raises"), "", "");
    let worker = WorkerProcess::start(&config);
    let bad = read_until(&[&topics.dlq], 1, Duration::from_secs(120));
    assert_eq!(bad.len(), 1, "log:\n{}", worker.log_text());
    assert_eq!(bad[0].header("pw.error.kind"), "failed");
    let msg = bad[0].header("pw.error.message");
    let lines: Vec<&str> = msg.lines().collect();
    assert!(
        lines[0].starts_with("function failed: ValueError: bad amount (at raises.py:"),
        "{msg}"
    );
    assert!(
        lines.contains(&"Traceback (most recent call last):"),
        "{msg}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("File \"") && l.ends_with(", in raises")),
        "{msg}"
    );
    assert_eq!(lines.last(), Some(&"ValueError: bad amount"), "{msg}");
    assert_clean(msg);
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}
