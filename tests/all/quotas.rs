//! Tenants sharing a worker: a records/s quota holds a burst to its rate
//! (nothing lost or dead-lettered, the throttle metric moves), a tenant whose
//! function runs to its deadline does not starve another tenant's pipeline,
//! a function at its memory cap backs off (a lone poison record does not),
//! and a config over the memory budget is refused naming its pipelines.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// Output topics stamp the broker's append time, so rates are measured
/// where the records landed, not where the test produced them.
fn topics(prefix: &str, partitions: i32) -> (String, String, String) {
    let (input, output, dlq) = (
        unique(&format!("{prefix}-in")),
        unique(&format!("{prefix}-out")),
        unique(&format!("{prefix}-dlq")),
    );
    create_topics(&[(&input, partitions), (&dlq, 1)]);
    create_topic_with(
        &output,
        partitions,
        &[("message.timestamp.type", "LogAppendTime")],
    );
    (input, output, dlq)
}

fn enrich_records(n: usize) -> Vec<In> {
    (0..n)
        .map(|i| {
            In::new(
                format!("k{i}"),
                format!(r#"{{"id":{i},"session_start":1700000000,"session_end":1700000600}}"#),
            )
        })
        .collect()
}

/// Records per second between the first and the last append.
fn rate(out: &[Out]) -> f64 {
    let ts: Vec<i64> = out.iter().filter_map(|o| o.timestamp).collect();
    let (first, last) = (ts.iter().min().unwrap(), ts.iter().max().unwrap());
    out.len() as f64 / ((last - first).max(1) as f64 / 1000.0)
}

fn ids(out: &[Out]) -> HashSet<u64> {
    out.iter()
        .map(|o| o.json()["id"].as_u64().expect("id"))
        .collect()
}

pub(crate) fn throttled_seconds(metrics: &str, pipeline: &str, reason: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("pipeline_throttled_seconds_total{")
                && l.contains(&format!("pipeline=\"{pipeline}\""))
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .next()
        .unwrap_or_else(|| panic!("no throttle series for {pipeline}/{reason} in:\n{metrics}"))
}

/// 20,000 records already waiting, a tenant quota of 2,000 records/s: they
/// arrive at 2,000 ± 10 % records/s, every one of them, none dead-lettered,
/// and the throttle metric and one episode line say why.
#[test]
fn a_burst_is_held_to_the_tenant_quota_without_loss() {
    const N: usize = 20_000;
    let (input, output, dlq) = topics("quota", 2);
    produce_all(&input, &enrich_records(N));
    let config = write_config(
        &unique("quota-group"),
        &[PipelineSpec {
            name: "metered",
            inputs: &[&input],
            outputs: &[&output],
            dlq: &dlq,
            component: &guest("enrich_rs"),
            extra: "tenant = \"acme\"\nconcurrency = 2",
        }],
        "\n[telemetry]\nhttp_listen = \"127.0.0.1:0\"\n\n[[tenants]]\nname = \"acme\"\nrecords_per_second = 2000\nrecords_burst = 100\n",
    );
    let worker = WorkerProcess::start(&config);
    let port = bound_port(&worker, "serving /livez", Duration::from_secs(60));
    let started = Instant::now();
    let out = read_until(&[&output], N, Duration::from_secs(60));
    let metrics = http_get(port, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let dead = read_until(&[&dlq], 1, Duration::from_secs(2));
    let log = worker.log_text();
    worker.terminate(Duration::from_secs(20));
    println!(
        "quota: {} records in {:.1} s, {:.0} records/s at the output",
        out.len(),
        started.elapsed().as_secs_f64(),
        rate(&out)
    );
    assert_eq!(out.len(), N, "every record arrives; log:\n{log}");
    assert_eq!(ids(&out).len(), N, "each exactly once");
    assert!(dead.is_empty(), "nothing dead-lettered: {:?}", dead.first());
    let r = rate(&out);
    assert!(
        (1800.0..=2200.0).contains(&r),
        "output rate {r:.0} records/s, quota 2000 ± 10 %"
    );
    let held = throttled_seconds(&metrics, "metered", "records");
    assert!(held > 1.0, "throttle metric moved: {held} s");
    let episodes = log.matches("pipeline throttled").count();
    assert!(
        (1..=3).contains(&episodes),
        "one line per episode, not per record: {episodes}\n{log}"
    );
}

/// Runs `n` enrich records through pipeline B (tenant b) on a fresh worker,
/// with pipeline A (tenant a, hostile, every record loops to its 50 ms
/// deadline) beside it when `neighbour`; B's output rate.
fn b_rate(n: usize, neighbour: bool) -> (f64, usize) {
    let (b_in, b_out, b_dlq) = topics("fair-b", 1);
    let (a_in, a_out, a_dlq) = topics("fair-a", 2);
    let a_records: Vec<In> = (0..400)
        .map(|i| In::new(format!("a{i}"), r#"{"action":"loop"}"#))
        .collect();
    produce_all(&a_in, &a_records);
    let (b, a) = (guest("enrich_rs"), guest("hostile"));
    let (b_ins, b_outs, a_ins, a_outs) = (
        [b_in.as_str()],
        [b_out.as_str()],
        [a_in.as_str()],
        [a_out.as_str()],
    );
    let mut specs = vec![PipelineSpec {
        name: "b",
        inputs: &b_ins,
        outputs: &b_outs,
        dlq: &b_dlq,
        component: &b,
        extra: "tenant = \"b\"\nconcurrency = 1",
    }];
    if neighbour {
        specs.push(PipelineSpec {
            name: "a",
            inputs: &a_ins,
            outputs: &a_outs,
            dlq: &a_dlq,
            component: &a,
            extra: "tenant = \"a\"\nconcurrency = 2\n[pipelines.limits]\ndeadline_ms = 50",
        });
    }
    let config = write_config(
        &unique("fair-group"),
        &specs,
        "\n[[tenants]]\nname = \"a\"\n\n[[tenants]]\nname = \"b\"\n",
    );
    let worker = WorkerProcess::start(&config);
    if neighbour {
        // A's first batch (before anything is known about its function)
        // runs at full speed; B is measured beside A in its steady state.
        let dead = read_until(&[&a_dlq], 2, Duration::from_secs(30));
        assert!(!dead.is_empty(), "A runs; log:\n{}", worker.log_text());
        std::thread::sleep(Duration::from_secs(4));
    } else {
        std::thread::sleep(Duration::from_secs(2));
    }
    produce_all(&b_in, &enrich_records(n));
    let out = read_until(&[&b_out], n, Duration::from_secs(60));
    let a_dead = if neighbour {
        read_until(&[&a_dlq], 1000, Duration::from_secs(1))
            .iter()
            .filter(|d| d.header("pw.error.kind") == "deadline")
            .count()
    } else {
        0
    };
    let log = worker.log_text();
    worker.terminate(Duration::from_secs(20));
    assert_eq!(out.len(), n, "B gets all its records; log:\n{log}");
    if neighbour {
        assert!(
            log.contains("pipeline backing off"),
            "A's backoff is logged:\n{log}"
        );
    }
    (rate(&out), a_dead)
}

/// B beside a tenant whose function uses its whole deadline on every record
/// keeps most of its throughput (the bound asserted with a wide margin for a
/// shared machine; `--bench noisy` measures it), and A's records still go
/// to its dead-letter topic.
#[test]
fn a_deadline_bound_neighbour_does_not_starve_another_tenant() {
    const N: usize = 20_000;
    let (alone, _) = b_rate(N, false);
    let (beside, a_dead) = b_rate(N, true);
    let ratio = beside / alone;
    println!("fair share: B alone {alone:.0} records/s, beside A {beside:.0} records/s, ratio {ratio:.2}; A dead-lettered {a_dead}");
    assert!(a_dead >= 2, "A's records are dead-lettered (deadline)");
    assert!(
        ratio >= 0.6,
        "B beside A: {beside:.0} records/s vs {alone:.0} alone (ratio {ratio:.2})"
    );
}

/// A function whose every record grows memory to its cap backs off like one
/// that runs to its deadline (one record at a time, doubling waits) and its
/// records are still dead-lettered (`memory`); a pipeline where such a
/// record sits among good ones does not back off, and loses nothing.
#[test]
fn a_function_at_its_memory_cap_backs_off_but_one_poison_record_does_not() {
    // At 2 s a record once backed off, all of them would take minutes.
    const HOG: usize = 100;
    const BATCH: usize = 8;
    const MIXED: usize = 500;
    let hog = TestTopics::create("memcap-hog", 1);
    let mixed = TestTopics::create("memcap-mixed", 1);
    let alloc = r#"{"action":"alloc"}"#;
    produce_all(
        &hog.input,
        &(0..HOG)
            .map(|i| In::new(format!("h{i}"), alloc))
            .collect::<Vec<_>>(),
    );
    // Never last, so no batch holds only a poison record.
    let poison = |i: usize| i % 50 == 25;
    let mixed_records: Vec<In> = (0..MIXED)
        .map(|i| {
            let v = if poison(i) {
                alloc.to_string()
            } else {
                format!(r#"{{"action":"ok","id":{i}}}"#)
            };
            In::new(format!("m{i}"), v)
        })
        .collect();
    let poisoned = (0..MIXED).filter(|i| poison(*i)).count();
    produce_all(&mixed.input, &mixed_records);
    let hostile = guest("hostile");
    let extra = format!(
        "batch_size = {BATCH}\nconcurrency = 1\n[pipelines.limits]\nmemory_bytes = 16777216"
    );
    let port = free_port();
    let config = write_config(
        &unique("memcap-group"),
        &[
            PipelineSpec {
                name: "hog",
                inputs: &[&hog.input],
                outputs: &[&hog.output],
                dlq: &hog.dlq,
                component: &hostile,
                extra: &extra,
            },
            PipelineSpec {
                name: "mixed",
                inputs: &[&mixed.input],
                outputs: &[&mixed.output],
                dlq: &mixed.dlq,
                component: &hostile,
                extra: &extra,
            },
        ],
        &format!("\n[telemetry]\nhttp_listen = \"127.0.0.1:{port}\"\n"),
    );
    let worker = WorkerProcess::start(&config);
    let out = read_until(&[&mixed.output], MIXED - poisoned, Duration::from_secs(60));
    let mixed_dead = read_until(&[&mixed.dlq], poisoned, Duration::from_secs(30));
    // The first batch, then one record after each of 100, 200, 400, 800 ms.
    let hog_dead = read_until(&[&hog.dlq], BATCH + 4, Duration::from_secs(60));
    let metrics = http_get(port, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let log = worker.log_text();
    worker.terminate(Duration::from_secs(20));
    println!(
        "memory cap: mixed {} outputs, {} dead letters; hog {} of {HOG} dead-lettered",
        out.len(),
        mixed_dead.len(),
        hog_dead.len()
    );
    assert_eq!(
        out.len(),
        MIXED - poisoned,
        "good records all out; log:\n{log}"
    );
    assert_eq!(ids(&out).len(), MIXED - poisoned, "each exactly once");
    for (name, dead) in [("mixed", &mixed_dead), ("hog", &hog_dead)] {
        assert!(
            dead.iter().all(|d| d.header("pw.error.kind") == "memory"),
            "{name}: dead-lettered at the memory cap: {:?}",
            dead.iter()
                .map(|d| d.header("pw.error.kind"))
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(mixed_dead.len(), poisoned, "mixed: only the poison records");
    assert!(
        hog_dead.len() >= BATCH + 4,
        "hog: its records are still dead-lettered while it backs off"
    );
    assert!(
        hog_dead.len() < HOG,
        "hog: not retried at full speed ({} of {HOG} already)",
        hog_dead.len()
    );
    let hog_held = throttled_seconds(&metrics, "hog", "resource-backoff");
    assert!(hog_held > 0.1, "hog backed off: {hog_held} s\n{metrics}");
    assert_eq!(
        throttled_seconds(&metrics, "hog", "deadline-backoff"),
        0.0,
        "the memory cap, not the deadline"
    );
    assert_eq!(
        throttled_seconds(&metrics, "mixed", "resource-backoff"),
        0.0,
        "a poison record among good ones does not back off"
    );
    assert!(
        log.contains("keeps hitting a resource limit"),
        "the backoff is logged:\n{log}"
    );
}

/// A config whose pipelines could commit more than the budget does not
/// start: `validate` and `run` both say which pipelines take how much.
#[test]
fn a_config_over_the_memory_budget_is_refused_naming_the_pipelines() {
    let c = guest("enrich_rs");
    let config = write_config(
        &unique("budget-group"),
        &[
            PipelineSpec {
                name: "wide",
                inputs: &["budget-in-a"],
                outputs: &["budget-out"],
                dlq: "budget-dlq",
                component: &c,
                extra: "concurrency = 8\n[pipelines.limits]\nmemory_bytes = 536870912",
            },
            PipelineSpec {
                name: "narrow",
                inputs: &["budget-in-b"],
                outputs: &["budget-out"],
                dlq: "budget-dlq",
                component: &c,
                extra: "concurrency = 1",
            },
        ],
        "memory_budget_bytes = 1073741824",
    );
    for verb in [&["validate", "--offline"][..], &["run"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
            .args(verb)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run pipeline-worker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{verb:?} refuses: {err}");
        assert!(
            err.contains("runtime.memory_budget_bytes") && err.contains("1024 MiB"),
            "{verb:?}: names the key and the budget: {err}"
        );
        assert!(
            err.contains("pipelines[0] (wide): 4") && err.contains("pipelines[1] (narrow): "),
            "{verb:?}: lists each pipeline's share: {err}"
        );
    }
}
