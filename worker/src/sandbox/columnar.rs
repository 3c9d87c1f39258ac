//! Columnar batches: input records (JSON values) → one Arrow record batch of
//! the pipeline's schema → IPC bytes for `transform-columns`, and the IPC
//! result back → per input row, its outputs (JSON values) or its error.
//!
//! Everything here reads untrusted bytes (record values, the guest's IPC
//! result); arrow returns errors for malformed input, and every entry point
//! is also wrapped in `catch_unwind` so a decoder bug in arrow costs the
//! batch's records a dead letter, never the thread.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, UInt32Type};
use arrow_array::{Array, RecordBatch, StructArray};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_json::writer::{make_encoder, EncoderOptions};
use arrow_json::ReaderBuilder;
use arrow_schema::{DataType, Field, FieldRef, SchemaRef};
use std::sync::Arc;

use std::time::{Duration, Instant};

use super::host::CallEnd;
use super::{
    classify, guest_message, guest_result, Exports, Function, InputRecord, Live, OutputRecord,
    RecordError, RecordResult, Runner, OUTPUT_SLACK,
};

/// The mapping columns of a result (see `columnar-transformer` in the WIT).
pub const ROW: &str = "_row";
pub const TOPIC: &str = "_topic";
pub const ERROR: &str = "_error";

/// The outputs of one input row: JSON values with the `_topic` they name,
/// or the row's `_error`.
pub type RowOutputs = Result<Vec<(Vec<u8>, Option<String>)>, String>;

/// A batch of input records decoded against the schema.
pub struct Decoded {
    /// One row per entry of `rows`; `None` when no record fits.
    pub batch: Option<RecordBatch>,
    /// The input index of each row.
    pub rows: Vec<usize>,
    /// Inputs that do not fit the schema, with why (the field named by arrow).
    pub bad: Vec<(usize, String)>,
}

/// Encodes and decodes one pipeline's batches.
#[derive(Clone)]
pub struct Codec {
    schema: SchemaRef,
}

impl Codec {
    pub fn new(schema: SchemaRef) -> Self {
        Self { schema }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes the values of `inputs[i]` for each `i` in `candidates`. The
    /// whole batch is tried at once; only if that fails is each record
    /// decoded alone, to find the ones that do not fit (so the common case
    /// parses every value once).
    pub fn decode(&self, inputs: &[InputRecord], candidates: &[usize]) -> Decoded {
        if candidates.is_empty() {
            return Decoded {
                batch: None,
                rows: Vec::new(),
                bad: Vec::new(),
            };
        }
        if let Ok(batch) = self.decode_rows(inputs, candidates) {
            return Decoded {
                batch: Some(batch),
                rows: candidates.to_vec(),
                bad: Vec::new(),
            };
        }
        let mut rows = Vec::with_capacity(candidates.len());
        let mut bad = Vec::new();
        for &i in candidates {
            match self.decode_rows(inputs, &[i]) {
                Ok(_) => rows.push(i),
                Err(e) => bad.push((i, e)),
            }
        }
        let batch = if rows.is_empty() {
            None
        } else {
            match self.decode_rows(inputs, &rows) {
                Ok(b) => Some(b),
                // Each fits alone but not together: cannot happen with a
                // fixed schema, but nothing may be lost if it does.
                Err(e) => {
                    bad.extend(rows.drain(..).map(|i| (i, e.clone())));
                    None
                }
            }
        };
        Decoded { batch, rows, bad }
    }

    fn decode_rows(&self, inputs: &[InputRecord], idx: &[usize]) -> Result<RecordBatch, String> {
        guarded("decoding the batch", || {
            let mut d = ReaderBuilder::new(self.schema.clone())
                .with_batch_size(idx.len().max(1))
                .build_decoder()
                .map_err(|e| e.to_string())?;
            for (n, &i) in idx.iter().enumerate() {
                let v = inputs[i].value.as_deref().unwrap_or_default();
                let consumed = d.decode(v).map_err(describe_json_error)?;
                // Each value must be exactly one object, or rows would shift
                // (or a value cut short would merge with the next one).
                if consumed != v.len() || d.has_partial_record() || d.len() != n + 1 {
                    return Err(if v.iter().all(u8::is_ascii_whitespace) {
                        "the value is empty; a columnar pipeline needs one JSON object per record"
                            .to_string()
                    } else {
                        "the value is not exactly one JSON object".to_string()
                    });
                }
            }
            d.flush()
                .map_err(describe_json_error)?
                .ok_or_else(|| "no row decoded".to_string())
        })
    }

    /// The IPC stream `transform-columns` takes: schema, the batch, end.
    pub fn write_ipc(batch: &RecordBatch) -> Result<Vec<u8>, String> {
        guarded("writing the IPC stream", || {
            let mut w =
                StreamWriter::try_new(Vec::new(), &batch.schema()).map_err(|e| e.to_string())?;
            w.write(batch).map_err(|e| e.to_string())?;
            w.finish().map_err(|e| e.to_string())?;
            w.into_inner().map_err(|e| e.to_string())
        })
    }

    /// Reads a result for a batch of `n` rows and checks its mapping columns.
    /// An `Err` is a malformed result, which no single row is to blame for.
    pub fn read_result(bytes: &[u8], n: usize) -> Result<Vec<RowOutputs>, String> {
        guarded("reading the result", || {
            let mut per_row: Vec<RowOutputs> = vec![Ok(Vec::new()); n];
            if bytes.is_empty() {
                return Ok(per_row);
            }
            let reader = StreamReader::try_new(Cursor::new(bytes), None)
                .map_err(|e| format!("not an Arrow IPC stream: {e}"))?;
            for batch in reader {
                let batch = batch.map_err(|e| format!("not an Arrow IPC stream: {e}"))?;
                map_batch(&batch, n, &mut per_row)?;
            }
            Ok(per_row)
        })
    }
}

fn map_batch(batch: &RecordBatch, n: usize, per_row: &mut [RowOutputs]) -> Result<(), String> {
    let schema = batch.schema();
    let rows = batch.num_rows();
    let col = |name: &str| schema.index_of(name).ok().map(|i| (i, batch.column(i)));
    let Some((row_i, row_col)) = col(ROW) else {
        if rows == 0 {
            return Ok(());
        }
        return Err(format!(
            "has no `{ROW}` column (uint32 or int32) naming each output row's input row"
        ));
    };
    if row_col.null_count() > 0 {
        return Err(format!("`{ROW}` has null values"));
    }
    let row_of: Box<dyn Fn(usize) -> i64> = match row_col.data_type() {
        DataType::UInt32 => {
            let a = row_col.as_primitive::<UInt32Type>();
            Box::new(move |r| i64::from(a.value(r)))
        }
        DataType::Int32 => {
            let a = row_col.as_primitive::<Int32Type>();
            Box::new(move |r| i64::from(a.value(r)))
        }
        t => return Err(format!("`{ROW}` is {t}, not uint32 or int32")),
    };
    let text = |name: &str| -> Result<Option<(usize, &arrow_array::StringArray)>, String> {
        match col(name) {
            None => Ok(None),
            Some((i, c)) => c
                .as_string_opt::<i32>()
                .map(|a| Some((i, a)))
                .ok_or_else(|| format!("`{name}` is {}, not utf8", c.data_type())),
        }
    };
    let topic = text(TOPIC)?;
    let error = text(ERROR)?;
    for r in 0..rows {
        let at = row_of(r);
        if at < 0 || at as usize >= n {
            return Err(format!(
                "`{ROW}` of output row {r} is {at}, outside the batch's rows 0..{n}"
            ));
        }
    }
    let mapping = [Some(row_i), topic.map(|t| t.0), error.map(|e| e.0)];
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|i| !mapping.contains(&Some(*i)))
        .collect();
    let values = encode_rows(&batch.project(&keep).map_err(|e| e.to_string())?)?;
    // An input is all or nothing, as a per-record function's result is: one
    // `_error` among its output rows dead-letters it, the first such message
    // (in result order) is its error, and none of its rows is produced, so
    // re-driving the dead letter after a fix yields each output exactly once.
    for (r, value) in values.into_iter().enumerate() {
        let slot = &mut per_row[row_of(r) as usize];
        if let Some((_, e)) = error.filter(|(_, e)| e.is_valid(r)) {
            if slot.is_ok() {
                *slot = Err(e.value(r).to_string());
            }
            continue;
        }
        if let Ok(outs) = slot {
            let t = topic
                .filter(|(_, t)| t.is_valid(r))
                .map(|(_, t)| t.value(r).to_string());
            outs.push((value, t));
        }
    }
    Ok(())
}

/// One JSON object per row, as arrow-json's line-delimited writer writes
/// them (its encoder, its default options: null fields are left out), each
/// encoded straight into its own buffer: the writer's one buffer for the
/// batch would be split and copied out row by row again.
pub fn encode_rows(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, String> {
    let array = StructArray::from(batch.clone());
    let field: FieldRef = Arc::new(Field::new_struct(
        "",
        batch.schema().fields().clone(),
        false,
    ));
    let options = EncoderOptions::default();
    let mut encoder = make_encoder(&field, &array, &options)
        .map_err(|e| format!("cannot encode as JSON: {e}"))?;
    let mut rows = Vec::with_capacity(batch.num_rows());
    // Rows of one batch have much the same size: sized after the largest so
    // far, a row's buffer is mostly allocated once, not grown from empty.
    let mut size = 0;
    for r in 0..batch.num_rows() {
        let mut row = Vec::with_capacity(size);
        encoder.encode(r, &mut row);
        size = size.max(row.len());
        rows.push(row);
    }
    Ok(rows)
}

/// arrow-json's message, without its `Json error: ` prefix.
fn describe_json_error(e: arrow_schema::ArrowError) -> String {
    let s = e.to_string();
    let s = s
        .strip_prefix("Json error: ")
        .or_else(|| s.strip_prefix("Parser error: "))
        .unwrap_or(&s);
    // arrow says which non-nullable field was missing only as a Debug dump.
    if let Some(rest) = s.split_once("non-nullable StructArray child: Field { \"") {
        if let Some((name, _)) = rest.1.split_once('"') {
            return format!("does not fit the pipeline's schema: field '{name}' is missing or null, and the schema declares it non-nullable");
        }
    }
    format!("does not fit the pipeline's schema: {s}")
}

fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(format!(
            "arrow failed {what} (a panic inside arrow, caught)"
        ))
    })
}

/// A columnar call's deadline is `deadline_ms` × min(rows, this): the work
/// grows with the batch, but a spinning row must not stall its partitions
/// for rows × deadline (bisection pays it again at every level).
pub const DEADLINE_ROWS_CAP: u64 = 4;

/// Failed calls over more than one row that bisection may make for a batch
/// of `n` rows: enough to isolate two culprits; past it the rows left are
/// called one by one.
pub fn bisect_budget(n: usize) -> u32 {
    2 * (n.max(1) as u64).next_power_of_two().trailing_zeros() + 1
}

enum CallFail {
    /// The call failed (trap, `err`, a cap): some row is to blame; bisect.
    Batch(RecordError),
    /// Every row of the call gets this error, without bisecting: the
    /// instance could not be created, or the result is malformed (a bug in
    /// the function that smaller batches would not fix).
    All(RecordError),
}

impl Runner {
    /// A columnar function's batch: decode, one call, map the result back,
    /// bisecting on failure. One result per input, in order.
    pub(super) fn run_columnar(
        &mut self,
        f: &Function,
        inputs: &[InputRecord],
    ) -> Vec<RecordResult> {
        let Some(codec) = self.columnar.clone() else {
            return inputs
                .iter()
                .map(|_| {
                    Err(RecordError::InvalidInput(
                        "a columnar function needs the pipeline's schema (pipelines[i].schema)"
                            .into(),
                    ))
                })
                .collect();
        };
        let mut results: Vec<Option<RecordResult>> = (0..inputs.len()).map(|_| None).collect();
        let mut candidates = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            if input.value.is_none() {
                results[i] = Some(Err(RecordError::InvalidInput(
                    "a tombstone (null value) cannot be a row of a columnar batch".into(),
                )));
            } else {
                candidates.push(i);
            }
        }
        let decoded = codec.decode(inputs, &candidates);
        for (i, e) in decoded.bad {
            results[i] = Some(Err(RecordError::InvalidInput(e)));
        }
        if let Some(batch) = decoded.batch {
            // An instance sees at most `instance_max_records` records (the
            // isolation `1` promises), so a larger batch is several calls;
            // each is bisected on its own.
            let per_call = usize::try_from(f.limits.instance_max_records)
                .unwrap_or(usize::MAX)
                .max(1);
            for (c, rows) in decoded.rows.chunks(per_call).enumerate() {
                let part = batch.slice(c * per_call, rows.len());
                let mut budget = bisect_budget(rows.len());
                self.solve(f, inputs, &part, rows, &mut budget, &mut results);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(RecordError::Failed("no result for this row".into()))))
            .collect()
    }

    fn solve(
        &mut self,
        f: &Function,
        inputs: &[InputRecord],
        batch: &RecordBatch,
        rows: &[usize],
        budget: &mut u32,
        results: &mut [Option<RecordResult>],
    ) {
        match self.columnar_call(f, batch, rows.len() > 1) {
            Ok(per_row) => {
                for (out, &i) in per_row.into_iter().zip(rows) {
                    results[i] = Some(row_result(out, &inputs[i], &f.limits));
                }
            }
            Err(CallFail::All(e)) => {
                for &i in rows {
                    results[i] = Some(Err(e.clone()));
                }
            }
            Err(CallFail::Batch(e)) if rows.len() == 1 => results[rows[0]] = Some(Err(e)),
            Err(CallFail::Batch(_)) if *budget == 0 => {
                for j in 0..rows.len() {
                    let one = batch.slice(j, 1);
                    self.solve(f, inputs, &one, &rows[j..=j], budget, results);
                }
            }
            Err(CallFail::Batch(_)) => {
                *budget -= 1;
                let mid = rows.len() / 2;
                let (a, b) = (batch.slice(0, mid), batch.slice(mid, rows.len() - mid));
                self.solve(f, inputs, &a, &rows[..mid], budget, results);
                self.solve(f, inputs, &b, &rows[mid..], budget, results);
            }
        }
    }

    /// One `transform-columns` call over `batch`. `replayable`: its failure
    /// will be bisected, so the guest's text is not kept (the smaller calls
    /// print it again).
    fn columnar_call(
        &mut self,
        f: &Function,
        batch: &RecordBatch,
        replayable: bool,
    ) -> Result<Vec<RowOutputs>, CallFail> {
        let n = batch.num_rows() as u64;
        let ipc = Codec::write_ipc(batch).map_err(|e| {
            CallFail::All(RecordError::Failed(format!(
                "cannot encode the batch as Arrow IPC: {e}"
            )))
        })?;
        let (mut live, served) = self.checkout(f, n).map_err(CallFail::All)?;
        self.arm(f, &mut live, n).map_err(CallFail::All)?;
        let factor = n.clamp(1, DEADLINE_ROWS_CAP);
        let deadline_ms = f.limits.deadline_ms.saturating_mul(factor);
        live.store
            .set_epoch_deadline(f.ticks_per_record.saturating_mul(factor));
        live.store.set_hostcall_fuel(columnar_hostcall_budget(f, n));
        live.store.data_mut().begin_call();
        let started = Instant::now();
        let result = match &self.rt {
            Ok(rt) => rt.run(Duration::from_millis(deadline_ms), deadline_ms, async {
                let Live { store, exports } = &mut live;
                match exports {
                    Exports::Columnar { columnar } => columnar
                        .call_transform_columns(store, &ipc)
                        .await
                        .map_err(|e| classify(e, &f.limits)),
                    _ => Err(RecordError::Instantiate("no columnar export".into())),
                }
            }),
            Err(e) => Err(RecordError::Instantiate(e.clone())),
        };
        self.account(f, &live, n, started);
        let result = result.map_err(|e| match e {
            RecordError::Deadline { guest, .. } => RecordError::Deadline { deadline_ms, guest },
            RecordError::OutOfFuel { guest, .. } => RecordError::OutOfFuel {
                limit: f.limits.fuel.unwrap_or(0).saturating_mul(n),
                guest,
            },
            e => e,
        });
        match result {
            Ok(Ok(bytes)) => {
                live.store.data_mut().end_call(CallEnd::Returned);
                self.keep(f, live, served + n);
                Codec::read_result(&bytes, n as usize).map_err(|e| {
                    CallFail::All(RecordError::Failed(format!(
                        "the function's columnar result is malformed: {e}"
                    )))
                })
            }
            Ok(Err(refused)) => {
                live.store.data_mut().end_call(CallEnd::Returned);
                self.keep(f, live, served + n);
                Err(CallFail::Batch(
                    guest_result(Err(refused), &f.limits)
                        .err()
                        .unwrap_or_else(|| RecordError::Failed("refused".into())),
                ))
            }
            // The instance is dropped: a failed call leaves it in an
            // unknown state.
            Err(e) if replayable => {
                live.store.data_mut().end_call(CallEnd::Replayed);
                Err(CallFail::Batch(e))
            }
            Err(e) if e.takes_guest_output() => {
                let guest = live.store.data_mut().end_call(CallEnd::Failed);
                Err(CallFail::Batch(e.with_guest(guest)))
            }
            Err(e) => {
                live.store.data_mut().end_call(CallEnd::Returned);
                Err(CallFail::Batch(e))
            }
        }
    }
}

/// Hostcall fuel for a columnar call: the result of `n` rows may be `n`
/// records' worth of output, but never more than the instance's memory can
/// hold anyway.
fn columnar_hostcall_budget(f: &Function, n: u64) -> usize {
    let per_rows = f
        .limits
        .max_output_bytes
        .saturating_mul(n as usize)
        .saturating_add(OUTPUT_SLACK);
    per_rows
        .min(f.limits.memory_bytes as usize)
        .max(f.hostcall_budget())
}

fn row_result(
    out: RowOutputs,
    input: &InputRecord,
    limits: &crate::config::Limits,
) -> RecordResult {
    match out {
        Err(message) => Err(RecordError::Failed(guest_message(&message))),
        Ok(values) => guest_result(
            Ok(values
                .into_iter()
                .map(|(value, topic)| OutputRecord {
                    key: input.key.clone(),
                    value: Some(value),
                    headers: input.headers.clone(),
                    topic,
                    timestamp: input.timestamp,
                })
                .collect()),
            limits,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{arrow_schema, SchemaField};
    use arrow_array::{ArrayRef, Int64Array, StringArray, UInt32Array};
    use std::sync::Arc;

    fn codec() -> Codec {
        let fields: Vec<SchemaField> = toml::from_str::<toml::Table>(
            r#"
f = [{ name = "id", type = "int64", nullable = false },
     { name = "action", type = "utf8" },
     { name = "value", type = "float64" }]
"#,
        )
        .unwrap()["f"]
            .clone()
            .try_into()
            .unwrap();
        Codec::new(Arc::new(arrow_schema("s", &fields).unwrap()))
    }

    fn rec(v: &str) -> InputRecord {
        InputRecord {
            key: None,
            value: Some(v.as_bytes().to_vec()),
            headers: vec![],
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp: None,
        }
    }

    #[test]
    fn decodes_a_batch_and_isolates_records_that_do_not_fit() {
        let inputs = [
            rec(r#"{"id": 1, "value": 2.5, "extra": true}"#),
            rec(r#"{"id": "x"}"#),
            rec(r#"{"value": 1}"#),
            rec(r#"{"id": 4} {"id": 5}"#),
            rec(r#"{"id": "#),
            rec(""),
            rec(r#"{"id": 7, "action": "keep"}"#),
        ];
        let d = codec().decode(&inputs, &(0..inputs.len()).collect::<Vec<_>>());
        assert_eq!(d.rows, vec![0, 6]);
        let batch = d.batch.unwrap();
        assert_eq!(batch.num_rows(), 2);
        // Unknown fields are dropped: only the schema's columns.
        assert_eq!(batch.num_columns(), 3);
        let bad: Vec<usize> = d.bad.iter().map(|b| b.0).collect();
        assert_eq!(bad, vec![1, 2, 3, 4, 5]);
        let msg = |i: usize| &d.bad.iter().find(|b| b.0 == i).unwrap().1;
        assert!(
            msg(1).contains("'id'") || msg(1).contains("\"id\""),
            "{}",
            msg(1)
        );
        assert!(
            msg(2).contains("field 'id' is missing or null"),
            "{}",
            msg(2)
        );
        assert!(msg(3).contains("exactly one JSON object"), "{}", msg(3));
        assert!(msg(5).contains("empty"), "{}", msg(5));
    }

    fn result(cols: Vec<(&str, ArrayRef)>) -> Vec<u8> {
        let b = RecordBatch::try_from_iter(cols).unwrap();
        Codec::write_ipc(&b).unwrap()
    }

    #[test]
    fn maps_rows_drops_fanout_topics_and_errors() {
        let bytes = result(vec![
            ("id", Arc::new(Int64Array::from(vec![10, 11, 11, 13, 14]))),
            ("_row", Arc::new(UInt32Array::from(vec![0, 1, 1, 3, 4]))),
            (
                "_topic",
                Arc::new(StringArray::from(vec![None, None, Some("b"), None, None])),
            ),
            (
                "_error",
                Arc::new(StringArray::from(vec![None, None, None, Some("bad"), None])),
            ),
        ]);
        let r = Codec::read_result(&bytes, 5).unwrap();
        assert_eq!(r[0], Ok(vec![(br#"{"id":10}"#.to_vec(), None)]));
        assert_eq!(
            r[1],
            Ok(vec![
                (br#"{"id":11}"#.to_vec(), None),
                (br#"{"id":11}"#.to_vec(), Some("b".into()))
            ])
        );
        assert_eq!(r[2], Ok(vec![]), "row 2 dropped");
        assert_eq!(r[3], Err("bad".into()));
        assert_eq!(r[4], Ok(vec![(br#"{"id":14}"#.to_vec(), None)]));
    }

    /// An input whose rows mix outputs and `_error`s is dead-lettered whole
    /// with its first error, whatever the order of its rows; other inputs
    /// are untouched.
    #[test]
    fn an_error_on_any_row_of_an_input_dead_letters_it_whole() {
        let bytes = result(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 6, 7]))),
            (
                "_row",
                Arc::new(UInt32Array::from(vec![0, 0, 1, 1, 2, 2, 3])),
            ),
            (
                "_error",
                Arc::new(StringArray::from(vec![
                    None,
                    Some("late"),
                    Some("early"),
                    None,
                    Some("first"),
                    Some("second"),
                    None,
                ])),
            ),
        ]);
        let r = Codec::read_result(&bytes, 4).unwrap();
        assert_eq!(r[0], Err("late".into()), "outputs before the error");
        assert_eq!(r[1], Err("early".into()), "outputs after the error");
        assert_eq!(r[2], Err("first".into()), "the first error wins");
        assert_eq!(r[3], Ok(vec![(br#"{"id":7}"#.to_vec(), None)]));
    }

    #[test]
    fn refuses_bad_mapping_columns() {
        let out_of_range = result(vec![
            ("id", Arc::new(Int64Array::from(vec![1]))),
            ("_row", Arc::new(UInt32Array::from(vec![3]))),
        ]);
        let e = Codec::read_result(&out_of_range, 3).unwrap_err();
        assert!(e.contains("outside the batch's rows 0..3"), "{e}");
        let missing = result(vec![("id", Arc::new(Int64Array::from(vec![1])))]);
        let e = Codec::read_result(&missing, 1).unwrap_err();
        assert!(e.contains("no `_row`"), "{e}");
        let null_row = result(vec![(
            "_row",
            Arc::new(UInt32Array::from(vec![Some(0), None])) as ArrayRef,
        )]);
        assert!(Codec::read_result(&null_row, 2)
            .unwrap_err()
            .contains("null"));
        let wrong_type = result(vec![("_row", Arc::new(Int64Array::from(vec![0])))]);
        assert!(Codec::read_result(&wrong_type, 1)
            .unwrap_err()
            .contains("not uint32 or int32"));
        let bad_topic = result(vec![
            ("_row", Arc::new(UInt32Array::from(vec![0])) as ArrayRef),
            ("_topic", Arc::new(Int64Array::from(vec![0]))),
        ]);
        assert!(Codec::read_result(&bad_topic, 1)
            .unwrap_err()
            .contains("not utf8"));
        let garbage = Codec::read_result(b"\xff\xff\xff\xff garbage", 1).unwrap_err();
        assert!(garbage.contains("not an Arrow IPC stream"), "{garbage}");
        // No bytes at all: no output for any row.
        assert_eq!(
            Codec::read_result(b"", 2).unwrap(),
            vec![Ok(vec![]), Ok(vec![])]
        );
    }

    /// Each row's bytes are the line arrow-json's line-delimited writer
    /// writes for it: escapes, nulls left out, nested structs and lists,
    /// floats, and rows of very different sizes (the buffer size carried
    /// from row to row must not leak bytes between them).
    #[test]
    fn rows_are_encoded_as_the_line_writer_writes_them() {
        use arrow_array::builder::{ListBuilder, StringBuilder};
        use arrow_array::{BooleanArray, Float64Array, StructArray};
        let mut tags = ListBuilder::new(StringBuilder::new());
        for row in [&["a", "b\n\"c\""][..], &[], &["é\u{1}"], &["x"; 40]] {
            for t in row {
                tags.values().append_value(t);
            }
            tags.append(true);
        }
        let inner = StructArray::from(vec![
            (
                Arc::new(Field::new("ok", DataType::Boolean, true)),
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    None,
                    Some(false),
                    None,
                ])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("w", DataType::Float64, false)),
                Arc::new(Float64Array::from(vec![
                    0.1,
                    -2.5e300,
                    3.0,
                    f64::MIN_POSITIVE,
                ])),
            ),
        ]);
        let batch = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(Int64Array::from(vec![
                    Some(1),
                    None,
                    Some(-3),
                    Some(i64::MAX),
                ])) as ArrayRef,
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![
                    Some("tab\there"),
                    Some(""),
                    None,
                    Some("long ".repeat(200).as_str()),
                ])),
            ),
            ("tags", Arc::new(tags.finish())),
            ("inner", Arc::new(inner)),
        ])
        .unwrap();
        let mut lines = Vec::new();
        let mut w = arrow_json::LineDelimitedWriter::new(&mut lines);
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        let want: Vec<&[u8]> = lines
            .strip_suffix(b"\n")
            .unwrap()
            .split(|b| *b == b'\n')
            .collect();
        let rows = encode_rows(&batch).unwrap();
        assert_eq!(rows.len(), 4);
        for (r, (got, want)) in rows.iter().zip(want).enumerate() {
            assert_eq!(
                String::from_utf8_lossy(got),
                String::from_utf8_lossy(want),
                "row {r}"
            );
        }
        // A null field is left out, not written as null.
        assert!(
            rows[1].starts_with(br#"{"s":"","tags":[]"#),
            "{:?}",
            String::from_utf8_lossy(&rows[1])
        );
    }

    #[test]
    fn truncated_results_are_errors_not_panics() {
        let bytes = result(vec![
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3]))),
            ("_row", Arc::new(UInt32Array::from(vec![0, 1, 2]))),
        ]);
        let no_panic = |b: &[u8]| {
            if let Err(e) = Codec::read_result(b, 3) {
                assert!(!e.contains("a panic inside arrow"), "{e}");
            }
        };
        for cut in 0..bytes.len() {
            no_panic(&bytes[..cut]);
        }
        let mut flipped = bytes.clone();
        for i in (0..flipped.len()).step_by(7) {
            flipped[i] ^= 0x5a;
            no_panic(&flipped);
        }
    }
}
