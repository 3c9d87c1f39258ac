use std::time::Duration;

use crate::support::*;

/// A function that refuses some records: those go to the dead-letter topic
/// with the original key/value/headers and the error headers; the rest flow on.
#[test]
fn refused_records_are_dead_lettered_with_error_headers() {
    let topics = TestTopics::create("dl", 2);
    let (input, output, dlq) = (
        topics.input.clone(),
        topics.output.clone(),
        topics.dlq.clone(),
    );
    let mut records = Vec::new();
    for i in 0..200 {
        let value = match i % 10 {
            3 => format!(r#"{{"id":{i},"session_start":1700000000}}"#), // no session_end
            7 => format!("not json {i}"),
            _ => format!(r#"{{"id":{i},"session_start":1700000000,"session_end":1700000600}}"#),
        };
        records.push(In::new(format!("k{i}"), value).header("origin", &format!("o{i}")));
    }
    produce_all(&input, &records);
    let component = guest("enrich_rs");
    let config = topics.config("enrich", &component, "", "");
    let worker = WorkerProcess::start(&config);
    let good = read_until(&[&output], 160, Duration::from_secs(120));
    let bad = read_until(&[&dlq], 40, Duration::from_secs(60));
    assert_eq!(good.len(), 160, "log:\n{}", worker.log_text());
    assert_eq!(bad.len(), 40, "log:\n{}", worker.log_text());
    for d in &bad {
        let key = d.key.clone().unwrap();
        let i: usize = key[1..].parse().unwrap();
        assert!(
            i % 10 == 3 || i % 10 == 7,
            "record {i} should not be dead-lettered"
        );
        assert_eq!(d.value, records[i].value, "original value kept");
        assert_eq!(d.header("origin"), format!("o{i}"), "original headers kept");
        assert_eq!(d.header("pw.error.kind"), "invalid-input");
        let msg = d.header("pw.error.message");
        if i % 10 == 3 {
            assert!(
                msg.contains("session_end"),
                "message names the field: {msg}"
            );
        } else {
            assert!(
                msg.to_lowercase().contains("json"),
                "message says not JSON: {msg}"
            );
        }
        assert_eq!(d.header("pw.function.name"), "enrich");
        assert!(d.header("pw.function.digest").starts_with("sha256:"));
        assert_eq!(d.header("pw.origin.topic"), input);
        let part: i32 = d.header("pw.origin.partition").parse().unwrap();
        let off: i64 = d.header("pw.origin.offset").parse().unwrap();
        assert!((0..2).contains(&part) && off >= 0);
    }
    // Origin partition/offset point at the very record.
    let originals = read_until(&[&input], 200, Duration::from_secs(30));
    for d in &bad {
        let part: i32 = d.header("pw.origin.partition").parse().unwrap();
        let off: i64 = d.header("pw.origin.offset").parse().unwrap();
        let o = originals
            .iter()
            .find(|o| o.partition == part && o.offset == off)
            .expect("origin exists");
        assert_eq!(o.key, d.key);
        assert_eq!(
            o.timestamp, d.timestamp,
            "timestamp passes through to the dead letter"
        );
    }
    assert_eq!(worker.terminate(Duration::from_secs(30)), Some(0));
}
