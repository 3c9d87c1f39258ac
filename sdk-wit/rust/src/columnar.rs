//! Columnar functions: one call per batch over an Arrow [`RecordBatch`]
//! (feature `columnar`).
//!
//! The worker decodes a batch of input records into one record batch of the
//! pipeline's declared `schema`, row i being the batch's i-th input, and calls
//! the function exported with [`export_columnar!`](crate::export_columnar)
//! once. The function returns one batch: its output fields plus the mapping
//! columns [`ROW`] (`_row`, required: which input row an output row comes
//! from), [`TOPIC`] (`_topic`, optional: a declared output topic) and
//! [`ERROR`] (`_error`, optional: dead-letters that row's input).
//!
//! ```ignore
//! use pipeline_sdk::columnar::{self, RecordBatch};
//! use pipeline_sdk::TransformError;
//!
//! fn passthrough(batch: RecordBatch) -> Result<RecordBatch, TransformError> {
//!     columnar::with_row_index(batch)   // 1:1: output row i is input row i
//! }
//!
//! pipeline_sdk::export_columnar!(passthrough);
//! ```
//!
//! The helpers return `failed` errors naming the column when misused (a
//! length that does not match the batch, a mapping column added twice), so a
//! bug in the function dead-letters its inputs with a message that says why.

use std::sync::Arc;

use crate::TransformError;

pub use arrow_array::{self, Array, ArrayRef, RecordBatch};
pub use arrow_ipc;
pub use arrow_schema::{self, DataType, Field, Schema, SchemaRef};
pub use arrow_select;

use arrow_array::{BooleanArray, StringArray, UInt32Array};

/// Name of the mapping column that names each output row's input row
/// (uint32 or int32, non-null).
pub const ROW: &str = "_row";
/// Name of the optional mapping column that routes a row to one of the
/// pipeline's declared output topics (utf8; null = the first output topic).
pub const TOPIC: &str = "_topic";
/// Name of the optional mapping column whose non-null value dead-letters the
/// row's input record with that message (utf8).
pub const ERROR: &str = "_error";

fn arrow_failed(what: &str, e: arrow_schema::ArrowError) -> TransformError {
    TransformError::failed(format!("{what}: {e}"))
}

/// Decodes the worker's Arrow IPC stream (schema, one record batch, end of
/// stream). A stream with a schema and no batch is an empty batch; more than
/// one batch is refused, since the worker never sends that.
pub fn read_ipc(bytes: &[u8]) -> Result<RecordBatch, TransformError> {
    let mut reader = arrow_ipc::reader::StreamReader::try_new(bytes, None).map_err(|e| {
        TransformError::invalid_input(format!("input batch is not an Arrow IPC stream: {e}"))
    })?;
    let schema = reader.schema();
    let batch = match reader.next() {
        None => RecordBatch::new_empty(schema),
        Some(b) => b.map_err(|e| {
            TransformError::invalid_input(format!(
                "input batch is not a valid Arrow IPC record batch: {e}"
            ))
        })?,
    };
    if reader.next().is_some() {
        return Err(TransformError::invalid_input(
            "input Arrow IPC stream has more than one record batch (expected exactly one)",
        ));
    }
    Ok(batch)
}

/// Encodes `batch` as the Arrow IPC stream the worker expects back (schema,
/// the batch, end of stream), uncompressed.
pub fn write_ipc(batch: &RecordBatch) -> Result<Vec<u8>, TransformError> {
    let what = "could not encode the output batch as Arrow IPC";
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), batch.schema_ref())
        .map_err(|e| arrow_failed(what, e))?;
    w.write(batch).map_err(|e| arrow_failed(what, e))?;
    w.into_inner().map_err(|e| arrow_failed(what, e))
}

/// `batch` with one more column `name` (appended last). Refuses a name the
/// batch already has and an array whose length is not the batch's row count.
pub fn with_column(
    batch: RecordBatch,
    name: &str,
    array: ArrayRef,
) -> Result<RecordBatch, TransformError> {
    let schema = batch.schema();
    if schema.column_with_name(name).is_some() {
        return Err(TransformError::failed(format!(
            "output batch already has a column `{name}`"
        )));
    }
    if array.len() != batch.num_rows() {
        return Err(TransformError::failed(format!(
            "column `{name}` has {} values for a batch of {} rows",
            array.len(),
            batch.num_rows()
        )));
    }
    let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(
        name,
        array.data_type().clone(),
        // `_row` is declared non-null, so a null in it fails here and not in the worker.
        name != ROW,
    )));
    let mut columns = batch.columns().to_vec();
    columns.push(array);
    let schema = Schema::new_with_metadata(fields, schema.metadata().clone());
    RecordBatch::try_new(Arc::new(schema), columns)
        .map_err(|e| arrow_failed(&format!("could not add column `{name}`"), e))
}

/// A 1:1 output: `_row` = 0..n, so output row i is input row i (same order,
/// nothing dropped or repeated).
pub fn with_row_index(batch: RecordBatch) -> Result<RecordBatch, TransformError> {
    let n = row_count_u32(batch.num_rows())?;
    with_column(batch, ROW, Arc::new(UInt32Array::from_iter_values(0..n)))
}

/// `batch` with `_row` = `rows`: output row j comes from input row `rows[j]`.
/// For a batch that the function built itself (filtered, fanned out).
pub fn with_rows(
    batch: RecordBatch,
    rows: impl IntoIterator<Item = u32>,
) -> Result<RecordBatch, TransformError> {
    with_column(batch, ROW, Arc::new(UInt32Array::from_iter_values(rows)))
}

/// The input rows at `rows`, in that order (a row may repeat: fan-out; a row
/// left out is dropped), with `_row` set to match. `batch` must not already
/// have a `_row` column.
pub fn take_rows(batch: &RecordBatch, rows: &[u32]) -> Result<RecordBatch, TransformError> {
    let n = batch.num_rows();
    if let Some(&bad) = rows.iter().find(|&&r| r as usize >= n) {
        return Err(TransformError::failed(format!(
            "row index {bad} is out of range for a batch of {n} rows"
        )));
    }
    let indices = UInt32Array::from(rows.to_vec());
    let taken = arrow_select::take::take_record_batch(batch, &indices)
        .map_err(|e| arrow_failed("could not take rows", e))?;
    with_column(taken, ROW, Arc::new(indices))
}

/// The input rows where `keep` is true (null counts as false), with `_row`
/// naming them.
pub fn filter_rows(
    batch: &RecordBatch,
    keep: &BooleanArray,
) -> Result<RecordBatch, TransformError> {
    if keep.len() != batch.num_rows() {
        return Err(TransformError::failed(format!(
            "filter mask has {} values for a batch of {} rows",
            keep.len(),
            batch.num_rows()
        )));
    }
    row_count_u32(batch.num_rows())?;
    let rows: Vec<u32> = (0..keep.len())
        .filter(|&i| keep.is_valid(i) && keep.value(i))
        .map(|i| i as u32)
        .collect();
    take_rows(batch, &rows)
}

/// `batch` with `_topic`: `Some(topic)` routes that row to a declared output
/// topic, `None` to the pipeline's first output topic.
pub fn with_topics<S: AsRef<str>>(
    batch: RecordBatch,
    topics: impl IntoIterator<Item = Option<S>>,
) -> Result<RecordBatch, TransformError> {
    let array: StringArray = topics.into_iter().collect();
    with_column(batch, TOPIC, Arc::new(array))
}

/// `batch` with `_error`: `Some(message)` dead-letters that row's input
/// record with the message (kind `failed`); `None` leaves the row alone.
pub fn with_errors<S: AsRef<str>>(
    batch: RecordBatch,
    errors: impl IntoIterator<Item = Option<S>>,
) -> Result<RecordBatch, TransformError> {
    let array: StringArray = errors.into_iter().collect();
    with_column(batch, ERROR, Arc::new(array))
}

fn row_count_u32(n: usize) -> Result<u32, TransformError> {
    u32::try_from(n).map_err(|_| {
        TransformError::failed(format!(
            "batch of {n} rows is too large for a uint32 `_row`"
        ))
    })
}

/// Checks what the worker would refuse anyway, but with a message that
/// names the helper to use: a missing or mistyped `_row`.
fn check_output(batch: &RecordBatch) -> Result<(), TransformError> {
    match batch.schema().column_with_name(ROW) {
        // No rows, nothing to map: `take_rows(&b, &[])` or a hand-built empty batch.
        None if batch.num_rows() == 0 => Ok(()),
        None => Err(TransformError::failed(
            "output batch has no `_row` column (add it with pipeline_sdk::columnar::with_row_index, with_rows or take_rows)",
        )),
        Some((_, f)) if !matches!(f.data_type(), DataType::UInt32 | DataType::Int32) => {
            Err(TransformError::failed(format!(
                "output column `_row` must be uint32 or int32, found {}",
                f.data_type()
            )))
        }
        Some((i, _)) if batch.column(i).null_count() > 0 => Err(TransformError::failed(
            "output column `_row` has nulls (every output row must name its input row)",
        )),
        Some(_) => Ok(()),
    }
}

/// What the exported `transform-columns` does: decode, call `f`, check, encode.
/// Also the way to call a columnar function in a native unit test through the
/// same IPC path as the worker: `run(&write_ipc(&input)?, f)`.
pub fn run<F>(bytes: &[u8], f: F) -> Result<Vec<u8>, TransformError>
where
    F: FnOnce(RecordBatch) -> Result<RecordBatch, TransformError>,
{
    let input = read_ipc(bytes)?;
    let output = f(input)?;
    check_output(&output)?;
    write_ipc(&output)
}

/// Calls `f` on `input` exactly as the worker would (IPC in, IPC out), for
/// native unit tests: the returned batch is what the worker decodes.
pub fn call<F>(f: F, input: &RecordBatch) -> Result<RecordBatch, TransformError>
where
    F: FnOnce(RecordBatch) -> Result<RecordBatch, TransformError>,
{
    read_ipc(&run(&write_ipc(input)?, f)?)
}

/// Raw wit-bindgen bindings for `pipeline:transform/transform-columnar@0.2.0`.
/// Generated separately from [`crate::bindings`] so that a component exports
/// only the world it asks for: each `generate!` puts only its imports in the
/// SDK's custom section, and the exports go in with the export macro the
/// customer crate invokes. `types` and `host` are shared, not generated twice.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "transform-columnar",
        path: "wit",
        with: {
            "pipeline:transform/types@0.2.0": pipeline_sdk::bindings::pipeline::transform::types,
            "pipeline:transform/host@0.2.0": pipeline_sdk::bindings::pipeline::transform::host,
        },
        pub_export_macro: true,
        export_macro_name: "__export_transform_columnar_raw",
        default_bindings_module: "pipeline_sdk::columnar::bindings",
        runtime_path: "pipeline_sdk::__private::wit_bindgen::rt",
    });
}

/// Implementation details used by [`export_columnar!`](crate::export_columnar); not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use super::bindings::exports::pipeline::transform::columnar_transformer::Guest as ColumnarGuest;
    use crate::__private::RawTransformError;
    pub use std::vec::Vec;

    use super::RecordBatch;
    use crate::TransformError;

    /// Compile-time check that `f` is usable with `export_columnar!`.
    pub fn check_signature<F>(_f: F)
    where
        F: Fn(RecordBatch) -> Result<RecordBatch, TransformError>,
    {
    }

    pub fn run_columns<F>(batch: Vec<u8>, f: F) -> Result<Vec<u8>, RawTransformError>
    where
        F: FnOnce(RecordBatch) -> Result<RecordBatch, TransformError>,
    {
        crate::__private::install_panic_hook();
        super::run(&batch, f).map_err(|e| match e {
            TransformError::InvalidInput(m) => RawTransformError::InvalidInput(m),
            TransformError::Failed(m) => RawTransformError::Failed(m),
        })
    }
}
