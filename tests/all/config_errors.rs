use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// `validate --offline`: these configs name topics no broker has.
fn validate(toml: &str, env: &[(&str, &str)]) -> (bool, String) {
    validate_with(toml, env, &["--offline"])
}

fn validate_with(toml: &str, env: &[(&str, &str)], flags: &[&str]) -> (bool, String) {
    let dir = std::env::temp_dir().join(unique("cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .args(["validate", "--config"])
        .arg(&path)
        .args(flags)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

fn good(component: &str) -> String {
    format!(
        "[kafka]\nbrokers = \"127.0.0.1:9092\"\n\n[[pipelines]]\nname = \"p\"\ninput_topics = [\"in\"]\noutput_topics = [\"out\"]\ndead_letter_topic = \"dlq\"\ncomponent = \"{component}\"\n"
    )
}

#[test]
fn a_valid_config_loads_its_component() {
    let c = guest("enrich_rs");
    let (ok, text) = validate(&good(&c.display().to_string()), &[]);
    assert!(ok, "{text}");
    assert!(text.contains("sha256:"), "{text}");
}

#[test]
fn config_errors_name_the_key() {
    let c = guest("enrich_rs").display().to_string();
    let base = good(&c);
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (base.replace("brokers", "brokerz"), vec![], "brokerz"),
        (
            base.clone() + "[pipelines.limits]\ndeadline_ms = 0\n",
            vec![],
            "pipelines[0].limits.deadline_ms",
        ),
        (
            base.clone() + "[pipelines.limits]\nmemory_mb = 5\n",
            vec![],
            "memory_mb",
        ),
        (
            base.replace("output_topics = [\"out\"]", "output_topics = []"),
            vec![],
            "pipelines[0].output_topics",
        ),
        (
            base.replace("\"dlq\"", "\"bad topic!\""),
            vec![],
            "pipelines[0].dead_letter_topic",
        ),
        (
            base.replace("output_topics = [\"out\"]", "output_topics = [\"in\"]"),
            vec![],
            "pipelines[0].input_topics",
        ),
        (
            base.replace(
                "[kafka]\n",
                "[kafka]\nlibrdkafka = { \"enable.idempotence\" = \"false\" }\n",
            ),
            vec![],
            "kafka.librdkafka.\"enable.idempotence\"",
        ),
        (
            base.clone(),
            vec![("PIPELINE_WORKER__PIPELINES__0__BATCH_SIZE", "0")],
            "pipelines[0].batch_size",
        ),
        (
            base.clone(),
            vec![("PIPELINE_WORKER__PIPELINES__3__NAME", "x")],
            "PIPELINE_WORKER__PIPELINES__3__NAME",
        ),
        (
            base.replace(&format!("component = \"{c}\"\n"), ""),
            vec![],
            "pipelines[0].component",
        ),
        (
            base.replace("[[pipelines]]", "[control]\nlisten = \"127.0.0.1:0\"\ntenants = [{ name = \"a\", token_env = \"T\" }]\n\n[[pipelines]]"),
            vec![],
            "`control`",
        ),
        (
            base.replace("[[pipelines]]", "[registry]\nstore = \"s\"\n[control]\nlisten = \"127.0.0.1:0\"\ntenants = [{ name = \"a\", token_sha256 = \"abc\" }]\n\n[[pipelines]]"),
            vec![],
            "control.tenants[0].token_sha256",
        ),
        (
            base.replace("[[pipelines]]", "[registry]\nstore = \"s\"\nactivations_topic = \"no good\"\n\n[[pipelines]]"),
            vec![],
            "registry.activations_topic",
        ),
        (
            base.replace("\nname = \"p\"\n", "\nname = \"p\"\ntenant = \"Not Valid\"\n"),
            vec![],
            "pipelines[0].tenant",
        ),
        (
            base.replace("[[pipelines]]", "[telemetry]\notlp_endpoint = \"https://collector:4318\"\n\n[[pipelines]]"),
            vec![],
            "telemetry.otlp_endpoint",
        ),
        (
            base.replace(&c, "/nonexistent/f.wasm"),
            vec![],
            "pipelines[0].component",
        ),
        (
            base.replace(&c, &std::env::current_exe().unwrap().display().to_string()),
            vec![],
            "not a WebAssembly component",
        ),
        (
            base.clone() + "tombstones = \"keep\"\n",
            vec![],
            "tombstones",
        ),
        (
            base.clone() + "[pipelines.limits]\nmax_output_bytes = 999000\n",
            vec![],
            "message.max.bytes",
        ),
        (
            base.clone() + "[pipelines.limits]\nmax_output_bytes = 999000\n",
            vec![],
            "pipelines[0].limits.max_output_bytes",
        ),
    ];
    for (toml, env, key) in cases {
        let (ok, text) = validate(&toml, &env);
        assert!(
            !ok,
            "accepted a bad config (expected an error naming {key}):\n{toml}"
        );
        assert!(text.contains(key), "error does not name {key}: {text}");
    }
}

#[test]
fn env_overrides_apply() {
    let c = guest("enrich_rs").display().to_string();
    let (ok, text) = validate(
        &good(&c),
        &[("PIPELINE_WORKER__PIPELINES__0__NAME", "renamed")],
    );
    assert!(ok, "{text}");
    assert!(text.contains("renamed"), "{text}");
}

/// An override's mistake is the variable's, not the file's: the variable,
/// the key it made and the key it probably meant are named.
#[test]
fn an_env_override_error_names_the_variable() {
    let c = guest("enrich_rs").display().to_string();
    let (ok, text) = validate(
        &good(&c),
        &[("PIPELINE_WORKER__KAFKA__BROKER", "kafka:9092")],
    );
    assert!(!ok, "an unknown key from the environment was accepted");
    assert!(
        text.contains("environment variable PIPELINE_WORKER__KAFKA__BROKER")
            && text.contains("kafka.broker")
            && text.contains("did you mean `brokers`"),
        "{text}"
    );
    assert!(!text.contains("config file"), "blames the file: {text}");
    // A bad value set by a variable is the variable's too.
    let (ok, text) = validate(
        &good(&c),
        &[("PIPELINE_WORKER__PIPELINES__0__BATCH_SIZE", "many")],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("PIPELINE_WORKER__PIPELINES__0__BATCH_SIZE")
            && text.contains("pipelines[0].batch_size"),
        "{text}"
    );
    // The same typo in the file is the file's, with its full path.
    let (ok, text) = validate(&good(&c).replace("brokers =", "broker ="), &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("config file") && text.contains("`kafka.broker`"),
        "{text}"
    );
}

#[test]
fn unknown_keys_in_arrays_name_their_index() {
    let c = guest("enrich_rs").display().to_string();
    let second = good(&c)
        .split_once("[[pipelines]]")
        .unwrap()
        .1
        .replace("name = \"p\"", "name = \"q\"")
        .replace("\"in\"", "\"in2\"");
    let toml = format!(
        "{}[[pipelines]]{second}[pipelines.limits]\nfoo = 1\n",
        good(&c)
    );
    let (ok, text) = validate(&toml, &[]);
    assert!(!ok, "accepted an unknown key:\n{toml}");
    assert!(text.contains("pipelines[1].limits.foo"), "{text}");
}

fn cluster_config(component: &str, brokers: &str, topics: [&str; 4]) -> String {
    format!(
        "[kafka]\nbrokers = \"{brokers}\"\n\n[runtime]\ncache_dir = \"{}\"\n\n[[pipelines]]\nname = \"p\"\ninput_topics = [\"{}\", \"{}\"]\noutput_topics = [\"{}\"]\ndead_letter_topic = \"{}\"\ncomponent = \"{component}\"\n",
        cache_dir().display(),
        topics[0],
        topics[1],
        topics[2],
        topics[3],
    )
}

#[test]
fn validate_fails_on_an_unreachable_broker_within_its_timeout() {
    let c = guest("enrich_rs").display().to_string();
    let toml = cluster_config(&c, "127.0.0.1:1", ["a", "b", "c", "d"]);
    let started = Instant::now();
    let (ok, text) = validate_with(&toml, &[], &["--timeout", "3s"]);
    let took = started.elapsed();
    assert!(!ok, "an unreachable broker was accepted: {text}");
    assert!(text.contains("kafka.brokers (127.0.0.1:1)"), "{text}");
    assert!(text.contains("within 3s"), "{text}");
    // The bound is --timeout, plus loading the component and process start.
    assert!(took < Duration::from_secs(20), "took {took:?}: {text}");
    // --offline is for CI without a broker: the same file passes.
    let (ok, text) = validate_with(&toml, &[], &["--offline"]);
    assert!(ok, "{text}");
    assert!(text.contains("not checked"), "{text}");
}

#[test]
fn validate_names_every_missing_topic_by_its_key() {
    let c = guest("enrich_rs").display().to_string();
    let input = unique("vt-in");
    let output = unique("vt-out");
    let dlq = unique("vt-dlq");
    let missing = unique("vt-missing");
    create_topics(&[(&input, 1), (&output, 1), (&dlq, 1)]);
    let (ok, text) = validate_with(
        &cluster_config(&c, &brokers(), [&input, &missing, &output, &dlq]),
        &[],
        &[],
    );
    assert!(!ok, "a missing input topic was accepted: {text}");
    assert!(
        text.contains(&format!(
            "pipelines[0].input_topics[1]: topic \"{missing}\""
        )),
        "{text}"
    );
    let (ok, text) = validate_with(
        &cluster_config(&c, &brokers(), [&input, &input, &missing, &missing]),
        &[],
        &[],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("pipelines[0].output_topics[0]")
            && text.contains("pipelines[0].dead_letter_topic"),
        "both missing topics named: {text}"
    );
    let (ok, text) = validate_with(
        &cluster_config(&c, &brokers(), [&input, &input, &output, &dlq]),
        &[],
        &[],
    );
    assert!(ok, "{text}");
    assert!(text.contains("declared topic(s) exist"), "{text}");
}
