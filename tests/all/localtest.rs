//! `pipeline-worker test` is production minus Kafka: routing checked against
//! the pipeline's declared topics with the message `run` dead-letters, golden
//! files that expect errors, mismatches named by JSON path, outputs printed as
//! the producer's bytes, whole records and golden files with binary keys and
//! values. (The TypeScript `init` → `build` → `test` loop is
//! scripts/check-sdk-packages.sh's, with the installed npm package.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("localtest"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

/// Runs `pipeline-worker test ARGS`; (success, stdout + stderr).
fn pw_test(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .arg("test")
        .arg("--cache-dir")
        .arg(cache_dir())
        .args(args)
        .output()
        .expect("run pipeline-worker test");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

/// The router sends every order to `orders-eu`/`orders-us`, neither of which
/// this pipeline declares. `run` dead-letters them as `unknown-topic`; `test
/// --config` must fail them the same way, with the very message the dead
/// letter carries, and a golden file can expect exactly that.
#[test]
fn undeclared_route_fails_test_as_run_dead_letters_it() {
    let topics = TestTopics::create("lt-route", 1);
    let component = guest("router");
    let config = topics.config("router", &component, "batch_size = 4", "");
    let dir = scratch();
    let sample = write(
        &dir,
        "sample.jsonl",
        &[
            r#"{"order_id":"o-1","region":"eu","amount":250.0}"#,
            r#"{"order_id":"o-2","region":"us","amount":9.5}"#,
        ],
    );

    produce_all(
        &topics.input,
        &[
            In::new("k1", r#"{"order_id":"o-1","region":"eu","amount":250.0}"#),
            In::new("k2", r#"{"order_id":"o-2","region":"us","amount":9.5}"#),
        ],
    );
    let worker = WorkerProcess::start(&config);
    let dead = read_until(&[&topics.dlq], 2, Duration::from_secs(120));
    assert_eq!(dead.len(), 2, "log:\n{}", worker.log_text());
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));

    let (ok, text) = pw_test(&[
        os("--config"),
        config.as_os_str(),
        os("--input"),
        sample.as_os_str(),
    ]);
    assert!(!ok, "an undeclared route must fail `test`:\n{text}");
    for (i, d) in dead.iter().enumerate() {
        assert_eq!(d.header("pw.error.kind"), "unknown-topic");
        let message = d.header("pw.error.message");
        assert!(message.contains(&topics.output), "{message}");
        let printed = format!(
            "{}:{}: ERROR [unknown-topic] {message}  → dead letter {}",
            sample.display(),
            i + 1,
            topics.dlq
        );
        assert!(
            text.lines().any(|l| l == printed),
            "`test` must print the dead letter's kind and message\n  {printed}\nin:\n{text}"
        );
    }

    // The golden file expects those errors: PASS, in the flat layout.
    let expect = write(
        &dir,
        "expected.jsonl",
        &[
            r#"{"error": "unknown-topic", "message": "names topic \"orders-eu\""}"#,
            r#"{"error": "unknown-topic"}"#,
        ],
    );
    let (ok, text) = pw_test(&[
        os("--config"),
        config.as_os_str(),
        os("--pipeline"),
        os("router"),
        os("--input"),
        sample.as_os_str(),
        os("--expect"),
        expect.as_os_str(),
    ]);
    assert!(ok && text.contains("PASS"), "{text}");

    // A message that does not occur, or the wrong kind, fails and says so.
    let expect = write(
        &dir,
        "wrong.jsonl",
        &[
            r#"{"error": "unknown-topic", "message": "orders-apac"}"#,
            r#"{"error": "invalid-input"}"#,
        ],
    );
    let (ok, text) = pw_test(&[
        os("--config"),
        config.as_os_str(),
        os("--input"),
        sample.as_os_str(),
        os("--expect"),
        expect.as_os_str(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("wrong.jsonl:1") && text.contains(r#"does not contain "orders-apac""#),
        "{text}"
    );
    assert!(
        text.contains("wrong.jsonl:2")
            && text.contains("expected error kind invalid-input, got unknown-topic"),
        "{text}"
    );

    // Declaring the topics (flags, no config) makes the same records pass.
    let (ok, text) = pw_test(&[
        os("--component"),
        component.as_os_str(),
        os("--output-topic"),
        os("orders-eu"),
        os("--output-topic"),
        os("orders-us"),
        os("--input"),
        sample.as_os_str(),
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("→ orders-eu") && text.contains("→ orders-us"),
        "{text}"
    );
}

/// A wrong golden value fails and names the field's JSON path with both
/// values; a missing key and an extra output are named too.
#[test]
fn a_mismatch_names_the_json_path_and_both_values() {
    let dir = scratch();
    let sample = repo_root().join("customer-examples/price_calculator/sample.jsonl");
    let good = std::fs::read_to_string(
        repo_root().join("customer-examples/price_calculator/expected.jsonl"),
    )
    .unwrap();
    let mut lines: Vec<String> = good.lines().map(String::from).collect();
    assert!(lines[0].contains("\"total_price\":170.0"), "{}", lines[0]);
    lines[0] = lines[0].replace("\"total_price\":170.0", "\"total_price\":171.0");
    lines[1] = lines[1].replace("\"quantity\":3,", "");
    let expect = dir.join("expected.jsonl");
    std::fs::write(&expect, lines.join("\n")).unwrap();
    let component = guest("price_calculator");
    let (ok, text) = pw_test(&[
        os("--component"),
        component.as_os_str(),
        os("--input"),
        sample.as_os_str(),
        os("--expect"),
        expect.as_os_str(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("expected.jsonl:1 (input ")
            && text.contains("$.value.total_price: expected 171.0, got 170.0"),
        "{text}"
    );
    assert!(
        text.contains("expected.jsonl:2 (input ")
            && text.contains("$.value.quantity: unexpected key (got 3)"),
        "{text}"
    );

    // Per-input layout: an output more than expected is named by count and index.
    let n = std::fs::read_to_string(&sample)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let mut per: Vec<String> = good.lines().map(|l| format!("[{l}]")).collect();
    per[0] = "[]".into();
    assert_eq!(per.len(), n);
    let expect = dir.join("per_input.jsonl");
    std::fs::write(&expect, per.join("\n")).unwrap();
    let (ok, text) = pw_test(&[
        os("--component"),
        component.as_os_str(),
        os("--input"),
        sample.as_os_str(),
        os("--expect"),
        expect.as_os_str(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("per_input.jsonl:1 (input ")
            && text.contains("$: expected 0 output(s), got 1"),
        "{text}"
    );
}

/// The printed output is the value bytes the producer gets, in the function's
/// key order (the router passes values through untouched), while the golden
/// comparison ignores key order.
#[test]
fn outputs_are_printed_as_produced_bytes_in_the_functions_key_order() {
    let dir = scratch();
    let value = r#"{"region":"eu","order_id":"o-9","customer":"c-1","amount":5}"#;
    let sample = write(&dir, "sample.jsonl", &[value]);
    let expect = write(
        &dir,
        "expected.jsonl",
        &[
            r#"{"topic":"orders-eu","value":{"amount":5.0,"customer":"c-1","order_id":"o-9","region":"eu"}}"#,
        ],
    );
    let component = guest("router");
    let (ok, text) = pw_test(&[
        os("--component"),
        component.as_os_str(),
        os("--input"),
        sample.as_os_str(),
        os("--expect"),
        expect.as_os_str(),
    ]);
    assert!(ok, "{text}");
    assert!(
        text.lines().any(|l| l.trim() == value),
        "the value must be printed byte for byte:\n{text}"
    );
    assert!(text.contains("\"pw.function.version\": "), "{text}");
}

/// `--input-format records` carries keys, headers and tombstones; the
/// pipeline's tombstone mode decides what a null value does, as in `run`.
#[test]
fn record_inputs_carry_keys_headers_and_tombstones_per_mode() {
    let dir = scratch();
    let input = write(
        &dir,
        "records.jsonl",
        &[
            r#"{"key": "k1", "value": {"region": "eu", "amount": 5}, "headers": [["h", "v"], ["h", "w"]]}"#,
            r#"{"key": "gone", "value": null}"#,
        ],
    );
    let expect = write(
        &dir,
        "expected.jsonl",
        &[
            r#"[{"topic": "orders-eu", "key": "k1", "headers": [["h", "v"], ["h", "w"]], "value": {"region": "eu", "amount": 5}}]"#,
            r#"[{"key": "gone", "value": null}]"#,
        ],
    );
    let component = guest("router");
    let run = |mode: &str| {
        pw_test(&[
            os("--component"),
            component.as_os_str(),
            os("--output-topic"),
            os("orders-eu"),
            os("--input-format"),
            os("records"),
            os("--tombstones"),
            os(mode),
            os("--input"),
            input.as_os_str(),
            os("--expect"),
            expect.as_os_str(),
        ])
    };
    let (ok, text) = run("pass");
    assert!(ok, "{text}");
    assert!(text.contains("null (tombstone)"), "{text}");
    let (ok, text) = run("dead-letter");
    assert!(!ok, "{text}");
    assert!(
        text.contains("expected.jsonl:2") && text.contains("got error tombstone"),
        "{text}"
    );
    // Handed to the function, the router reads fields of a null value.
    let (ok, text) = run("function");
    assert!(!ok, "{text}");
    assert!(text.contains("ERROR [invalid-input]"), "{text}");
    // A wrong header is named by its path.
    let wrong = write(
        &dir,
        "wrong.jsonl",
        &[
            r#"[{"topic": "orders-eu", "headers": {"h": "v"}, "value": {"region": "eu", "amount": 5}}]"#,
            r#"{"filtered": true}"#,
        ],
    );
    let (ok, text) = pw_test(&[
        os("--component"),
        component.as_os_str(),
        os("--output-topic"),
        os("orders-eu"),
        os("--input-format"),
        os("records"),
        os("--input"),
        input.as_os_str(),
        os("--expect"),
        wrong.as_os_str(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(r#"$[0].headers.h: expected "v", got "w""#),
        "{text}"
    );
    assert!(
        text.contains("wrong.jsonl:2") && text.contains("$: expected 0 output(s), got 1"),
        "{text}"
    );
}

/// `--expect` documents its own format in `--help`.
#[test]
fn help_documents_the_golden_format() {
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .args(["test", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in [
        "PER-INPUT",
        r#"{"error": "KIND", "message": "SUBSTRING"}"#,
        r#"{"filtered": true}"#,
        "--input-format records",
    ] {
        assert!(text.contains(needle), "help lacks {needle}:\n{text}");
    }
    assert!(
        !text.contains("see `pipeline-worker test --help`"),
        "{text}"
    );
}

/// Whole records, as topics carry them: a binary key in base64, headers
/// (order and repeats kept), a null value, a base64 value, and where each
/// record came from. The hostile guest's `ok` echoes the record, so the key
/// and headers it was handed come back out; the origin names the output
/// lines; a bad line is refused naming the line and the field.
#[test]
fn whole_records_with_binary_keys_base64_values_and_origins() {
    let dir = scratch();
    // {"action":"ok","id":2}
    let value_b64 = "eyJhY3Rpb24iOiJvayIsImlkIjoyfQ==";
    let input = write(
        &dir,
        "records.jsonl",
        &[
            r#"{"key_base64": "/wBr", "value": {"action": "ok", "id": 1}, "headers": [["h", "1"], ["h", "2"]], "topic": "orders", "partition": 3, "offset": 41}"#,
            &format!(r#"{{"key": "k2", "value_base64": "{value_b64}", "headers": {{"x": null}}}}"#),
            r#"{"key": "gone", "value": null, "timestamp": 1700000000000}"#,
        ],
    );
    let expect = write(
        &dir,
        "expected.jsonl",
        &[
            r#"[{"headers": [["h", "1"], ["h", "2"]], "value": {"action": "ok", "id": 1}}]"#,
            r#"[{"key": "k2", "headers": {"x": ""}, "value": {"action": "ok", "id": 2}}]"#,
            r#"[{"key": "gone", "value": null}]"#,
        ],
    );
    let component = guest("hostile");
    let (ok, text) = pw_test(&[
        os("--component"),
        component.as_os_str(),
        os("--output-topic"),
        os("out"),
        os("--input-format"),
        os("records"),
        os("--input"),
        input.as_os_str(),
        os("--expect"),
        expect.as_os_str(),
    ]);
    assert!(ok, "{text}");
    let at = format!("{}:1 (orders/3@41): 1 output(s)", input.display());
    assert!(text.lines().any(|l| l == at), "want {at:?} in:\n{text}");
    assert!(
        text.contains(r#"→ out  key b"\xff\x00k"  headers ["h": "1", "h": "2", "#),
        "{text}"
    );
    assert!(text.contains("null (tombstone)"), "{text}");

    // The golden file states keys: a wrong one fails, naming the path.
    let wrong = write(
        &dir,
        "wrong.jsonl",
        &[
            r#"[{"value": {"action": "ok", "id": 1}}]"#,
            r#"[{"key": "k3", "value": {"action": "ok", "id": 2}}]"#,
            r#"[{"key": "gone", "value": {}}]"#,
        ],
    );
    let (ok, text) = pw_test(&[
        os("--component"),
        component.as_os_str(),
        os("--input-format"),
        os("records"),
        os("--input"),
        input.as_os_str(),
        os("--expect"),
        wrong.as_os_str(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(r#"$[0].key: expected "k3", got "k2""#),
        "{text}"
    );
    assert!(
        text.contains("$[0].value: expected {}, got a tombstone"),
        "{text}"
    );

    // Golden files state binary keys and exact value bytes in base64: the
    // echoed key \xff\x00k and value bytes pass; one byte off fails, named
    // (/wBs is \xff\x00l).
    let binary = write(
        &dir,
        "binary.jsonl",
        &[
            r#"[{"key_base64": "/wBr", "value": {"action": "ok", "id": 1}}]"#,
            &format!(r#"[{{"key": "k2", "value_base64": "{value_b64}"}}]"#),
            r#"[{"key": "gone", "value": null}]"#,
        ],
    );
    let golden = |expect: &Path| {
        pw_test(&[
            os("--component"),
            component.as_os_str(),
            os("--input-format"),
            os("records"),
            os("--input"),
            input.as_os_str(),
            os("--expect"),
            expect.as_os_str(),
        ])
    };
    let (ok, text) = golden(&binary);
    assert!(ok, "{text}");
    assert!(text.contains("PASS"), "{text}");
    // {"action":"ok","id":3}
    let wrong_bytes = write(
        &dir,
        "wrong-bytes.jsonl",
        &[
            r#"[{"key_base64": "/wBs", "value": {"action": "ok", "id": 1}}]"#,
            r#"[{"value_base64": "eyJhY3Rpb24iOiJvayIsImlkIjozfQ=="}]"#,
            r#"[{"key_base64": "Z29uZQ==", "value_base64": "AA=="}]"#,
        ],
    );
    let (ok, text) = golden(&wrong_bytes);
    assert!(!ok, "{text}");
    assert!(
        text.contains(r#"$[0].key: expected b"\xff\x00l", got b"\xff\x00k""#),
        "{text}"
    );
    assert!(
        text.contains(r#"$[0].value: expected the bytes "{\"action\":\"ok\",\"id\":3}" (value_base64), got "{\"action\":\"ok\",\"id\":2}""#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"$[0].value: expected the bytes "\0" (value_base64), got a tombstone (null value)"#
        ),
        "{text}"
    );
    let bad = write(
        &dir,
        "bad-golden.jsonl",
        &[r#"[{"key": "k1", "key_base64": "AA==", "value": 1}]"#],
    );
    let (ok, text) = golden(&bad);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("{}:1", bad.display()))
            && text.contains("give `key` or `key_base64`, not both"),
        "{text}"
    );

    // One value field only, base64 checked, each named with the line.
    for (line, needle) in [
        (
            r#"{"value": 1, "value_base64": "AA=="}"#,
            "give one of `value`, `value_text`, `value_base64`, not `value` and `value_base64`",
        ),
        (
            r#"{"value_base64": "not base64!"}"#,
            "`value_base64`: not base64",
        ),
        (
            r#"{"key": "a", "key_base64": "AA==", "value": 1}"#,
            "`key` or `key_base64`",
        ),
        (
            r#"{"value": 1, "partition": -1}"#,
            "`partition`: -1 is negative",
        ),
    ] {
        let bad = write(&dir, "bad.jsonl", &[r#"{"value": 1}"#, line]);
        let (ok, text) = pw_test(&[
            os("--component"),
            component.as_os_str(),
            os("--input-format"),
            os("records"),
            os("--input"),
            bad.as_os_str(),
        ]);
        assert!(!ok, "{line}: {text}");
        assert!(
            text.contains(&format!("{}:2: ", bad.display())) && text.contains(needle),
            "{line}: want {needle:?} in:\n{text}"
        );
    }

    // Plain lines keep working; a whole record read as a value is hinted at.
    let plain = write(&dir, "plain.jsonl", &[r#"{"value": {"action": "ok"}}"#]);
    let (_, text) = pw_test(&[
        os("--component"),
        component.as_os_str(),
        os("--input"),
        plain.as_os_str(),
    ]);
    assert!(text.contains("pass --input-format records"), "{text}");
    assert!(text.contains("ERROR [invalid-input]"), "{text}");
}
