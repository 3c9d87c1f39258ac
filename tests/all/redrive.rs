//! `pipeline-worker dlq` and `dlq redrive` against the real broker: dead
//! letters written by the real worker are listed with their kind, origin and
//! version, re-driven to the input without the worker's `pw.*` headers, and
//! come back through a fixed function.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::support::*;

/// `pipeline-worker dlq <args>`: (exit code, stdout, stderr).
fn dlq(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .arg("dlq")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pipeline-worker dlq");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `dlq <args> --format json` that must succeed: one object per line.
fn dlq_json(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--format", "json"]);
    let (code, out, err) = dlq(&all);
    assert_eq!(code, Some(0), "dlq {all:?} failed:\n{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn version_of(component: &Path) -> String {
    let digest = Sha256::digest(std::fs::read(component).unwrap());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..12].to_string()
}

fn hostile_value(i: usize, action: &str) -> String {
    format!(r#"{{"id":{i},"action":"{action}","session_start":0,"session_end":3600}}"#)
}

/// One pipeline over `topics` in `group` (fixed, so a second worker with
/// another component resumes where the first committed).
fn config_in_group(topics: &TestTopics, group: &str, name: &str, component: &Path) -> PathBuf {
    write_config(
        group,
        &[PipelineSpec {
            name,
            inputs: &[&topics.input],
            outputs: &[&topics.output],
            dlq: &topics.dlq,
            component,
            extra: "",
        }],
        "",
    )
}

fn s(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

#[test]
fn dead_letters_are_listed_redriven_and_come_back_through_the_fixed_function() {
    let topics = TestTopics::create("rd", 2);
    let mut records = Vec::new();
    let mut expected_kind = BTreeMap::new();
    for i in 0..30 {
        let action = match i % 5 {
            1 => "error", // invalid-input
            3 => "panic", // trap
            _ => "ok",
        };
        match action {
            "error" => expected_kind.insert(format!("k{i}"), "invalid-input"),
            "panic" => expected_kind.insert(format!("k{i}"), "trap"),
            _ => None,
        };
        let mut r =
            In::new(format!("k{i}"), hostile_value(i, action)).header("origin", &format!("o{i}"));
        r.partition = Some((i % 2) as i32);
        records.push(r);
    }
    produce_all(&topics.input, &records);
    let group = unique("rd-group");
    let hostile = guest("hostile");
    let config = config_in_group(&topics, &group, "rd", &hostile);
    let cfg = config.to_str().unwrap();
    let worker = WorkerProcess::start(&config);
    let good = read_until(&[&topics.output], 18, Duration::from_secs(120));
    assert_eq!(good.len(), 18, "log:\n{}", worker.log_text());
    let dead = read_until(&[&topics.dlq], 12, Duration::from_secs(60));
    assert_eq!(dead.len(), 12, "log:\n{}", worker.log_text());
    // Committed on SIGTERM: the fixed worker below starts after these.
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));

    // The listing: every dead letter, with kind, origin and version.
    let originals = read_until(&[&topics.input], 30, Duration::from_secs(30));
    let listed = dlq_json(&["-c", cfg, "-p", "rd"]);
    assert_eq!(listed.len(), 12, "{listed:#?}");
    let version = version_of(&hostile);
    for e in &listed {
        let key = s(&e["key"]);
        assert_eq!(s(&e["error_kind"]), expected_kind[key], "{e}");
        assert_eq!(s(&e["dlq_topic"]), topics.dlq);
        assert_eq!(s(&e["origin_topic"]), topics.input);
        assert_eq!(s(&e["function_name"]), "rd");
        assert_eq!(s(&e["function_version"]), version);
        let (p, o) = (
            e["origin_partition"].as_i64().unwrap(),
            e["origin_offset"].as_i64().unwrap(),
        );
        let orig = originals
            .iter()
            .find(|r| r.partition as i64 == p && r.offset == o)
            .unwrap_or_else(|| panic!("no input record at {p}/{o}"));
        assert_eq!(
            orig.key.as_deref(),
            Some(key),
            "origin points at the very record"
        );
        assert_eq!(e["value_size"].as_u64().unwrap() as usize, orig.value.len());
        assert!(orig
            .value
            .starts_with(s(&e["value_preview"]).trim_end_matches('…')));
        assert_eq!(e["truncated"], false);
        assert_eq!(e["redrive_count"], 0);
        if expected_kind[key] == "invalid-input" {
            assert!(s(&e["error_message"]).contains("hostile error"), "{e}");
        }
    }
    let (code, text, err) = dlq(&["list", "-c", cfg, "-p", "rd"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        text.matches("[invalid-input] invalid input: hostile error")
            .count(),
        6,
        "{text}"
    );
    assert_eq!(
        text.matches(&format!("version {version}")).count(),
        12,
        "{text}"
    );
    assert!(err.contains("12 of 12"), "{err}");

    // Filters.
    let traps = dlq_json(&["list", "-c", cfg, "-p", "rd", "--kind", "trap"]);
    assert_eq!(traps.len(), 6);
    assert!(traps.iter().all(|e| e["error_kind"] == "trap"));
    let p1 = dlq_json(&["-c", cfg, "-p", "rd", "--origin-partition", "1"]);
    let want_p1 = listed.iter().filter(|e| e["origin_partition"] == 1).count();
    assert!(want_p1 > 0 && want_p1 < 12);
    assert_eq!(p1.len(), want_p1);
    assert!(p1.iter().all(|e| e["origin_partition"] == 1));
    let range = dlq_json(&[
        "-c",
        cfg,
        "-p",
        "rd",
        "--from-offset",
        "2",
        "--to-offset",
        "4",
    ]);
    let offsets: Vec<i64> = range
        .iter()
        .map(|e| e["dlq_offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, vec![2, 3, 4]);
    let other_version = dlq_json(&["-c", cfg, "-p", "rd", "--function-version", "000000000000"]);
    assert!(other_version.is_empty());
    assert_eq!(
        dlq_json(&["-c", cfg, "-p", "rd", "--function-version", &version]).len(),
        12
    );

    // A dry run sends nothing; without --yes nothing is sent either.
    let dry = dlq_json(&["redrive", "-c", cfg, "-p", "rd", "--dry-run"]);
    assert_eq!(dry.len(), 12);
    assert!(dry
        .iter()
        .all(|e| e["action"] == "would-send" && s(&e["target_topic"]) == topics.input));
    let (code, _, err) = dlq(&["redrive", "-c", cfg, "-p", "rd"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--yes") && err.contains("--dry-run"), "{err}");
    let input_now = read_until(&[&topics.input], 31, Duration::from_secs(8));
    assert_eq!(
        input_now.len(),
        30,
        "dry run and unconfirmed re-drive produced nothing"
    );

    // The re-drive: original key, value, headers; no pw.* error headers.
    let sent = dlq_json(&["redrive", "-c", cfg, "-p", "rd", "--yes"]);
    assert_eq!(sent.len(), 12);
    assert!(sent.iter().all(|e| e["action"] == "sent"), "{sent:#?}");
    let input_after = read_until(&[&topics.input], 42, Duration::from_secs(30));
    assert_eq!(input_after.len(), 42);
    let redriven: Vec<&Out> = input_after
        .iter()
        .filter(|r| r.headers.contains_key("pw.redriven"))
        .collect();
    assert_eq!(redriven.len(), 12);
    for r in &redriven {
        let key = r.key.clone().unwrap();
        let i: usize = key[1..].parse().unwrap();
        let dl = listed.iter().find(|e| e["key"] == key.as_str()).unwrap();
        assert!(expected_kind.contains_key(&key));
        assert_eq!(r.value, records[i].value, "original value");
        assert_eq!(r.header("origin"), format!("o{i}"), "original header kept");
        assert_eq!(
            r.partition as i64,
            dl["origin_partition"].as_i64().unwrap(),
            "origin partition"
        );
        let pw: Vec<&String> = r
            .headers
            .keys()
            .filter(|k| k.starts_with("pw.") && *k != "pw.redriven" && *k != "pw.redrive.count")
            .collect();
        assert!(pw.is_empty(), "pw.* headers left: {pw:?}");
        let (at, time) = r.header("pw.redriven").split_once('@').unwrap();
        assert_eq!(at, format!("{}/0/{}", topics.dlq, dl["dlq_offset"]));
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert_eq!(r.header("pw.redrive.count"), "1");
        let orig = originals
            .iter()
            .find(|o| o.key.as_deref() == Some(key.as_str()))
            .unwrap();
        assert_eq!(r.timestamp, orig.timestamp, "original timestamp kept");
    }

    // The fixed function: the same pipeline and group with enrich, which
    // handles every record. Only the re-driven ones are left to process.
    let enrich = guest("enrich_rs");
    let fixed = config_in_group(&topics, &group, "rd", &enrich);
    let worker = WorkerProcess::start(&fixed);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut enriched = Vec::new();
    while Instant::now() < deadline {
        enriched = read_until(&[&topics.output], 30, Duration::from_secs(20))
            .into_iter()
            .filter(|o| o.headers.contains_key("pw.redriven"))
            .collect::<Vec<_>>();
        if enriched.len() >= 12 {
            break;
        }
    }
    assert_eq!(enriched.len(), 12, "log:\n{}", worker.log_text());
    let enrich_version = version_of(&enrich);
    let mut keys: Vec<String> = enriched.iter().map(|o| o.key.clone().unwrap()).collect();
    keys.sort();
    let mut want: Vec<String> = expected_kind.keys().cloned().collect();
    want.sort();
    assert_eq!(keys, want, "every dead letter came back, once");
    for o in &enriched {
        let v = o.json();
        assert_eq!(
            v["session_duration_minutes"], 60.0,
            "transformed by the fixed function: {v}"
        );
        assert_eq!(v["engagement_tier"], "high");
        assert_eq!(o.header("pw.function.version"), enrich_version);
        let i: usize = o.key.as_ref().unwrap()[1..].parse().unwrap();
        assert_eq!(o.header("origin"), format!("o{i}"));
    }
    let still_dead = read_until(&[&topics.dlq], 13, Duration::from_secs(5));
    assert_eq!(
        still_dead.len(),
        12,
        "nothing dead-lettered by the fixed function"
    );
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// A re-driven record that fails again is dead-lettered again, carrying the
/// re-drive header through the worker's dead-letter path, and
/// `--max-redrives` refuses to send it round once more.
#[test]
fn a_record_that_fails_again_comes_back_with_its_redrive_count() {
    let topics = TestTopics::create("rd-again", 1);
    let records: Vec<In> = (0..6)
        .map(|i| {
            In::new(
                format!("k{i}"),
                hostile_value(i, if i < 4 { "error" } else { "ok" }),
            )
        })
        .collect();
    produce_all(&topics.input, &records);
    let config = topics.config("again", &guest("hostile"), "", "");
    let cfg = config.to_str().unwrap();
    let worker = WorkerProcess::start(&config);
    let first = read_until(&[&topics.dlq], 4, Duration::from_secs(120));
    assert_eq!(first.len(), 4, "log:\n{}", worker.log_text());

    let sent = dlq_json(&["redrive", "-c", cfg, "-p", "again", "--yes"]);
    assert_eq!(sent.iter().filter(|e| e["action"] == "sent").count(), 4);
    let all = read_until(&[&topics.dlq], 8, Duration::from_secs(60));
    assert_eq!(all.len(), 8, "log:\n{}", worker.log_text());

    let second = dlq_json(&["-c", cfg, "-p", "again", "--from-offset", "4"]);
    assert_eq!(second.len(), 4);
    for e in &second {
        assert_eq!(e["error_kind"], "invalid-input", "{e}");
        assert_eq!(e["redrive_count"], 1, "{e}");
        let first_gen = first
            .iter()
            .find(|d| d.key.as_deref() == e["key"].as_str())
            .unwrap();
        let (at, _) = s(&e["redriven"]).split_once('@').unwrap();
        assert_eq!(at, format!("{}/0/{}", topics.dlq, first_gen.offset));
    }
    let (code, text, err) = dlq(&[
        "redrive",
        "-c",
        cfg,
        "-p",
        "again",
        "--from-offset",
        "4",
        "--max-redrives",
        "1",
        "--yes",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        text.matches("already re-driven 1 time(s) (--max-redrives 1)")
            .count(),
        4,
        "{text}"
    );
    assert!(
        err.contains("0 sent, 4 skipped (4 max-redrives), 0 failed"),
        "{err}"
    );
    let input = read_until(&[&topics.input], 11, Duration::from_secs(8));
    assert_eq!(input.len(), 10, "6 originals + 4 re-driven once, no more");
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// Dead letters the command must refuse, and a pipeline with two inputs:
/// each goes back to its own origin topic and partition.
#[test]
fn redrive_routes_by_origin_and_refuses_what_it_cannot_send_faithfully() {
    let in1 = unique("rd-multi-in1");
    let in2 = unique("rd-multi-in2");
    let out = unique("rd-multi-out");
    let dlq_topic = unique("rd-multi-dlq");
    create_topics(&[(&in1, 2), (&in2, 3), (&out, 1), (&dlq_topic, 1)]);
    let config = write_config(
        &unique("rd-multi-group"),
        &[PipelineSpec {
            name: "multi",
            inputs: &[&in1, &in2],
            outputs: &[&out],
            dlq: &dlq_topic,
            component: &guest("enrich_rs"),
            extra: "",
        }],
        "",
    );
    let cfg = config.to_str().unwrap();
    let dead = |key: &str, origin: &str, partition: &str| {
        In::new(key, format!("value of {key}"))
            // An upstream hop's pw.* header, before the worker's own.
            .header("pw.function.version", "upstream@1")
            .header("app", key)
            .header("pw.error.kind", "failed")
            .header("pw.error.message", "boom")
            .header("pw.origin.topic", origin)
            .header("pw.origin.partition", partition)
            .header("pw.origin.offset", "7")
            .header("pw.function.version", "fn@2")
    };
    let produced = vec![
        dead("to-in2", &in2, "2"),
        dead("to-in1", &in1, "1"),
        dead("foreign", "somewhere-else", "0"),
        dead("truncated", &in1, "0")
            .header("pw.dlq.truncated", "true")
            .header("pw.dlq.original-size", "2000000"),
        In::new("no-origin", "x").header("pw.error.kind", "failed"),
    ];
    produce_all(&dlq_topic, &produced);
    produce_raw(
        &dlq_topic,
        &[RawIn {
            key: Some(b"bad-key"),
            value: Some(b"v"),
            headers: vec![
                (b"\xff\xfe".to_vec(), Some(b"x".to_vec())),
                (b"pw.error.kind".to_vec(), Some(b"invalid-input".to_vec())),
                (b"pw.origin.topic".to_vec(), Some(in1.clone().into_bytes())),
            ],
        }],
        &[],
    );

    let listed = dlq_json(&["-c", cfg, "-p", "multi"]);
    assert_eq!(listed.len(), 6);
    assert_eq!(
        listed[0]["function_version"], "fn@2",
        "the worker's header, the last one"
    );
    assert_eq!(listed[3]["truncated"], true);
    assert_eq!(listed[5]["headers"][0]["key"], "\\xff\\xfe");
    assert_eq!(
        dlq_json(&["-c", cfg, "-p", "multi", "--origin-topic", &in1]).len(),
        3
    );
    assert_eq!(
        dlq_json(&["-c", cfg, "-p", "multi", "--since", "1h"]).len(),
        6
    );
    let future =
        humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
    assert_eq!(
        dlq_json(&["-c", cfg, "-p", "multi", "--since", &future]).len(),
        0
    );

    let report = dlq_json(&["redrive", "-c", cfg, "-p", "multi", "--yes"]);
    let by_key: HashMap<&str, &serde_json::Value> =
        report.iter().map(|e| (s(&e["key"]), e)).collect();
    assert_eq!(by_key.len(), 6, "{report:#?}");
    assert_eq!(by_key["to-in2"]["action"], "sent");
    assert_eq!(s(&by_key["to-in2"]["target_topic"]), in2);
    assert_eq!(by_key["to-in2"]["target_partition"], 2);
    assert_eq!(by_key["to-in1"]["action"], "sent");
    assert_eq!(by_key["to-in1"]["target_partition"], 1);
    for (key, code) in [
        ("foreign", "not-an-input"),
        ("truncated", "truncated"),
        ("no-origin", "no-origin"),
        ("bad-key", "header-key"),
    ] {
        assert_eq!(by_key[key]["action"], "skipped", "{key}");
        assert_eq!(by_key[key]["reason_code"], code, "{key}");
    }
    assert!(s(&by_key["foreign"]["reason"]).contains("somewhere-else"));
    assert!(s(&by_key["foreign"]["reason"]).contains("pipeline `multi`"));
    assert!(s(&by_key["truncated"]["reason"]).contains("2000000"));

    let got = read_until(&[&in1, &in2], 3, Duration::from_secs(8));
    assert_eq!(got.len(), 2, "{got:#?}");
    for r in &got {
        let key = r.key.as_deref().unwrap();
        let (topic, partition) = if key == "to-in2" {
            (&in2, 2)
        } else {
            (&in1, 1)
        };
        assert_eq!((&r.topic, r.partition), (topic, partition));
        assert_eq!(r.value, format!("value of {key}"));
        assert_eq!(r.header("app"), key);
        let keys: Vec<String> = r
            .header_keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(
            keys,
            ["app", "pw.redriven", "pw.redrive.count"],
            "every other pw.* header dropped"
        );
    }
}

#[test]
fn a_delivery_the_broker_refuses_is_reported_and_fails_the_command() {
    let input = unique("rd-small-in");
    let dlq_topic = unique("rd-small-dlq");
    let out = unique("rd-small-out");
    create_topic_with(&input, 1, &[("max.message.bytes", "2000")]);
    create_topics(&[(&dlq_topic, 1), (&out, 1)]);
    let config = write_config(
        &unique("rd-small-group"),
        &[PipelineSpec {
            name: "small",
            inputs: &[&input],
            outputs: &[&out],
            dlq: &dlq_topic,
            component: &guest("enrich_rs"),
            extra: "",
        }],
        "",
    );
    let cfg = config.to_str().unwrap();
    let origin = |key: &str, value: String| {
        In::new(key, value)
            .header("pw.error.kind", "failed")
            .header("pw.origin.topic", &input)
            .header("pw.origin.partition", "0")
    };
    produce_all(
        &dlq_topic,
        &[
            origin("big", "x".repeat(10_000)),
            origin("small", "y".into()),
        ],
    );
    let (code, text, err) = dlq(&["redrive", "-c", cfg, "-p", "small", "--yes"]);
    assert_eq!(code, Some(1), "{text}\n{err}");
    // The broker checks sizes per batch: the small record, batched with the
    // big one, may be refused with it. Whatever failed is reported as such.
    let failed: Vec<&str> = text.lines().filter(|l| l.starts_with("failed")).collect();
    let sent: Vec<&str> = text.lines().filter(|l| l.starts_with("sent")).collect();
    assert_eq!(failed.len() + sent.len(), 2, "{text}");
    assert!(
        failed
            .iter()
            .any(|l| l.contains(&format!("{dlq_topic}/0/0")) && l.contains("too large")),
        "{text}"
    );
    assert!(
        err.contains(&format!(
            "{} of 2 re-driven records were not delivered",
            failed.len()
        )),
        "{err}"
    );
    let got = read_until(&[&input], 2, Duration::from_secs(8));
    assert_eq!(got.len(), sent.len(), "what was reported sent arrived");
    assert!(got.iter().all(|r| r.key.as_deref() == Some("small")));
}

#[test]
fn errors_name_the_pipeline_topic_or_flag() {
    let topics = TestTopics::create("rd-err", 1);
    let config = topics.config("errs", &guest("enrich_rs"), "", "");
    let cfg = config.to_str().unwrap();

    let (code, _, err) = dlq(&["-c", cfg, "-p", "nope"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--pipeline nope") && err.contains("(pipelines: errs)"),
        "{err}"
    );

    let (code, _, err) = dlq(&["-c", cfg, "-p", "errs", "--partition", "3"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--partition 3") && err.contains(&topics.dlq),
        "{err}"
    );

    let (code, _, err) = dlq(&["-c", cfg, "-p", "errs", "--kind", "timeout"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--kind `timeout`") && err.contains("deadline"),
        "{err}"
    );

    let (code, _, err) = dlq(&["-c", cfg, "-p", "errs", "--since", "yesterday-ish"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--since `yesterday-ish`"), "{err}");

    let (code, _, err) = dlq(&["redrive", "-p", "errs"]);
    assert_eq!(code, Some(2), "clap usage error");
    assert!(err.contains("--config"), "{err}");

    let missing = unique("rd-err-missing-dlq");
    let gone = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&topics.dlq, &missing);
    let gone_path = config.with_file_name("gone.toml");
    std::fs::write(&gone_path, gone).unwrap();
    let (code, _, err) = dlq(&["-c", gone_path.to_str().unwrap(), "-p", "errs"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "dead-letter topic `{missing}` of pipeline `errs` does not exist"
        )),
        "{err}"
    );

    // Nothing listens on port 1: the command gives up at --timeout.
    let unreachable = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&brokers(), "127.0.0.1:1");
    let unreachable_path = config.with_file_name("unreachable.toml");
    std::fs::write(&unreachable_path, unreachable).unwrap();
    let (code, _, err) = dlq(&[
        "-c",
        unreachable_path.to_str().unwrap(),
        "-p",
        "errs",
        "--timeout",
        "2s",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("could not reach the Kafka brokers 127.0.0.1:1 within 2s"),
        "{err}"
    );

    // An empty dead-letter topic lists nothing and ends on its own.
    let (code, out, err) = dlq(&["-c", cfg, "-p", "errs"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.is_empty() && err.contains("0 of 0"), "{out}{err}");
}
