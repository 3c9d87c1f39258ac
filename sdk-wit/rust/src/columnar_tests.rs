use std::sync::Arc;

use crate::columnar::{self, *};
use crate::TransformError;
use arrow_array::{
    cast::AsArray, types::UInt32Type, BooleanArray, Float64Array, Int32Array, Int64Array,
    StringArray,
};

fn input() -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("value", DataType::Float64, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(vec![10, 11, 12])),
            Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
            Arc::new(Float64Array::from(vec![Some(1.5), Some(-2.0), None])),
        ],
    )
    .unwrap()
}

fn rows(b: &RecordBatch) -> Vec<u32> {
    b.column_by_name(ROW)
        .expect("_row")
        .as_primitive::<UInt32Type>()
        .values()
        .to_vec()
}

#[test]
fn ipc_round_trip_keeps_schema_values_and_nulls() {
    let b = input();
    let bytes = write_ipc(&b).unwrap();
    let back = read_ipc(&bytes).unwrap();
    assert_eq!(back, b);
    assert!(!back.schema().field(0).is_nullable());
    assert_eq!(back.column(1).null_count(), 1);
}

#[test]
fn ipc_stream_without_a_batch_is_an_empty_batch() {
    let b = input();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), b.schema_ref()).unwrap();
    w.finish().unwrap();
    let back = read_ipc(&w.into_inner().unwrap()).unwrap();
    assert_eq!(back.num_rows(), 0);
    assert_eq!(back.schema(), b.schema());
}

#[test]
fn ipc_garbage_and_two_batches_are_refused() {
    let e = read_ipc(b"not arrow").unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
    assert!(e.message().contains("not an Arrow IPC stream"), "{e}");

    let b = input();
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), b.schema_ref()).unwrap();
    w.write(&b).unwrap();
    w.write(&b).unwrap();
    let e = read_ipc(&w.into_inner().unwrap()).unwrap_err();
    assert!(e.message().contains("more than one record batch"), "{e}");
}

#[test]
fn with_row_index_numbers_rows_and_is_non_null_uint32() {
    let out = with_row_index(input()).unwrap();
    assert_eq!(rows(&out), vec![0, 1, 2]);
    let f = out.schema().field_with_name(ROW).unwrap().clone();
    assert_eq!(f.data_type(), &DataType::UInt32);
    assert!(!f.is_nullable());
    // The original columns are unchanged and first.
    assert_eq!(out.schema().field(0).name(), "id");
    assert_eq!(out.num_columns(), 4);
}

#[test]
fn take_rows_drops_and_repeats_with_matching_row_column() {
    let out = take_rows(&input(), &[2, 0, 0]).unwrap();
    assert_eq!(rows(&out), vec![2, 0, 0]);
    let ids = out
        .column_by_name("id")
        .unwrap()
        .as_primitive::<arrow_array::types::Int64Type>();
    assert_eq!(ids.values().to_vec(), vec![12, 10, 10]);

    let e = take_rows(&input(), &[3]).unwrap_err();
    assert_eq!(
        e,
        TransformError::failed("row index 3 is out of range for a batch of 3 rows")
    );
}

#[test]
fn filter_rows_keeps_true_rows_only() {
    let keep = BooleanArray::from(vec![Some(true), None, Some(false)]);
    let out = filter_rows(&input(), &keep).unwrap();
    assert_eq!(rows(&out), vec![0]);
    let e = filter_rows(&input(), &BooleanArray::from(vec![true])).unwrap_err();
    assert!(
        e.message()
            .contains("filter mask has 1 values for a batch of 3 rows"),
        "{e}"
    );
}

#[test]
fn topic_and_error_columns_are_nullable_utf8() {
    let out = with_row_index(input()).unwrap();
    let out = with_topics(out, [None, Some("audit"), None]).unwrap();
    let out = with_errors(out, [None::<String>, None, Some("bad value".to_string())]).unwrap();
    let topics = out.column_by_name(TOPIC).unwrap().as_string::<i32>();
    assert_eq!(
        topics.iter().collect::<Vec<_>>(),
        vec![None, Some("audit"), None]
    );
    let errors = out.column_by_name(ERROR).unwrap().as_string::<i32>();
    assert_eq!(errors.value(2), "bad value");
    assert!(errors.is_null(0));
    for name in [TOPIC, ERROR] {
        let f = out.schema().field_with_name(name).unwrap().clone();
        assert_eq!(f.data_type(), &DataType::Utf8);
        assert!(f.is_nullable());
    }
}

#[test]
fn helpers_refuse_wrong_length_and_duplicates_naming_the_column() {
    let e = with_topics(input(), [Some("x")]).unwrap_err();
    assert_eq!(
        e,
        TransformError::failed("column `_topic` has 1 values for a batch of 3 rows")
    );
    let out = with_row_index(input()).unwrap();
    let e = with_row_index(out).unwrap_err();
    assert_eq!(
        e,
        TransformError::failed("output batch already has a column `_row`")
    );
}

#[test]
fn call_goes_through_ipc_and_checks_the_row_column() {
    let out = columnar::call(with_row_index, &input()).unwrap();
    assert_eq!(rows(&out), vec![0, 1, 2]);

    let e = columnar::call(Ok, &input()).unwrap_err();
    assert!(e.message().contains("no `_row` column"), "{e}");
    assert!(e.message().contains("with_row_index"), "{e}");

    let e = columnar::call(
        |b| with_column(b, ROW, Arc::new(StringArray::from(vec!["0", "1", "2"]))),
        &input(),
    )
    .unwrap_err();
    assert!(
        e.message().contains("must be uint32 or int32, found Utf8"),
        "{e}"
    );

    // int32 `_row` is accepted too, as the WIT says.
    let out = columnar::call(
        |b| with_column(b, ROW, Arc::new(Int32Array::from(vec![0, 1, 2]))),
        &input(),
    )
    .unwrap();
    assert_eq!(
        out.schema().field_with_name(ROW).unwrap().data_type(),
        &DataType::Int32
    );

    // The function's own error comes back as it was returned.
    let e = columnar::call(|_| Err(TransformError::invalid_input("nope")), &input()).unwrap_err();
    assert_eq!(e, TransformError::invalid_input("nope"));
}

#[test]
fn empty_output_batch_round_trips() {
    // An empty output needs no `_row`: nothing to map.
    let out = columnar::call(|b| Ok(RecordBatch::new_empty(b.schema())), &input()).unwrap();
    assert_eq!(out.num_rows(), 0);
    let out = columnar::call(|b| take_rows(&b, &[]), &input()).unwrap();
    assert_eq!(out.num_rows(), 0);
    assert!(out.column_by_name(ROW).is_some());
}

#[test]
fn raw_entry_maps_error_kinds() {
    use crate::__private::RawTransformError;
    let bytes = write_ipc(&input()).unwrap();
    let r = columnar::__private::run_columns(bytes.clone(), |_| {
        Err(TransformError::failed("whole batch"))
    });
    assert!(matches!(r, Err(RawTransformError::Failed(m)) if m == "whole batch"));
    let r = columnar::__private::run_columns(b"junk".to_vec(), with_row_index);
    assert!(matches!(r, Err(RawTransformError::InvalidInput(_))));
    let ok = columnar::__private::run_columns(bytes, with_row_index).unwrap();
    let back = read_ipc(&ok).unwrap();
    assert_eq!(back.num_rows(), 3);
    assert_eq!(rows(&back), vec![0, 1, 2]);
}
