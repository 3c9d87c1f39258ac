//! `enrich-rs`: the Rust twin of the Python reference function used by the
//! 10k-record integration test and the benchmark.
//!
//! ```python
//! record.fields["session_duration_minutes"] = (record.fields["session_end"] - record.fields["session_start"]) / 60.0
//! record.fields["engagement_tier"] = "high" if record.fields["session_duration_minutes"] > 30 else "standard"
//! ```
//!
//! A non-JSON value or a missing/non-numeric field is `invalid-input` naming
//! the field; so is a tombstone (null value). Key, headers and timestamp pass through; other fields are kept
//! in their original order, the two new fields are appended (or replaced in
//! place if already present).

use pipeline_sdk::{FieldsExt, Output, Record, TransformError};

pub fn enrich(record: Record) -> Result<Vec<Output>, TransformError> {
    let mut fields = record.fields()?;
    let start = fields.require_f64("session_start")?;
    let end = fields.require_f64("session_end")?;
    let minutes = (end - start) / 60.0;
    let tier = if minutes > 30.0 { "high" } else { "standard" };
    fields.insert("session_duration_minutes".into(), minutes.into());
    fields.insert("engagement_tier".into(), tier.into());
    Ok(vec![Output::from(record).with_json(&fields)])
}

pipeline_sdk::export_transform!(enrich);

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_sdk::{json, Value};

    #[test]
    fn computes_duration_and_tier() {
        let rec =
            Record::from_json(&json!({"user": "u1", "session_start": 1000, "session_end": 3400}))
                .with_key("u1")
                .with_header("h", "v")
                .with_timestamp(42);
        let out = enrich(rec).unwrap();
        assert_eq!(out.len(), 1);
        let v: Value = out[0].value_json().unwrap();
        assert_eq!(
            v,
            json!({"user": "u1", "session_start": 1000, "session_end": 3400,
                   "session_duration_minutes": 40.0, "engagement_tier": "high"})
        );
        assert_eq!(out[0].key(), Some(&b"u1"[..]));
        assert_eq!(out[0].headers()[0].key, "h");
        assert_eq!(out[0].timestamp(), Some(42));
        assert_eq!(out[0].topic(), None);
    }

    #[test]
    fn thirty_minutes_is_standard() {
        let out = enrich(Record::from_json(
            &json!({"session_start": 0, "session_end": 1800}),
        ))
        .unwrap();
        let v: Value = out[0].value_json().unwrap();
        assert_eq!(v["session_duration_minutes"], json!(30.0));
        assert_eq!(v["engagement_tier"], json!("standard"));
    }

    #[test]
    fn missing_field_is_invalid_input_naming_it() {
        let err = enrich(Record::from_json(&json!({"session_start": 0}))).unwrap_err();
        assert!(err.is_invalid_input());
        assert!(err.message().contains("session_end"), "{err}");
    }

    #[test]
    fn tombstone_is_invalid_input_naming_it() {
        // Like the Python reference: reading fields of a null value never
        // yields `{}`.
        let err = enrich(Record::tombstone().with_key("u1")).unwrap_err();
        assert!(err.is_invalid_input());
        assert!(err.message().contains("null (a tombstone)"), "{err}");
    }

    #[test]
    fn non_json_is_invalid_input() {
        let err = enrich(Record::new(&b"not json"[..])).unwrap_err();
        assert!(err.is_invalid_input());
        assert!(err.message().contains("not valid JSON"), "{err}");
    }
}
