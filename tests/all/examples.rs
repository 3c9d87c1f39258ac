//! Every customer example passes its golden test through `pipeline-worker
//! test` (the production sandbox, no Kafka); the Python example also runs
//! through Kafka; the Python negative cases give their documented errors.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn golden(component: &Path, example: &str) {
    let dir = repo_root().join("customer-examples").join(example);
    golden_files(
        component,
        &[],
        &dir.join("sample.jsonl"),
        &dir.join("expected.jsonl"),
        example,
    );
}

/// `pipeline-worker test --component C [extra] --input I --expect E` must pass.
fn golden_files(
    component: &Path,
    extra: &[&std::ffi::OsStr],
    input: &Path,
    expect: &Path,
    what: &str,
) {
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .current_dir(repo_root())
        .args([
            "test",
            "--cache-dir",
            ".cache/pipeline-worker-tests",
            "--component",
        ])
        .arg(component)
        .args(extra)
        .arg("--input")
        .arg(input)
        .arg("--expect")
        .arg(expect)
        .output()
        .expect("run pipeline-worker test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} golden test failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("PASS"), "{text}");
}

#[test]
fn rust_examples_pass_their_golden_tests() {
    golden(&guest("price_calculator"), "price_calculator");
    golden(&guest("router"), "router");
}

/// The columnar example, with the schema of its own `pipeline.toml` (the same
/// tables under `[[schema]]` for `test --schema`): valid rows priced, and the
/// invalid ones (unknown tier, negative price/quantity) refused through `_error`.
#[test]
fn columnar_example_passes_its_golden_tests_with_its_pipeline_schema() {
    let dir = repo_root().join("customer-examples/price_columnar");
    let config = std::fs::read_to_string(dir.join("pipeline.toml")).unwrap();
    let tables = &config[config
        .find("[[pipelines.schema]]")
        .expect("a schema in pipeline.toml")..];
    let tmp = std::env::temp_dir().join(unique("columnar-golden"));
    std::fs::create_dir_all(&tmp).unwrap();
    let schema = tmp.join("schema.toml");
    std::fs::write(
        &schema,
        tables.replace("[[pipelines.schema]]", "[[schema]]"),
    )
    .unwrap();
    for (input, expect) in [("sample", "expected"), ("invalid", "invalid.expected")] {
        golden_files(
            &guest("price_columnar"),
            &["--schema".as_ref(), schema.as_os_str()],
            &dir.join(format!("{input}.jsonl")),
            &dir.join(format!("{expect}.jsonl")),
            &format!("price_columnar {input}"),
        );
    }
}

#[test]
fn js_example_passes_its_golden_test() {
    golden(&python_component("js_enrich"), "js_enrich");
}

#[test]
fn python_examples_pass_their_golden_tests() {
    golden(&python_component("enrich_event"), "enrich_event");
    golden(&python_component("pii_redaction"), "pii_redaction");
    golden(&python_component("filter"), "filter");
}

/// A golden test that does not hold must fail (the verb is not a rubber stamp).
#[test]
fn a_wrong_expectation_fails_the_golden_test() {
    let dir = std::env::temp_dir().join(unique("golden"));
    std::fs::create_dir_all(&dir).unwrap();
    let expect = dir.join("expected.jsonl");
    let sample = repo_root().join("customer-examples/price_calculator/sample.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(
        repo_root().join("customer-examples/price_calculator/expected.jsonl"),
    )
    .unwrap()
    .lines()
    .map(String::from)
    .collect();
    lines[0] = lines[0].replace("170.0", "171.0");
    std::fs::write(&expect, lines.join("\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .args(["test", "--cache-dir"])
        .arg(cache_dir())
        .arg("--component")
        .arg(guest("price_calculator"))
        .arg("--input")
        .arg(&sample)
        .arg("--expect")
        .arg(&expect)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("FAIL") && text.contains("171.0"), "{text}");
}

/// The customer's Python file, unchanged, through the real broker.
#[test]
fn python_enrich_event_through_kafka() {
    let topics = TestTopics::create("py", 1);
    let (input, output, dlq) = (
        topics.input.clone(),
        topics.output.clone(),
        topics.dlq.clone(),
    );
    let dir = repo_root().join("customer-examples/enrich_event");
    let samples: Vec<String> = std::fs::read_to_string(dir.join("sample.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let expected: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("expected.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut records: Vec<In> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| In::new(format!("k{i}"), s.clone()))
        .collect();
    records.push(In::new("bad", "this is not json"));
    produce_all(&input, &records);
    let component = python_component("enrich_event");
    let config = topics.config("enrich_event", &component, "", "");
    let worker = WorkerProcess::start(&config);
    let out = read_until(&[&output], samples.len(), Duration::from_secs(180));
    let got: Vec<serde_json::Value> = out.iter().map(|o| o.json()).collect();
    assert_eq!(got, expected, "log:\n{}", worker.log_text());
    let bad = read_until(&[&dlq], 1, Duration::from_secs(60));
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].header("pw.error.kind"), "invalid-input");
    assert!(
        bad[0]
            .header("pw.error.message")
            .to_lowercase()
            .contains("json"),
        "{:?}",
        bad[0].headers
    );
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}

/// One record's result: its outputs, or the error's (kind, message).
type Outcome = Result<Vec<pipeline_worker::sandbox::OutputRecord>, (String, String)>;

/// Runs `inputs` through `component` in the production sandbox, in-process
/// (no Kafka, no pipeline `tombstones` mode): what the SDK inside returns.
fn run_component(
    name: &str,
    component: &Path,
    inputs: &[pipeline_worker::sandbox::InputRecord],
) -> Vec<Outcome> {
    use pipeline_worker::config::Limits;
    use pipeline_worker::sandbox::{Function, Runner};
    let opts = sandbox_opts(test_cache(), false, 1);
    let limits = Limits {
        deadline_ms: 5_000,
        ..Limits::default()
    };
    let f = Function::load_file(name, component, &limits, &opts).expect("load");
    Runner::new(f)
        .run_batch(inputs)
        .into_iter()
        .map(|r| r.map_err(|e| (e.kind().to_string(), e.to_string())))
        .collect()
}

fn input_record(key: Option<&str>, value: Option<&[u8]>) -> pipeline_worker::sandbox::InputRecord {
    pipeline_worker::sandbox::InputRecord {
        key: key.map(|k| k.as_bytes().to_vec()),
        value: value.map(<[u8]>::to_vec),
        headers: vec![],
        topic: "t".into(),
        partition: 0,
        offset: 0,
        timestamp: None,
    }
}

fn run_python(name: &str, value: &str) -> Result<Vec<serde_json::Value>, (String, String)> {
    let rec = input_record(None, Some(value.as_bytes()));
    run_component(name, &python_component(name), &[rec])
        .pop()
        .unwrap()
        .map(|outs| {
            outs.iter()
                .map(|o| serde_json::from_slice(o.value.as_deref().unwrap()).unwrap())
                .collect()
        })
}

/// WIT 0.2 tombstones through each SDK inside a real component: a null input
/// value is seen as null (Python `None`, Rust `None`, JS `null`), distinct
/// from an empty one, and a null the function returns comes out as a
/// tombstone with its key. Each pass-through example returns its input
/// unchanged only after testing for null; had an SDK turned null into empty,
/// it would read `fields` and refuse the record instead, and had it turned a
/// null output into empty bytes, `value` would be `Some(b"")`.
#[test]
fn every_sdk_sees_a_tombstone_as_null_and_returns_null_as_a_tombstone() {
    let pass_through = [
        ("pii_redaction", python_component("pii_redaction")),
        ("price_calculator", guest("price_calculator")),
        ("js_enrich", python_component("js_enrich")),
    ];
    for (name, component) in &pass_through {
        let got = run_component(
            name,
            component,
            &[
                input_record(Some("gone"), None),
                input_record(Some("empty"), Some(b"")),
            ],
        );
        let outs = got[0]
            .as_ref()
            .unwrap_or_else(|e| panic!("{name}: tombstone refused: {e:?}"));
        assert_eq!(outs.len(), 1, "{name}: {outs:?}");
        assert_eq!(
            outs[0].value, None,
            "{name}: a tombstone must come out as a tombstone"
        );
        assert_eq!(outs[0].key.as_deref(), Some(&b"gone"[..]), "{name}");
        // Empty is not null: it reaches `fields` and is refused as not JSON.
        let (kind, msg) = got[1].as_ref().expect_err(name);
        assert_eq!(kind, "invalid-input", "{name}: {msg}");
        assert!(
            msg.contains("empty") || msg.contains("EOF"),
            "{name}: {msg}"
        );
        assert!(!msg.contains("tombstone"), "{name}: {msg}");
    }
    // Functions that do not test for null: `fields` of a tombstone is a
    // clear invalid-input naming it, never `{}`.
    for (name, component) in [
        ("enrich_event", python_component("enrich_event")),
        ("enrich_rs", guest("enrich_rs")),
    ] {
        let got = run_component(name, &component, &[input_record(Some("k"), None)]);
        let (kind, msg) = got[0].as_ref().expect_err(name);
        assert_eq!(kind, "invalid-input", "{name}: {msg}");
        assert!(msg.contains("null (a tombstone)"), "{name}: {msg}");
    }
}

#[test]
fn python_exception_becomes_a_failed_error() {
    let (kind, msg) = run_python("py_raises", r#"{"amount":1}"#).unwrap_err();
    assert_eq!(kind, "failed");
    assert!(msg.contains("ValueError: bad amount"), "{msg}");
}

#[test]
fn python_wrong_return_type_is_named() {
    let (kind, msg) = run_python("py_wrong_type", r#"{"a":1}"#).unwrap_err();
    assert_eq!(kind, "failed");
    assert!(msg.contains("returned int"), "{msg}");
}

#[test]
fn python_file_and_socket_access_fail_inside_the_guest() {
    let out = run_python("py_opens_file", r#"{"a":1}"#).expect("opens_file returns its error");
    assert_eq!(out[0]["opened"], false, "{out:?}");
    let out = run_python("py_uses_socket", r#"{"a":1}"#).expect("uses_socket returns its error");
    assert_eq!(out[0]["connected"], false, "{out:?}");
}

#[test]
fn python_build_refuses_two_or_no_transforms() {
    for (file, needle) in [
        ("two_transforms.py", "more than one @transform"),
        ("no_transform.py", "defines no @transform"),
    ] {
        let out_wasm = std::env::temp_dir()
            .join(unique("bad"))
            .with_extension("wasm");
        let out = Command::new(repo_root().join("scripts/build-python.sh"))
            .arg(repo_root().join("tests/components/python").join(file))
            .arg(&out_wasm)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} built:\n{text}");
        assert!(text.contains(needle), "{file}: {text}");
        assert!(!out_wasm.exists(), "{file}: a component was written");
    }
}

/// The customer's loop inside a checkout: `build` runs the checkout's own
/// `scripts/build-*.sh` (the scripts `make examples` runs on every example).
/// The templates' real Python, JavaScript and TypeScript builds are
/// scripts/check-sdk-packages.sh's, with the installed packages, so here a
/// checkout whose scripts record their arguments and write a known component
/// shows the dispatch; Rust, seconds on target/guests, builds for real
/// against the checkout's sdk-wit/rust and passes its own golden test.
#[test]
fn init_build_test_loop_in_a_checkout() {
    let work = std::env::temp_dir().join(unique("loop"));
    std::fs::create_dir_all(&work).unwrap();
    let bin = env!("CARGO_BIN_EXE_pipeline-worker");
    let run = |home: &Path, args: &[&str]| {
        let out = Command::new(bin)
            .current_dir(&work)
            .env("PIPELINE_SDK_HOME", home)
            .env("CARGO_TARGET_DIR", repo_root().join("target/guests"))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} failed:\n{text}");
        text
    };

    run(&repo_root(), &["init", "--lang", "rust", "my_rust_fn"]);
    let manifest = std::fs::read_to_string(work.join("my_rust_fn/Cargo.toml")).unwrap();
    let sdk = repo_root().join("sdk-wit/rust").canonicalize().unwrap();
    assert!(
        manifest.contains(&format!(
            "pipeline-sdk = {{ path = \"{}\" }}",
            sdk.display()
        )),
        "{manifest}"
    );
    let built = run(&repo_root(), &["build", "my_rust_fn"]);
    assert!(built.contains("sha256:"), "{built}");
    let tested = run(
        &repo_root(),
        &[
            "test",
            "--cache-dir",
            &repo_root()
                .join(".cache/pipeline-worker-tests")
                .display()
                .to_string(),
            "--component",
            "my_rust_fn/my_rust_fn.wasm",
            "--input",
            "my_rust_fn/sample.jsonl",
            "--expect",
            "my_rust_fn/expected.jsonl",
        ],
    );
    assert!(tested.contains("PASS"), "{tested}");

    // A checkout (sdk-wit/wit/transform.wit + scripts/) whose build scripts
    // log their arguments and copy a real component to the output.
    let home = work.join("checkout");
    std::fs::create_dir_all(home.join("sdk-wit/wit")).unwrap();
    std::fs::create_dir_all(home.join("scripts")).unwrap();
    std::fs::write(
        home.join("sdk-wit/wit/transform.wit"),
        pipeline_worker::scaffold::WIT,
    )
    .unwrap();
    let component = python_component("enrich_event");
    for script in ["build-python.sh", "build-js.sh"] {
        let path = home.join("scripts").join(script);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$0.args\"\ncp '{}' \"$2\"\n",
                component.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let want = std::fs::read(&component).unwrap();
    for (lang, name, script, src) in [
        ("python", "my_enrich", "build-python.sh", "my_enrich.py"),
        ("js", "my_js_fn", "build-js.sh", "my_js_fn.js"),
        ("ts", "my_ts_fn", "build-js.sh", "my_ts_fn.ts"),
    ] {
        run(&home, &["init", "--lang", lang, name]);
        let built = run(&home, &["build", name]);
        let args = std::fs::read_to_string(home.join("scripts").join(format!("{script}.args")))
            .unwrap_or_else(|e| panic!("{lang}: scripts/{script} was not run ({e}):\n{built}"));
        let args: Vec<&str> = args.lines().collect();
        assert_eq!(args.len(), 2, "{lang}: {args:?}");
        assert!(
            args[0].ends_with(&format!("{name}/{src}")),
            "{lang}: {args:?}"
        );
        assert!(
            args[1].ends_with(&format!("{name}/{name}.wasm")),
            "{lang}: {args:?}"
        );
        let got = std::fs::read(work.join(name).join(format!("{name}.wasm"))).unwrap();
        assert_eq!(got, want, "{lang}: the script's component is the output");
        assert!(
            built.contains(&pipeline_worker::sandbox::digest(&want)),
            "{lang}: {built}"
        );
    }
    // In a checkout, tsc is pointed at the checkout's SDK types (no
    // node_modules there); the installed case is check-sdk-packages'.
    let src = std::fs::read_to_string(work.join("my_ts_fn/my_ts_fn.ts")).unwrap();
    assert!(
        src.contains("interface ") && src.contains(": Record"),
        "not TypeScript:\n{src}"
    );
    let tsconfig = std::fs::read_to_string(work.join("my_ts_fn/tsconfig.json")).unwrap();
    assert!(
        tsconfig.contains(&format!(
            "\"pipeline-sdk\": [{}]",
            serde_json::Value::String(
                home.join("sdk-wit/js/pipeline-sdk.d.ts")
                    .display()
                    .to_string()
            )
        )),
        "{tsconfig}"
    );
}
