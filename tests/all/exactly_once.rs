//! `delivery = "exactly-once"` (issue 12): outputs, dead letters and input
//! offsets in one transaction, an aborted transaction rewound, a refused
//! output dead-lettered once, and the settings refused at start-up. Outputs
//! are read with `isolation.level=read_committed` (`support::read_until`).
//! Kill -9, zombies, broker restarts and two workers are in `chaos.rs`.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const EOS: &str = "delivery = \"exactly-once\"\ntransaction_interval_ms = 100\n";

/// A distinct worker identity per test process, so two tests (or two
/// members) never share a transactional.id and fence each other.
fn identity() -> String {
    unique("eos-worker")
}

fn start(config: &std::path::Path, env: &[(&str, &str)]) -> WorkerProcess {
    let id = identity();
    let mut all = vec![("PIPELINE_WORKER__KAFKA__WORKER_ID", id.as_str())];
    all.extend_from_slice(env);
    WorkerProcess::start_env("run", config, &all)
}

/// How often each `id` field occurs among `records`.
fn id_counts(records: &[Out]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in records {
        let id = r.json()["id"].to_string();
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

/// A stream over 2 partitions with poison records (an error and a trap):
/// one transaction fails mid-way (fault injection after its records were
/// produced). Afterwards every output and every dead letter is there exactly
/// once, nothing of the aborted transaction is visible, and a restart in the
/// same group processes nothing again (the offsets were committed with the
/// outputs).
#[test]
fn an_aborted_transaction_is_rewound_and_every_record_lands_once() {
    const N: usize = 400;
    let topics = TestTopics::create("eos", 2);
    let records: Vec<In> = (0..N)
        .map(|i| {
            let action = match i % 50 {
                7 => "error",
                23 => "panic",
                _ => "ok",
            };
            // One key per input partition: its outputs share an output
            // partition, so their order can be checked.
            let mut r = In::new(
                format!("p{}", i % 2),
                format!(r#"{{"action":"{action}","id":{i}}}"#),
            );
            r.partition = Some((i % 2) as i32);
            r
        })
        .collect();
    let dead_want = records
        .iter()
        .filter(|r| !r.value.contains("\"ok\""))
        .count();
    let out_want = N - dead_want;
    produce_all(&topics.input, &records);
    let config = topics.config(
        "eos",
        &guest("hostile"),
        &format!("{EOS}batch_size = 8\n"),
        "",
    );
    // Offset 60 of either partition: well inside the stream.
    let worker = start(
        &config,
        &[("PIPELINE_WORKER_FAULT_ABORT_TXN_AT_OFFSET", "60")],
    );
    let out = read_until(&[&topics.output], out_want, Duration::from_secs(60));
    let dead = read_until(&[&topics.dlq], dead_want, Duration::from_secs(30));
    let log = worker.log_text();
    assert!(
        log.contains("transaction aborted") && log.contains("fault injection"),
        "the injected failure must abort a transaction; log:\n{log}"
    );
    // Anything doubled would show up here: wait for stragglers first.
    let out_all = read_until(&[&topics.output], out_want + 1, Duration::from_secs(3));
    let dead_all = read_until(&[&topics.dlq], dead_want + 1, Duration::from_secs(1));
    assert_eq!(out.len(), out_want, "log:\n{log}");
    assert_eq!(dead.len(), dead_want, "log:\n{log}");
    assert_eq!(out_all.len(), out_want, "no output twice; log:\n{log}");
    assert_eq!(dead_all.len(), dead_want, "no dead letter twice");
    let counts = id_counts(&out_all);
    assert_eq!(counts.len(), out_want);
    assert!(counts.values().all(|c| *c == 1), "{counts:?}");
    for d in &dead_all {
        let kind = d.header("pw.error.kind");
        assert!(
            (d.value.contains("\"error\"") && kind == "invalid-input")
                || (d.value.contains("\"panic\"") && kind != "invalid-input"),
            "{kind} for {}",
            d.value
        );
    }
    assert_eq!(id_counts(&dead_all).len(), dead_want);
    // Per input partition (= key), order kept across the abort.
    for p in 0..2 {
        let key = format!("p{p}");
        let ids: Vec<i64> = out_all
            .iter()
            .filter(|o| o.key.as_deref() == Some(key.as_str()))
            .map(|o| o.json()["id"].as_i64().unwrap())
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: {ids:?}"
        );
    }
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));

    let again = start(&config, &[]);
    produce_all(
        &topics.input,
        &[In::new("last", format!(r#"{{"action":"ok","id":{N}}}"#))],
    );
    let after = read_until(&[&topics.output], out_want + 2, Duration::from_secs(20));
    assert_eq!(
        after.len(),
        out_want + 1,
        "only the new record; log:\n{}",
        again.log_text()
    );
    assert_eq!(again.terminate(Duration::from_secs(30)), Some(0));
}

/// An output over its topic's max.message.bytes (read at start-up) is
/// dead-lettered (`produce-rejected`) inside the transaction, before it
/// could make the broker refuse a batch: exactly one dead letter, and the
/// records around it once each.
#[test]
fn a_refused_output_is_dead_lettered_exactly_once() {
    let input = unique("eos-pe-in");
    let output = unique("eos-pe-out");
    let dlq = unique("eos-pe-dlq");
    create_topics(&[(&input, 1), (&dlq, 1)]);
    create_topic_with(&output, 1, &[("max.message.bytes", "20000")]);
    let mut records: Vec<In> = (0..10)
        .map(|i| In::new(format!("g{i}"), format!(r#"{{"action":"ok","id":{i}}}"#)))
        .collect();
    let bad = r#"{"action":"big-output","size":50000,"id":"big"}"#;
    records.insert(5, In::new("big", bad));
    produce_all(&input, &records);
    let config = write_config(
        &unique("eos-pe-group"),
        &[PipelineSpec {
            name: "hostile",
            inputs: &[&input],
            outputs: &[&output],
            dlq: &dlq,
            component: &guest("hostile"),
            extra: EOS,
        }],
        "",
    );
    let worker = start(&config, &[]);
    let out = read_until(&[&output], 10, Duration::from_secs(60));
    let dead = read_until(&[&dlq], 1, Duration::from_secs(20));
    let log = worker.log_text();
    assert_eq!(dead.len(), 1, "log:\n{log}");
    assert_eq!(dead[0].header("pw.error.kind"), "produce-rejected");
    assert_eq!(dead[0].value, bad, "the input is dead-lettered");
    assert_eq!(dead[0].header("pw.origin.offset"), "5");
    assert!(
        dead[0]
            .header("pw.error.message")
            .contains("max.message.bytes (20000)"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(out.len(), 10, "log:\n{log}");
    let out = read_until(&[&output], 11, Duration::from_secs(3));
    let dead = read_until(&[&dlq], 2, Duration::from_secs(1));
    assert_eq!((out.len(), dead.len()), (10, 1), "nothing twice");
    assert!(id_counts(&out).values().all(|c| *c == 1));
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// Settings that would break exactly-once stop start-up naming the key.
#[test]
fn settings_that_break_exactly_once_are_refused_naming_the_key() {
    let component = guest("hostile").display().to_string();
    let base = format!(
        "[kafka]\nbrokers = \"127.0.0.1:9092\"\n\n[[pipelines]]\nname = \"p\"\ninput_topics = [\"in\"]\noutput_topics = [\"out\"]\ndead_letter_topic = \"dlq\"\ncomponent = \"{component}\"\ndelivery = \"exactly-once\"\n"
    );
    let with = |k: &str, v: &str| {
        base.replace(
            "[kafka]\n",
            &format!("[kafka]\nlibrdkafka = {{ \"{k}\" = \"{v}\" }}\n"),
        )
    };
    let cases = [
        (
            with("isolation.level", "read_uncommitted"),
            "kafka.librdkafka.\"isolation.level\"",
        ),
        (
            with("enable.idempotence", "false"),
            "kafka.librdkafka.\"enable.idempotence\"",
        ),
        (
            with("transactional.id", "mine"),
            "kafka.librdkafka.\"transactional.id\"",
        ),
        (
            with("transaction.timeout.ms", "80"),
            "kafka.librdkafka.\"transaction.timeout.ms\"",
        ),
        (
            base.clone() + "transaction_interval_ms = 0\n",
            "pipelines[0].transaction_interval_ms",
        ),
        (
            base.clone() + "transaction_max_records = 0\n",
            "pipelines[0].transaction_max_records",
        ),
        (
            base.replace("\"exactly-once\"", "\"exactly_once\""),
            "pipelines[0].delivery",
        ),
    ];
    let dir = std::env::temp_dir().join(unique("eos-cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (toml, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("c{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
            .args(["validate", "--offline", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {text}");
        assert!(text.contains(key), "case {i} must name {key}: {text}");
    }
}
