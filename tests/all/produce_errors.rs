//! Outputs the producer or broker refuses, oversized dead letters, and
//! output topics checked at start-up (issue 9, §4), through `run` against the
//! real broker with the `hostile` test guest.

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::support::*;

/// Waits for the worker to exit on its own; its exit code.
fn wait_exit(worker: &mut WorkerProcess, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(st) = worker.child.try_wait().unwrap() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "worker still running after {timeout:?}; log:\n{}",
        worker.log_text()
    );
}

fn still_running(worker: &mut WorkerProcess) -> bool {
    worker.child.try_wait().unwrap().is_none()
}

fn topic_exists(topic: &str) -> bool {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("metadata client");
    // All topics: asking for one by name could auto-create it.
    let md = c
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    md.topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none())
}

/// The broker refuses an output (its topic's `max.message.bytes` is below
/// the output's size): the input goes to the dead-letter topic as
/// `produce-rejected` with the broker's error, later records flow, the
/// process stays up, and the refused input's offset is committed once its
/// dead letter is acknowledged (a restart does not dead-letter it again).
#[test]
fn an_output_the_broker_refuses_dead_letters_the_input() {
    let input = unique("pe-in");
    let output = unique("pe-out");
    let dlq = unique("pe-dlq");
    create_topics(&[(&input, 1), (&dlq, 1)]);
    create_topic_with(&output, 1, &[("max.message.bytes", "20000")]);
    let bad = r#"{"action":"big-output","size":50000,"id":"big"}"#;
    produce_all(&input, &[In::new("big", bad).header("origin", "o-big")]);
    let component = guest("hostile");
    let config = write_config(
        &unique("pe-group"),
        &[PipelineSpec {
            name: "hostile",
            inputs: &[&input],
            outputs: &[&output],
            dlq: &dlq,
            component: &component,
            extra: "",
        }],
        "",
    );
    let mut worker = WorkerProcess::start(&config);
    let dead = read_until(&[&dlq], 1, Duration::from_secs(90));
    assert_eq!(dead.len(), 1, "log:\n{}", worker.log_text());
    let d = &dead[0];
    assert_eq!(d.header("pw.error.kind"), "produce-rejected");
    let msg = d.header("pw.error.message").to_lowercase();
    assert!(
        msg.contains("too large") && msg.contains(&output),
        "the broker's error and the topic: {msg}"
    );
    assert_eq!(d.value, bad, "the input, not the output, is dead-lettered");
    assert_eq!(d.key.as_deref(), Some("big"));
    assert_eq!(d.header("origin"), "o-big", "input headers kept");
    assert_eq!(d.header("pw.origin.topic"), input);
    assert_eq!(d.header("pw.origin.offset"), "0");

    // Later records still flow, and the process did not stop.
    let good: Vec<In> = (0..5)
        .map(|i| In::new(format!("g{i}"), format!(r#"{{"action":"ok","id":{i}}}"#)))
        .collect();
    produce_all(&input, &good);
    let out = read_until(&[&output], 5, Duration::from_secs(60));
    assert_eq!(out.len(), 5, "log:\n{}", worker.log_text());
    assert!(still_running(&mut worker), "log:\n{}", worker.log_text());
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));

    // Restart in the same group: the refused input was committed, so it is
    // neither dead-lettered again nor produced.
    let worker = WorkerProcess::start(&config);
    produce_all(&input, &[In::new("g5", r#"{"action":"ok","id":5}"#)]);
    let out = read_until(&[&output], 6, Duration::from_secs(60));
    assert_eq!(
        out.len(),
        6,
        "5 earlier + 1 new output; log:\n{}",
        worker.log_text()
    );
    assert_eq!(
        read_until(&[&output], 7, Duration::from_secs(3)).len(),
        6,
        "nothing processed twice"
    );
    assert_eq!(
        read_until(&[&dlq], 2, Duration::from_secs(5)).len(),
        1,
        "the refused input is dead-lettered once"
    );
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// One output of a fan-out is refused (too large for its topic) while its
/// siblings are not: the input is dead-lettered exactly once however many of
/// its outputs the broker refuses (a batch is refused whole), its offset is
/// committed after that dead letter, and the records after it flow. (Records
/// produced in the same batch as the refused output are refused with it, as
/// the README says, so the later records are sent once the dead letter is in.)
#[test]
fn one_refused_output_of_a_fan_out_dead_letters_its_input_once() {
    let input = unique("pf-in");
    let output = unique("pf-out");
    let dlq = unique("pf-dlq");
    create_topics(&[(&input, 1), (&dlq, 1)]);
    create_topic_with(&output, 1, &[("max.message.bytes", "20000")]);
    let bad = r#"{"action":"fanout-one-big","n":4,"big":2,"size":50000,"id":"f"}"#;
    produce_all(&input, &[In::new("fan", bad)]);
    let component = guest("hostile");
    let config = write_config(
        &unique("pf-group"),
        &[PipelineSpec {
            name: "hostile",
            inputs: &[&input],
            outputs: &[&output],
            dlq: &dlq,
            component: &component,
            extra: "",
        }],
        "",
    );
    let mut worker = WorkerProcess::start(&config);
    let dead = read_until(&[&dlq], 1, Duration::from_secs(90));
    assert_eq!(dead.len(), 1, "log:\n{}", worker.log_text());
    assert_eq!(dead[0].header("pw.error.kind"), "produce-rejected");
    assert_eq!(dead[0].value, bad, "the input is dead-lettered");
    assert_eq!(dead[0].header("pw.origin.offset"), "0");
    let good: Vec<In> = (0..5)
        .map(|i| In::new(format!("g{i}"), format!(r#"{{"action":"ok","id":{i}}}"#)))
        .collect();
    produce_all(&input, &good);
    // The fan-out's accepted siblings may be there too (0 to 3 of them,
    // depending on how the producer batched them with the refused one).
    let ok = |out: &[Out]| out.iter().filter(|r| r.value.contains("\"ok\"")).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = read_until(&[&output], 9, Duration::from_secs(2));
    while ok(&out) < 5 && Instant::now() < deadline {
        out = read_until(&[&output], 9, Duration::from_secs(2));
    }
    assert_eq!(
        ok(&out),
        5,
        "every later record produced; log:\n{}",
        worker.log_text()
    );
    assert!(out.len() <= 8, "no output twice: {}", out.len());
    assert!(still_running(&mut worker), "log:\n{}", worker.log_text());
    assert_eq!(
        read_until(&[&dlq], 2, Duration::from_secs(3)).len(),
        1,
        "several refused outputs, one dead letter"
    );
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));

    // The dead-lettered input was committed: a restart does not see it again.
    let worker = WorkerProcess::start(&config);
    produce_all(&input, &[In::new("g5", r#"{"action":"ok","id":5}"#)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_until(&[&output], out.len() + 1, Duration::from_secs(2)).len() <= out.len() {
        assert!(
            Instant::now() < deadline,
            "g5 not produced; log:\n{}",
            worker.log_text()
        );
    }
    assert_eq!(
        read_until(&[&dlq], 2, Duration::from_secs(3)).len(),
        1,
        "not dead-lettered again after a restart"
    );
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// A dead letter larger than the producer's `message.max.bytes` (an input
/// near the limit plus the dead-letter headers) is stored with its value
/// cut, `pw.dlq.truncated` and `pw.dlq.original-size`; and one the broker's
/// dead-letter topic refuses as too large is cut further until it fits.
#[test]
fn oversized_dead_letters_are_kept_truncated() {
    let input = unique("pt-in");
    let output = unique("pt-out");
    let dlq = unique("pt-dlq");
    let small_dlq = unique("pt-small-dlq");
    let input2 = unique("pt-in2");
    create_topics(&[(&input, 1), (&input2, 1), (&output, 1), (&dlq, 1)]);
    create_topic_with(&small_dlq, 1, &[("max.message.bytes", "30000")]);

    // `error` is refused by the function: the dead letter is the whole input.
    let pad = |n: usize| format!(r#"{{"action":"error","pad":"{}"}}"#, "x".repeat(n));
    // 999,800 bytes: accepted as an input, but with the dead-letter headers
    // (~400 bytes) over the producer's default message.max.bytes (1,000,000).
    let near_limit = pad(999_800 - 27);
    assert_eq!(near_limit.len(), 999_800);
    let over_topic_limit = pad(50_000);
    produce_all(&input, &[In::new("big", &near_limit)]);
    produce_all(&input2, &[In::new("mid", &over_topic_limit)]);
    let component = guest("hostile");
    let config = write_config(
        &unique("pt-group"),
        &[
            PipelineSpec {
                name: "near-limit",
                inputs: &[&input],
                outputs: &[&output],
                dlq: &dlq,
                component: &component,
                extra: "",
            },
            PipelineSpec {
                name: "small-dlq",
                inputs: &[&input2],
                outputs: &[&output],
                dlq: &small_dlq,
                component: &component,
                extra: "",
            },
        ],
        "",
    );
    let mut worker = WorkerProcess::start(&config);
    let dead = read_until(&[&dlq], 1, Duration::from_secs(90));
    assert_eq!(dead.len(), 1, "log:\n{}", worker.log_text());
    let d = &dead[0];
    assert_eq!(d.header("pw.error.kind"), "invalid-input");
    assert_eq!(d.header("pw.dlq.truncated"), "true");
    assert_eq!(
        d.header("pw.dlq.original-size"),
        near_limit.len().to_string()
    );
    assert!(
        d.value.len() < near_limit.len() && d.value.len() > 900_000,
        "cut just enough: {} bytes",
        d.value.len()
    );
    assert!(near_limit.starts_with(&d.value), "a prefix of the input");
    assert_eq!(d.key.as_deref(), Some("big"));

    let dead = read_until(&[&small_dlq], 1, Duration::from_secs(60));
    assert_eq!(dead.len(), 1, "log:\n{}", worker.log_text());
    let d = &dead[0];
    assert_eq!(d.header("pw.dlq.truncated"), "true");
    assert_eq!(
        d.header("pw.dlq.original-size"),
        over_topic_limit.len().to_string()
    );
    assert!(
        d.value.len() < 30_000 && over_topic_limit.starts_with(&d.value),
        "cut under the topic's limit: {} bytes",
        d.value.len()
    );
    assert!(
        still_running(&mut worker),
        "never fatal; log:\n{}",
        worker.log_text()
    );
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// A declared output or dead-letter topic that does not exist refuses
/// start-up (exit 1), naming the topic and its key, and is not created.
#[test]
fn missing_output_topics_refuse_start_up() {
    let input = unique("pm-in");
    let output = unique("pm-out");
    let dlq = unique("pm-dlq");
    create_topics(&[(&input, 1), (&output, 1), (&dlq, 1)]);
    let component = guest("hostile");
    let missing = unique("pm-missing");
    let cases = [
        (
            vec![output.as_str(), missing.as_str()],
            dlq.as_str(),
            "pipelines[0].output_topics[1]",
        ),
        (
            vec![output.as_str()],
            missing.as_str(),
            "pipelines[0].dead_letter_topic",
        ),
    ];
    for (outputs, dlq, key) in cases {
        let config = write_config(
            &unique("pm-group"),
            &[PipelineSpec {
                name: "hostile",
                inputs: &[&input],
                outputs: &outputs,
                dlq,
                component: &component,
                extra: "",
            }],
            "",
        );
        let mut worker = WorkerProcess::start(&config);
        let code = wait_exit(&mut worker, Duration::from_secs(60));
        let log = worker.log_text();
        assert_eq!(code, Some(1), "start-up error exit code; log:\n{log}");
        assert!(
            log.contains(key) && log.contains(&missing),
            "names {key} and {missing}; log:\n{log}"
        );
        assert!(
            !topic_exists(&missing),
            "the check must not create {missing}"
        );
    }
}

/// `max_output_bytes` above what the producer accepts is refused, naming both keys.
#[test]
fn max_output_bytes_over_the_producer_limit_is_refused() {
    let component = guest("hostile");
    let config = write_config(
        &unique("pl-group"),
        &[PipelineSpec {
            name: "hostile",
            inputs: &["pl-in"],
            outputs: &["pl-out"],
            dlq: "pl-dlq",
            component: &component,
            extra: "[pipelines.limits]\nmax_output_bytes = 2000000\n",
        }],
        "",
    );
    for verb in ["validate", "run"] {
        let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
            .args([verb, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{verb}: {text}");
        assert!(
            text.contains("pipelines[0].limits.max_output_bytes")
                && text.contains("message.max.bytes"),
            "{verb} names both keys: {text}"
        );
    }
}

fn delete_topic(topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in rt
        .block_on(admin.delete_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .expect("delete topic")
    {
        r.unwrap_or_else(|(t, e)| panic!("deleting {t}: {e}"));
    }
}

/// The dead-letter topic vanishes while running: a dead letter that cannot
/// be written after bounded retries is fatal, with one clear log line and
/// the data-path exit code (3), and the record's offset is not committed.
#[test]
fn an_unwritable_dead_letter_topic_is_fatal_with_its_own_exit_code() {
    let input = unique("pf-in");
    let output = unique("pf-out");
    let dlq = unique("pf-dlq");
    create_topics(&[(&input, 1), (&output, 1), (&dlq, 1)]);
    let component = guest("hostile");
    let config = write_config(
        &unique("pf-group"),
        &[PipelineSpec {
            name: "hostile",
            inputs: &[&input],
            outputs: &[&output],
            dlq: &dlq,
            component: &component,
            extra: "",
        }],
        // The broker auto-creates topics; the worker must not bring the
        // deleted one back. A short propagation wait and message timeout
        // (when the broker, not the client, reports the topic unknown) keep
        // the test quick.
        "[kafka.librdkafka]\n\"allow.auto.create.topics\" = \"false\"\n\"topic.metadata.propagation.max.ms\" = \"1000\"\n\"message.timeout.ms\" = \"5000\"\n",
    );
    let mut worker = WorkerProcess::start(&config);
    produce_all(&input, &[In::new("ok", r#"{"action":"ok"}"#)]);
    assert_eq!(
        read_until(&[&output], 1, Duration::from_secs(60)).len(),
        1,
        "log:\n{}",
        worker.log_text()
    );
    delete_topic(&dlq);
    let deadline = Instant::now() + Duration::from_secs(30);
    while topic_exists(&dlq) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    produce_all(&input, &[In::new("bad", r#"{"action":"error"}"#)]);
    let started = Instant::now();
    let code = wait_exit(&mut worker, Duration::from_secs(90));
    let log = worker.log_text();
    assert_eq!(code, Some(3), "data-path exit code; log:\n{log}");
    let fatal: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("fatal error; stopping"))
        .collect();
    assert_eq!(fatal.len(), 1, "one fatal line; log:\n{log}");
    assert!(
        fatal[0].contains(&dlq) && fatal[0].contains("not writable"),
        "names the topic and why: {}",
        fatal[0]
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "bounded retries"
    );
    assert!(!topic_exists(&dlq), "the worker must not re-create {dlq}");
}
