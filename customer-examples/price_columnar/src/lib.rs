//! Price calculator, columnar: `customer-examples/price_calculator` as one
//! call per batch over an Arrow record batch, computed with arrow's
//! arithmetic kernels instead of a loop over JSON objects.
//!
//! Input schema (declared in `pipeline.toml`): `item_id utf8`,
//! `base_price float64`, `quantity int64`,
//! `context struct<customer_tier utf8, currency utf8>`.
//!
//! Output: the input columns plus `discount_rate`, `unit_price` and
//! `total_price` (float64), one row per input row (`_row` = 0..n). A row
//! with an unknown tier, a negative or missing price or quantity gets an
//! `_error`, so only its own record is dead-lettered.

use std::sync::Arc;

use arrow_arith::{arity::unary, numeric};
use pipeline_sdk::columnar::arrow_array::{
    cast::AsArray, types::Float64Type, Array, ArrayRef, Float64Array, Int64Array, RecordBatch,
    StringArray, StructArray,
};
use pipeline_sdk::columnar::{self, DataType, Field, Schema};
use pipeline_sdk::TransformError;

/// Discount for a customer tier (case-insensitive), or `None` if unknown.
pub fn discount_rate(tier: &str) -> Option<f64> {
    if tier.eq_ignore_ascii_case("premium") {
        Some(0.15)
    } else if tier.eq_ignore_ascii_case("standard") {
        Some(0.05)
    } else if tier.eq_ignore_ascii_case("new") {
        Some(0.10)
    } else {
        None
    }
}

/// Rounds to whole cents (half away from zero), as the per-record example does.
fn cents(amount: f64) -> f64 {
    (amount * 100.0).round() / 100.0
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, TransformError> {
    batch.column_by_name(name).ok_or_else(|| {
        TransformError::invalid_input(format!(
            "the batch has no column `{name}` (declare it in the pipeline's schema)"
        ))
    })
}

fn typed<'a, T: 'static>(a: &'a ArrayRef, name: &str, want: &str) -> Result<&'a T, TransformError> {
    a.as_any().downcast_ref::<T>().ok_or_else(|| {
        TransformError::invalid_input(format!(
            "column `{name}` must be {want}, found {} (fix the pipeline's schema)",
            a.data_type()
        ))
    })
}

fn arrow_err(e: pipeline_sdk::columnar::arrow_schema::ArrowError) -> TransformError {
    TransformError::failed(format!("price computation failed: {e}"))
}

pub fn price(batch: RecordBatch) -> Result<RecordBatch, TransformError> {
    let base: &Float64Array = typed(column(&batch, "base_price")?, "base_price", "float64")?;
    let quantity: &Int64Array = typed(column(&batch, "quantity")?, "quantity", "int64")?;
    let context: &StructArray = typed(column(&batch, "context")?, "context", "a struct")?;
    let tier = context.column_by_name("customer_tier").ok_or_else(|| {
        TransformError::invalid_input("column `context` has no field `customer_tier`")
    })?;
    let tier: &StringArray = typed(tier, "context.customer_tier", "utf8")?;

    // A null tier (or a null context) has no rate, like an unknown one; the
    // error column below tells the two apart.
    let rate: Float64Array = (0..batch.num_rows())
        .map(|i| {
            (context.is_valid(i) && tier.is_valid(i))
                .then(|| discount_rate(tier.value(i)))
                .flatten()
        })
        .collect();

    // unit = cents(base × (1 − rate)); total = cents(unit × quantity). Nulls
    // propagate through the kernels, so a row with no rate has no prices.
    let keep = numeric::sub(&Float64Array::new_scalar(1.0), &rate).map_err(arrow_err)?;
    let unit = numeric::mul(base, &keep).map_err(arrow_err)?;
    let unit: Float64Array = unary(unit.as_primitive::<Float64Type>(), cents);
    let qty: Float64Array = unary(quantity, |q: i64| q as f64);
    let total = numeric::mul(&unit, &qty).map_err(arrow_err)?;
    let total: Float64Array = unary(total.as_primitive::<Float64Type>(), cents);

    let errors = (0..batch.num_rows()).map(|i| row_error(i, base, quantity, context, tier));

    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    let mut columns = batch.columns().to_vec();
    for (name, array) in [
        ("discount_rate", Arc::new(rate) as ArrayRef),
        ("unit_price", Arc::new(unit)),
        ("total_price", Arc::new(total)),
    ] {
        fields.push(Arc::new(Field::new(name, DataType::Float64, true)));
        columns.push(array);
    }
    let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(arrow_err)?;
    let out = columnar::with_row_index(out)?;
    columnar::with_errors(out, errors)
}

/// Why row `i` cannot be priced, in the per-record example's words, or `None`.
fn row_error(
    i: usize,
    base: &Float64Array,
    quantity: &Int64Array,
    context: &StructArray,
    tier: &StringArray,
) -> Option<String> {
    if base.is_null(i) {
        return Some("missing field `base_price`".into());
    }
    let b = base.value(i);
    if !b.is_finite() || b < 0.0 {
        return Some(format!(
            "field `base_price` must be a non-negative number, got {b}"
        ));
    }
    if quantity.is_null(i) {
        return Some("missing field `quantity`".into());
    }
    let q = quantity.value(i);
    if q < 0 {
        return Some(format!("field `quantity` must not be negative, got {q}"));
    }
    if context.is_null(i) || tier.is_null(i) {
        return Some("missing field `context.customer_tier`".into());
    }
    let t = tier.value(i);
    discount_rate(t)
        .is_none()
        .then(|| format!("unknown customer_tier `{t}` (expected premium, standard or new)"))
}

pipeline_sdk::export_columnar!(price);

#[cfg(test)]
mod tests;
