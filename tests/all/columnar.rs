//! Columnar pipelines (issue 13) against the real broker: the
//! `columnar-probe` guest (per-row behaviour picked by its `action` column),
//! the `price_columnar` example with its own schema and golden files, and a
//! hot swap between it and the per-record `price_calculator`.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::registry::{check_swap_by, Plane};
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
    // Fan-out copies share their input's id, so equal neighbours are fine.
    assert_order_per_partition(&main, id_of, false);
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

/// Outputs keep their inputs' order per partition: `seq` (the input's
/// position in what the test produced) grows along each output partition's
/// offsets; `strict` unless one input may give several outputs.
fn assert_order_per_partition(outs: &[Out], seq: impl Fn(&Out) -> usize, strict: bool) {
    let mut by_part: HashMap<i32, Vec<(i64, usize)>> = HashMap::new();
    for o in outs {
        by_part
            .entry(o.partition)
            .or_default()
            .push((o.offset, seq(o)));
    }
    for (p, recs) in by_part.iter_mut() {
        recs.sort_unstable();
        let seqs: Vec<usize> = recs.iter().map(|r| r.1).collect();
        assert!(
            seqs.windows(2)
                .all(|w| if strict { w[0] < w[1] } else { w[0] <= w[1] }),
            "partition {p}: order not kept: {seqs:?}"
        );
    }
}

/// The `[[pipelines.schema]]` tables of customer-examples/price_columnar's
/// `pipeline.toml`, so the tests run the schema the example ships.
fn example_schema() -> String {
    let path = repo_root().join("customer-examples/price_columnar/pipeline.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text
        .find("[[pipelines.schema]]")
        .expect("a schema in price_columnar/pipeline.toml");
    text[at..].to_string()
}

fn example_lines(file: &str) -> Vec<String> {
    let path = repo_root()
        .join("customer-examples/price_columnar")
        .join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// What the golden files say one input becomes.
enum Want {
    /// The output value, byte for byte.
    Row(String),
    /// A dead letter: its kind and a part of its message.
    Dead(String, String),
}

/// `price_columnar` with its `pipeline.toml` schema through the broker:
/// its sample and its invalid sample, several rounds over keys spread on 3
/// partitions, in small batches that mix good and bad rows. Every output is
/// its line of `expected.jsonl` / `invalid.expected.jsonl` byte for byte,
/// with its input's key and headers, once, in input order per partition;
/// every refused record is dead-lettered once with the golden kind and
/// message (`invalid-input` naming the field) and its original value.
#[test]
fn price_example_through_kafka_gives_its_expected_output() {
    const ROUNDS: usize = 4;
    let pairs = |input: &str, expected: &str| {
        let (i, e) = (example_lines(input), example_lines(expected));
        assert_eq!(i.len(), e.len(), "{input} against {expected}");
        i.into_iter().zip(e).collect::<Vec<_>>()
    };
    let golden: Vec<(String, String)> = pairs("sample.jsonl", "expected.jsonl")
        .into_iter()
        .chain(pairs("invalid.jsonl", "invalid.expected.jsonl"))
        .collect();
    let (mut records, mut wants) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        for (input, expected) in &golden {
            let seq = records.len();
            records.push(
                In::new(format!("cust-{}", seq % 5), input.clone())
                    .header("seq", &seq.to_string())
                    .header("round", &round.to_string()),
            );
            let e: serde_json::Value = serde_json::from_str(expected).unwrap();
            wants.push(match (e.get("error"), e.get("message")) {
                (Some(kind), Some(msg)) => Want::Dead(
                    kind.as_str().unwrap().to_string(),
                    msg.as_str().unwrap().to_string(),
                ),
                _ => Want::Row(expected.clone()),
            });
        }
    }
    let want_rows = wants.iter().filter(|w| matches!(w, Want::Row(_))).count();
    let want_dead = wants.len() - want_rows;
    assert!(want_dead >= 5 * ROUNDS, "the invalid sample is in the run");

    let topics = TestTopics::create("col-example", 3);
    produce_all(&topics.input, &records);
    let extra = format!("batch_size = 8\n{}", example_schema());
    let config = topics.config("price-columnar", &guest("price_columnar"), &extra, "");
    let worker = WorkerProcess::start(&config);
    let out = read_until(&[&topics.output], want_rows, Duration::from_secs(90));
    let dead = read_until(&[&topics.dlq], want_dead, Duration::from_secs(30));
    // A moment more on both: a duplicate would come after the last one.
    let all = read_until(
        &[&topics.output, &topics.dlq],
        want_rows + want_dead + 1,
        Duration::from_secs(3),
    );
    let log = worker.log_text();
    assert_eq!(out.len(), want_rows, "outputs; log:\n{log}");
    assert_eq!(dead.len(), want_dead, "dead letters; log:\n{log}");
    assert_eq!(
        all.len(),
        want_rows + want_dead,
        "no duplicates; log:\n{log}"
    );

    let seq_of = |o: &Out| -> usize { o.header("seq").parse().unwrap() };
    let mut seen = HashSet::new();
    let mut partition_of_key: HashMap<String, i32> = HashMap::new();
    for o in &out {
        let seq = seq_of(o);
        assert!(seen.insert(seq), "input {seq} came out twice");
        let input = &records[seq];
        match &wants[seq] {
            Want::Row(bytes) => assert_eq!(&o.value, bytes, "input {seq}: {}", input.value),
            Want::Dead(kind, msg) => {
                panic!(
                    "input {seq} should be dead-lettered ({kind}: {msg}), got {}",
                    o.value
                )
            }
        }
        assert_eq!(o.key, input.key, "input {seq}: its key");
        for (k, v) in &input.headers {
            assert_eq!(o.header(k), v, "input {seq}: header {k}");
        }
        let key = o.key.clone().unwrap();
        let p = *partition_of_key.entry(key.clone()).or_insert(o.partition);
        assert_eq!(p, o.partition, "key {key} on two partitions");
    }
    assert!(
        partition_of_key.values().collect::<HashSet<_>>().len() > 1,
        "the run spans partitions: {partition_of_key:?}"
    );
    assert_order_per_partition(&out, seq_of, true);
    for d in &dead {
        let seq = seq_of(d);
        assert!(seen.insert(seq), "input {seq} came out twice");
        let input = &records[seq];
        let (kind, msg) = (d.header("pw.error.kind"), d.header("pw.error.message"));
        match &wants[seq] {
            Want::Dead(want_kind, want_msg) => {
                assert_eq!(kind, want_kind, "input {seq} ({}): {msg}", input.value);
                assert!(
                    msg.contains(want_msg.as_str()),
                    "input {seq}: {msg:?} lacks {want_msg:?}"
                );
            }
            Want::Row(_) => panic!("input {seq} dead-lettered ({kind}: {msg}): {}", input.value),
        }
        assert_eq!(d.value, input.value, "original value kept");
        assert_eq!(d.key, input.key, "original key kept");
    }
    assert_eq!(seen.len(), records.len(), "every input accounted for");
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// Record `i` of the hot-swap test: both price functions accept it. `id` is
/// not in the schema, so price_columnar drops it and price_calculator keeps
/// it: each output shows which of the two made it.
fn price_record(i: usize) -> In {
    In::new(
        format!("k{}", i % 32),
        format!(
            r#"{{"id":{i},"item_id":"sku-{i}","base_price":{}.25,"quantity":{},"context":{{"customer_tier":"{}","currency":"EUR"}}}}"#,
            i % 500,
            i % 7,
            ["premium", "standard", "new"][i % 3]
        ),
    )
}

fn sku(o: &Out) -> u64 {
    o.json()["item_id"]
        .as_str()
        .and_then(|s| s.strip_prefix("sku-"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no item_id sku-<n> in {}", o.value))
}

/// Each output is what the version in its header computes: the same prices
/// from both, `id` kept only by the per-record function.
fn check_price_versions(out: &[Out], per_record: &str, columnar: &str) {
    for o in out {
        let (i, v, j) = (sku(o) as usize, o.header("pw.function.version"), o.json());
        let rate = [0.15, 0.05, 0.10][i % 3];
        let base = (i % 500) as f64 + 0.25;
        let cents = |x: f64| (x * 100.0).round() / 100.0;
        let unit = cents(base * (1.0 - rate));
        assert_eq!(j["unit_price"].as_f64(), Some(unit), "{v}: {}", o.value);
        assert_eq!(
            j["total_price"].as_f64(),
            Some(cents(unit * (i % 7) as f64)),
            "{v}: {}",
            o.value
        );
        if v == per_record {
            assert_eq!(
                j["id"].as_u64(),
                Some(i as u64),
                "{v} keeps id: {}",
                o.value
            );
        } else {
            assert_eq!(v, columnar, "{}", o.value);
            assert!(j.get("id").is_none(), "{v} drops id: {}", o.value);
        }
    }
}

/// Hot swap through the control plane on a pipeline that declares the
/// example's schema: per-record `price_calculator` → columnar
/// `price_columnar` → `price_calculator` again, each while records flow.
/// Every id comes out once (no rebalance, so at-least-once gives exactly
/// once here), each output from exactly one version (its header, and what
/// it computed), and per partition the version only moves forward.
#[test]
fn hot_swap_between_a_per_record_and_a_columnar_function() {
    // Records flow until the test has seen what it waits for (old outputs,
    // the switch, new outputs), however slow the machine.
    const PAUSE: Duration = Duration::from_millis(50);
    const MAX: usize = 200_000;
    let plane = Plane::start_pipeline("col-swap", 4, &example_schema());
    let per_record = plane.upload_ok("price", &guest("price_calculator"));
    let columnar = plane.upload_ok("price-col", &guest("price_columnar"));
    assert_eq!(plane.activate("price", per_record).status, 202);
    let worker = WorkerProcess::start(&plane.config);
    plane.wait_workers_on(1, "price@1", Duration::from_secs(120));
    wait_for_log(&worker, "partitions assigned", Duration::from_secs(60));
    let (input, output) = (plane.topics.input.clone(), plane.topics.output.clone());
    let mut produced = 0;
    let mut sequence = vec!["price@1"];
    for (function, version, label) in [
        ("price-col", columnar, "price-col@1"),
        ("price", per_record, "price@1"),
    ] {
        // The activation lands once this phase's first outputs are out and
        // while records are still being produced.
        let load = Stream::start(&input, produced, price_record, 50, PAUSE, MAX);
        let first = produced + 100;
        let deadline = Instant::now() + Duration::from_secs(120);
        while read_until(&[&output], first, Duration::from_secs(10)).len() < first {
            assert!(
                Instant::now() < deadline,
                "no outputs; log:\n{}",
                worker.log_text()
            );
        }
        let r = plane.activate(function, version);
        assert_eq!(r.status, 202, "{}", r.body);
        plane.wait_workers_on(1, label, Duration::from_secs(120));
        // Some more after the switch, so the new version surely has outputs.
        load.wait_more(200, Duration::from_secs(60));
        produced = load.stop();
        sequence.push(label);
        let out = read_until(&[&output], produced, Duration::from_secs(120));
        let dlq = read_until(&[&plane.topics.dlq], 1, Duration::from_secs(1));
        let log = worker.log_text();
        assert_eq!(out.len(), produced, "outputs; log:\n{log}");
        check_swap_by(&out, &dlq, produced, &sequence, sku);
        check_price_versions(&out, "price@1", "price-col@1");
        let by = |v: &str| {
            out.iter()
                .filter(|o| o.header("pw.function.version") == v)
                .count()
        };
        assert!(
            by("price@1") > 0 && by("price-col@1") > 0,
            "both versions ran"
        );
    }
    let again = read_until(&[&output], produced + 1, Duration::from_secs(2));
    assert_eq!(again.len(), produced, "no duplicates");
    assert!(worker.log_text().contains("switching function version"));
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}
