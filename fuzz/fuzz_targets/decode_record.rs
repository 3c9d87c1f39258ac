//! Kafka record parts → WIT input record (`pipeline_worker::record`).
//!
//! Arbitrary keys, values and headers (any bytes, null values), decoded
//! either directly or after a trip through a native librdkafka headers list
//! (the unsafe reader the consumer uses). Checks: no panic, and the decoded
//! record is exactly the input, or the error names the first header whose key
//! is not UTF-8, with its bytes escaped.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pipeline_worker::record::{decode, native_roundtrip, DecodeError, KafkaParts, RawHeader};

#[derive(Arbitrary, Debug)]
struct Input {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    native: bool,
}

fuzz_target!(|inp: Input| {
    let headers = if inp.native {
        let back = native_roundtrip(&inp.headers).expect("a native headers list reads back");
        assert_eq!(back.len(), inp.headers.len());
        for ((k, v), (bk, bv)) in inp.headers.iter().zip(&back) {
            // librdkafka keeps header names as C strings: cut at a NUL.
            let cut = k.iter().position(|b| *b == 0).map_or(&k[..], |i| &k[..i]);
            assert_eq!(bk.as_slice(), cut);
            assert_eq!(bv, v, "null stays null, empty stays empty");
        }
        back
    } else {
        inp.headers.clone()
    };
    let raw: Vec<RawHeader<'_>> = headers
        .iter()
        .map(|(k, v)| RawHeader {
            key: k,
            value: v.as_deref(),
        })
        .collect();
    let parts = KafkaParts {
        topic: &inp.topic,
        partition: inp.partition,
        offset: inp.offset,
        timestamp: inp.timestamp,
        key: inp.key.as_deref(),
        value: inp.value.as_deref(),
        headers: raw,
    };
    let first_bad = headers
        .iter()
        .position(|(k, _)| std::str::from_utf8(k).is_err());
    match (decode(&parts), first_bad) {
        (Ok(r), None) => {
            assert_eq!(r.key, inp.key);
            assert_eq!(r.value, inp.value);
            assert_eq!(
                (r.topic.as_str(), r.partition, r.offset, r.timestamp),
                (inp.topic.as_str(), inp.partition, inp.offset, inp.timestamp)
            );
            assert_eq!(r.headers.len(), headers.len());
            for (h, (k, v)) in r.headers.iter().zip(&headers) {
                assert_eq!(h.key.as_bytes(), k.as_slice());
                assert_eq!(&h.value, v.as_ref().unwrap_or(&Vec::new()));
            }
        }
        (Err(DecodeError::HeaderKeyNotUtf8 { index, escaped }), Some(bad)) => {
            assert_eq!(index, bad);
            assert_eq!(escaped, headers[bad].0.escape_ascii().to_string());
        }
        (got, bad) => panic!("decode gave {got:?} for first bad header {bad:?}"),
    }
});
