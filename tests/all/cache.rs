//! The artifact cache through the real load path: bounded by size with the
//! artifacts of loaded functions kept, a tampered artifact recompiled instead
//! of loaded, its metrics on the worker's and the control plane's `/metrics`,
//! and the control plane keeping no local copy of what it stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipeline_worker::config::{Config, Limits};
use pipeline_worker::sandbox::{ArtifactCache, Function, InputRecord, Runner, SandboxOptions};

use crate::support::*;

fn opts(cache: ArtifactCache) -> SandboxOptions {
    sandbox_opts(cache, false, 1)
}

fn fresh_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(&format!("pw-cache-{tag}")));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn load(path: &Path, o: &SandboxOptions) -> Arc<Function> {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    Function::load_file(&name, path, &Limits::default(), o)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Artifact file names and sizes in `dir`, sorted by name.
fn artifacts(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.ends_with(".cwasm")
                .then(|| (name, e.metadata().unwrap().len()))
        })
        .collect();
    v.sort();
    v
}

fn names(dir: &Path) -> Vec<String> {
    artifacts(dir).into_iter().map(|(n, _)| n).collect()
}

fn enrich_input() -> InputRecord {
    InputRecord {
        key: Some(b"k".to_vec()),
        value: Some(br#"{"session_start":0,"session_end":120}"#.to_vec()),
        headers: vec![],
        topic: "t".into(),
        partition: 0,
        offset: 0,
        timestamp: None,
    }
}

fn run_enrich(f: Arc<Function>) -> serde_json::Value {
    let mut r = Runner::new(f);
    let out = r.run_batch(&[enrich_input()]);
    let outs = out[0].as_ref().expect("record ok");
    serde_json::from_slice(outs[0].value.as_deref().expect("a value")).expect("JSON output")
}

#[test]
fn eviction_bounds_the_cache_and_keeps_the_artifacts_of_loaded_functions() {
    let [a, b, c] = ["enrich_rs", "price_calculator", "router"].map(guest);
    // Sizes first, so the bound fits any one artifact but no two.
    let scratch = fresh_dir("sizes");
    let o = opts(ArtifactCache::new(&scratch));
    let sizes: Vec<u64> = [&a, &b, &c]
        .iter()
        .map(|p| {
            let f = load(p, &o);
            std::fs::metadata(scratch.join(&f.artifact_name))
                .unwrap()
                .len()
        })
        .collect();
    let (min, max) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
    let bound = max + min / 4;
    assert!(
        2 * min > bound,
        "test needs artifacts of similar size: {sizes:?}"
    );

    let dir = fresh_dir("bounded");
    let o = opts(ArtifactCache::new(&dir).with_max_bytes(bound));
    let fa = load(&a, &o);
    assert!(!fa.load_report.from_cache);
    let name_a = fa.artifact_name.clone();
    assert_eq!(names(&dir), std::slice::from_ref(&name_a));

    // Both loaded: both kept, although together they exceed the bound.
    let fb = load(&b, &o);
    let name_b = fb.artifact_name.clone();
    let s = o.cache.stats();
    assert!(s.over_limit, "{s:?}");
    assert_eq!(s.evictions, 0);
    assert!(s.size_bytes > bound, "{s:?}");
    assert_eq!(names(&dir).len(), 2);

    // A is no longer loaded: it is the one that goes.
    drop(fa);
    let fc = load(&c, &o);
    let name_c = fc.artifact_name.clone();
    let mut want = vec![name_b, name_c];
    want.sort();
    assert_eq!(names(&dir), want, "A evicted, B (loaded) kept");
    assert_eq!(o.cache.stats().evictions, 1);

    // Nothing loaded: A comes back (compiled again) and the bound holds.
    drop((fb, fc));
    let fa = load(&a, &o);
    assert!(!fa.load_report.from_cache, "A had been evicted");
    assert_eq!(names(&dir), std::slice::from_ref(&name_a));
    let s = o.cache.stats();
    assert_eq!(s.evictions, 3, "{s:?}");
    assert!(!s.over_limit && s.size_bytes <= bound, "{s:?}");
    let total: u64 = artifacts(&dir).iter().map(|(_, n)| n).sum();
    assert_eq!(total, s.size_bytes);
    assert!(load(&a, &o).load_report.from_cache);
    assert_eq!(
        run_enrich(fa)["session_duration_minutes"].as_f64(),
        Some(2.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn a_tampered_artifact_is_recompiled_never_loaded() {
    let component = guest("enrich_rs");
    let dir = fresh_dir("tamper");
    let o = opts(ArtifactCache::new(&dir));
    let first = load(&component, &o);
    assert!(!first.load_report.from_cache);
    assert!(load(&component, &o).load_report.from_cache);
    let path = dir.join(&first.artifact_name);

    // One flipped byte in the code section's neighbourhood: still a
    // plausible file, not what this process wrote.
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let again = load(&component, &o);
    assert!(!again.load_report.from_cache, "a tampered file was loaded");
    assert_eq!(o.cache.stats().rejected_mismatch, 1);
    assert_eq!(
        run_enrich(again)["session_duration_minutes"].as_f64(),
        Some(2.0)
    );
    // The recompiled artifact replaced it and is trusted again.
    assert_ne!(std::fs::read(&path).unwrap(), bytes);
    assert!(load(&component, &o).load_report.from_cache);

    // A genuine artifact dropped into another directory by someone else
    // (here: copied) is not trusted there either: nothing vouches for it.
    let other = fresh_dir("foreign");
    std::fs::copy(&path, other.join(&first.artifact_name)).unwrap();
    let o2 = opts(ArtifactCache::new(&other));
    assert!(!load(&component, &o2).load_report.from_cache);
    assert_eq!(o2.cache.stats().rejected_unknown, 1);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn cache_max_bytes_is_validated_by_name() {
    let base = &format!(
        "[[pipelines]]\nname = \"p\"\ninput_topics = [\"in\"]\noutput_topics = [\"out\"]\ndead_letter_topic = \"dlq\"\ncomponent = \"{}\"\n[kafka]\nbrokers = \"b:9092\"\n[runtime]\n",
        guest("enrich_rs").display()
    );
    let path = Path::new("/tmp/worker.toml");
    for (value, want) in [("0", "must be positive"), ("\"lots\"", "")] {
        let text = format!("{base}cache_max_bytes = {value}\n");
        let e = Config::from_str_with_env(&text, path, std::iter::empty())
            .err()
            .unwrap_or_else(|| panic!("cache_max_bytes = {value} accepted"))
            .to_string();
        assert!(e.contains("cache_max_bytes") && e.contains(want), "{e}");
    }
    let ok = Config::from_str_with_env(
        &format!("{base}cache_max_bytes = 1048576\n"),
        path,
        std::iter::empty(),
    )
    .unwrap();
    assert_eq!(ok.runtime.cache_max_bytes, 1 << 20);
    let default = Config::from_str_with_env(base, path, std::iter::empty()).unwrap();
    assert_eq!(default.runtime.cache_max_bytes, 512 << 20);
}

fn wait_metrics(
    port: u16,
    what: &str,
    ok: impl Fn(&str) -> bool,
    log: impl Fn() -> String,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some((200, m)) = http_get(port, "/metrics") {
            if ok(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{what}; last /metrics:\n{m}\nlog:\n{}",
                log()
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "{what}: /metrics never answered; log:\n{}",
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn line_value(m: &str, series: &str) -> Option<f64> {
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_worker_serves_its_cache_size_and_limit() {
    let topics = TestTopics::create("cache-metrics", 1);
    let dir = fresh_dir("worker");
    let config = topics.config(
        "enrich",
        &guest("enrich_rs"),
        "",
        "cache_max_bytes = 123456789\n[telemetry]\nhttp_listen = \"127.0.0.1:0\"\n",
    );
    let dir_s = dir.display().to_string();
    let worker = WorkerProcess::start_env(
        "run",
        &config,
        &[("PIPELINE_WORKER__RUNTIME__CACHE_DIR", &dir_s)],
    );
    let port = bound_port(&worker, "serving /livez", Duration::from_secs(60));
    let m = wait_metrics(
        port,
        "cache metrics",
        |m| line_value(m, "pipeline_artifact_cache_size_bytes").is_some_and(|v| v > 0.0),
        || worker.log_text(),
    );
    let on_disk: u64 = artifacts(&dir).iter().map(|(_, n)| n).sum();
    assert!(on_disk > 0);
    assert_eq!(
        line_value(&m, "pipeline_artifact_cache_size_bytes"),
        Some(on_disk as f64)
    );
    assert_eq!(
        line_value(&m, "pipeline_artifact_cache_limit_bytes"),
        Some(123456789.0)
    );
    assert_eq!(
        line_value(&m, "pipeline_artifact_cache_evictions_total"),
        Some(0.0)
    );
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

const TOKEN: &str = "token-for-cache-tests";

#[test]
fn control_plane_metrics_count_uploads_and_it_keeps_no_local_copy() {
    let dir = fresh_dir("control");
    let cache = dir.join("cache");
    let text = format!(
        r#"[kafka]
brokers = "{brokers}"

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
input_topics = ["{prefix}-in"]
output_topics = ["{prefix}-out"]
dead_letter_topic = "{prefix}-dlq"
"#,
        brokers = brokers(),
        cache = cache.display(),
        activations = unique("cache-activations"),
        hash = sha256_hex(TOKEN.as_bytes()),
        prefix = unique("cache-control"),
    );
    let config = dir.join("worker.toml");
    std::fs::write(&config, text).unwrap();
    let control = WorkerProcess::start_verb("control", &config);
    let port = bound_port(&control, "control API listening", Duration::from_secs(60));
    let before = wait_metrics(port, "control /metrics", |_| true, || control.log_text());
    assert!(
        before.contains("pipeline_control_uploads_total{result=\"accepted\"} 0"),
        "{before}"
    );

    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/functions/enrich/versions");
    let post = |token: &str, body: Vec<u8>| {
        let r = http
            .post(&url)
            .bearer_auth(token)
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status} with non-JSON {text:?}: {e}"));
        (status, body)
    };
    let (status, manifest) = post(TOKEN, std::fs::read(guest("enrich_rs")).unwrap());
    assert_eq!(status, 201, "{manifest}\n{}", control.log_text());
    let (status, e) = post(TOKEN, b"\0asm\x01\0\0\0".to_vec());
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("core-module"))
    );
    let (status, _) = post("not-a-token", b"\0asm\x01\0\0\0".to_vec());
    assert_eq!(status, 401);

    // Stored and verifiable in the store; gone from the control plane's disk.
    let stored = manifest["artifacts"].as_object().expect("artifacts");
    assert!(!stored.is_empty(), "{manifest}");
    for (name, hash) in stored {
        let bytes = std::fs::read(dir.join("store/artifacts").join(name)).unwrap();
        assert_eq!(
            format!("sha256:{}", sha256_hex(&bytes)),
            hash.as_str().unwrap()
        );
        assert!(
            !cache.join(name).exists(),
            "{name} still in the local cache"
        );
    }
    assert!(artifacts(&cache).is_empty(), "{:?}", artifacts(&cache));

    let r = http
        .post(format!("http://127.0.0.1:{port}/v1/pipelines/p/activate"))
        .bearer_auth(TOKEN)
        .body(serde_json::json!({"function": "enrich", "version": manifest["version"]}).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().unwrap());

    let m = wait_metrics(port, "control /metrics", |_| true, || control.log_text());
    for (series, want) in [
        ("pipeline_control_uploads_total{result=\"accepted\"}", 1.0),
        (
            "pipeline_control_uploads_total{result=\"rejected\",reason=\"core-module\"}",
            1.0,
        ),
        (
            "pipeline_control_uploads_total{result=\"rejected\",reason=\"invalid-token\"}",
            1.0,
        ),
        ("pipeline_control_compile_duration_seconds_count", 1.0),
        (
            "pipeline_control_activations_total{action=\"activate\"}",
            1.0,
        ),
        ("pipeline_artifact_cache_size_bytes", 0.0),
    ] {
        assert_eq!(line_value(&m, series), Some(want), "{series}:\n{m}");
    }
    assert!(line_value(&m, "pipeline_control_compile_duration_seconds_sum").unwrap() > 0.0);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pipeline-worker validate` in its own process, with HOME and
/// XDG_STATE_HOME in `home` (the default key file lives there) and `env`.
fn validate(config: &Path, home: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .args(["validate", "--offline", "--config"])
        .arg(config)
        .env_remove("PIPELINE_WORKER_CACHE_KEY")
        .env("HOME", home)
        .env("XDG_STATE_HOME", home.join("state"))
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// How `validate` reports the one pipeline's load: "cached" or "compiled".
fn loaded_how(ok_text: &(bool, String)) -> &'static str {
    let (ok, text) = ok_text;
    assert!(ok, "validate failed:\n{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("ok  pipeline"))
        .unwrap_or_else(|| panic!("no pipeline line:\n{text}"));
    match (line.contains(", cached)"), line.contains(", compiled)")) {
        (true, false) => "cached",
        (false, true) => "compiled",
        _ => panic!("{line}"),
    }
}

fn validate_config(cache: &Path, runtime_extra: &str) -> PathBuf {
    let dir = fresh_dir("validate-config");
    let path = dir.join("worker.toml");
    std::fs::write(
        &path,
        format!(
            "[kafka]\nbrokers = \"{}\"\ngroup_id = \"g\"\n\n[runtime]\ncache_dir = \"{}\"\n{runtime_extra}\n\n[[pipelines]]\nname = \"enrich\"\ninput_topics = [\"in\"]\noutput_topics = [\"out\"]\ndead_letter_topic = \"dlq\"\ncomponent = \"{}\"\n",
            brokers(),
            cache.display(),
            guest("enrich_rs").display()
        ),
    )
    .unwrap();
    path
}

fn only_artifact(dir: &Path) -> PathBuf {
    let n = names(dir);
    assert_eq!(n.len(), 1, "{n:?}");
    dir.join(&n[0])
}

fn flip_last_byte(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    *b.last_mut().unwrap() ^= 0x55;
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_new_process_loads_what_an_earlier_one_cached_unless_key_or_files_changed() {
    let home = fresh_dir("home");
    let cache = fresh_dir("restart");
    let config = validate_config(&cache, "");
    assert_eq!(loaded_how(&validate(&config, &home, &[])), "compiled");
    let key_file = home.join("state/pipeline-worker/cache.key");
    assert_eq!(
        std::fs::read(&key_file).unwrap().len(),
        32,
        "default key created"
    );
    let artifact = only_artifact(&cache);
    let sidecar = PathBuf::from(format!("{}.mac", artifact.display()));
    assert!(sidecar.exists());

    // A second process: trusted through the sidecar.
    assert_eq!(loaded_how(&validate(&config, &home, &[])), "cached");

    // Another key: the sidecar does not verify, so it recompiles (and
    // re-signs with that key).
    let other = (
        "PIPELINE_WORKER_CACHE_KEY",
        "0123456789abcdef0123456789abcdef-other",
    );
    let r = validate(&config, &home, &[other]);
    assert_eq!(loaded_how(&r), "compiled");
    assert!(r.1.contains("MAC sidecar does not verify"), "{}", r.1);
    assert_eq!(loaded_how(&validate(&config, &home, &[other])), "cached");
    assert_eq!(loaded_how(&validate(&config, &home, &[])), "compiled");
    assert_eq!(loaded_how(&validate(&config, &home, &[])), "cached");

    // A tampered sidecar.
    flip_last_byte(&sidecar);
    let r = validate(&config, &home, &[]);
    assert_eq!(loaded_how(&r), "compiled");
    assert!(r.1.contains("MAC sidecar does not verify"), "{}", r.1);
    assert_eq!(loaded_how(&validate(&config, &home, &[])), "cached");

    // A tampered artifact, its sidecar left as it was.
    flip_last_byte(&artifact);
    let r = validate(&config, &home, &[]);
    assert_eq!(loaded_how(&r), "compiled");
    assert!(r.1.contains("MAC sidecar does not verify"), "{}", r.1);

    // No sidecar at all (an artifact left by an older version).
    std::fs::remove_file(&sidecar).unwrap();
    let r = validate(&config, &home, &[]);
    assert_eq!(loaded_how(&r), "compiled");
    assert!(r.1.contains("has no MAC sidecar"), "{}", r.1);
    assert_eq!(loaded_how(&validate(&config, &home, &[])), "cached");

    // A key file given in the config is used instead of the default one.
    let mine = home.join("mine.key");
    std::fs::write(&mine, [42u8; 48]).unwrap();
    let with_file = validate_config(&cache, &format!("cache_key_file = \"{}\"", mine.display()));
    assert_eq!(loaded_how(&validate(&with_file, &home, &[])), "compiled");
    assert_eq!(loaded_how(&validate(&with_file, &home, &[])), "cached");
    let _ = std::fs::remove_dir_all(&cache);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_new_process_of_test_loads_from_the_cache() {
    let home = fresh_dir("home-test");
    let cache = fresh_dir("test-verb");
    let input = home.join("in.jsonl");
    std::fs::write(&input, "{\"session_start\":0,\"session_end\":120}\n").unwrap();
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
            .args(["test", "--component"])
            .arg(guest("enrich_rs"))
            .arg("--input")
            .arg(&input)
            .arg("--cache-dir")
            .arg(&cache)
            .env_remove("PIPELINE_WORKER_CACHE_KEY")
            .env("HOME", &home)
            .env_remove("XDG_STATE_HOME")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    assert!(run().contains(", compiled in "));
    assert!(home.join(".local/state/pipeline-worker/cache.key").exists());
    let second = run();
    assert!(second.contains(", loaded from cache in "), "{second}");
    assert!(second.contains("session_duration_minutes"), "{second}");
    let _ = std::fs::remove_dir_all(&cache);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn unusable_cache_keys_are_refused_naming_their_setting() {
    let home = fresh_dir("home-bad-key");
    let cache = fresh_dir("bad-key");
    let config = validate_config(&cache, "");
    let (ok, text) = validate(
        &config,
        &home,
        &[("PIPELINE_WORKER_CACHE_KEY", "too-short")],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("PIPELINE_WORKER_CACHE_KEY") && text.contains("at least 32 bytes"),
        "{text}"
    );
    let inside = cache.join("cache.key");
    std::fs::write(&inside, [1u8; 32]).unwrap();
    let config = validate_config(
        &cache,
        &format!("cache_key_file = \"{}\"", inside.display()),
    );
    let (ok, text) = validate(&config, &home, &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("runtime.cache_key_file") && text.contains("inside runtime.cache_dir"),
        "{text}"
    );
    let missing = home.join("nope.key");
    let config = validate_config(
        &cache,
        &format!("cache_key_file = \"{}\"", missing.display()),
    );
    let (ok, text) = validate(&config, &home, &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("runtime.cache_key_file") && text.contains("nope.key"),
        "{text}"
    );
    assert!(
        names(&cache).is_empty(),
        "nothing compiled: {:?}",
        names(&cache)
    );
    let _ = std::fs::remove_dir_all(&cache);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn without_a_usable_key_file_a_process_trusts_only_its_own_artifacts() {
    // HOME unset and no XDG_STATE_HOME: a per-process key, logged.
    let cache = fresh_dir("no-home");
    let config = validate_config(&cache, "");
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
            .args(["validate", "--offline", "--config"])
            .arg(&config)
            .env_remove("PIPELINE_WORKER_CACHE_KEY")
            .env_remove("HOME")
            .env_remove("XDG_STATE_HOME")
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let first = run();
    assert_eq!(loaded_how(&first), "compiled");
    assert!(first.1.contains("using a per-process key"), "{}", first.1);
    assert_eq!(loaded_how(&run()), "compiled");
    let _ = std::fs::remove_dir_all(&cache);
}
