//! Price calculator: a customer function written on the pipeline Rust SDK.
//!
//! Input (JSON object):
//! `{"item_id":"sku-1","base_price":100.0,"quantity":2,"context":{"customer_tier":"premium","currency":"EUR"}}`
//!
//! Output: the same object plus `discount_rate`, `unit_price` and
//! `total_price`, to the pipeline's default output topic, with the input's
//! key, headers and timestamp.
//!
//! A tombstone (null value: the item was deleted upstream; seen only with
//! the pipeline's `tombstones = "function"`) is passed on as a tombstone with
//! its key, so the priced copy is deleted too.

use pipeline_sdk::{FieldsExt, Output, Record, TransformError};

/// Discount for a customer tier (case-insensitive), or `None` if unknown.
pub fn discount_rate(tier: &str) -> Option<f64> {
    match tier.to_ascii_lowercase().as_str() {
        "premium" => Some(0.15),
        "standard" => Some(0.05),
        "new" => Some(0.10),
        _ => None,
    }
}

/// Rounds to whole cents (half away from zero).
fn cents(amount: f64) -> f64 {
    (amount * 100.0).round() / 100.0
}

pub fn price(record: Record) -> Result<Vec<Output>, TransformError> {
    if record.is_tombstone() {
        return Ok(vec![Output::from(record)]);
    }
    let mut fields = record.fields()?;

    let base_price = fields.require_f64("base_price")?;
    if !base_price.is_finite() || base_price < 0.0 {
        return Err(TransformError::invalid_input(format!(
            "field `base_price` must be a non-negative number, got {base_price}"
        )));
    }
    let quantity = fields.require_i64("quantity")?;
    if quantity < 0 {
        return Err(TransformError::invalid_input(format!(
            "field `quantity` must not be negative, got {quantity}"
        )));
    }
    let tier = fields.require_str("context.customer_tier")?;
    let rate = discount_rate(tier).ok_or_else(|| {
        TransformError::invalid_input(format!(
            "unknown customer_tier `{tier}` (expected premium, standard or new)"
        ))
    })?;

    let unit_price = cents(base_price * (1.0 - rate));
    let total_price = cents(unit_price * quantity as f64);

    fields.insert("discount_rate".into(), rate.into());
    fields.insert("unit_price".into(), unit_price.into());
    fields.insert("total_price".into(), total_price.into());
    Ok(vec![Output::from(record).with_json(&fields)])
}

pipeline_sdk::export_transform!(price);

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_sdk::{json, Value};

    #[test]
    fn sample_matches_expected() {
        let samples = include_str!("../sample.jsonl")
            .lines()
            .filter(|l| !l.trim().is_empty());
        let expected = include_str!("../expected.jsonl")
            .lines()
            .filter(|l| !l.trim().is_empty());
        let mut n = 0;
        for (i, (input, want)) in samples.zip(expected).enumerate() {
            let out = price(
                Record::new(input.as_bytes())
                    .with_key("k")
                    .with_timestamp(7),
            )
            .unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
            assert_eq!(out.len(), 1);
            let got: Value = out[0].value_json().unwrap();
            let want: Value = serde_json_from(want);
            assert_eq!(got, want, "line {}", i + 1);
            assert_eq!(out[0].key(), Some(&b"k"[..]));
            assert_eq!(out[0].timestamp(), Some(7));
            n += 1;
        }
        assert_eq!(
            n,
            include_str!("../sample.jsonl")
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
        );
        assert_eq!(
            n,
            include_str!("../expected.jsonl")
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
        );
    }

    fn serde_json_from(s: &str) -> Value {
        pipeline_sdk::serde_json::from_str(s).unwrap()
    }

    #[test]
    fn premium_example() {
        let rec = Record::from_json(&json!({"item_id":"sku-1","base_price":100.0,"quantity":2,
            "context":{"customer_tier":"premium","currency":"EUR"}}));
        let v: Value = price(rec).unwrap()[0].value_json().unwrap();
        assert_eq!(v["discount_rate"], json!(0.15));
        assert_eq!(v["unit_price"], json!(85.0));
        assert_eq!(v["total_price"], json!(170.0));
        assert_eq!(v["context"]["currency"], json!("EUR"));
    }

    #[test]
    fn tombstone_passes_on_as_a_tombstone_and_empty_is_refused() {
        let out = price(Record::tombstone().with_key("sku-1").with_timestamp(7)).unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].is_tombstone());
        assert_eq!(out[0].key(), Some(&b"sku-1"[..]));
        assert_eq!(out[0].timestamp(), Some(7));
        // An empty value is not a tombstone: it is not JSON.
        let err = price(Record::new(Vec::new())).unwrap_err();
        assert!(err.is_invalid_input());
        assert!(!err.message().contains("tombstone"), "{err}");
    }

    #[test]
    fn unknown_tier_is_invalid_input_naming_the_tier() {
        let rec = Record::from_json(
            &json!({"base_price":1.0,"quantity":1,"context":{"customer_tier":"gold"}}),
        );
        let err = price(rec).unwrap_err();
        assert!(err.is_invalid_input());
        assert!(err.message().contains("`gold`"), "{err}");
    }

    #[test]
    fn missing_base_price_is_invalid_input_naming_the_field() {
        let rec = Record::from_json(&json!({"quantity":1,"context":{"customer_tier":"new"}}));
        let err = price(rec).unwrap_err();
        assert_eq!(
            err,
            TransformError::invalid_input("missing field `base_price`")
        );
    }

    #[test]
    fn missing_tier_is_invalid_input() {
        let rec = Record::from_json(&json!({"base_price":1.0,"quantity":1}));
        let err = price(rec).unwrap_err();
        assert_eq!(
            err,
            TransformError::invalid_input("missing field `context.customer_tier`")
        );
    }

    #[test]
    fn not_json_is_invalid_input() {
        let err = price(Record::new(&b"\xff"[..])).unwrap_err();
        assert!(err.is_invalid_input());
    }
}
