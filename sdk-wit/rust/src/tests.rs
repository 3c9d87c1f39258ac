use crate::__private::{record_from_raw, result_to_raw, InputRecord, RawHeader, RawTransformError};
use crate::*;
use serde::Deserialize;
use std::collections::BTreeMap;

fn sample() -> Record {
    Record::from_json(&json!({"a": 1, "b": "x", "ctx": {"tier": "premium", "n": 2.5}}))
        .with_key("key-1")
        .with_header("h1", "v1")
        .with_header("h2", Vec::new())
        .with_topic("in")
        .with_partition(3)
        .with_offset(42)
        .with_timestamp(1_700_000_000_000)
}

#[test]
fn record_accessors() {
    let r = sample();
    assert_eq!(r.key(), Some(&b"key-1"[..]));
    assert_eq!(r.key_str(), Some("key-1"));
    assert_eq!(r.topic(), "in");
    assert_eq!(r.partition(), 3);
    assert_eq!(r.offset(), 42);
    assert_eq!(r.timestamp(), Some(1_700_000_000_000));
    assert_eq!(r.header("h1"), Some(&b"v1"[..]));
    assert_eq!(r.header_str("h1"), Some("v1"));
    assert_eq!(r.header("h2"), Some(&b""[..]));
    assert_eq!(r.header("nope"), None);
    assert_eq!(r.headers().len(), 2);
    assert!(r.value_str().unwrap().starts_with('{'));
}

#[test]
fn fields_and_typed_json() {
    let r = sample();
    let f = r.fields().unwrap();
    assert_eq!(f.require_i64("a").unwrap(), 1);
    assert_eq!(f.require_str("b").unwrap(), "x");
    assert_eq!(f.require_str("ctx.tier").unwrap(), "premium");
    assert_eq!(f.require_f64("ctx.n").unwrap(), 2.5);
    assert_eq!(f.require_object("ctx").unwrap().len(), 2);

    #[derive(Deserialize, Debug)]
    struct T {
        a: i64,
        b: String,
    }
    let t: T = r.json().unwrap();
    assert_eq!((t.a, t.b.as_str()), (1, "x"));
}

#[test]
fn field_errors_name_the_field() {
    let f = sample().fields().unwrap();
    assert_eq!(
        f.require("missing").unwrap_err(),
        TransformError::invalid_input("missing field `missing`")
    );
    assert_eq!(
        f.require_f64("b").unwrap_err(),
        TransformError::invalid_input("field `b` must be a number, got string")
    );
    assert_eq!(
        f.require_i64("ctx.n").unwrap_err(),
        TransformError::invalid_input("field `ctx.n` must be an integer, got a non-integer number")
    );
    assert_eq!(
        f.require_str("ctx.none").unwrap_err(),
        TransformError::invalid_input("missing field `ctx.none`")
    );
    let null = Record::from_json(&json!({"x": null})).fields().unwrap();
    assert!(null
        .require("x")
        .unwrap_err()
        .message()
        .contains("missing field `x`"));
    let v = json!([1]);
    assert!(v.require("x").unwrap_err().is_invalid_input());
}

#[test]
fn not_json_errors_are_invalid_input() {
    let e = Record::new(&b"not json"[..]).fields().unwrap_err();
    assert!(e.is_invalid_input());
    assert!(
        e.message().starts_with("record value is not valid JSON"),
        "{e}"
    );

    let e = Record::new(&b"[1,2]"[..]).fields().unwrap_err();
    assert_eq!(
        e,
        TransformError::invalid_input("record value is JSON but not an object (found array)")
    );

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct T {
        base_price: f64,
    }
    let e = Record::from_json(&json!({"x": 1})).json::<T>().unwrap_err();
    assert!(e.is_invalid_input());
    assert!(e.message().contains("missing field `base_price`"), "{e}");

    let e = Record::new(&b"\xff\xfe"[..]).value_str().unwrap_err();
    assert!(e.is_invalid_input());
}

#[test]
fn output_from_record_keeps_key_headers_timestamp() {
    let r = sample();
    let o = Output::from(&r);
    assert_eq!(o.key(), r.key());
    assert_eq!(o.value_opt(), r.value());
    assert_eq!(o.headers(), r.headers());
    assert_eq!(o.timestamp(), r.timestamp());
    assert_eq!(o.topic(), None);

    let moved = Output::from(r.clone());
    assert_eq!(moved, o);

    let empty = r.output();
    assert_eq!(empty.key(), r.key());
    assert_eq!(
        empty.value_opt(),
        Some(&b""[..]),
        "output() is empty, not a tombstone"
    );
    assert_eq!(empty.headers(), r.headers());
}

#[test]
fn output_builders() {
    let o = Output::from(sample())
        .to("out-2")
        .with_json(&json!({"z": true}))
        .with_header("h1", "again")
        .with_key("k2")
        .with_timestamp(5);
    assert_eq!(o.topic(), Some("out-2"));
    assert_eq!(o.value(), br#"{"z":true}"#);
    assert_eq!(o.value_json::<Value>().unwrap(), json!({"z": true}));
    assert_eq!(o.headers().iter().filter(|h| h.key == "h1").count(), 2);
    assert_eq!(o.key(), Some(&b"k2"[..]));
    assert_eq!(o.timestamp(), Some(5));

    let o = o
        .set_header("h1", "only")
        .without_header("h2")
        .without_key()
        .without_timestamp();
    assert_eq!(o.headers(), &[Header::new("h1", "only")]);
    assert_eq!(o.key(), None);
    assert_eq!(o.timestamp(), None);
    assert_eq!(o.clone().to_default_topic().topic(), None);
    assert!(o.without_headers().headers().is_empty());

    assert_eq!(Output::json(&json!([1])).value(), b"[1]");
    assert_eq!(Output::new("raw").value(), b"raw");
}

#[test]
fn with_json_failure_becomes_failed() {
    // A map with non-string keys cannot be serialized as a JSON object.
    let mut bad = BTreeMap::new();
    bad.insert(vec![1u8], 1);
    let o = Output::new("x").with_json(&bad);
    assert!(o.error().is_some());
    let raw = result_to_raw(Ok(vec![Output::new("fine"), o]));
    match raw {
        Err(RawTransformError::Failed(m)) => {
            assert!(
                m.starts_with("could not serialize output value as JSON"),
                "{m}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn raw_conversions() {
    let input = InputRecord {
        key: Some(b"k".to_vec()),
        value: Some(b"{}".to_vec()),
        headers: vec![RawHeader {
            key: "h".into(),
            value: b"v".to_vec(),
        }],
        topic: "t".into(),
        partition: 1,
        offset: 2,
        timestamp: Some(3),
    };
    let r = record_from_raw(input);
    assert_eq!(
        r,
        Record::new("{}")
            .with_key("k")
            .with_header("h", "v")
            .with_topic("t")
            .with_partition(1)
            .with_offset(2)
            .with_timestamp(3)
    );

    let raw = result_to_raw(Ok(vec![Output::from(r).to("x")])).unwrap();
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].key.as_deref(), Some(&b"k"[..]));
    assert_eq!(raw[0].value.as_deref(), Some(&b"{}"[..]));
    assert_eq!(raw[0].headers[0].key, "h");
    assert_eq!(raw[0].topic.as_deref(), Some("x"));
    assert_eq!(raw[0].timestamp, Some(3));

    assert!(matches!(
        result_to_raw(Err(TransformError::invalid_input("bad"))),
        Err(RawTransformError::InvalidInput(m)) if m == "bad"
    ));
    assert!(matches!(
        result_to_raw(Err(TransformError::failed("boom"))),
        Err(RawTransformError::Failed(m)) if m == "boom"
    ));
}

#[test]
fn run_helpers_accept_all_return_shapes() {
    fn many(r: Record) -> Result<Vec<Output>, TransformError> {
        Ok(vec![Output::from(&r), Output::from(r)])
    }
    fn maybe(r: Record) -> Result<Option<Output>, String> {
        if r.value().is_some_and(<[u8]>::is_empty) {
            Err("empty".to_string())
        } else {
            Ok(None)
        }
    }
    fn one(r: Record) -> Result<Output, &'static str> {
        Ok(Output::from(r))
    }
    let input = || InputRecord {
        key: None,
        value: Some(b"v".to_vec()),
        headers: vec![],
        topic: "t".into(),
        partition: 0,
        offset: 0,
        timestamp: None,
    };
    assert_eq!(crate::__private::run_one(input(), many).unwrap().len(), 2);
    assert_eq!(crate::__private::run_one(input(), maybe).unwrap().len(), 0);
    assert_eq!(crate::__private::run_one(input(), one).unwrap().len(), 1);
    let mut empty = input();
    empty.value = Some(Vec::new());
    assert!(
        matches!(crate::__private::run_one(empty, maybe), Err(RawTransformError::Failed(m)) if m == "empty")
    );

    let batch = crate::__private::run_batch(vec![input(), input(), input()], many);
    assert_eq!(batch.len(), 3);
    assert!(batch.iter().all(|r| r.as_ref().unwrap().len() == 2));
}

#[test]
fn log_macros_compile_and_run_natively() {
    crate::log::info!("hello {}", 1);
    crate::log::warn!("w");
    crate::log::error("plain");
    crate::log::log(crate::log::Level::Debug, "d");
    assert_eq!(crate::log::Level::Trace.as_str(), "trace");
}

#[test]
fn error_display() {
    assert_eq!(
        TransformError::invalid_input("x").to_string(),
        "invalid input: x"
    );
    assert_eq!(TransformError::failed("y").to_string(), "failed: y");
    let e: TransformError = "z".into();
    assert_eq!(e, TransformError::failed("z"));
}

#[test]
fn tombstones_are_none_not_empty() {
    let raw = |value: Option<Vec<u8>>| InputRecord {
        key: Some(b"k".to_vec()),
        value,
        headers: vec![],
        topic: "t".into(),
        partition: 0,
        offset: 0,
        timestamp: None,
    };
    let t = record_from_raw(raw(None));
    assert!(t.is_tombstone());
    assert_eq!(t.value(), None);
    assert_eq!(t, Record::tombstone().with_key("k").with_topic("t"));
    let e = record_from_raw(raw(Some(Vec::new())));
    assert!(!e.is_tombstone());
    assert_eq!(e.value(), Some(&b""[..]));

    // Every JSON/text accessor refuses a tombstone by name: never `{}` or "".
    for err in [
        t.fields().unwrap_err(),
        t.json::<Value>().unwrap_err(),
        t.value_str().map(|_| ()).unwrap_err(),
        t.value_or_invalid().map(|_| ()).unwrap_err(),
    ] {
        assert!(err.is_invalid_input());
        assert!(err.message().contains("null (a tombstone)"), "{err}");
    }
    // An empty value is still "not valid JSON", a different message.
    let err = e.fields().unwrap_err();
    assert!(!err.message().contains("tombstone"), "{err}");

    // A tombstone passes through as a tombstone, key kept.
    let out = Output::from(&t);
    assert!(out.is_tombstone());
    assert_eq!(out.value_opt(), None);
    assert_eq!(out.value(), b"");
    assert!(out
        .value_json::<Value>()
        .unwrap_err()
        .message()
        .contains("tombstone"));
    let raw_out = result_to_raw(Ok(vec![
        Output::from(t),
        Output::tombstone("gone").to("audit"),
        Output::from(&e).with_value("x").without_value(),
        Output::from(e),
    ]))
    .unwrap();
    let got: Vec<_> = raw_out
        .iter()
        .map(|o| (o.key.as_deref(), o.value.as_deref(), o.topic.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(&b"k"[..]), None, None),
            (Some(&b"gone"[..]), None, Some("audit")),
            (Some(&b"k"[..]), None, None),
            (Some(&b"k"[..]), Some(&b""[..]), None),
        ]
    );
    // A tombstone made into a value again.
    let back = Output::tombstone("k").with_json(&json!({"a": 1}));
    assert!(!back.is_tombstone());
    assert_eq!(back.value(), br#"{"a":1}"#);
}

#[test]
fn a_panic_report_has_location_and_message_on_its_first_line() {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(None::<String>));
    let previous = std::panic::take_hook();
    {
        let seen = seen.clone();
        std::panic::set_hook(Box::new(move |info| {
            *seen.lock().unwrap() = Some(crate::__private::report_panic(info));
        }));
    }
    let v = [1, 2, 3];
    let i = std::hint::black_box(7);
    let r = std::panic::catch_unwind(|| v[i]);
    std::panic::set_hook(previous);
    assert!(r.is_err());
    let report = seen.lock().unwrap().take().expect("the hook ran");
    let first = report.lines().next().unwrap();
    // rustc names the file relative to the workspace root.
    assert!(first.starts_with("panicked at "), "{report}");
    assert!(first.contains("src/tests.rs:"), "{report}");
    assert!(
        first.contains("index out of bounds: the len is 3 but the index is 7"),
        "{report}"
    );
}

#[test]
fn a_huge_panic_report_is_cut_to_its_bound() {
    let payload = "é".repeat(10_000);
    let r = crate::__private::panic_report(None, &payload);
    assert!(r.len() <= crate::__private::MAX_PANIC_REPORT, "{}", r.len());
    assert!(r.starts_with("panicked: éé") && r.ends_with('…'));
}
