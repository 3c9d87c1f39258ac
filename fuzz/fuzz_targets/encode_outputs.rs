//! WIT output records → producer records (`pipeline_worker::sink`).
//!
//! Arbitrary outputs of one input (any topic, key, value or tombstone,
//! header keys with any characters including NUL, a traceparent or not),
//! checked by `check_outputs` and encoded by `encode_output`, the functions
//! the sink runs before it enqueues. Checks: no panic; a record is refused
//! whole, naming the first undeclared topic or else the first header key the
//! producer cannot carry; an accepted output is produced to the topic it
//! named (or the default one) with its key and value unchanged, and its
//! headers read back from the native list exactly: its own, in order (any
//! `traceparent` replaced when one is given), then the version header, then
//! the traceparent.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pipeline_worker::record::owned_header_bytes;
use pipeline_worker::sandbox::{Header, OutputRecord, RecordError};
use pipeline_worker::sink::{check_outputs, encode_output, SinkTarget};

#[derive(Arbitrary, Debug)]
struct Out {
    topic: Option<String>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp: Option<i64>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    default_topic: String,
    more_topics: Vec<String>,
    outs: Vec<Out>,
    version: Vec<u8>,
    traceparent: Option<Vec<u8>>,
}

const VERSION: &str = "pw.function.version";

fuzz_target!(|inp: Input| {
    let mut declared = vec![inp.default_topic.clone()];
    declared.extend(inp.more_topics.iter().cloned());
    let target = SinkTarget {
        pipeline: "fuzz".into(),
        output_topics: declared.clone(),
        dead_letter_topic: "fuzz-dlq".into(),
        group: "fuzz".into(),
    };
    let outs: Vec<OutputRecord> = inp
        .outs
        .iter()
        .map(|o| OutputRecord {
            topic: o.topic.clone(),
            key: o.key.clone(),
            value: o.value.clone(),
            headers: o
                .headers
                .iter()
                .map(|(k, v)| Header {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            timestamp: o.timestamp,
        })
        .collect();
    let undeclared = inp
        .outs
        .iter()
        .find_map(|o| o.topic.as_ref().filter(|t| !declared.contains(t)));
    let nul_key = inp
        .outs
        .iter()
        .enumerate()
        .find_map(|(i, o)| {
            o.headers
                .iter()
                .position(|(k, _)| k.contains('\0'))
                .map(|j| (i, j))
        });
    match (check_outputs(&target, outs), undeclared, nul_key) {
        (Err(RecordError::UnknownTopic { topic, .. }), Some(t), _) => assert_eq!(&topic, t),
        (Err(RecordError::ProduceRejected(m)), None, Some((i, j))) => {
            assert!(
                m.starts_with(&format!("output {i}: header {j} key")),
                "{m}"
            );
        }
        (Ok(outs), None, None) => {
            assert_eq!(outs.len(), inp.outs.len());
            let extra: &[(&str, &[u8])] = &[(VERSION, &inp.version)];
            for (o, want) in outs.iter().zip(&inp.outs) {
                let e = encode_output(o, &inp.default_topic, extra, inp.traceparent.as_deref());
                assert_eq!(e.topic, want.topic.as_deref().unwrap_or(&inp.default_topic));
                assert_eq!(e.key, want.key.as_deref());
                assert_eq!(e.payload, want.value.as_deref(), "a tombstone stays one");
                assert_eq!(e.timestamp, want.timestamp);
                let mut expect: Vec<(Vec<u8>, Option<Vec<u8>>)> = want
                    .headers
                    .iter()
                    .filter(|(k, _)| {
                        inp.traceparent.is_none() || !k.eq_ignore_ascii_case("traceparent")
                    })
                    .map(|(k, v)| (k.as_bytes().to_vec(), Some(v.clone())))
                    .collect();
                expect.push((VERSION.as_bytes().to_vec(), Some(inp.version.clone())));
                if let Some(tp) = &inp.traceparent {
                    expect.push((b"traceparent".to_vec(), Some(tp.clone())));
                }
                let got = owned_header_bytes(&e.headers).expect("produced headers read back");
                assert_eq!(got, expect);
            }
        }
        (got, t, n) => panic!("check_outputs gave {got:?} for undeclared {t:?}, NUL key {n:?}"),
    }
});
