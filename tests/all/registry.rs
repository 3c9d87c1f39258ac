//! Uploads, activations, hot swap and rollback: a `pipeline-worker control`
//! process and `run` workers sharing one config (a local-directory function
//! store and an activation-log topic on the real broker).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

pub(crate) const TOKEN_A: &str = "token-for-acme";
pub(crate) const TOKEN_B: &str = "token-for-globex";

/// A control plane: config, store directory, control API process.
pub(crate) struct Plane {
    pub(crate) config: PathBuf,
    pub(crate) store: PathBuf,
    pub(crate) api: String,
    pub(crate) control: WorkerProcess,
    pub(crate) topics: TestTopics,
    http: reqwest::blocking::Client,
}

pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Plane {
    /// Pipeline `p` (tenant acme) over fresh topics with `partitions`; tenant
    /// globex owns pipeline `other` on the same topics (never activated).
    fn start(prefix: &str, partitions: i32, control_extra: &str) -> Self {
        Self::start_with(prefix, partitions, control_extra, ["", ""])
    }

    /// `tenant_extra`: keys added to acme's and globex's `[[control.tenants]]`.
    pub(crate) fn start_with(
        prefix: &str,
        partitions: i32,
        control_extra: &str,
        tenant_extra: [&str; 2],
    ) -> Self {
        Self::start_env(prefix, partitions, control_extra, tenant_extra, &[])
    }

    /// With extra environment variables for the control process.
    pub(crate) fn start_env(
        prefix: &str,
        partitions: i32,
        control_extra: &str,
        tenant_extra: [&str; 2],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_full(prefix, partitions, control_extra, tenant_extra, env, "")
    }

    /// With keys added to pipeline `p` (e.g. `delivery = "exactly-once"`).
    pub(crate) fn start_pipeline(prefix: &str, partitions: i32, pipeline_extra: &str) -> Self {
        Self::start_full(prefix, partitions, "", ["", ""], &[], pipeline_extra)
    }

    fn start_full(
        prefix: &str,
        partitions: i32,
        control_extra: &str,
        tenant_extra: [&str; 2],
        env: &[(&str, &str)],
        pipeline_extra: &str,
    ) -> Self {
        let topics = TestTopics::create(prefix, partitions);
        let dir = std::env::temp_dir().join(unique("pw-registry"));
        std::fs::create_dir_all(&dir).unwrap();
        let store = dir.join("store");
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
{control_extra}
[[control.tenants]]
name = "acme"
token_sha256 = "{ha}"
{acme_extra}
[[control.tenants]]
name = "globex"
token_env = "GLOBEX_TOKEN"
{globex_extra}

[[pipelines]]
name = "p"
tenant = "acme"
input_topics = ["{input}"]
output_topics = ["{output}"]
dead_letter_topic = "{dlq}"
batch_size = 16
concurrency = 2
{pipeline_extra}

[[pipelines]]
name = "other"
tenant = "globex"
input_topics = ["{input}-unused"]
output_topics = ["{output}-unused"]
dead_letter_topic = "{dlq}-unused"
"#,
            brokers = brokers(),
            group = unique(&format!("{prefix}-group")),
            cache = cache_dir().display(),
            activations = unique(&format!("{prefix}-activations")),
            ha = sha256_hex(TOKEN_A),
            input = topics.input,
            output = topics.output,
            dlq = topics.dlq,
            acme_extra = tenant_extra[0],
            globex_extra = tenant_extra[1],
        );
        // Workers refuse to start while a declared output topic is missing.
        create_topics(&[
            (&format!("{}-unused", topics.output), 1),
            (&format!("{}-unused", topics.dlq), 1),
        ]);
        let config = dir.join("worker.toml");
        std::fs::write(&config, text).unwrap();
        std::env::set_var("GLOBEX_TOKEN", TOKEN_B);
        let control = WorkerProcess::start_env("control", &config, env);
        let port = bound_port(&control, "control API listening", Duration::from_secs(60));
        let plane = Self {
            config,
            store,
            api: format!("http://127.0.0.1:{port}"),
            control,
            topics,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .unwrap(),
        };
        wait_control_api(&plane.control, &plane.api, TOKEN_A, Duration::from_secs(60));
        plane
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        let url = format!("{}{path}", self.api);
        let mut req = match method {
            "GET" => self.http.get(&url),
            "POST" => self.http.post(&url),
            "DELETE" => self.http.delete(&url),
            _ => unreachable!(),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let r = req.send().expect("control API request");
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {path} answered {status} with non-JSON {text:?}: {e}")
        });
        Resp { status, body }
    }

    pub(crate) fn upload(&self, name: &str, bytes: Vec<u8>) -> Resp {
        self.call(
            "POST",
            &format!("/v1/functions/{name}/versions"),
            Some(TOKEN_A),
            Some(bytes),
        )
    }

    pub(crate) fn upload_ok(&self, name: &str, path: &Path) -> u64 {
        let r = self.upload(name, std::fs::read(path).unwrap());
        assert_eq!(
            r.status,
            201,
            "upload of {} failed: {}",
            path.display(),
            r.body
        );
        r.body["version"].as_u64().unwrap()
    }

    pub(crate) fn activate(&self, function: &str, version: u64) -> Resp {
        let body = json!({"function": function, "version": version})
            .to_string()
            .into_bytes();
        self.call(
            "POST",
            "/v1/pipelines/p/activate",
            Some(TOKEN_A),
            Some(body),
        )
    }

    /// Files in the store, relative paths (status objects and staged upload
    /// bodies excluded).
    pub(crate) fn stored_files(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.store, &self.store, &mut out);
        // Upload bodies being received are not stored (see staged() in
        // control_limits.rs).
        out.retain(|p| !p.starts_with("status/") && !p.starts_with("staging/"));
        out.sort();
        out
    }

    /// Waits until every listed worker reports `version` running for `p`.
    pub(crate) fn wait_workers_on(
        &self,
        n_workers: usize,
        version: &str,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.call("GET", "/v1/pipelines/p", Some(TOKEN_A), None);
            let workers = r.body["workers"].as_array().cloned().unwrap_or_default();
            let on: Vec<_> = workers
                .iter()
                .filter(|w| {
                    w["running_version"].as_str() == Some(version) && w["state"] == "active"
                })
                .collect();
            if on.len() >= n_workers {
                return r.body;
            }
            assert!(
                Instant::now() < deadline,
                "workers never all ran version {version}: {}",
                r.body
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn record(i: usize) -> In {
    In::new(
        format!("k{}", i % 32),
        format!(r#"{{"id":{i},"action":"ok","session_start":0,"session_end":2400}}"#),
    )
}

/// Checks a run under load: every id exactly in output or dead letters,
/// per-key order kept, and per partition the version header only moves
/// forward through `expected_sequence` (switching at most once per step).
fn check_swap(
    out: &[Out],
    dlq: &[Out],
    n: usize,
    expected_sequence: &[&str],
) -> BTreeMap<i32, Vec<String>> {
    check_swap_by(out, dlq, n, expected_sequence, |o| {
        o.json()["id"].as_u64().unwrap()
    })
}

/// [`check_swap`] for records whose id `id_of` reads.
pub(crate) fn check_swap_by(
    out: &[Out],
    dlq: &[Out],
    n: usize,
    expected_sequence: &[&str],
    id_of: impl Fn(&Out) -> u64,
) -> BTreeMap<i32, Vec<String>> {
    let mut seen = HashSet::new();
    for o in out.iter().chain(dlq) {
        seen.insert(id_of(o) as usize);
    }
    let missing: Vec<usize> = (0..n).filter(|i| !seen.contains(i)).take(10).collect();
    assert!(missing.is_empty(), "ids lost (first 10): {missing:?}");
    assert!(
        dlq.is_empty(),
        "records dead-lettered during the swap: {:?}",
        dlq.iter().take(3).map(|d| &d.headers).collect::<Vec<_>>()
    );
    let mut last_id: HashMap<String, u64> = HashMap::new();
    let mut versions: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut by_partition: BTreeMap<i32, Vec<&Out>> = BTreeMap::new();
    for o in out {
        by_partition.entry(o.partition).or_default().push(o);
    }
    for (part, recs) in &by_partition {
        let mut recs = recs.clone();
        recs.sort_by_key(|o| o.offset);
        for o in recs {
            let id = id_of(o);
            let key = o.key.clone().unwrap();
            if let Some(prev) = last_id.insert(key.clone(), id) {
                assert!(id > prev, "key {key}: id {id} after {prev} (order broken)");
            }
            let v = o.header("pw.function.version").to_string();
            let seq = versions.entry(*part).or_default();
            if seq.last() != Some(&v) {
                seq.push(v);
            }
        }
    }
    for (part, seq) in &versions {
        // The partition's versions, in order, must be a contiguous run of
        // the expected sequence: each switch once, never back.
        let start = expected_sequence
            .iter()
            .position(|v| *v == seq[0])
            .unwrap_or_else(|| panic!("partition {part} started on unexpected version {}", seq[0]));
        assert_eq!(
            seq.as_slice(),
            &expected_sequence[start..start + seq.len()],
            "partition {part}: version header went {seq:?}, expected a run of {expected_sequence:?}"
        );
    }
    versions
}

/// Every bad upload is a specific 4xx with a JSON error, and the store stays
/// empty; tenants cannot see or touch each other's functions or pipelines.
#[test]
fn rejected_uploads_store_nothing() {
    let plane = Plane::start("reg-reject", 1, "max_component_bytes = 8000000\n");
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        ("garbage", b"this is not wasm at all".to_vec(), 415, "not-wasm", "magic"),
        ("core", wat::parse_str("(module)").unwrap(), 422, "core-module", "core WebAssembly module"),
        (
            "wrong-world",
            wat::parse_str(r#"(component (core module $m) (core instance (instantiate $m)))"#).unwrap(),
            422,
            "wrong-world",
            "pipeline:transform/transformer",
        ),
        (
            "bad-version",
            wat::parse_str(r#"(component (instance $i) (export "pipeline:transform/transformer@9.9.9" (instance $i)))"#).unwrap(),
            422,
            "unsupported-world-version",
            "9.9.9",
        ),
        (
            "http",
            wat::parse_str(r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance)))"#).unwrap(),
            422,
            "forbidden-import",
            "wasi:http/outgoing-handler@0.2.0",
        ),
        ("huge", {
            let mut v = b"\0asm\x0d\0\x01\0".to_vec();
            v.resize(8_000_001, 0);
            v
        }, 413, "too-large", "max_component_bytes"),
        ("empty", Vec::new(), 400, "empty-body", "body"),
    ];
    for (name, bytes, status, code, mentions) in cases {
        let r = plane.upload(name, bytes);
        assert_eq!(r.status, status, "{name}: {}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{name}: {}", r.body);
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(mentions),
            "{name}: message {msg:?} should mention {mentions:?}"
        );
        assert!(
            plane.stored_files().is_empty(),
            "{name}: rejected upload stored {:?}",
            plane.stored_files()
        );
    }
    let good = std::fs::read(guest("enrich_rs")).unwrap();
    // No token, a wrong token: 401 and nothing stored. (A small body: a
    // large one is not read at all, see control_limits.rs.)
    let head = good[..2048].to_vec();
    let r = plane.call("POST", "/v1/functions/f/versions", None, Some(head.clone()));
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let r = plane.call(
        "POST",
        "/v1/functions/f/versions",
        Some("not-a-token"),
        Some(head),
    );
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (401, Some("invalid-token"))
    );
    assert!(plane.stored_files().is_empty());
    // A bad name is refused before the body is read; the body is read on
    // and dropped, so that a client still sending gets the 400, not a reset
    // connection (a body well over the socket buffers: 15 MB, under twice
    // max_component_bytes).
    let mut big = good.clone();
    big.resize(15_000_000, 0);
    let r = plane.call(
        "POST",
        "/v1/functions/BAD%20NAME/versions",
        Some(TOKEN_A),
        Some(big),
    );
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("invalid-name"))
    );
    assert!(plane.stored_files().is_empty());

    // A good upload stores blob, artifact and manifest.
    let v = plane.upload_ok("enrich", &guest("enrich_rs"));
    assert_eq!(v, 1);
    let files = plane.stored_files();
    assert!(
        files.iter().any(|f| f.starts_with("blobs/sha256/")),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("artifacts/") && f.ends_with(".cwasm")),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f == "tenants/acme/functions/enrich/0000000001.json"),
        "{files:?}"
    );

    // The other tenant: does not see acme's function, cannot activate on
    // acme's pipeline, cannot use acme's function on its own pipeline.
    let r = plane.call("GET", "/v1/functions", Some(TOKEN_B), None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["functions"], json!([]), "{}", r.body);
    let r = plane.call("GET", "/v1/functions/enrich", Some(TOKEN_B), None);
    assert_eq!(r.status, 404, "{}", r.body);
    let body = json!({"function": "enrich", "version": 1})
        .to_string()
        .into_bytes();
    let r = plane.call(
        "POST",
        "/v1/pipelines/p/activate",
        Some(TOKEN_B),
        Some(body.clone()),
    );
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{}",
        r.body
    );
    let r = plane.call(
        "POST",
        "/v1/pipelines/other/activate",
        Some(TOKEN_B),
        Some(body.clone()),
    );
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (404, Some("version-not-found")),
        "{}",
        r.body
    );
    let r = plane.call("POST", "/v1/pipelines/p/activate", None, Some(body));
    assert_eq!(r.status, 401);
    let r = plane.call(
        "DELETE",
        "/v1/functions/enrich/versions/1",
        Some(TOKEN_B),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = plane.call("POST", "/v1/pipelines/p/rollback", Some(TOKEN_A), None);
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (409, Some("nothing-active")),
        "{}",
        r.body
    );
    // Nothing was activated by any of that.
    let r = plane.call("GET", "/v1/pipelines/p", Some(TOKEN_A), None);
    assert_eq!(r.body["active"], Value::Null, "{}", r.body);

    // Delete: refused while active, then allowed, and the blob goes.
    let r = plane.activate("enrich", 1);
    assert_eq!(r.status, 202, "{}", r.body);
    let r = plane.call(
        "DELETE",
        "/v1/functions/enrich/versions/1",
        Some(TOKEN_A),
        None,
    );
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (409, Some("version-active")),
        "{}",
        r.body
    );
    let v2 = plane.upload_ok("echo", &guest("hostile"));
    assert_eq!(v2, 1);
    assert_eq!(plane.activate("echo", 1).status, 202);
    let r = plane.call(
        "DELETE",
        "/v1/functions/enrich/versions/1",
        Some(TOKEN_A),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Whether the blob went too is not told (it would say whether another
    // tenant has the same bytes); here it did go, as the store shows.
    assert_eq!(
        r.body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["deleted"],
        "{}",
        r.body
    );
    assert!(
        !plane
            .stored_files()
            .iter()
            .any(|f| f.contains("functions/enrich/") && f.ends_with(".json")),
        "{:?}",
        plane.stored_files()
    );
    let left = plane.stored_files();
    assert_eq!(
        left.iter().filter(|f| f.starts_with("blobs/")).count(),
        1,
        "only echo's blob is left: {left:?}"
    );
    // The rollback target was deleted: nothing to roll back to.
    let r = plane.call("POST", "/v1/pipelines/p/rollback", Some(TOKEN_A), None);
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (409, Some("no-previous-version")),
        "{}",
        r.body
    );
    // A deleted version's number is never reused.
    assert_eq!(plane.upload_ok("enrich", &guest("enrich_rs")), 2);
    // Malformed requests get JSON errors too.
    let r = plane.call(
        "GET",
        "/v1/functions/enrich/versions/abc",
        Some(TOKEN_A),
        None,
    );
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("invalid-version"))
    );
    let r = plane.call("DELETE", "/v1/functions", Some(TOKEN_A), None);
    assert_eq!(r.status, 405, "{}", r.body);
    let r = plane.call(
        "POST",
        "/v1/pipelines/p/activate",
        Some(TOKEN_A),
        Some(b"{".to_vec()),
    );
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("invalid-body"))
    );
}

/// Upload → activate → both workers of the group run it; then a hot swap to
/// another version under continuous load, and a rollback under load: every
/// record arrives, per-key order holds, and each partition's version header
/// switches once and never back.
#[test]
fn hot_swap_and_rollback_under_load_on_two_workers() {
    // About 1,000 records/s while the test waits on a swap; a bound on the
    // whole stream, should a wait never end.
    const PAUSE: Duration = Duration::from_millis(100);
    const MAX: usize = 200_000;
    let plane = Plane::start("reg-swap", 4, "");
    let any_port = "127.0.0.1:0";
    let start = || {
        WorkerProcess::start_env(
            "run",
            &plane.config,
            &[("PIPELINE_WORKER__TELEMETRY__HTTP_LISTEN", any_port)],
        )
    };
    let (a, b) = (start(), start());
    let listen = [&a, &b].map(|w| {
        let port = bound_port(w, "serving /livez", Duration::from_secs(60));
        format!("127.0.0.1:{port}")
    });
    wait_for_log(
        &a,
        "waiting before joining the group",
        Duration::from_secs(60),
    );
    wait_for_log(
        &b,
        "waiting before joining the group",
        Duration::from_secs(60),
    );

    let v_enrich = plane.upload_ok("enrich", &guest("enrich_rs"));
    let v_echo = plane.upload_ok("echo", &guest("hostile"));
    assert_eq!(plane.activate("enrich", v_enrich).status, 202);
    plane.wait_workers_on(2, "enrich@1", Duration::from_secs(60));
    // Both members own partitions before the load starts, so no rebalance
    // overlaps the swap.
    let owns = |w: &WorkerProcess| {
        w.log_text()
            .lines()
            .any(|l| l.contains("partitions assigned") && l.contains("reg-swap-in"))
    };
    wait_until(
        "both workers own partitions",
        Duration::from_secs(90),
        || owns(&a) && owns(&b),
    );

    // Phase 1: enrich → echo under load. The load lasts until both workers
    // run echo and some more after, and the swap comes only once enrich's
    // outputs are seen: both versions handle records, however slow the
    // machine.
    let producer = Stream::start(&plane.topics.input, 0, record, 100, PAUSE, MAX);
    assert_eq!(
        read_until(&[&plane.topics.output], 1, Duration::from_secs(60)).len(),
        1,
        "enrich never produced"
    );
    let r = plane.activate("echo", v_echo);
    assert_eq!(r.status, 202, "{}", r.body);
    let status = plane.wait_workers_on(2, "echo@1", Duration::from_secs(60));
    assert_eq!(status["active"]["function"], "echo", "{status}");
    producer.wait_more(500, Duration::from_secs(60));
    let n = producer.stop();
    let out = read_until(&[&plane.topics.output], n, Duration::from_secs(120));
    let dlq = read_until(&[&plane.topics.dlq], 1, Duration::from_secs(2));
    assert_eq!(out.len(), n, "output count");
    check_swap(&out, &dlq, n, &["enrich@1", "echo@1"]);
    check_content(&out);
    let enriched = out
        .iter()
        .filter(|o| o.header("pw.function.version") == "enrich@1")
        .count();
    // Per-version counters: summed over both workers, each version's
    // sent-messages counter is exactly the outputs stamped with it. A
    // counter moves on the delivery report, which may come after a reader
    // already has the record: wait for the sums to settle on the outputs.
    let sent_by_version = || {
        let mut sent: HashMap<String, u64> = HashMap::new();
        for l in &listen {
            let text = plane
                .http
                .get(format!("http://{l}/metrics"))
                .send()
                .unwrap()
                .text()
                .unwrap();
            for line in text
                .lines()
                .filter(|l| l.starts_with("messaging_client_sent_messages_total{"))
            {
                let v = line
                    .split("function_version=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
                *sent.entry(v.to_string()).or_default() += n;
            }
        }
        sent
    };
    let want = HashMap::from([
        ("enrich@1".to_string(), enriched as u64),
        ("echo@1".to_string(), (n - enriched) as u64),
    ]);
    let mut sent = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent != want && Instant::now() < deadline {
        sent = sent_by_version();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sent, want, "sent-messages counters by version");
    assert!(
        enriched > 0 && enriched < n,
        "the swap happened mid-stream: {enriched} of {n} by enrich"
    );

    // Phase 2: rollback under load → enrich again (ids from n on).
    let producer = Stream::start(&plane.topics.input, n, record, 100, PAUSE, MAX);
    producer.wait_more(500, Duration::from_secs(60));
    let r = plane.call("POST", "/v1/pipelines/p/rollback", Some(TOKEN_A), None);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["activation"]["function"], "enrich", "{}", r.body);
    assert_eq!(r.body["activation"]["action"], "rollback", "{}", r.body);
    let status = plane.wait_workers_on(2, "enrich@1", Duration::from_secs(60));
    assert_eq!(status["active"]["function"], "enrich", "{status}");
    producer.wait_more(500, Duration::from_secs(60));
    let end = producer.stop();
    let all = read_until(&[&plane.topics.output], end, Duration::from_secs(120));
    let dlq = read_until(&[&plane.topics.dlq], 1, Duration::from_secs(2));
    assert_eq!(all.len(), end, "output count after rollback");
    check_swap(&all, &dlq, end, &["enrich@1", "echo@1", "enrich@1"]);
    check_content(&all);
    let log = format!("{}\n{}", a.log_text(), b.log_text());
    assert!(
        log.contains("switching function version"),
        "no switch logged"
    );
    assert_eq!(a.terminate(Duration::from_secs(30)), Some(0));
    assert_eq!(b.terminate(Duration::from_secs(30)), Some(0));
}

/// What the header says is what ran: enrich adds the computed field, echo
/// passes the record through.
fn check_content(out: &[Out]) {
    for o in out {
        let enriched = o.json().get("session_duration_minutes").is_some();
        let v = o.header("pw.function.version");
        assert_eq!(
            enriched,
            v.starts_with("enrich@"),
            "record {} says {v} but enriched={enriched}",
            o.value
        );
    }
}

/// A worker started after several activations comes back on the latest one
/// without waiting; a version whose blob is corrupt in the store is refused
/// by the worker, which keeps running the previous version and says so.
#[test]
fn restart_resumes_latest_and_bad_version_keeps_previous() {
    const N: usize = 500;
    let plane = Plane::start("reg-restart", 2, "");
    let v1 = plane.upload_ok("enrich", &guest("enrich_rs"));
    let e1 = plane.upload_ok("echo", &guest("hostile"));
    let v2 = plane.upload_ok("enrich", &guest("enrich_rs"));
    assert_eq!((v1, e1, v2), (1, 1, 2));
    for (f, v) in [("enrich", 1), ("echo", 1), ("enrich", 2)] {
        assert_eq!(plane.activate(f, v).status, 202);
    }
    // The artifact in the store is native code: tamper with it. A worker
    // with an empty cache must refuse it (its hash is not the manifest's)
    // and compile the verified blob itself.
    let m2 = plane
        .call(
            "GET",
            "/v1/functions/enrich/versions/2",
            Some(TOKEN_A),
            None,
        )
        .body;
    let artifact = m2["artifacts"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    std::fs::write(
        plane.store.join("artifacts").join(&artifact),
        b"not an artifact",
    )
    .unwrap();
    let cache = std::env::temp_dir().join(unique("pw-empty-cache"));
    // Started after three activations: runs enrich@2 from the start.
    let w = WorkerProcess::start_env(
        "run",
        &plane.config,
        &[(
            "PIPELINE_WORKER__RUNTIME__CACHE_DIR",
            cache.to_str().unwrap(),
        )],
    );
    plane.wait_workers_on(1, "enrich@2", Duration::from_secs(60));
    assert!(
        !w.log_text()
            .lines()
            .any(|l| l.contains("waiting before joining") && l.trim_end().ends_with("\"p\"")),
        "{}",
        w.log_text()
    );
    assert!(
        w.log_text().contains("does not match its manifest"),
        "{}",
        w.log_text()
    );
    produce_all(&plane.topics.input, &(0..N).map(record).collect::<Vec<_>>());
    let out = read_until(&[&plane.topics.output], N, Duration::from_secs(60));
    assert_eq!(out.len(), N);
    assert!(out
        .iter()
        .all(|o| o.header("pw.function.version") == "enrich@2"));

    // Corrupt echo@1's blob in the store, then activate it: the worker must
    // refuse it (digest mismatch), keep enrich@2, and report the failure.
    let manifest = plane
        .call("GET", "/v1/functions/echo/versions/1", Some(TOKEN_A), None)
        .body;
    let hex = manifest["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    std::fs::write(
        plane.store.join(format!("blobs/sha256/{hex}.wasm")),
        b"\0asm tampered",
    )
    .unwrap();
    assert_eq!(plane.activate("echo", 1).status, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let r = plane.call("GET", "/v1/pipelines/p", Some(TOKEN_A), None);
        if r.body["workers"][0]["state"] == "failed" {
            break r.body;
        }
        assert!(
            Instant::now() < deadline,
            "failure never reported: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let wstat = &status["workers"][0];
    assert_eq!(wstat["running_version"], "enrich@2", "{status}");
    assert_eq!(wstat["desired_version"], 1, "{status}");
    assert!(
        wstat["error"].as_str().unwrap().contains("hashes to"),
        "{status}"
    );
    assert!(w
        .log_text()
        .contains("failed to load; keeping the previous one"));
    produce_all(
        &plane.topics.input,
        &(N..2 * N).map(record).collect::<Vec<_>>(),
    );
    let out = read_until(&[&plane.topics.output], 2 * N, Duration::from_secs(60));
    assert_eq!(out.len(), 2 * N, "kept processing after the failed load");
    assert!(out
        .iter()
        .all(|o| o.header("pw.function.version") == "enrich@2"));
    assert_eq!(w.terminate(Duration::from_secs(30)), Some(0));
}

/// The `functions` CLI end to end: upload with progress, list, show,
/// activate, status, a refused delete and rollback with the API's error, and
/// a clean delete.
#[test]
fn functions_cli() {
    let plane = Plane::start("reg-cli", 1, "");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
            .arg("functions")
            .args(args)
            .env("PIPELINE_WORKER_API", &plane.api)
            .env("PIPELINE_WORKER_TOKEN", TOKEN_A)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let json =
        |s: &str| -> Value { serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}")) };
    let enrich = guest("enrich_rs");
    let (code, out, err) = cli(&[
        "upload",
        "enrich",
        enrich.to_str().unwrap(),
        "--activate",
        "p",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("uploaded") && err.contains("stored enrich version 1"),
        "{err}"
    );
    assert!(err.contains("activated on pipeline p"), "{err}");
    assert_eq!(json(&out)["upload"]["version"], 1);
    let hostile = guest("hostile");
    let (code, out, err) = cli(&["upload", "echo", hostile.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["function"], "echo");

    // A refusal found while compiling reaches the CLI through the progress
    // stream, with the API's code.
    let bad = std::env::temp_dir()
        .join(unique("http-import"))
        .with_extension("wasm");
    std::fs::write(
        &bad,
        wat::parse_str(r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance)))"#)
            .unwrap(),
    )
    .unwrap();
    let (code, _, err) = cli(&["upload", "bad", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("422 forbidden-import") && err.contains("wasi:http/outgoing-handler"),
        "{err}"
    );
    // The stream itself: NDJSON, ending in a result event with the manifest.
    let r = plane
        .http
        .post(format!("{}/v1/functions/streamed/versions", plane.api))
        .bearer_auth(TOKEN_A)
        .header("accept", "application/x-ndjson")
        .body(std::fs::read(&enrich).unwrap())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "result", "{text}");
    assert_eq!(last["status"], 201, "{text}");
    assert_eq!(last["manifest"]["function"], "streamed", "{text}");

    let (code, out, _) = cli(&["list"]);
    assert_eq!(code, Some(0));
    let names: Vec<String> = json(&out)["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["echo", "enrich", "streamed"]);
    let (_, out, _) = cli(&["show", "enrich"]);
    assert_eq!(json(&out)["versions"][0]["active_in"], json!(["p"]));

    let (code, _, err) = cli(&["delete", "enrich", "1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("409 version-active"), "{err}");
    let (code, out, err) = cli(&["activate", "p", "echo"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["activation"]["history"][0]["function"], "enrich");
    let (code, out, _) = cli(&["status", "p"]);
    assert_eq!(code, Some(0));
    assert_eq!(json(&out)["active"]["function"], "echo");
    let (code, out, err) = cli(&["rollback", "p"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json(&out)["activation"]["function"], "enrich");
    let (code, _, err) = cli(&["rollback", "p"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("409 no-previous-version"), "{err}");
    let (code, _, err) = cli(&["delete", "echo", "1"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = cli(&["show", "echo"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("404 function-not-found"), "{err}");
    // A bad token is refused with the API's message.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .args(["functions", "--token", "wrong", "--api", &plane.api, "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401 invalid-token"));
}

/// A reader opened on an activation log that is still being created (the
/// control plane and a worker starting together, or the broker slow to
/// propagate a new topic's metadata) waits for the topic instead of failing
/// with "has 0 partitions"; a log with the wrong partition count is still
/// refused at once, naming the count.
#[test]
fn activation_log_reader_waits_for_a_topic_being_created() {
    use pipeline_worker::registry::activations::{ensure_topic, LogReader};
    let kafka: pipeline_worker::config::KafkaConfig =
        toml::from_str(&format!("brokers = \"{}\"", brokers())).unwrap();
    let topic = unique("reg-late-activations");
    let reader = {
        let (kafka, topic) = (kafka.clone(), topic.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            LogReader::new(&kafka, &topic)
                .map(|mut r| (r.catch_up(Duration::from_secs(30)), started.elapsed()))
        })
    };
    // Created while the reader is (most likely) already looking for it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    rt.block_on(ensure_topic(&kafka, &topic))
        .expect("create the log");
    let (caught_up, took) = reader
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the reader must wait for the topic: {e}"));
    assert!(caught_up.expect("catch up on an empty log").is_empty());
    println!("reader of a late activation log ready after {took:?}");

    let wide = unique("reg-wide-activations");
    create_topics(&[(&wide, 3)]);
    // A definite answer, not the wait's timeout.
    let err = LogReader::new(&kafka, &wide)
        .err()
        .expect("3 partitions refused");
    assert!(err.to_string().contains("has 3 partitions"), "{err}");
}
