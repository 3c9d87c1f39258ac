//! Router: fans an order record out to topics by content.
//!
//! * `region` `"eu"` → `orders-eu`, `"us"` → `orders-us` (case-insensitive);
//! * additionally `orders-audit` when `amount > 1000`;
//! * a missing or unknown `region` filters the record out (zero outputs);
//! * a missing or non-numeric `amount` (for a known region) is `invalid-input`.
//!
//! Every output carries the input's value, key, headers and timestamp unchanged.

use pipeline_sdk::{log, FieldsExt, Output, Record, TransformError};

pub const AUDIT_TOPIC: &str = "orders-audit";
pub const AUDIT_THRESHOLD: f64 = 1000.0;

/// The regional topic for a region, or `None` if the region is unknown.
pub fn region_topic(region: &str) -> Option<&'static str> {
    match region.to_ascii_lowercase().as_str() {
        "eu" => Some("orders-eu"),
        "us" => Some("orders-us"),
        _ => None,
    }
}

pub fn route(record: Record) -> Result<Vec<Output>, TransformError> {
    let fields = record.fields()?;

    let region = fields.get("region").and_then(|v| v.as_str()).unwrap_or("");
    let Some(topic) = region_topic(region) else {
        log::debug!(
            "offset {}: unknown region {:?}, filtered out",
            record.offset(),
            region
        );
        return Ok(Vec::new());
    };
    let amount = fields.require_f64("amount")?;

    let mut outputs = vec![Output::from(&record).to(topic)];
    if amount > AUDIT_THRESHOLD {
        outputs.push(Output::from(record).to(AUDIT_TOPIC));
    }
    Ok(outputs)
}

pipeline_sdk::export_transform!(route);

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_sdk::{json, Value};

    fn parse(s: &str) -> Value {
        pipeline_sdk::serde_json::from_str(s).unwrap()
    }

    /// expected.jsonl is the output stream for sample.jsonl, in order, one
    /// line per output record: `{"topic": "...", "value": {...}}`. Filtered
    /// records have no line.
    #[test]
    fn sample_matches_expected() {
        let mut got = Vec::new();
        for (i, input) in include_str!("../sample.jsonl")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
        {
            let out = route(Record::new(input.as_bytes()))
                .unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
            for o in out {
                // Values pass through unchanged, byte for byte.
                assert_eq!(o.value(), input.as_bytes());
                got.push(json!({"topic": o.topic(), "value": o.value_json::<Value>().unwrap()}));
            }
        }
        let want: Vec<Value> = include_str!("../expected.jsonl")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(parse)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn keeps_key_headers_timestamp() {
        let rec = Record::from_json(&json!({"region": "eu", "amount": 5000}))
            .with_key("o-1")
            .with_header("trace", "abc")
            .with_timestamp(99);
        let out = route(rec).unwrap();
        assert_eq!(out.len(), 2);
        for o in &out {
            assert_eq!(o.key(), Some(&b"o-1"[..]));
            assert_eq!(o.headers().len(), 1);
            assert_eq!(o.timestamp(), Some(99));
        }
        assert_eq!(out[0].topic(), Some("orders-eu"));
        assert_eq!(out[1].topic(), Some("orders-audit"));
    }

    #[test]
    fn unknown_or_missing_region_is_filtered() {
        assert!(
            route(Record::from_json(&json!({"region": "apac", "amount": 5})))
                .unwrap()
                .is_empty()
        );
        assert!(route(Record::from_json(&json!({"amount": 5})))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn missing_amount_is_invalid_input() {
        let err = route(Record::from_json(&json!({"region": "us"}))).unwrap_err();
        assert_eq!(err, TransformError::invalid_input("missing field `amount`"));
    }
}
