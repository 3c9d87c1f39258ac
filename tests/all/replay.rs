//! `test` replaying real records from the broker (by offset, by timestamp,
//! the last N, with a golden file), committing and producing nothing; and
//! `functions activate --dry-run` comparing two uploaded versions on a
//! pipeline's latest input without switching anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::support::*;

fn pw(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .args(args)
        .output()
        .expect("run pipeline-worker");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// Produces `values[i]` to `partition` with timestamp `ts[i]`, in order.
fn produce_at(topic: &str, partition: i32, records: &[(i64, String)]) {
    let p = producer();
    for (ts, value) in records {
        let key = format!("k{partition}");
        p.send(
            BaseRecord::to(topic)
                .partition(partition)
                .key(&key)
                .payload(value)
                .timestamp(*ts),
        )
        .map_err(|(e, _)| e)
        .expect("enqueue");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

fn high_watermark(topic: &str, partition: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    c.fetch_watermarks(topic, partition, Duration::from_secs(10))
        .unwrap()
        .1
}

/// Offsets `group` has committed on `topic`'s partitions (none: all invalid),
/// and whether the broker knows the group at all.
fn group_trace(group: &str, topic: &str, partitions: i32) -> (Vec<Offset>, bool) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| e.offset())
        .collect();
    let known = c
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .unwrap()
        .groups()
        .iter()
        .any(|g| g.name() == group && g.state() != "Dead");
    (committed, known)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Output lines `topic/partition@offset: ...` in the order printed.
fn replayed(text: &str, topic: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{topic}/")))
        .filter_map(|l| l.split(':').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn replay_by_offset_timestamp_and_last_n_commits_and_produces_nothing() {
    let topics = TestTopics::create("rp", 2);
    let base = now_ms() - 60_000;
    let value = |p: i32, i: i64| format!(r#"{{"action":"ok","id":"{p}-{i}"}}"#);
    // Partition 0: six records a second apart; partition 1: four.
    produce_at(
        &topics.input,
        0,
        &(0..6)
            .map(|i| (base + i * 1000, value(0, i)))
            .collect::<Vec<_>>(),
    );
    produce_at(
        &topics.input,
        1,
        &(0..4)
            .map(|i| (base + i * 1000, value(1, i)))
            .collect::<Vec<_>>(),
    );
    let component = guest("hostile");
    let group = unique("rp-group");
    let config = write_config(
        &group,
        &[PipelineSpec {
            name: "rp",
            inputs: &[&topics.input],
            outputs: &[&topics.output],
            dlq: &topics.dlq,
            component: &component,
            extra: "",
        }],
        "",
    );
    let config_s = config.to_str().unwrap();
    let t = topics.input.as_str();
    let cache = cache_dir();
    let cache = cache.to_str().unwrap();

    // By offset, the pipeline's own input topics from the config.
    let (code, text) = pw(&[
        "test",
        "--cache-dir",
        cache,
        "--config",
        config_s,
        "--replay",
        "--from-offset",
        "2",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        replayed(&text, t),
        ["0@2", "0@3", "0@4", "0@5", "1@2", "1@3"],
        "{text}"
    );
    assert!(
        text.contains("6 record(s) read; nothing is committed or produced"),
        "{text}"
    );
    assert!(
        text.contains(&format!("→ {}  key \"k0\"", topics.output)),
        "{text}"
    );

    // By timestamp, flags only: the first record at or after base + 3 s.
    let from =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis((base + 3000) as u64))
            .to_string();
    let (code, text) = pw(&[
        "test",
        "--cache-dir",
        cache,
        "--component",
        component.to_str().unwrap(),
        "--brokers",
        &brokers(),
        "--topic",
        t,
        "--from-timestamp",
        &from,
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(replayed(&text, t), ["0@3", "0@4", "0@5", "1@3"], "{text}");

    // The last two of each partition, capped at three in all (shared).
    let (code, text) = pw(&[
        "test",
        "--cache-dir",
        cache,
        "--config",
        config_s,
        "--topic",
        t,
        "--from-end",
        "2",
        "--limit",
        "3",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(replayed(&text, t), ["0@4", "0@5", "1@2"], "{text}");

    // A golden file checks replayed records; a wrong id fails, named.
    let dir = std::env::temp_dir().join(unique("rp-golden"));
    std::fs::create_dir_all(&dir).unwrap();
    let expect = dir.join("expected.jsonl");
    std::fs::write(
        &expect,
        [
            r#"[{"key": "k1", "value": {"action": "ok", "id": "1-0"}}]"#,
            r#"[{"key": "k1", "value": {"action": "ok", "id": "1-9"}}]"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let (code, text) = pw(&[
        "test",
        "--cache-dir",
        cache,
        "--config",
        config_s,
        "--replay",
        "--partition",
        "1",
        "--limit",
        "2",
        "--expect",
        expect.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "expected.jsonl:2 (input {t}/1@1): $[0].value.id: expected \"1-9\", got \"1-1\""
        )),
        "{text}"
    );
    assert!(!text.contains("expected.jsonl:1 "), "{text}");

    // Errors name the flag or the topic.
    let (code, text) = pw(&[
        "test",
        "--component",
        component.to_str().unwrap(),
        "--topic",
        t,
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("needs --brokers"), "{text}");
    let (code, text) = pw(&[
        "test",
        "--cache-dir",
        cache,
        "--config",
        config_s,
        "--topic",
        "no-such-topic-rp",
        "--timeout",
        "3s",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("topic \"no-such-topic-rp\" does not exist"),
        "{text}"
    );

    // Nothing produced, nothing committed, no group left behind.
    assert_eq!(high_watermark(&topics.output, 0), 0);
    assert_eq!(high_watermark(&topics.output, 1), 0);
    assert_eq!(high_watermark(&topics.dlq, 0), 0);
    for g in [format!("{group}.rp.replay"), format!("{group}.rp")] {
        let (committed, known) = group_trace(&g, t, 2);
        assert!(
            committed.iter().all(|o| *o == Offset::Invalid),
            "{g}: {committed:?}"
        );
        assert!(!known, "group {g} exists on the broker");
    }
}

const TOKEN: &str = "token-for-replay";

fn api(
    http: &reqwest::blocking::Client,
    method: &str,
    url: &str,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let req = match method {
        "GET" => http.get(url),
        _ => http.post(url),
    }
    .bearer_auth(TOKEN);
    let req = match body {
        Some(b) => req.body(b),
        None => req,
    };
    let r = req.send().expect("control API");
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.text().unwrap()).unwrap())
}

/// A control plane over fresh topics: (config, API base URL, the process,
/// topics, activation topic).
fn control_plane() -> (PathBuf, String, WorkerProcess, TestTopics, String) {
    let topics = TestTopics::create("dry", 1);
    let dir = std::env::temp_dir().join(unique("pw-dry"));
    std::fs::create_dir_all(&dir).unwrap();
    let activations = unique("dry-activations");
    let text = format!(
        r#"[kafka]
brokers = "{brokers}"
group_id = "{group}"

[runtime]
cache_dir = "{cache}"

[registry]
store = "store"
activations_topic = "{activations}"

[control]
listen = "127.0.0.1:0"
[[control.tenants]]
name = "acme"
token_sha256 = "{hash}"

[[pipelines]]
name = "p"
tenant = "acme"
input_topics = ["{input}"]
output_topics = ["{output}"]
dead_letter_topic = "{dlq}"
batch_size = 4
"#,
        brokers = brokers(),
        group = unique("dry-group"),
        cache = cache_dir().display(),
        hash = sha256_hex(TOKEN),
        input = topics.input,
        output = topics.output,
        dlq = topics.dlq,
    );
    let config = dir.join("worker.toml");
    std::fs::write(&config, text).unwrap();
    let control = WorkerProcess::start_verb("control", &config);
    let port = bound_port(&control, "control API listening", Duration::from_secs(60));
    let base = format!("http://127.0.0.1:{port}");
    wait_control_api(&control, &base, TOKEN, Duration::from_secs(60));
    (config, base, control, topics, activations)
}

/// The dry run compares the active version with the candidate on the last N
/// records of the input, shows the first differences by JSON path, and
/// switches nothing; the same version against itself is identical.
#[test]
fn activate_dry_run_shows_differences_and_switches_nothing() {
    let (config, base, control, topics, activations) = control_plane();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let upload = |name: &str, path: &Path| {
        let (status, body) = api(
            &http,
            "POST",
            &format!("{base}/v1/functions/{name}/versions"),
            Some(std::fs::read(path).unwrap()),
        );
        assert_eq!(status, 201, "{body}");
    };
    upload("enrich", &guest("enrich_rs"));
    upload("echo", &guest("hostile"));
    let (status, body) = api(
        &http,
        "POST",
        &format!("{base}/v1/pipelines/p/activate"),
        Some(
            json!({"function": "enrich", "version": 1})
                .to_string()
                .into_bytes(),
        ),
    );
    assert_eq!(status, 202, "{body}");
    produce_all(
        &topics.input,
        &(0..5)
            .map(|i| {
                In::new(
                    format!("k{i}"),
                    format!(r#"{{"id":{i},"action":"ok","session_start":0,"session_end":2400}}"#),
                )
            })
            .collect::<Vec<_>>(),
    );
    let activations_before = high_watermark(&activations, 0);

    let cli = |function: &str| {
        pw(&[
            "functions",
            "--api",
            &base,
            "--token",
            TOKEN,
            "activate",
            "p",
            function,
            "--dry-run",
            "--config",
            config.to_str().unwrap(),
            "--records",
            "3",
            "--show",
            "2",
        ])
    };
    let (code, text) = cli("echo");
    assert_eq!(code, Some(0), "{text}\ncontrol:\n{}", control.log_text());
    assert!(
        text.contains("active enrich@1 (sha256:") && text.contains("candidate echo@1 (sha256:"),
        "{text}"
    );
    assert_eq!(replayed(&text, &topics.input), Vec::<String>::new());
    assert!(
        text.contains(&format!(
            "replaying {}/0: offsets [2, 5) of 5",
            topics.input
        )),
        "{text}"
    );
    assert!(
        text.contains(
            "compared 3 record(s): 0 identical, 3 differing; errors: active enrich@1 0, candidate echo@1 0"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("  {}/0@2:", topics.input))
            && text.contains("$[0].value.session_duration_minutes: missing (expected 40.0)")
            && text.contains(r#"$[0].value.engagement_tier: missing (expected "high")"#),
        "{text}"
    );
    // --show 2: the third differing record is counted, not shown.
    assert!(
        !text.contains(&format!("  {}/0@4:", topics.input)),
        "{text}"
    );
    assert!(text.contains("nothing was activated (dry run)"), "{text}");

    // The active version against itself: identical.
    let (code, text) = cli("enrich");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("compared 3 record(s): 3 identical, 0 differing"),
        "{text}"
    );

    // Nothing switched, nothing produced.
    let (_, view) = api(&http, "GET", &format!("{base}/v1/pipelines/p"), None);
    assert_eq!(view["active"]["function"], "enrich", "{view}");
    assert_eq!(high_watermark(&activations, 0), activations_before);
    assert_eq!(high_watermark(&topics.output, 0), 0);
    assert_eq!(high_watermark(&topics.dlq, 0), 0);

    // Refusals: a dry run needs --config; an unknown version is the API's 404.
    let (code, text) = pw(&[
        "functions",
        "--api",
        &base,
        "--token",
        TOKEN,
        "activate",
        "p",
        "echo",
        "--dry-run",
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--config"), "{text}");
    let (code, text) = pw(&[
        "functions",
        "--api",
        &base,
        "--token",
        TOKEN,
        "activate",
        "p",
        "echo",
        "--version",
        "9",
        "--dry-run",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("404"), "{text}");
    drop(control);
}
