//! `/readyz` tells the truth: a tenant pipeline waiting for its first
//! activation holds readiness back (unless `telemetry.ready_without_activation`),
//! and a worker that is processing records is never reported as having no
//! broker.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

const TOKEN: &str = "readiness-token";

fn wait_ready(worker: &WorkerProcess, port: u16, code: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let got = http_get(port, "/readyz");
        if let Some((c, body)) = &got {
            if *c == code {
                return body.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {code}; last: {got:?}; log:\n{}",
            worker.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One tenant pipeline `p` (no component file) with a registry and a
/// control API on a port of its choosing.
fn tenant_config(topics: &TestTopics) -> PathBuf {
    // Created here, and not waited for: a log reader that opens a topic
    // created a moment ago waits until the broker's metadata has it.
    let activations = unique("ready-activations");
    create_topic_with(&activations, 1, &[("cleanup.policy", "compact")]);
    let dir = std::env::temp_dir().join(unique("pw-ready"));
    std::fs::create_dir_all(&dir).unwrap();
    let token_sha256 = sha256_hex(TOKEN);
    let text = format!(
        r#"[kafka]
brokers = "{brokers}"
group_id = "{group}"

[runtime]
cache_dir = "{cache}"
drain_timeout_ms = 15000

[registry]
store = "store"
activations_topic = "{activations}"

[control]
listen = "127.0.0.1:0"
[[control.tenants]]
name = "acme"
token_sha256 = "{token_sha256}"

[[pipelines]]
name = "p"
tenant = "acme"
input_topics = ["{input}"]
output_topics = ["{output}"]
dead_letter_topic = "{dlq}"
concurrency = 1
"#,
        brokers = brokers(),
        group = unique("ready-group"),
        cache = cache_dir().display(),
        activations = activations,
        input = topics.input,
        output = topics.output,
        dlq = topics.dlq,
    );
    let path = dir.join("worker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_tenant_pipeline_is_not_ready_until_its_first_activation() {
    let topics = TestTopics::create("ready", 2);
    let config = tenant_config(&topics);
    // The control plane first: it creates the activation topic, which two
    // workers starting at once on a fresh cluster would race to create.
    let control = WorkerProcess::start_verb("control", &config);
    let control_port = bound_port(&control, "control API listening", Duration::from_secs(60));
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let api = format!("http://127.0.0.1:{control_port}");
    wait_control_api(&control, &api, TOKEN, Duration::from_secs(60));
    let strict = WorkerProcess::start_env(
        "run",
        &config,
        &[("PIPELINE_WORKER__TELEMETRY__HTTP_LISTEN", "127.0.0.1:0")],
    );
    let relaxed = WorkerProcess::start_env(
        "run",
        &config,
        &[
            ("PIPELINE_WORKER__TELEMETRY__HTTP_LISTEN", "127.0.0.1:0"),
            (
                "PIPELINE_WORKER__TELEMETRY__READY_WITHOUT_ACTIVATION",
                "true",
            ),
        ],
    );
    let port = bound_port(&strict, "serving /livez", Duration::from_secs(60));
    let relaxed_port = bound_port(&relaxed, "serving /livez", Duration::from_secs(60));
    // The documented option: ready although nothing is activated (and so
    // no group joined), which the metrics confirm.
    wait_ready(&relaxed, relaxed_port, 200, Duration::from_secs(60));
    let (_, metrics) = http_get(relaxed_port, "/metrics").expect("metrics");
    assert!(
        !metrics.contains("pipeline_function_info{"),
        "nothing should be activated yet:\n{metrics}"
    );
    assert_eq!(relaxed.terminate(Duration::from_secs(30)), Some(0));

    // Without it: not ready, naming the pipeline, for as long as it waits.
    let body = wait_ready(&strict, port, 503, Duration::from_secs(60));
    assert!(
        body.contains("pipeline p") && body.contains("first activation"),
        "{body}"
    );
    let upload = http
        .post(format!("{api}/v1/functions/enrich/versions"))
        .bearer_auth(TOKEN)
        .body(std::fs::read(guest("enrich_rs")).unwrap())
        .send()
        .expect("upload");
    let status = upload.status().as_u16();
    let body: serde_json::Value = serde_json::from_str(&upload.text().unwrap()).unwrap();
    assert_eq!(status, 201, "upload: {body}");
    let version = body["version"].as_u64().unwrap();
    // Still waiting: an upload alone activates nothing.
    let (code, body) = http_get(port, "/readyz").expect("readyz");
    assert_eq!(code, 503, "{body}");
    let r = http
        .post(format!("{api}/v1/pipelines/p/activate"))
        .bearer_auth(TOKEN)
        .body(json!({"function": "enrich", "version": version}).to_string())
        .send()
        .unwrap();
    assert!(r.status().is_success(), "activate: {:?}", r.text());
    wait_ready(&strict, port, 200, Duration::from_secs(60));
    assert_eq!(strict.terminate(Duration::from_secs(30)), Some(0));
    drop(control);
}

/// librdkafka statistics every 60 s: before the fix, `broker_up` stayed
/// false until the first tick, so `/readyz` said "no broker reachable" while
/// records were being processed. Once an output exists, every answer must
/// be 200.
#[test]
fn no_broker_down_reason_while_records_flow_at_start_up() {
    let topics = TestTopics::create("ready-flow", 2);
    let records: Vec<In> = (0..20)
        .map(|i| {
            In::new(
                format!("k{i}"),
                format!(r#"{{"id":{i},"session_start":0,"session_end":60}}"#),
            )
        })
        .collect();
    produce_all(&topics.input, &records);
    let config = topics.config(
        "flow",
        &guest("enrich_rs"),
        "",
        "[kafka.librdkafka]\n\"statistics.interval.ms\" = \"60000\"\n\n[telemetry]\nhttp_listen = \"127.0.0.1:0\"\n",
    );
    let worker = WorkerProcess::start(&config);
    let port = bound_port(&worker, "serving /livez", Duration::from_secs(60));
    // (request sent at, status, body) of every /readyz answer, from start-up on.
    let samples: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (samples, stop) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                if let Some((code, body)) = http_get(port, "/readyz") {
                    samples.lock().unwrap().push((at, code, body));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let first = read_until(&[&topics.output], 1, Duration::from_secs(60));
    assert!(!first.is_empty(), "no output; log:\n{}", worker.log_text());
    let produced_by = Instant::now();
    let all = read_until(&[&topics.output], records.len(), Duration::from_secs(60));
    assert_eq!(all.len(), records.len(), "log:\n{}", worker.log_text());
    // A few more answers after the outputs were seen (counted, not timed:
    // on a loaded machine a fixed window may hold none).
    wait_until(
        "3 /readyz answers after the outputs",
        Duration::from_secs(60),
        || {
            samples
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.0 > produced_by)
                .count()
                >= 3
        },
    );
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    let samples = samples.lock().unwrap();
    let after: Vec<_> = samples.iter().filter(|s| s.0 > produced_by).collect();
    assert!(
        !after.is_empty(),
        "no /readyz answer after the first output"
    );
    for (_, code, body) in &after {
        assert_eq!(
            *code,
            200,
            "processing records yet not ready: {body}; log:\n{}",
            worker.log_text()
        );
    }
    // Before the join, "has not joined" is the reason; after it, a broker
    // has answered: the broker was never down during this start-up.
    for (_, _, body) in samples.iter() {
        assert!(
            !body.contains("no broker reachable"),
            "false broker-down reason at start-up: {body}"
        );
    }
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}
