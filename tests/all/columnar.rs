//! Columnar pipelines (issue 13) against the real broker, with the
//! `columnar-probe` guest: per-row behaviour picked by its `action` column.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const PROBE_SCHEMA: &str = r#"
[[pipelines.schema]]
name = "id"
type = "int64"
nullable = false
[[pipelines.schema]]
name = "action"
type = "utf8"
[[pipelines.schema]]
name = "value"
type = "float64"
"#;

/// What the probe does to record `i`, and the value it is sent with.
fn action(i: usize, route: &str) -> (String, usize, usize) {
    // (value, outputs on the first topic, outputs on `route`)
    match i % 10 {
        1 => (format!(r#"{{"id":{i},"action":"drop","value":1.0}}"#), 0, 0),
        2 => (
            format!(r#"{{"id":{i},"action":"fanout","value":{i}.5}}"#),
            2,
            0,
        ),
        3 => (
            format!(r#"{{"id":{i},"action":"route:{route}","value":1}}"#),
            0,
            1,
        ),
        4 => (format!(r#"{{"id":{i},"action":"error"}}"#), 0, 0),
        5 if i % 20 == 5 => (format!(r#"{{"id":{i},"action":"trap"}}"#), 0, 0),
        6 => (format!(r#"{{"id":"not a number {i}","value":1}}"#), 0, 0),
        7 => (
            format!(r#"{{"id":{i},"value":{i},"unknown":"dropped"}}"#),
            1,
            0,
        ),
        _ => (format!(r#"{{"id":{i},"action":"keep","value":{i}}}"#), 1, 0),
    }
}

/// One worker, two pipelines: the probe (columnar) and a 0.1 per-record
/// echo beside it. Covers schema mismatches, `_error`, a trapping row found
/// by bisection, drop, fan-out and routing, keys, headers and order.
#[test]
fn probe_rows_map_route_fail_and_flow_next_to_a_v01_function() {
    let topics = TestTopics::create("col", 2);
    let routed = unique("col-routed");
    let (echo_in, echo_out) = (unique("col-echo-in"), unique("col-echo-out"));
    create_topics(&[(&routed, 1), (&echo_in, 1), (&echo_out, 1)]);
    let n = 120;
    let mut records = Vec::new();
    let mut want = (0, 0);
    for i in 0..n {
        let (v, main, r) = action(i, &routed);
        want.0 += main;
        want.1 += r;
        records.push(In::new(format!("k{i}"), v).header("origin", &format!("o{i}")));
    }
    produce_all(&topics.input, &records);
    let echo: Vec<In> = (0..20)
        .map(|i| In::new(format!("e{i}"), format!("echo {i}")))
        .collect();
    produce_all(&echo_in, &echo);
    let probe = guest("columnar_probe");
    let v01 = guest("v01_echo");
    let extra = format!("batch_size = 16\n{PROBE_SCHEMA}");
    let config = write_config(
        &unique("col-group"),
        &[
            PipelineSpec {
                name: "probe",
                inputs: &[&topics.input],
                outputs: &[&topics.output, &routed],
                dlq: &topics.dlq,
                component: &probe,
                extra: &extra,
            },
            PipelineSpec {
                name: "echo",
                inputs: &[&echo_in],
                outputs: &[&echo_out],
                dlq: &topics.dlq,
                component: &v01,
                extra: "",
            },
        ],
        "",
    );
    let worker = WorkerProcess::start(&config);
    // Dead letters: ids ending in 4 (error), 6 (schema) and 5, 25, 45...
    let want_dead = (0..n)
        .filter(|i| i % 10 == 4 || i % 10 == 6 || i % 20 == 5)
        .count();
    let main = read_until(&[&topics.output], want.0, Duration::from_secs(60));
    let route = read_until(&[&routed], want.1, Duration::from_secs(20));
    let dead = read_until(&[&topics.dlq], want_dead, Duration::from_secs(20));
    let echoed = read_until(&[&echo_out], 20, Duration::from_secs(20));
    let log = worker.log_text();
    assert_eq!(main.len(), want.0, "outputs; log:\n{log}");
    assert_eq!(route.len(), want.1, "routed; log:\n{log}");
    assert_eq!(dead.len(), want_dead, "dead letters; log:\n{log}");
    assert_eq!(echoed.len(), 20, "the 0.1 echo next to it; log:\n{log}");
    for e in &echoed {
        let i: usize = e.key.as_deref().unwrap()[1..].parse().unwrap();
        assert_eq!(e.value, format!("echo {i}"));
    }
    let id_of = |o: &Out| -> usize { o.key.as_deref().unwrap()[1..].parse().unwrap() };
    let mut copies: HashMap<usize, Vec<i64>> = HashMap::new();
    for o in &main {
        let i = id_of(o);
        let j = o.json();
        assert_eq!(j["id"], i as i64, "{}", o.value);
        assert_eq!(o.header("origin"), format!("o{i}"), "headers of its input");
        assert!(
            j.get("_row").is_none() && j.get("unknown").is_none(),
            "{}",
            o.value
        );
        match i % 10 {
            2 => {
                assert_eq!(
                    j["value"].as_f64(),
                    Some(i as f64 + 0.5),
                    "fan-out keeps value"
                );
                copies
                    .entry(i)
                    .or_default()
                    .push(j["copy"].as_i64().unwrap());
            }
            0 | 5 | 7 | 8 | 9 => {
                assert_eq!(j["value"].as_f64(), Some(2.0 * i as f64), "{}", o.value);
                assert!(j.get("copy").is_none(), "null copy left out: {}", o.value);
            }
            k => panic!(
                "record {i} (kind {k}) should not reach the output: {}",
                o.value
            ),
        }
    }
    for (i, c) in &copies {
        assert_eq!(
            c,
            &vec![0, 1],
            "fan-out copies of {i}, adjacent and in order"
        );
    }
    // Order per partition: keys in input order (records were produced by key).
    let mut by_part: HashMap<i32, Vec<usize>> = HashMap::new();
    for o in &main {
        by_part.entry(o.partition).or_default().push(id_of(o));
    }
    for ids in by_part.values() {
        assert!(ids.windows(2).all(|w| w[0] <= w[1]), "order kept: {ids:?}");
    }
    for o in &route {
        assert_eq!(id_of(o) % 10, 3);
        assert_eq!(o.json()["value"].as_f64(), Some(1.0));
    }
    for d in &dead {
        let i = id_of(d);
        let (kind, msg) = (d.header("pw.error.kind"), d.header("pw.error.message"));
        assert_eq!(d.value, records[i].value, "original value kept");
        match i % 10 {
            4 => {
                assert_eq!(kind, "failed");
                assert!(msg.contains(&format!("probe error for id {i}")), "{msg}");
            }
            6 => {
                assert_eq!(kind, "invalid-input");
                assert!(msg.contains("'id'"), "names the field: {msg}");
            }
            5 => {
                assert_eq!(kind, "trap", "{msg}");
                assert!(msg.contains(&format!("probe trap at id {i}")), "{msg}");
            }
            _ => panic!("record {i} should not be dead-lettered: {kind} {msg}"),
        }
    }
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// Exactly-once with a columnar function: every id once under read_committed.
#[test]
fn exactly_once_columnar_delivers_every_id_once() {
    let topics = TestTopics::create("col-eos", 2);
    let n = 200;
    let records: Vec<In> = (0..n)
        .map(|i| In::new(format!("k{i}"), format!(r#"{{"id":{i},"value":1}}"#)))
        .collect();
    produce_all(&topics.input, &records);
    let extra = format!(
        "batch_size = 32\ndelivery = \"exactly-once\"\ntransaction_interval_ms = 100\n{PROBE_SCHEMA}"
    );
    let config = topics.config("probe-eos", &guest("columnar_probe"), &extra, "");
    let worker = WorkerProcess::start(&config);
    let out = read_until(&[&topics.output], n, Duration::from_secs(60));
    // A moment more: a duplicate would arrive after the n-th.
    let again = read_until(&[&topics.output], n + 1, Duration::from_secs(2));
    let log = worker.log_text();
    assert_eq!(out.len(), n, "log:\n{log}");
    assert_eq!(again.len(), n, "no duplicates; log:\n{log}");
    let mut ids: Vec<i64> = out
        .iter()
        .map(|o| o.json()["id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..n as i64).collect::<Vec<_>>());
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// A columnar function on a pipeline without a schema stops start-up,
/// naming the key.
#[test]
fn a_columnar_function_without_a_schema_is_refused_at_start() {
    let topics = TestTopics::create("col-noschema", 1);
    let config = topics.config("probe", &guest("columnar_probe"), "", "");
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .args(["validate", "--offline", "--config"])
        .arg(&config)
        .output()
        .expect("run validate");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("pipelines[0].schema"), "{text}");
    assert!(text.contains("columnar"), "{text}");
}

/// `pipeline-worker test` runs a columnar function with `--schema`, under
/// the same limits: a trapping row is isolated, the others pass.
#[test]
fn local_test_runs_a_columnar_function() {
    let dir = std::env::temp_dir().join(unique("col-lt"));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("schema.toml");
    std::fs::write(&schema, PROBE_SCHEMA.replace("pipelines.schema", "schema")).unwrap();
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        [
            r#"{"id":1,"value":2}"#,
            r#"{"id":2,"action":"trap"}"#,
            r#"{"id":3,"action":"fanout","value":3}"#,
            r#"{"id":"x"}"#,
        ]
        .join("\n")
            + "\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .arg("test")
        .arg("--cache-dir")
        .arg(repo_root().join(".cache/pipeline-worker-tests"))
        .arg("--component")
        .arg(guest("columnar_probe"))
        .arg("--schema")
        .arg(&schema)
        .arg("--input")
        .arg(&input)
        .output()
        .expect("run test");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(r#""value":4.0"#), "{text}");
    assert!(text.contains("probe trap at id 2"), "{text}");
    assert!(text.contains(r#""copy":1"#), "{text}");
    assert!(text.contains("'id'"), "{text}");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[schema]]\nname = \"id\"\ntype = \"int\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .arg("test")
        .arg("--component")
        .arg(guest("columnar_probe"))
        .arg("--schema")
        .arg(&bad)
        .arg("--input")
        .arg(&input)
        .output()
        .expect("run test");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        text.contains("schema[0].type") && text.contains("unknown type"),
        "{text}"
    );
}
