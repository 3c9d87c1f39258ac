use std::process::Command;

use crate::support::*;

fn validate(toml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = std::env::temp_dir().join(unique("cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .args(["validate", "--config"])
        .arg(&path)
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
