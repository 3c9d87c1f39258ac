//! What the sandbox reuses for speed must never carry anything over: pooled
//! instance slots (linear memory, tables, stacks) start every instance from
//! the component's initial state. No Kafka.

use pipeline_worker::config::Limits;
use pipeline_worker::sandbox::{ArtifactCache, Function, InputRecord, Runner, SandboxOptions};
use serde_json::{json, Value};

use crate::support::*;

fn opts(cache: ArtifactCache) -> SandboxOptions {
    sandbox_opts(cache, true, 2)
}

fn record(i: usize) -> InputRecord {
    InputRecord {
        key: Some(format!("key-{i}").into_bytes()),
        value: Some(
            format!(
                r#"{{"secret":"s3cr3t-{i}","session_start":0,"session_end":{}}}"#,
                i * 60
            )
            .into_bytes(),
        ),
        headers: vec![],
        topic: "t".into(),
        partition: 0,
        offset: i as i64,
        timestamp: None,
    }
}

fn output_json(r: &pipeline_worker::sandbox::RecordResult) -> Value {
    let outs = r.as_ref().expect("record ok");
    assert_eq!(outs.len(), 1);
    serde_json::from_slice(outs[0].value.as_deref().expect("a value")).expect("JSON output")
}

/// `tests/components/python/stateful.py` keeps every key and the last value
/// in module state. In a fresh instance per record it must never see an
/// earlier record, whether records come one per call or as a batch (which
/// `instance_max_records = 1` replays one per instance); with kept instances
/// it does, which shows the check can fail.
#[test]
fn a_fresh_instance_per_record_sees_nothing_of_earlier_records() {
    let component = python_component("py_stateful");
    let cache = test_cache();
    let o = opts(cache);
    let fresh = Limits {
        instance_max_records: 1,
        ..Limits::default()
    };
    let f = Function::load_file("stateful", &component, &fresh, &o).expect("load");
    let mut r = Runner::new(f);
    let clean = json!({"calls": 1, "seen_before": [], "secret_before": null});
    for i in 0..4 {
        let out = r.run_batch(&[record(i)]);
        assert_eq!(output_json(&out[0]), clean, "record {i} one per call");
    }
    let batch: Vec<InputRecord> = (10..16).map(record).collect();
    for (i, out) in r.run_batch(&batch).iter().enumerate() {
        assert_eq!(output_json(out), clean, "record {i} of a batch");
    }
    assert_eq!(r.stats.instantiations, 4 + 6, "one instance per record");

    // Control: kept instances do accumulate state.
    let kept = Limits {
        instance_max_records: 10_000,
        ..Limits::default()
    };
    let f = Function::load_file("stateful", &component, &kept, &o).expect("load");
    let mut r = Runner::new(f);
    assert_eq!(output_json(&r.run_batch(&[record(0)])[0]), clean);
    let second = output_json(&r.run_batch(&[record(1)])[0]);
    assert_eq!(second["calls"], 2);
    assert_eq!(second["seen_before"], json!(["key-0"]));
    assert!(second["secret_before"]
        .as_str()
        .unwrap()
        .contains("s3cr3t-0"));
}
