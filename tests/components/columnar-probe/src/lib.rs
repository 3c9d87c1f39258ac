//! `columnar-probe`: a columnar test component whose behaviour per input row
//! is chosen by its `action` column. Used by the worker's columnar tests.
//!
//! Input schema: `id int64 (non-null), action utf8, value float64`.
//! Output schema: `id int64, value float64, copy int64, _row uint32,
//! _topic utf8, _error utf8` (all but `id` and `_row` nullable).
//!
//! | action          | output rows |
//! |-----------------|-------------|
//! | null or `keep`  | one, `value` × 2, `copy` null |
//! | `drop`          | none |
//! | `fanout`        | two, adjacent, `copy` = 0 and 1, value unchanged |
//! | `route:<topic>` | one, `_topic` = `<topic>`, value unchanged |
//! | `error`         | one, `_error` = `probe error for id <id>` |
//! | `trap`          | any such row panics the whole call: `probe trap at id <id>` |
//! | `batch-error`   | any such row fails the whole call: `failed("probe batch error at id <id>")` |
//! | `spin`          | any such row loops forever (deadline / fuel) |
//!
//! Whole-batch actions are checked in input order, so the first such row
//! decides. Any other action is a `_error` naming it, so a typo in a test
//! shows up as a dead letter rather than as a passed-through row.

use std::sync::Arc;

use pipeline_sdk::columnar::arrow_array::{
    builder::{Float64Builder, Int64Builder, StringBuilder, UInt32Builder},
    cast::AsArray,
    types::{Float64Type, Int64Type},
    Array, RecordBatch,
};
use pipeline_sdk::columnar::{DataType, Field, Schema, ERROR, ROW, TOPIC};
use pipeline_sdk::TransformError;

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, TransformError> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| TransformError::invalid_input(format!("input batch has no column `{name}`")))
}

fn expect_type(a: &dyn Array, name: &str, want: &DataType) -> Result<(), TransformError> {
    if a.data_type() == want {
        Ok(())
    } else {
        Err(TransformError::invalid_input(format!(
            "input column `{name}` must be {want}, found {}",
            a.data_type()
        )))
    }
}

pub fn probe(batch: RecordBatch) -> Result<RecordBatch, TransformError> {
    let ids = column(&batch, "id")?;
    expect_type(ids, "id", &DataType::Int64)?;
    let actions = column(&batch, "action")?;
    expect_type(actions, "action", &DataType::Utf8)?;
    let values = column(&batch, "value")?;
    expect_type(values, "value", &DataType::Float64)?;
    let ids = ids.as_primitive::<Int64Type>();
    let actions = actions.as_string::<i32>();
    let values = values.as_primitive::<Float64Type>();
    let action = |i: usize| actions.is_valid(i).then(|| actions.value(i));
    let value = |i: usize| values.is_valid(i).then(|| values.value(i));

    for i in 0..batch.num_rows() {
        match action(i) {
            Some("trap") => panic!("probe trap at id {}", ids.value(i)),
            Some("batch-error") => {
                return Err(TransformError::failed(format!(
                    "probe batch error at id {}",
                    ids.value(i)
                )))
            }
            Some("spin") => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            _ => {}
        }
    }

    let n = batch.num_rows();
    let mut out_id = Int64Builder::with_capacity(n);
    let mut out_value = Float64Builder::with_capacity(n);
    let mut out_copy = Int64Builder::with_capacity(n);
    let mut out_row = UInt32Builder::with_capacity(n);
    let mut out_topic = StringBuilder::new();
    let mut out_error = StringBuilder::new();
    for i in 0..n {
        let id = ids.value(i);
        let row = u32::try_from(i).map_err(|_| TransformError::failed("batch too large"))?;
        let mut emit =
            |v: Option<f64>, copy: Option<i64>, topic: Option<&str>, err: Option<String>| {
                out_id.append_value(id);
                out_value.append_option(v);
                out_copy.append_option(copy);
                out_row.append_value(row);
                out_topic.append_option(topic);
                out_error.append_option(err);
            };
        match action(i) {
            None | Some("keep") => emit(value(i).map(|v| v * 2.0), None, None, None),
            Some("drop") => {}
            Some("fanout") => {
                emit(value(i), Some(0), None, None);
                emit(value(i), Some(1), None, None);
            }
            Some("error") => emit(None, None, None, Some(format!("probe error for id {id}"))),
            Some(a) => match a.strip_prefix("route:") {
                Some(topic) => emit(value(i), None, Some(topic), None),
                None => emit(
                    None,
                    None,
                    None,
                    Some(format!("probe: unknown action `{a}` for id {id}")),
                ),
            },
        }
    }

    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("value", DataType::Float64, true),
        Field::new("copy", DataType::Int64, true),
        Field::new(ROW, DataType::UInt32, false),
        Field::new(TOPIC, DataType::Utf8, true),
        Field::new(ERROR, DataType::Utf8, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(out_id.finish()),
            Arc::new(out_value.finish()),
            Arc::new(out_copy.finish()),
            Arc::new(out_row.finish()),
            Arc::new(out_topic.finish()),
            Arc::new(out_error.finish()),
        ],
    )
    .map_err(|e| TransformError::failed(format!("probe: could not build the output batch: {e}")))
}

pipeline_sdk::export_columnar!(probe);

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_sdk::columnar::arrow_array::{Float64Array, Int64Array, StringArray};
    use pipeline_sdk::columnar::{self, arrow_array::types::UInt32Type};

    fn batch(rows: &[(i64, Option<&str>, Option<f64>)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("action", DataType::Utf8, true),
            Field::new("value", DataType::Float64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(rows.iter().map(|r| r.1).collect::<StringArray>()),
                Arc::new(rows.iter().map(|r| r.2).collect::<Float64Array>()),
            ],
        )
        .unwrap()
    }

    #[test]
    fn every_row_action_maps_as_the_contract_says() {
        let input = batch(&[
            (1, None, Some(1.5)),
            (2, Some("keep"), Some(2.0)),
            (3, Some("drop"), Some(3.0)),
            (4, Some("fanout"), Some(4.0)),
            (5, Some("route:side"), Some(5.0)),
            (6, Some("error"), Some(6.0)),
            (7, Some("keep"), None),
        ]);
        let out = columnar::call(probe, &input).unwrap();
        let s = out.schema();
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "value", "copy", "_row", "_topic", "_error"]);
        let id = out.column(0).as_primitive::<Int64Type>();
        let value = out.column(1).as_primitive::<Float64Type>();
        let copy = out.column(2).as_primitive::<Int64Type>();
        let row = out.column(3).as_primitive::<UInt32Type>();
        let topic = out.column(4).as_string::<i32>();
        let error = out.column(5).as_string::<i32>();
        assert_eq!(id.values().to_vec(), vec![1, 2, 4, 4, 5, 6, 7]);
        assert_eq!(row.values().to_vec(), vec![0, 1, 3, 3, 4, 5, 6]);
        assert_eq!(
            value.iter().collect::<Vec<_>>(),
            vec![
                Some(3.0),
                Some(4.0),
                Some(4.0),
                Some(4.0),
                Some(5.0),
                None,
                None
            ]
        );
        assert_eq!(
            copy.iter().collect::<Vec<_>>(),
            vec![None, None, Some(0), Some(1), None, None, None]
        );
        assert_eq!(topic.iter().collect::<Vec<_>>()[4], Some("side"));
        assert_eq!(topic.null_count(), 6);
        assert_eq!(error.value(5), "probe error for id 6");
        assert_eq!(error.null_count(), 6);
    }

    #[test]
    fn batch_error_fails_the_whole_call_naming_the_first_culprit() {
        let input = batch(&[
            (1, None, None),
            (2, Some("batch-error"), None),
            (3, Some("batch-error"), None),
        ]);
        let e = columnar::call(probe, &input).unwrap_err();
        assert_eq!(e, TransformError::failed("probe batch error at id 2"));
    }

    #[test]
    #[should_panic(expected = "probe trap at id 9")]
    fn trap_panics_naming_the_row() {
        let _ = columnar::call(probe, &batch(&[(8, None, None), (9, Some("trap"), None)]));
    }

    #[test]
    fn unknown_action_is_a_row_error_and_a_wrong_schema_is_invalid_input() {
        let out = columnar::call(probe, &batch(&[(1, Some("kep"), None)])).unwrap();
        assert_eq!(
            out.column(5).as_string::<i32>().value(0),
            "probe: unknown action `kep` for id 1"
        );
        let schema = Schema::new(vec![Field::new("id", DataType::Utf8, false)]);
        let wrong = RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(StringArray::from(vec!["x"]))],
        )
        .unwrap();
        let e = columnar::call(probe, &wrong).unwrap_err();
        assert_eq!(
            e,
            TransformError::invalid_input("input column `id` must be Int64, found Utf8")
        );
    }

    #[test]
    fn empty_batch_gives_empty_output() {
        let out = columnar::call(probe, &batch(&[])).unwrap();
        assert_eq!(out.num_rows(), 0);
        assert_eq!(out.num_columns(), 6);
    }
}
