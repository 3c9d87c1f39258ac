//! `pipeline-worker init --lang rust|js|ts --columnar`: the project it
//! writes builds (a real cargo or componentize-js build of the component)
//! and passes its own golden test through `pipeline-worker test --config`
//! (the schema from its pipeline.toml); Python is refused before anything is
//! written.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::*;

fn pw(work: &Path, args: &[&str]) -> (Output, String) {
    // The same cargo target dir as examples.rs' init test (and the guest
    // build), so the SDK and arrow are compiled once; GUESTS_TARGET_DIR as
    // in scripts/build-rust-guests.sh.
    let target = std::env::var_os("GUESTS_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| repo_root().join("target/guests"));
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .current_dir(work)
        .env("PIPELINE_SDK_HOME", repo_root())
        .env("CARGO_TARGET_DIR", target)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

fn ok(work: &Path, args: &[&str]) -> String {
    let (out, text) = pw(work, args);
    assert!(out.status.success(), "{args:?} failed:\n{text}");
    text
}

#[test]
fn columnar_init_build_test_loop() {
    let work = std::env::temp_dir().join(unique("colinit"));
    std::fs::create_dir_all(&work).unwrap();

    let (out, text) = pw(
        &work,
        &["init", "--lang", "python", "--columnar", "col_other"],
    );
    assert!(!out.status.success(), "python: accepted:\n{text}");
    assert!(
        text.contains("--columnar: Python has no columnar (Arrow) SDK")
            && text.contains("pyarrow has no WASI build"),
        "{text}"
    );
    assert!(!work.join("col_other").exists(), "a project was written");

    let name = "my_col_fn";
    ok(&work, &["init", "--lang", "rust", "--columnar", name]);
    let project = work.join(name);
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    let sdk = repo_root().join("sdk-wit/rust").canonicalize().unwrap();
    assert!(
        manifest.contains(&format!(
            "pipeline-sdk = {{ path = \"{}\", features = [\"columnar\"] }}",
            sdk.display()
        )),
        "{manifest}"
    );
    // Only the SDK: it re-exports the arrow crates the template uses.
    let deps: toml::Table = manifest.parse().unwrap();
    let deps: Vec<&String> = deps["dependencies"].as_table().unwrap().keys().collect();
    assert_eq!(deps, ["pipeline-sdk"], "{manifest}");
    let lib = std::fs::read_to_string(project.join("src/lib.rs")).unwrap();
    assert!(lib.contains("pipeline_sdk::export_columnar!("), "{lib}");
    let config = std::fs::read_to_string(project.join("pipeline.toml")).unwrap();
    assert!(config.contains("[[pipelines.schema]]"), "{config}");

    let built = ok(&work, &["build", name]);
    assert!(built.contains("sha256:"), "{built}");

    let cache = repo_root().join(".cache/pipeline-worker-tests");
    let test = |expect: &str| {
        pw(
            &work,
            &[
                "test",
                "--cache-dir",
                cache.to_str().unwrap(),
                "--config",
                &format!("{name}/pipeline.toml"),
                "--input",
                &format!("{name}/sample.jsonl"),
                "--expect",
                expect,
            ],
        )
    };
    let (out, tested) = test(&format!("{name}/expected.jsonl"));
    assert!(out.status.success(), "test failed:\n{tested}");
    assert!(tested.contains("PASS"), "{tested}");
    // The row the function refuses is dead-lettered alone.
    assert!(tested.contains("below absolute zero"), "{tested}");

    // The golden comparison is real: one wrong value fails it, named.
    let golden = std::fs::read_to_string(project.join("expected.jsonl")).unwrap();
    let wrong = golden.replacen("\"fahrenheit\":212.0", "\"fahrenheit\":213.0", 1);
    assert_ne!(wrong, golden);
    std::fs::write(project.join("wrong.jsonl"), wrong).unwrap();
    let (out, text) = test(&format!("{name}/wrong.jsonl"));
    assert!(!out.status.success(), "a wrong golden file passed:\n{text}");
    assert!(text.contains("$.value.fahrenheit"), "{text}");
    let _ = std::fs::remove_dir_all(&work);
}

/// The JavaScript columnar template: one componentize-js build (apache-arrow
/// bundled in), then `test` checks its rows, that `_row` gives each output
/// its own input's key, that `_topic` routes and that `_error` dead-letters
/// exactly one record. The TypeScript template only gets the SDK's static
/// check (same SDK code; a second 16 MB build would double the cost).
#[test]
fn js_columnar_init_build_test_loop() {
    let work = std::env::temp_dir().join(unique("jscolinit"));
    std::fs::create_dir_all(&work).unwrap();
    let name = "my_js_col";
    ok(&work, &["init", "--lang", "js", "--columnar", name]);
    let project = work.join(name);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.join("package.json")).unwrap())
            .unwrap();
    let sdk_manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("sdk-wit/js/package.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["dependencies"]["apache-arrow"], sdk_manifest["dependencies"]["apache-arrow"],
        "{manifest}"
    );
    let src = std::fs::read_to_string(project.join(format!("{name}.js"))).unwrap();
    assert!(src.contains("from \"pipeline-sdk/columnar\""), "{src}");
    assert!(src.contains("\"my-js-col-alerts\""), "{src}");

    let built = ok(&work, &["build", name]);
    assert!(
        built.contains("world transform-columnar") && built.contains("bundled apache-arrow"),
        "{built}"
    );

    let cache = repo_root().join(".cache/pipeline-worker-tests");
    let test = |extra: &[&str]| {
        let config = format!("{name}/pipeline.toml");
        let mut args = vec![
            "test",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--config",
            &config,
        ];
        args.extend_from_slice(extra);
        pw(&work, &args)
    };
    let (input, expected) = (
        format!("{name}/sample.jsonl"),
        format!("{name}/expected.jsonl"),
    );
    let (out, tested) = test(&["--input", &input, "--expect", &expected]);
    assert!(out.status.success(), "test failed:\n{tested}");
    assert!(tested.contains("PASS"), "{tested}");
    assert!(
        tested.contains("celsius -300 is below absolute zero"),
        "{tested}"
    );

    // Keyed records: each output carries its own input's key (so `_row`
    // mapped it), the boiling one is on the alerts topic, and the refused
    // one is the only dead letter.
    let readings = [
        ("greenhouse-1", 21.5),
        ("freezer-2", -40.0),
        ("probe-3", -300.0),
        ("boiler-4", 100.0),
    ];
    let records: String = readings
        .iter()
        .map(|(s, c)| {
            serde_json::json!({"key": format!("k-{s}"), "value": {"sensor": s, "celsius": c}})
                .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(project.join("keyed.jsonl"), records).unwrap();
    let golden = |alerts: &str| {
        [
            r#"{"topic": null, "key": "k-greenhouse-1", "value": {"sensor": "greenhouse-1", "celsius": 21.5, "fahrenheit": 70.7}}"#.to_owned(),
            r#"{"topic": null, "key": "k-freezer-2", "value": {"sensor": "freezer-2", "celsius": -40.0, "fahrenheit": -40.0}}"#.to_owned(),
            r#"{"error": "failed", "message": "celsius -300 is below absolute zero"}"#.to_owned(),
            format!(r#"{{"topic": {alerts}, "key": "k-boiler-4", "value": {{"sensor": "boiler-4", "celsius": 100.0, "fahrenheit": 212.0}}}}"#),
        ]
        .join("\n")
            + "\n"
    };
    std::fs::write(
        project.join("keyed.expected.jsonl"),
        golden("\"my-js-col-alerts\""),
    )
    .unwrap();
    let keyed = format!("{name}/keyed.jsonl");
    let keyed_expected = format!("{name}/keyed.expected.jsonl");
    let (out, text) = test(&[
        "--input",
        &keyed,
        "--input-format",
        "records",
        "--expect",
        &keyed_expected,
    ]);
    assert!(out.status.success(), "keyed test failed:\n{text}");
    assert_eq!(text.matches("ERROR [failed]").count(), 1, "{text}");

    // The comparison is real: the routed row expected on the default topic fails, named.
    std::fs::write(project.join("wrong.jsonl"), golden("null")).unwrap();
    let wrong = format!("{name}/wrong.jsonl");
    let (out, text) = test(&[
        "--input",
        &keyed,
        "--input-format",
        "records",
        "--expect",
        &wrong,
    ]);
    assert!(!out.status.success(), "a wrong golden file passed:\n{text}");
    assert!(
        text.contains("$.topic: expected \"my-js-col-out\", got \"my-js-col-alerts\""),
        "{text}"
    );

    // TypeScript: the same template with types, statically checked by the
    // SDK (types stripped, imports and names resolved).
    ok(&work, &["init", "--lang", "ts", "--columnar", "my_ts_col"]);
    let tsconfig = std::fs::read_to_string(work.join("my_ts_col/tsconfig.json")).unwrap();
    assert!(tsconfig.contains("\"pipeline-sdk/columnar\""), "{tsconfig}");
    let check = Command::new("node")
        .arg(repo_root().join("sdk-wit/js/tools/precheck.mjs"))
        .arg("--print-kind")
        .arg(work.join("my_ts_col/my_ts_col.ts"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&check.stdout), "columnar\n");
    let _ = std::fs::remove_dir_all(&work);
}

fn probe_input(id: i64, action: &str) -> pipeline_worker::sandbox::InputRecord {
    pipeline_worker::sandbox::InputRecord {
        key: Some(format!("k{id}").into_bytes()),
        value: Some(format!(r#"{{"id":{id},"action":"{action}","value":{id}.0}}"#).into_bytes()),
        headers: vec![],
        topic: "t".into(),
        partition: 0,
        offset: id,
        timestamp: None,
    }
}

/// A batch larger than `instance_max_records` is split into calls of at
/// most that many rows, each on an instance that has served no more than
/// that, and a trap inside one call is still pinned on its row.
#[test]
fn columnar_calls_never_exceed_instance_max_records() {
    use pipeline_worker::config::Limits;
    use pipeline_worker::sandbox::{Function, Runner};
    use std::sync::Arc;
    let limits = Limits {
        deadline_ms: 10_000,
        instance_max_records: 2,
        ..Limits::default()
    };
    let f = Function::load_file(
        "probe",
        &guest("columnar_probe"),
        &limits,
        &sandbox_opts(test_cache(), false, 1),
    )
    .expect("load");
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("id", arrow_schema::DataType::Int64, false),
        arrow_schema::Field::new("action", arrow_schema::DataType::Utf8, true),
        arrow_schema::Field::new("value", arrow_schema::DataType::Float64, true),
    ]));
    let mut runner = Runner::new(f.clone()).with_schema(Some(schema.clone()));
    let inputs: Vec<_> = (1..=5).map(|i| probe_input(i, "keep")).collect();
    let results = runner.run_batch(&inputs);
    for (i, r) in results.iter().enumerate() {
        let outs = r.as_ref().unwrap_or_else(|e| panic!("row {i}: {e}"));
        assert_eq!(outs.len(), 1, "row {i}");
        let v: serde_json::Value =
            serde_json::from_slice(outs[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(
            v["value"],
            serde_json::json!((i as f64 + 1.0) * 2.0),
            "row {i}: {v}"
        );
        assert_eq!(outs[0].key, inputs[i].key, "row {i}");
    }
    // Calls of 2, 2 and 1 rows: each needs a fresh instance (one call over
    // all 5 would have needed one).
    assert_eq!(runner.stats.instantiations, 3);

    let mut runner = Runner::new(f).with_schema(Some(schema));
    let inputs = [
        probe_input(1, "keep"),
        probe_input(2, "keep"),
        probe_input(3, "trap"),
        probe_input(4, "keep"),
        probe_input(5, "keep"),
    ];
    let results = runner.run_batch(&inputs);
    for (i, r) in results.iter().enumerate() {
        match (i, r) {
            (2, Err(e)) => assert!(e.to_string().contains("probe trap at id 3"), "{e}"),
            (2, Ok(o)) => panic!("the trapping row produced {o:?}"),
            (_, r) => assert_eq!(r.as_ref().map(Vec::len).ok(), Some(1), "row {i}: {r:?}"),
        }
    }
}
