//! `delivery = "exactly-once"` (issue 12): outputs, dead letters and input
//! offsets in one transaction, an aborted transaction rewound, a refused
//! output dead-lettered once, the settings refused at start-up, a revoke
//! committing the open transaction, and a hot swap switching versions at a
//! transaction boundary (seen as a commit marker's gap in the offsets). Outputs
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
    // The new record's output shows the restart consumed past the
    // committed offsets; anything processed again would come with it.
    let after = read_until(&[&topics.output], out_want + 1, Duration::from_secs(90));
    let after_all = read_until(&[&topics.output], out_want + 2, Duration::from_secs(3));
    assert_eq!(
        (after.len(), after_all.len()),
        (out_want + 1, out_want + 1),
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

/// `k{i % 32}` keys: with as many output as input partitions an output
/// lands in its input's partition number (same key hash), so an output
/// partition is written by one sandbox thread, in input order.
fn keyed(i: usize) -> In {
    In::new(
        format!("k{}", i % 32),
        format!(r#"{{"id":{i},"action":"ok","session_start":0,"session_end":2400}}"#),
    )
}

/// Every id of `0..n` exactly once among `out`.
fn assert_each_once(out: &[Out], n: usize, log: &str) {
    let counts = id_counts(out);
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(10).collect();
    assert!(
        twice.is_empty(),
        "ids twice (first 10): {twice:?}; logs:\n{log}"
    );
    let missing: Vec<usize> = (0..n)
        .filter(|i| !counts.contains_key(&i.to_string()))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "ids lost (first 10): {missing:?}; logs:\n{log}"
    );
    assert_eq!(out.len(), n, "logs:\n{log}");
}

/// A second worker joins the group of an exactly-once pipeline under load
/// (cooperative rebalancing): the first worker's open transaction, long
/// (10 s interval, longer than a join takes but on the most loaded machine,
/// and the load never pauses) so it holds records when the revoke comes, is committed
/// before its partitions are released, nothing is aborted, and a
/// `read_committed` reader sees every id once.
#[test]
fn a_revoke_commits_the_open_transaction_before_releasing_partitions() {
    const MAX: usize = 100_000;
    let topics = TestTopics::create("eos-revoke", 4);
    let config = topics.config(
        "eos",
        &guest("hostile"),
        "delivery = \"exactly-once\"\ntransaction_interval_ms = 10000\nconcurrency = 2\n",
        "",
    );
    let a = start(&config, &[]);
    wait_for_log(&a, "partitions assigned", Duration::from_secs(90));
    // The load runs until the second member owns partitions, so the first
    // holds records in its open transaction when the revoke comes, however
    // long the join takes on a loaded machine.
    let load = Stream::start(&topics.input, 0, keyed, 20, Duration::from_millis(10), MAX);
    load.wait_more(500, Duration::from_secs(60));
    let b = start(&config, &[]);
    wait_for_log(&b, "partitions assigned", Duration::from_secs(90));
    load.wait_more(200, Duration::from_secs(60));
    let n = load.stop();
    let logs = || {
        format!(
            "--- first:\n{}\n--- second:\n{}",
            a.log_text(),
            b.log_text()
        )
    };
    let out = read_until(&[&topics.output], n, Duration::from_secs(90));
    assert_each_once(&out, n, &logs());
    let again = read_until(&[&topics.output], n + 1, Duration::from_secs(3));
    assert_each_once(&again, n, &logs());
    let first = a.log_text();
    let line = first
        .lines()
        .find(|l| l.contains("revoke: committed the open transaction"))
        .unwrap_or_else(|| panic!("the first worker never committed on revoke:\n{}", logs()));
    let records: usize = line
        .split(" records=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no records= in {line}"));
    assert!(records > 0, "{line}");
    assert!(
        !format!("{first}{}", b.log_text()).contains("transaction aborted"),
        "nothing may abort:\n{}",
        logs()
    );
    assert_eq!(b.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(a.terminate(Duration::from_secs(30)), Some(0));
}

/// Hot swap of an exactly-once pipeline under load (registry activation):
/// every id once, and per output partition (= one input partition, one
/// sandbox thread) the version header goes enrich@1 → echo@1 once, never
/// back, and never inside a transaction. A transaction's records in a
/// partition have consecutive offsets; its commit marker takes the next
/// one, so a gap in the offsets a `read_committed` reader sees is a
/// transaction boundary, and the switch must fall on one.
#[test]
fn a_hot_swap_switches_versions_at_a_transaction_boundary() {
    const MAX: usize = 100_000;
    let plane = crate::registry::Plane::start_pipeline(
        "eos-swap",
        4,
        "delivery = \"exactly-once\"\ntransaction_interval_ms = 100\n",
    );
    let topics = &plane.topics;
    let enrich = plane.upload_ok("enrich", &guest("enrich_rs"));
    let echo = plane.upload_ok("echo", &guest("hostile"));
    assert_eq!(plane.activate("enrich", enrich).status, 202);
    let worker = start(&plane.config, &[]);
    plane.wait_workers_on(1, "enrich@1", Duration::from_secs(60));
    wait_for_log(&worker, "partitions assigned", Duration::from_secs(90));
    // The swap comes once enrich's outputs are seen, and the load lasts
    // until echo runs and then some: both versions handle records in the
    // stream however slow the machine.
    let load = Stream::start(
        &topics.input,
        0,
        keyed,
        100,
        Duration::from_millis(100),
        MAX,
    );
    assert_eq!(
        read_until(&[&topics.output], 1, Duration::from_secs(60)).len(),
        1,
        "enrich never produced; log:\n{}",
        worker.log_text()
    );
    assert_eq!(plane.activate("echo", echo).status, 202);
    plane.wait_workers_on(1, "echo@1", Duration::from_secs(60));
    load.wait_more(500, Duration::from_secs(60));
    let n = load.stop();
    let log = || worker.log_text();
    let out = read_until(&[&topics.output], n, Duration::from_secs(90));
    let again = read_until(&[&topics.output], n + 1, Duration::from_secs(3));
    assert_each_once(&again, n, &log());
    assert!(
        read_until(&[&topics.dlq], 1, Duration::from_secs(1)).is_empty(),
        "nothing dead-lettered"
    );
    let mut by_partition: std::collections::BTreeMap<i32, Vec<&Out>> = Default::default();
    for o in &out {
        by_partition.entry(o.partition).or_default().push(o);
    }
    let (mut switched, mut boundaries) = (0, 0);
    for (p, recs) in by_partition.iter_mut() {
        recs.sort_by_key(|o| o.offset);
        for w in recs.windows(2) {
            let (a, b) = (
                w[0].header("pw.function.version"),
                w[1].header("pw.function.version"),
            );
            assert!(
                (a, b) != ("echo@1", "enrich@1"),
                "partition {p}: offset {} ran enrich@1 after offset {} ran echo@1",
                w[1].offset,
                w[0].offset
            );
            if a != b {
                switched += 1;
                assert!(
                    w[1].offset > w[0].offset + 1,
                    "partition {p}: versions {a} → {b} at offsets {} → {}, inside one transaction; log:\n{}",
                    w[0].offset,
                    w[1].offset,
                    log()
                );
            }
            if w[1].offset > w[0].offset + 1 {
                boundaries += 1;
            }
        }
    }
    let enriched = out
        .iter()
        .filter(|o| o.header("pw.function.version") == "enrich@1")
        .count();
    assert!(
        enriched > 0 && enriched < n,
        "the swap happened mid-stream: {enriched} of {n} by enrich"
    );
    assert!(switched > 0, "no partition switched versions in the stream");
    // The check above means something only if transactions are visible.
    assert!(boundaries > switched, "{boundaries} boundaries seen");
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}
