//! Native tests: the worker's path (JSON values → arrow-json decoder with the
//! pipeline's schema → IPC → the function → IPC → mapping columns off →
//! arrow-json line writer), so `expected.jsonl` is the exact bytes a worker
//! produces.

use super::*;
use pipeline_sdk::columnar::arrow_array::types::UInt32Type;
use pipeline_sdk::columnar::{SchemaRef, ERROR, ROW, TOPIC};

/// The schema of `pipeline.toml`, read from it so the file and the tests
/// cannot drift apart.
fn schema() -> SchemaRef {
    let doc: toml::Value = toml::from_str(include_str!("../pipeline.toml")).unwrap();
    let fields = doc["pipelines"][0]["schema"]
        .as_array()
        .expect("pipelines[0].schema");
    Arc::new(Schema::new(fields.iter().map(field).collect::<Vec<_>>()))
}

fn field(f: &toml::Value) -> Field {
    let name = f["name"].as_str().unwrap();
    let nullable = f
        .get("nullable")
        .and_then(toml::Value::as_bool)
        .unwrap_or(true);
    let ty = match f["type"].as_str().unwrap() {
        "utf8" => DataType::Utf8,
        "float64" => DataType::Float64,
        "int64" => DataType::Int64,
        "struct" => DataType::Struct(
            f["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(field)
                .collect::<Vec<_>>()
                .into(),
        ),
        t => panic!("type {t} is not used by this example"),
    };
    Field::new(name, ty, nullable)
}

fn decoder() -> arrow_json::reader::Decoder {
    arrow_json::ReaderBuilder::new(schema())
        .build_decoder()
        .unwrap()
}

/// One row per line, in order, or the decoder's error for that line, as
/// the worker dead-letters such a record (`invalid-input`) before the call.
fn decode_line(line: &str) -> Result<(), String> {
    let mut d = decoder();
    d.decode(line.as_bytes()).map_err(|e| e.to_string())?;
    d.flush().map_err(|e| e.to_string())?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
enum Row {
    /// The output values of one input, as JSON text.
    Out(Vec<String>),
    /// (kind, message): a dead letter.
    Error(&'static str, String),
}

/// Per input line: its output JSON lines, or its dead letter.
fn run(lines: &str) -> Vec<Row> {
    let lines: Vec<&str> = lines.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut per_row: Vec<Row> = Vec::new();
    let mut good = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        match decode_line(l) {
            Ok(()) => {
                good.push(i);
                per_row.push(Row::Out(vec![]));
            }
            Err(e) => per_row.push(Row::Error("invalid-input", e)),
        }
    }
    let mut d = decoder();
    for &i in &good {
        d.decode(lines[i].as_bytes()).unwrap();
    }
    let input = d
        .flush()
        .unwrap()
        .unwrap_or_else(|| RecordBatch::new_empty(schema()));
    let out = columnar::call(price, &input).unwrap();
    let s = out.schema();
    let keep: Vec<usize> = (0..s.fields().len())
        .filter(|&i| ![ROW, TOPIC, ERROR].contains(&s.field(i).name().as_str()))
        .collect();
    let mut buf = Vec::new();
    let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
    w.write(&out.project(&keep).unwrap()).unwrap();
    w.finish().unwrap();
    drop(w);
    let text = String::from_utf8(buf).unwrap();
    let rows = out
        .column_by_name(ROW)
        .unwrap()
        .as_primitive::<UInt32Type>();
    let errors = out.column_by_name(ERROR).unwrap().as_string::<i32>();
    for (r, line) in text.lines().enumerate() {
        let at = good[rows.value(r) as usize];
        if errors.is_valid(r) {
            per_row[at] = Row::Error("failed", errors.value(r).to_string());
        } else if let Row::Out(v) = &mut per_row[at] {
            v.push(line.to_string());
        }
    }
    per_row
}

#[test]
fn sample_gives_expected_byte_for_byte() {
    let got: Vec<String> = run(include_str!("../sample.jsonl"))
        .into_iter()
        .enumerate()
        .flat_map(|(i, r)| match r {
            Row::Out(v) => v,
            Row::Error(k, e) => panic!("sample line {}: {k}: {e}", i + 1),
        })
        .collect();
    let want: Vec<&str> = include_str!("../expected.jsonl").lines().collect();
    assert_eq!(got.len(), 7);
    assert_eq!(got, want);
}

#[test]
fn invalid_rows_get_their_own_error_and_the_rest_flow() {
    let got = run(include_str!("../invalid.jsonl"));
    let kinds: Vec<&str> = got
        .iter()
        .map(|r| match r {
            Row::Out(_) => "out",
            Row::Error(k, _) => k,
        })
        .collect();
    // A price that is not a number, or missing while declared non-null, never
    // reaches the function: the worker's decoder refuses that record alone.
    assert_eq!(
        kinds,
        [
            "failed",
            "failed",
            "failed",
            "invalid-input",
            "invalid-input",
            "out"
        ]
    );

    // invalid.expected.jsonl is the golden file for `pipeline-worker test
    // --expect` (flat layout): an error line has the kind and a substring
    // of the message; an output line the exact value.
    let want: Vec<pipeline_sdk::Value> = include_str!("../invalid.expected.jsonl")
        .lines()
        .map(|l| pipeline_sdk::serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(want.len(), got.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        match g {
            Row::Error(kind, msg) => {
                assert_eq!(w["error"], *kind, "line {}", i + 1);
                let sub = w["message"].as_str().unwrap();
                assert!(
                    msg.contains(sub),
                    "line {}: {msg:?} does not contain {sub:?}",
                    i + 1
                );
            }
            Row::Out(v) => {
                assert_eq!(v.len(), 1);
                let got: pipeline_sdk::Value = pipeline_sdk::serde_json::from_str(&v[0]).unwrap();
                assert_eq!(&got, w, "line {}", i + 1);
            }
        }
    }
}

#[test]
fn a_wrong_schema_is_invalid_input_naming_the_column() {
    let schema = Schema::new(vec![Field::new("base_price", DataType::Utf8, true)]);
    let b = RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(StringArray::from(vec!["1"]))],
    )
    .unwrap();
    let e = columnar::call(price, &b).unwrap_err();
    assert_eq!(
        e,
        TransformError::invalid_input(
            "column `base_price` must be float64, found Utf8 (fix the pipeline's schema)"
        )
    );
}

#[test]
fn rates_match_the_per_record_example() {
    assert_eq!(discount_rate("PREMIUM"), Some(0.15));
    assert_eq!(discount_rate("standard"), Some(0.05));
    assert_eq!(discount_rate("New"), Some(0.10));
    assert_eq!(discount_rate("gold"), None);
    assert_eq!(cents(18.9905), 18.99);
}

#[test]
fn an_empty_batch_prices_nothing() {
    let out = columnar::call(price, &RecordBatch::new_empty(schema())).unwrap();
    assert_eq!(out.num_rows(), 0);
    assert_eq!(
        out.schema()
            .field_with_name("total_price")
            .unwrap()
            .data_type(),
        &DataType::Float64
    );
}
