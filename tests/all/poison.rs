//! Poison records through `run` against the real broker: every record a
//! producer can send either goes through or lands in the dead-letter topic
//! with a kind naming what was wrong; the worker stays alive and ready.
//! Tombstones follow the pipeline's `tombstones` setting. A thread that dies
//! makes `/readyz` name the pipeline and the process exit non-zero.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::*;

fn good(id: usize) -> String {
    format!(r#"{{"id":{id},"session_start":0,"session_end":60}}"#)
}

/// A valid record for enrich_rs padded to about `size` bytes.
fn padded(id: usize, size: usize) -> String {
    let head = format!(r#"{{"id":{id},"session_start":0,"session_end":60,"pad":""#);
    let pad = "x".repeat(size.saturating_sub(head.len() + 2));
    format!("{head}{pad}\"}}")
}

/// `/readyz` and `/metrics` on a port the worker picks (see `bound_port`).
const TELEMETRY: &str = "\n[telemetry]\nhttp_listen = \"127.0.0.1:0\"\n";

fn wait_ready(port: u16, worker: &WorkerProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(port, "/readyz").map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "never ready; log:\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn by_key(outs: &[Out]) -> HashMap<Option<String>, Out> {
    outs.iter().map(|o| (o.key.clone(), o.clone())).collect()
}

#[test]
fn poison_records_go_through_or_to_the_dead_letter_topic() {
    let topics = TestTopics::create("poison", 1);
    let config = topics.config("enrich", &guest("enrich_rs"), "", TELEMETRY);
    let worker = WorkerProcess::start(&config);
    let port = bound_port(&worker, "serving /livez", Duration::from_secs(60));
    wait_ready(port, &worker);

    let values: Vec<String> = (0..10).map(good).collect();
    let big_ok = padded(7, 900_000);
    // Just under the broker's default max.message.bytes (1048588): the input
    // is accepted, its output is over max_output_bytes.
    let big_refused = padded(8, 1_040_000);
    let many_headers: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..300)
        .map(|i| {
            let v = match i % 3 {
                0 => Some(vec![0xff, 0x00, 0xfe]),
                1 => None,
                _ => Some(Vec::new()),
            };
            (format!("h{i}").into_bytes(), v)
        })
        .collect();
    let k = |i: usize| format!("k{i}").into_bytes();
    let keys: Vec<Vec<u8>> = (0..10).map(k).collect();
    let records = vec![
        RawIn {
            key: Some(&keys[0]),
            value: Some(values[0].as_bytes()),
            headers: vec![],
        },
        RawIn {
            key: Some(&keys[1]),
            value: Some(values[1].as_bytes()),
            headers: vec![
                (b"ok".to_vec(), Some(b"1".to_vec())),
                (vec![0xff, 0xfe], Some(b"x".to_vec())),
            ],
        },
        // A tombstone: passes through unchanged (tombstones = "pass").
        RawIn {
            key: Some(&keys[2]),
            value: None,
            headers: vec![(b"why".to_vec(), Some(b"delete".to_vec()))],
        },
        RawIn {
            key: None,
            value: Some(values[3].as_bytes()),
            headers: vec![],
        },
        RawIn {
            key: Some(&keys[4]),
            value: Some(b""),
            headers: vec![],
        },
        RawIn {
            key: Some(&keys[5]),
            value: Some(b"not json at all"),
            headers: vec![],
        },
        RawIn {
            key: Some(&keys[6]),
            value: Some(values[6].as_bytes()),
            headers: many_headers,
        },
        RawIn {
            key: Some(&keys[7]),
            value: Some(big_ok.as_bytes()),
            headers: vec![],
        },
        RawIn {
            key: Some(&keys[8]),
            value: Some(big_refused.as_bytes()),
            headers: vec![],
        },
        RawIn {
            key: Some(&keys[9]),
            value: Some(values[9].as_bytes()),
            headers: vec![],
        },
    ];
    produce_raw(&topics.input, &records, &[("message.max.bytes", "1100000")]);
    // Records from compressed batches.
    for (n, codec) in ["gzip", "snappy", "lz4"].iter().enumerate() {
        let recs: Vec<Vec<u8>> = (0..3)
            .map(|j| good(100 + 10 * n + j).into_bytes())
            .collect();
        let ks: Vec<Vec<u8>> = (0..3).map(|j| format!("{codec}{j}").into_bytes()).collect();
        let raw: Vec<RawIn> = recs
            .iter()
            .zip(&ks)
            .map(|(v, k)| RawIn {
                key: Some(k),
                value: Some(v),
                headers: vec![],
            })
            .collect();
        produce_raw(
            &topics.input,
            &raw,
            &[("compression.type", codec), ("linger.ms", "50")],
        );
    }

    let outs = read_until(&[&topics.output], 6 + 9, Duration::from_secs(90));
    let dlq = read_until(&[&topics.dlq], 4, Duration::from_secs(60));
    let log = worker.log_text();
    assert_eq!(
        outs.len(),
        15,
        "outputs: {:?}\nlog:\n{log}",
        outs.iter().map(|o| &o.key).collect::<Vec<_>>()
    );
    assert_eq!(
        dlq.len(),
        4,
        "dead letters: {:?}\nlog:\n{log}",
        dlq.iter()
            .map(|o| (&o.key, o.headers.get("pw.error.kind")))
            .collect::<Vec<_>>()
    );
    assert!(!log.contains("panicked"), "a thread panicked:\n{log}");
    let outs = by_key(&outs);
    let dlq = by_key(&dlq);
    let key = |i: usize| Some(format!("k{i}"));

    for i in [0, 9] {
        assert_eq!(outs[&key(i)].json()["id"], i, "good record {i}");
    }
    // Non-UTF-8 header key: dead-lettered, naming the header; kept byte for byte.
    let d = &dlq[&key(1)];
    assert_eq!(d.header("pw.error.kind"), "invalid-input");
    let msg = d.header("pw.error.message");
    assert!(
        msg.contains("header 1") && msg.contains(r"\xff\xfe"),
        "{msg}"
    );
    assert!(
        d.header_keys.iter().any(|k| k == &[0xff, 0xfe]),
        "original header key kept: {:?}",
        d.header_keys
    );
    assert_eq!(d.value, values[1]);
    // Tombstone passed through as a tombstone, with its key and headers.
    let t = &outs[&key(2)];
    assert!(
        t.value_is_null,
        "a tombstone stays a tombstone: {:?}",
        t.value
    );
    assert_eq!(t.header("why"), "delete");
    // Null key goes through with a null key.
    assert_eq!(outs[&None].json()["id"], 3);
    // Empty and non-JSON values: invalid-input naming JSON.
    for i in [4, 5] {
        let d = &dlq[&key(i)];
        assert_eq!(d.header("pw.error.kind"), "invalid-input", "record {i}");
        assert!(
            d.header("pw.error.message").to_lowercase().contains("json"),
            "record {i}: {}",
            d.header("pw.error.message")
        );
        assert!(!d.value_is_null, "an empty value stays empty, not null");
    }
    let h = &outs[&key(6)];
    assert_eq!(h.json()["id"], 6);
    assert!(
        h.header_keys.len() >= 300,
        "{} headers",
        h.header_keys.len()
    );
    assert_eq!(outs[&key(7)].json()["id"], 7);
    assert!(outs[&key(7)].value.len() > 900_000);
    assert_eq!(dlq[&key(8)].header("pw.error.kind"), "output-size");
    for (n, codec) in ["gzip", "snappy", "lz4"].iter().enumerate() {
        for j in 0..3 {
            let o = &outs[&Some(format!("{codec}{j}"))];
            assert_eq!(o.json()["id"], 100 + 10 * n + j, "{codec} record {j}");
        }
    }
    assert!(worker_alive(&worker), "log:\n{}", worker.log_text());
    assert_eq!(http_get(port, "/readyz").map(|r| r.0), Some(200));
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

fn worker_alive(w: &WorkerProcess) -> bool {
    // `kill -0`: the process exists and has not exited.
    std::process::Command::new("kill")
        .args(["-0", &w.child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success())
        && !w.log_text().contains("worker stopped")
}

/// Records from a topic the broker stores zstd-compressed
/// (`compression.type=zstd` recompresses whatever producers send).
#[test]
fn zstd_compressed_records_are_consumed() {
    let input = unique("zstd-in");
    create_topic_with(&input, 1, &[("compression.type", "zstd")]);
    let output = unique("zstd-out");
    let dlq = unique("zstd-dlq");
    create_topics(&[(&output, 1), (&dlq, 1)]);
    let config = write_config(
        &unique("zstd-group"),
        &[PipelineSpec {
            name: "enrich",
            inputs: &[&input],
            outputs: &[&output],
            dlq: &dlq,
            component: &guest("enrich_rs"),
            extra: "",
        }],
        "",
    );
    produce_all(
        &input,
        &(0..5)
            .map(|i| In::new(format!("z{i}"), good(i)))
            .collect::<Vec<_>>(),
    );
    let worker = WorkerProcess::start(&config);
    let outs = read_until(&[&output], 5, Duration::from_secs(60));
    assert_eq!(outs.len(), 5, "log:\n{}", worker.log_text());
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// `tombstones = "drop"` commits a tombstone without output, `"dead-letter"`
/// sends it to the dead-letter topic with kind `tombstone` and its key.
#[test]
fn tombstones_drop_and_dead_letter() {
    let drop_t = TestTopics::create("tomb-drop", 1);
    let dl_t = TestTopics::create("tomb-dl", 1);
    let component = guest("enrich_rs");
    let config = write_config(
        &unique("tomb-group"),
        &[
            PipelineSpec {
                name: "drop",
                inputs: &[&drop_t.input],
                outputs: &[&drop_t.output],
                dlq: &drop_t.dlq,
                component: &component,
                extra: "tombstones = \"drop\"",
            },
            PipelineSpec {
                name: "dl",
                inputs: &[&dl_t.input],
                outputs: &[&dl_t.output],
                dlq: &dl_t.dlq,
                component: &component,
                extra: "tombstones = \"dead-letter\"",
            },
        ],
        "",
    );
    let v0 = good(0);
    let v2 = good(2);
    let recs = [
        RawIn {
            key: Some(b"a"),
            value: Some(v0.as_bytes()),
            headers: vec![],
        },
        RawIn {
            key: Some(b"gone"),
            value: None,
            headers: vec![],
        },
        RawIn {
            key: Some(b"c"),
            value: Some(v2.as_bytes()),
            headers: vec![],
        },
    ];
    produce_raw(&drop_t.input, &recs, &[]);
    produce_raw(&dl_t.input, &recs, &[]);
    let worker = WorkerProcess::start(&config);
    let drop_out = read_until(&[&drop_t.output], 2, Duration::from_secs(60));
    let dl_out = read_until(&[&dl_t.output], 2, Duration::from_secs(60));
    let dl_dlq = read_until(&[&dl_t.dlq], 1, Duration::from_secs(30));
    let log = worker.log_text();
    assert_eq!(drop_out.len(), 2, "log:\n{log}");
    assert!(drop_out.iter().all(|o| !o.value_is_null));
    assert_eq!(dl_out.len(), 2, "log:\n{log}");
    assert_eq!(dl_dlq.len(), 1, "log:\n{log}");
    assert_eq!(dl_dlq[0].key.as_deref(), Some("gone"));
    assert!(dl_dlq[0].value_is_null);
    assert_eq!(dl_dlq[0].header("pw.error.kind"), "tombstone");
    // Nothing else arrives: the dropped tombstone produced nothing anywhere.
    assert!(read_until(&[&drop_t.output, &drop_t.dlq], 3, Duration::from_secs(3)).len() == 2);
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// `tombstones = "function"` with a component that cannot receive a null
/// value (built against pipeline:transform@0.1) is refused at start-up.
#[test]
fn tombstones_function_refuses_a_0_1_component() {
    let topics = TestTopics::create("tomb-fn", 1);
    let config = topics.config("echo", &guest("v01_echo"), "tombstones = \"function\"", "");
    let mut worker = WorkerProcess::start(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = worker.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "worker kept running:\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = worker.log_text();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(".tombstones") && log.contains("null value"),
        "{log}"
    );
}

/// A sandbox thread that panics (fault injection) makes `/readyz` answer
/// 503 naming the pipeline, and the process exit non-zero within seconds.
#[test]
fn dead_sandbox_thread_fails_readiness_and_exits_non_zero() {
    let topics = TestTopics::create("dead", 1);
    let config = topics.config("doomed", &guest("enrich_rs"), "", TELEMETRY);
    let mut worker = WorkerProcess::start_env(
        "run",
        &config,
        &[("PIPELINE_WORKER_FAULT_PANIC_AT_OFFSET", "3")],
    );
    let port = bound_port(&worker, "serving /livez", Duration::from_secs(60));
    wait_ready(port, &worker);
    produce_all(
        &topics.input,
        &(0..10)
            .map(|i| In::new(format!("k{i}"), good(i)))
            .collect::<Vec<_>>(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw = None;
    let status = loop {
        if let Some((503, body)) = http_get(port, "/readyz") {
            if body.contains("doomed") && body.contains("panicked") {
                saw.get_or_insert((Instant::now(), body));
            }
        }
        if let Some(st) = worker.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "worker kept running:\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let log = worker.log_text();
    let (seen_at, body) =
        saw.unwrap_or_else(|| panic!("/readyz never named the dead pipeline; log:\n{log}"));
    assert!(!status.success(), "{log}");
    assert!(
        seen_at.elapsed() < Duration::from_secs(10),
        "exit came {:?} after the 503",
        seen_at.elapsed()
    );
    assert!(body.contains("sandbox thread"), "{body}");
    // The records at and after the panic were not committed past: nothing of
    // offset >= 3 reached the output.
    let outs = read_until(&[&topics.output], 10, Duration::from_secs(5));
    assert!(
        outs.iter().all(|o| o.json()["id"].as_u64().unwrap() < 3),
        "{:?}",
        outs.iter()
            .map(|o| o.json()["id"].clone())
            .collect::<Vec<_>>()
    );
}
