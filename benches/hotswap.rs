//! Hot-swap benchmark against the real broker (`make kafka-start`): a
//! `pipeline-worker control` process and two `run` workers in one group,
//! records flowing continuously through 4 partitions. Prints, for a Rust and
//! a Python component:
//!
//! - upload → active: POST of a component never seen before (validation and
//!   Cranelift compilation on the control plane), activation, until every
//!   partition (so every worker) emits a record stamped with the new version;
//!   `python2` is a second, different Python component uploaded after the
//!   first (tests/components/python/enrich_variant.py): the same CPython
//!   runtime compiled again, which is what the 3 s goal would have to avoid;
//! - activation → first record: from the activation being accepted (202) to
//!   the first record of the new version on every partition, for versions
//!   already precompiled (median and max of several swaps).
//!
//! Asserts nothing about speed.
//!
//!   cargo bench -p pipeline-worker --bench hotswap      (BENCH_SWAPS=5 by default)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{json, Value};

const PARTITIONS: i32 = 4;
const TOKEN: &str = "bench-token";

fn brokers() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn stamp() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
    }
}

fn spawn(verb: &str, config: &Path, log: &Path, worker_id: &str) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
            .args([verb, "--config"])
            .arg(config)
            .env("RUST_LOG", "info,librdkafka=warn")
            .env("PIPELINE_WORKER__REGISTRY__WORKER_ID", worker_id)
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("spawn pipeline-worker"),
    )
}

/// Reads the output topic continuously; remembers, per version label, when
/// each partition first showed it.
struct Watch {
    first_seen: Arc<Mutex<HashMap<String, HashMap<i32, Instant>>>>,
    stop: Arc<AtomicBool>,
}

impl Watch {
    fn start(topic: &str) -> Self {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", format!("bench-watch-{}", stamp()))
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "5")
            .create()
            .unwrap();
        c.subscribe(&[topic]).unwrap();
        let first_seen = Arc::new(Mutex::new(HashMap::<String, HashMap<i32, Instant>>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (fs, st) = (first_seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Some(Ok(m)) = c.poll(Duration::from_millis(20)) else {
                    continue;
                };
                let label = m
                    .headers()
                    .and_then(|hs| {
                        hs.iter()
                            .find(|h| h.key == "pw.function.version")
                            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                    })
                    .unwrap_or_default();
                fs.lock()
                    .unwrap()
                    .entry(label)
                    .or_default()
                    .entry(m.partition())
                    .or_insert_with(Instant::now);
            }
        });
        Self { first_seen, stop }
    }

    /// When the last partition first showed `label`.
    fn all_partitions(&self, label: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(parts) = self.first_seen.lock().unwrap().get(label) {
                if parts.len() == PARTITIONS as usize {
                    return parts.values().max().copied();
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Api {
    base: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn call(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .expect("control API");
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_str(&r.text().unwrap_or_default()).unwrap_or(Value::Null),
        )
    }
    fn upload(&self, name: &str, path: &Path) -> u64 {
        let (s, b) = self.call(
            reqwest::Method::POST,
            &format!("/v1/functions/{name}/versions"),
            std::fs::read(path).unwrap(),
        );
        assert_eq!(s, 201, "upload {}: {b}", path.display());
        b["version"].as_u64().unwrap()
    }
    fn activate(&self, name: &str, version: u64) {
        let (s, b) = self.call(
            reqwest::Method::POST,
            "/v1/pipelines/p/activate",
            json!({"function": name, "version": version})
                .to_string()
                .into_bytes(),
        );
        assert_eq!(s, 202, "activate {name}@{version}: {b}");
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let swaps: usize = std::env::var("BENCH_SWAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rust = root().join("target/guests/wasm32-wasip2/release/enrich_rs.wasm");
    let python = root().join("target/components/enrich_event.wasm");
    for p in [&rust, &python] {
        if !p.exists() {
            println!(
                "hotswap: skipped, {} not built (make examples)",
                p.display()
            );
            return;
        }
    }
    let id = stamp();
    let dir = std::env::temp_dir().join(format!("pw-bench-hotswap-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (input, output, dlq) = (
        format!("bench-swap-in-{id}"),
        format!("bench-swap-out-{id}"),
        format!("bench-swap-dlq-{id}"),
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let topics: Vec<NewTopic> = [&input, &output, &dlq]
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    rt.block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hash: String = {
        use sha2::Digest;
        sha2::Sha256::digest(TOKEN.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    // Fresh caches: the control plane compiles, the workers fetch the
    // precompiled artifact from the store.
    let config = |cache: &str| {
        format!(
            r#"[kafka]
brokers = "{brokers}"
group_id = "bench-swap-{id}"
[runtime]
cache_dir = "{cache}"
[registry]
store = "store"
activations_topic = "bench-swap-activations-{id}"
[control]
listen = "127.0.0.1:{port}"
[[control.tenants]]
name = "bench"
token_sha256 = "{hash}"
[[pipelines]]
name = "p"
tenant = "bench"
input_topics = ["{input}"]
output_topics = ["{output}"]
dead_letter_topic = "{dlq}"
batch_size = 16
concurrency = 2
"#,
            brokers = brokers(),
            cache = dir.join(cache).display(),
        )
    };
    let mut procs = Vec::new();
    for (name, verb) in [
        ("control", "control"),
        ("worker-a", "run"),
        ("worker-b", "run"),
    ] {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config(&format!("cache-{name}"))).unwrap();
        procs.push(spawn(verb, &path, &dir.join(format!("{name}.log")), name));
    }
    let api = Api {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while api
        .http
        .get(format!("{}/v1/functions", api.base))
        .bearer_auth(TOKEN)
        .send()
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "control API never came up");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Continuous load: 2,000 records/s over 32 keys.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, input) = (stop.clone(), input.clone());
        std::thread::spawn(move || {
            let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", brokers())
                .set("linger.ms", "1")
                .create()
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    let key = format!("k{}", i % 32);
                    let value = format!(
                        r#"{{"id":{i},"action":"ok","session_start":0,"session_end":2400}}"#
                    );
                    let _ = p.send(BaseRecord::to(&input).key(&key).payload(&value));
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = p.flush(Duration::from_secs(10));
        })
    };
    let watch = Watch::start(&output);

    println!("hot swap, 2 workers × 4 partitions, continuous load of ~2,000 records/s");
    // A second Python function, uploaded after the first: a different
    // component on the same CPython runtime.
    let variant = root().join("target/components/py_enrich_variant.wasm");
    let mut runs = vec![("rust", &rust), ("python", &python)];
    if variant.exists() {
        runs.push(("python2", &variant));
    } else {
        println!(
            "python2: skipped, {} not built (scripts/build-python.sh tests/components/python/enrich_variant.py {})",
            variant.display(),
            variant.display()
        );
    }
    for (lang, component) in runs {
        let name = format!("enrich-{lang}");
        // upload → active, compilation included (first time this digest is seen).
        let t0 = Instant::now();
        let v1 = api.upload(&name, component);
        let uploaded = t0.elapsed();
        api.activate(&name, v1);
        let label = format!("{name}@{v1}");
        let Some(seen) = watch.all_partitions(&label, Duration::from_secs(120)) else {
            println!(
                "{lang}: {label} never reached every partition; see logs in {}",
                dir.display()
            );
            continue;
        };
        println!(
            "{lang:<7} upload → active on every worker: {:>8.1} ms  (upload incl. validation + compile: {:.1} ms)",
            (seen - t0).as_secs_f64() * 1e3,
            uploaded.as_secs_f64() * 1e3,
        );
        let mut samples = Vec::new();
        for _ in 0..swaps {
            // A new version of the same bytes: a fresh label to watch for, and
            // already precompiled, so this measures the swap itself.
            let v = api.upload(&name, component);
            let label = format!("{name}@{v}");
            let t = Instant::now();
            api.activate(&name, v);
            match watch.all_partitions(&label, Duration::from_secs(60)) {
                Some(seen) => samples.push((seen - t).as_secs_f64() * 1e3),
                None => println!("{lang}: swap to {label} not seen on every partition"),
            }
        }
        if !samples.is_empty() {
            let max = samples.iter().cloned().fold(0.0, f64::max);
            println!(
                "{lang:<7} activation → first record on every worker (precompiled, {} swaps): median {:.1} ms, max {:.1} ms",
                samples.len(),
                median(&mut samples),
                max
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    drop(watch);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
