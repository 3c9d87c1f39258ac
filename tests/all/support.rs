//! Shared helpers: the real broker, unique topics, a worker process, readers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

pub fn brokers() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A guest built by `scripts/build-rust-guests.sh` (`make guests`).
pub fn guest(name: &str) -> PathBuf {
    let p = repo_root().join(format!("target/guests/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `make guests` first",
        p.display()
    );
    p
}

/// A Python or JS component built by `make examples` into target/components.
pub fn python_component(name: &str) -> PathBuf {
    let p = repo_root().join(format!("target/components/{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `make python-examples` first",
        p.display()
    );
    p
}

/// Unique per test run and call, so tests never share topics or groups.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!(
        "{prefix}-{}-{t}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn create_topics(topics: &[(&str, i32)]) {
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    create(&new, true);
}

/// Creates `new` on the test broker; an existing topic is an error unless
/// `existing_ok`.
fn create(new: &[NewTopic<'_>], existing_ok: bool) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.create_topics(
            new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .expect("create topics");
    for r in res {
        if let Err((t, e)) = r {
            assert!(
                existing_ok && e == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                "creating {t}: {e}"
            );
        }
    }
}

pub fn producer() -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

#[derive(Default, Clone)]
pub struct In {
    pub key: Option<String>,
    pub value: String,
    pub headers: Vec<(String, String)>,
    pub partition: Option<i32>,
}

impl In {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            value: value.into(),
            ..Default::default()
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

pub fn produce_all(topic: &str, records: &[In]) {
    produce_with(&producer(), topic, records);
}

/// [`produce_all`] through `p`, for a caller that produces often: a new
/// idempotent producer first waits for its producer id from the broker.
pub fn produce_with(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, records: &[In]) {
    for r in records {
        let mut h = OwnedHeaders::new();
        for (k, v) in &r.headers {
            h = h.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut rec = BaseRecord::<str, str>::to(topic)
            .payload(&r.value)
            .headers(h);
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        if let Some(part) = r.partition {
            rec = rec.partition(part);
        }
        let mut rec = rec;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60))
        .expect("flush test records");
}

#[derive(Debug, Clone)]
pub struct Out {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: String,
    pub headers: HashMap<String, String>,
    pub timestamp: Option<i64>,
    /// A null value (tombstone), as opposed to an empty one.
    pub value_is_null: bool,
    /// Header keys in order, lossy (a key that is not UTF-8 shows U+FFFD).
    pub header_keys: Vec<Vec<u8>>,
}

impl Out {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.value)
            .unwrap_or_else(|e| panic!("output {:?} is not JSON: {e}", self.value))
    }
    pub fn header(&self, k: &str) -> &str {
        self.headers
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("header {k} missing in {:?}", self.headers))
    }
}

/// Reads topics from the beginning until `want` records arrived or `timeout`.
/// Partition order is preserved in the returned list (per partition).
pub fn read_until(topics: &[&str], want: usize, timeout: Duration) -> Vec<Out> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("reader");
    c.subscribe(topics).expect("subscribe reader");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < want && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.expect("read");
            let mut headers = HashMap::new();
            // Through the worker's own byte-level reader: rdkafka's `Headers`
            // panics on a key that is not UTF-8, and dead letters keep those.
            let raw = pipeline_worker::record::message_parts(&m)
                .map(|p| {
                    p.headers
                        .iter()
                        .map(|h| (h.key.to_vec(), h.value.map(<[u8]>::to_vec)))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for (k, v) in &raw {
                headers.insert(
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned(),
                );
            }
            out.push(Out {
                topic: m.topic().into(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                headers,
                timestamp: m.timestamp().to_millis(),
                value_is_null: m.payload().is_none(),
                header_keys: raw.into_iter().map(|(k, _)| k).collect(),
            });
        }
    }
    out
}

/// The input, output and dead-letter topics of one test pipeline.
pub struct TestTopics {
    pub prefix: String,
    pub input: String,
    pub output: String,
    pub dlq: String,
}

impl TestTopics {
    /// Creates `<prefix>-in` and `-out` with `partitions`, `-dlq` with one.
    pub fn create(prefix: &str, partitions: i32) -> Self {
        let t = Self {
            prefix: prefix.to_string(),
            input: unique(&format!("{prefix}-in")),
            output: unique(&format!("{prefix}-out")),
            dlq: unique(&format!("{prefix}-dlq")),
        };
        create_topics(&[(&t.input, partitions), (&t.output, partitions), (&t.dlq, 1)]);
        t
    }

    /// A config file with one pipeline over these topics, in a fresh group.
    pub fn config(
        &self,
        name: &str,
        component: &Path,
        extra: &str,
        runtime_extra: &str,
    ) -> PathBuf {
        write_config(
            &unique(&format!("{}-group", self.prefix)),
            &[PipelineSpec {
                name,
                inputs: &[&self.input],
                outputs: &[&self.output],
                dlq: &self.dlq,
                component,
                extra,
            }],
            runtime_extra,
        )
    }
}

pub struct PipelineSpec<'a> {
    pub name: &'a str,
    pub inputs: &'a [&'a str],
    pub outputs: &'a [&'a str],
    pub dlq: &'a str,
    pub component: &'a Path,
    pub extra: &'a str,
}

/// Writes a config file for one or more pipelines; returns its path.
pub fn write_config(group: &str, pipelines: &[PipelineSpec<'_>], runtime_extra: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("pw-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup_id = \"{group}\"\n\n[runtime]\ncache_dir = \"{}\"\ndrain_timeout_ms = 15000\n{runtime_extra}\n",
        brokers(),
        repo_root().join(".cache/pipeline-worker-tests").display()
    );
    for p in pipelines {
        s.push_str(&format!(
            "\n[[pipelines]]\nname = \"{}\"\ninput_topics = {:?}\noutput_topics = {:?}\ndead_letter_topic = \"{}\"\ncomponent = \"{}\"\n{}\n",
            p.name,
            p.inputs,
            p.outputs,
            p.dlq,
            p.component.display(),
            p.extra
        ));
    }
    let path = dir.join("worker.toml");
    std::fs::write(&path, s).unwrap();
    path
}

pub struct WorkerProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    pub fn start(config: &Path) -> Self {
        Self::start_verb("run", config)
    }

    /// `pipeline-worker <verb> --config <config>` (`run`, `control`).
    pub fn start_verb(verb: &str, config: &Path) -> Self {
        Self::start_env(verb, config, &[])
    }

    /// With extra environment variables (e.g. `PIPELINE_WORKER__*` overrides).
    pub fn start_env(verb: &str, config: &Path, env: &[(&str, &str)]) -> Self {
        let log = config.with_file_name(format!("{verb}-{}.log", unique("w")));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
            .args([verb, "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("spawn worker");
        Self { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait; returns the exit code.
    pub fn terminate(mut self, timeout: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "worker did not exit within {timeout:?} after SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (for `telemetry.http_listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (status code, body) of a GET on 127.0.0.1:port.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// The value of the first sample of `name` whose labels contain `label`.
pub fn sample(metrics: &str, name: &str, label: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .next()
        .unwrap_or_else(|| panic!("no {name} with {label} in:\n{metrics}"))
}

/// Creates a topic with topic-level configs (e.g. `compression.type`).
pub fn create_topic_with(topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    create(&[t], false);
}

/// One record exactly as bytes, for what rdkafka's typed API cannot send
/// (header keys that are not UTF-8, null header values, null values).
pub struct RawIn<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Produces `records` to partition 0 of `topic` in order through librdkafka's
/// C API (`rd_kafka_produceva`), with `extra` producer settings.
pub fn produce_raw(topic: &str, records: &[RawIn<'_>], extra: &[(&str, &str)]) {
    use rdkafka::bindings as rd;
    use rdkafka::producer::BaseProducer;
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true");
    for (k, v) in extra {
        cc.set(*k, *v);
    }
    let p: BaseProducer = cc.create().expect("raw producer");
    let topic_c = std::ffi::CString::new(topic).unwrap();
    for r in records {
        let names: Vec<std::ffi::CString> = r
            .headers
            .iter()
            .map(|(k, _)| std::ffi::CString::new(k.clone()).expect("no NUL in header keys"))
            .collect();
        let mut vus: Vec<rd::rd_kafka_vu_t> = Vec::new();
        let vu = |vtype, u| rd::rd_kafka_vu_t { vtype, u };
        use rd::rd_kafka_vtype_t as V;
        vus.push(vu(
            V::RD_KAFKA_VTYPE_TOPIC,
            rd::rd_kafka_vu_s__bindgen_ty_1 {
                cstr: topic_c.as_ptr(),
            },
        ));
        vus.push(vu(
            V::RD_KAFKA_VTYPE_PARTITION,
            rd::rd_kafka_vu_s__bindgen_ty_1 { i32_: 0 },
        ));
        // RD_KAFKA_MSG_F_COPY: librdkafka copies key and value.
        vus.push(vu(
            V::RD_KAFKA_VTYPE_MSGFLAGS,
            rd::rd_kafka_vu_s__bindgen_ty_1 { i: 2 },
        ));
        if let Some(v) = r.value {
            vus.push(vu(
                V::RD_KAFKA_VTYPE_VALUE,
                rd::rd_kafka_vu_s__bindgen_ty_1 {
                    mem: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
                        ptr: v.as_ptr() as *mut _,
                        size: v.len(),
                    },
                },
            ));
        }
        if let Some(k) = r.key {
            vus.push(vu(
                V::RD_KAFKA_VTYPE_KEY,
                rd::rd_kafka_vu_s__bindgen_ty_1 {
                    mem: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 {
                        ptr: k.as_ptr() as *mut _,
                        size: k.len(),
                    },
                },
            ));
        }
        for (name, (_, v)) in names.iter().zip(&r.headers) {
            let (val, size) = match v {
                Some(v) => (v.as_ptr() as *const std::ffi::c_void, v.len() as isize),
                None => (std::ptr::null(), 0),
            };
            vus.push(vu(
                V::RD_KAFKA_VTYPE_HEADER,
                rd::rd_kafka_vu_s__bindgen_ty_1 {
                    header: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_2 {
                        name: name.as_ptr(),
                        val,
                        size,
                    },
                },
            ));
        }
        loop {
            // SAFETY: every pointer in `vus` outlives the call; librdkafka
            // copies the value, key and headers (F_COPY).
            let err =
                unsafe { rd::rd_kafka_produceva(p.client().native_ptr(), vus.as_ptr(), vus.len()) };
            if err.is_null() {
                break;
            }
            // SAFETY: a non-null error is ours to read and destroy.
            let code = unsafe { rd::rd_kafka_error_code(err) };
            unsafe { rd::rd_kafka_error_destroy(err) };
            assert_eq!(
                code,
                rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__QUEUE_FULL,
                "produce to {topic} refused"
            );
            p.poll(Duration::from_millis(10));
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("flush raw records");
}

/// The tests' shared artifact cache, keyed exactly as the binaries the tests
/// spawn key theirs (`PIPELINE_WORKER_CACHE_KEY`, else the default key file,
/// which also outlives the run), so an artifact compiled in-process is
/// trusted by a spawned `test` or `run` and the reverse. With a key of its
/// own, each side took the other's artifacts in this directory for forgeries
/// and recompiled them: tens of seconds per Python or JS component, again at
/// every switch.
pub fn test_cache() -> pipeline_worker::sandbox::ArtifactCache {
    let dir = repo_root().join(".cache/pipeline-worker-tests");
    let key = pipeline_worker::sandbox::CacheKey::resolve(
        std::env::var(pipeline_worker::sandbox::CACHE_KEY_ENV)
            .ok()
            .as_deref(),
        None,
        &dir,
    )
    .expect("the artifact cache key of the spawned binaries");
    pipeline_worker::sandbox::ArtifactCache::new(dir).with_key(key)
}

/// Sandbox options for in-process tests: 10 ms epoch ticks over `cache`.
pub fn sandbox_opts(
    cache: pipeline_worker::sandbox::ArtifactCache,
    pooling: bool,
    max_instances: u32,
) -> pipeline_worker::sandbox::SandboxOptions {
    pipeline_worker::sandbox::SandboxOptions {
        cache,
        ticker: pipeline_worker::sandbox::EpochTicker::start(Duration::from_millis(10)),
        epoch_tick_ms: 10,
        pooling,
        max_instances,
    }
}
