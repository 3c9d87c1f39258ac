//! `pipeline-worker test`: runs sample records through a component in the
//! same sandbox, with the same limits, as production — no Kafka — and
//! compares the outputs with a golden file.
//!
//! Expected-file formats (JSON lines), detected from the first line:
//! * a flat output stream: one output value per line, in order (filtered
//!   records simply have no line);
//! * one JSON array per input line: that input's outputs, each a plain value
//!   (default topic) or `{"topic": "t", "value": v}`; `{"error": "kind"}`
//!   instead of the array says the record must fail with that error kind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::config::Limits;
use crate::sandbox::{
    ArtifactCache, CacheKey, EpochTicker, Function, InputRecord, OutputRecord, RecordError, Runner,
    SandboxOptions, CACHE_KEY_ENV,
};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// The component to test.
    #[arg(long)]
    pub component: PathBuf,
    /// Input records: one record value per line.
    #[arg(long)]
    pub input: PathBuf,
    /// Golden outputs (see `pipeline-worker test --help`).
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// Fuel per record (as `limits.fuel`); default: no fuel metering.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Wall-clock deadline per record.
    #[arg(long, default_value_t = Limits::default().deadline_ms)]
    pub deadline_ms: u64,
    /// Cap on each linear memory.
    #[arg(long, default_value_t = Limits::default().memory_bytes)]
    pub memory_bytes: u64,
    /// Where precompiled components are cached.
    #[arg(long, default_value = ".cache/pipeline-worker")]
    pub cache_dir: PathBuf,
}

enum Expected {
    Stream(Vec<Value>),
    PerInput(Vec<Value>),
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<(usize, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect())
}

fn read_expected(path: &Path) -> anyhow::Result<Expected> {
    let lines = read_lines(path)?;
    let mut values = Vec::with_capacity(lines.len());
    for (n, l) in &lines {
        values.push(
            serde_json::from_str::<Value>(l)
                .with_context(|| format!("{}:{n}: not JSON", path.display()))?,
        );
    }
    Ok(
        if lines
            .first()
            .is_some_and(|(_, l)| l.trim_start().starts_with('['))
        {
            Expected::PerInput(values)
        } else {
            Expected::Stream(values)
        },
    )
}

/// An output as the golden files write it.
fn render(o: &OutputRecord) -> Value {
    let value = match &o.value {
        None => Value::Null,
        Some(v) => serde_json::from_slice::<Value>(v)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(v).into_owned())),
    };
    match &o.topic {
        Some(t) => serde_json::json!({"topic": t, "value": value}),
        None => value,
    }
}

/// JSON equality with numbers compared by value: `60` and `60.0` are the same
/// output whichever language wrote it.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn matches_output(expected: &Value, o: &OutputRecord) -> bool {
    let actual = render(o);
    if same(&actual, expected) {
        return true;
    }
    // `{"topic": null, "value": v}` names the default topic explicitly.
    if o.topic.is_none() {
        if let Some(obj) = expected.as_object() {
            if obj.len() == 2 && obj.get("topic") == Some(&Value::Null) {
                return obj.get("value").is_some_and(|v| same(v, &actual));
            }
        }
    }
    false
}

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    let limits = Limits {
        fuel: args.fuel,
        deadline_ms: args.deadline_ms,
        memory_bytes: args.memory_bytes,
        ..Limits::default()
    };
    let key = CacheKey::resolve(
        std::env::var(CACHE_KEY_ENV).ok().as_deref(),
        None,
        &args.cache_dir,
    )?;
    let opts = SandboxOptions {
        cache: ArtifactCache::new(&args.cache_dir).with_key(key),
        ticker: EpochTicker::start(Duration::from_millis(10)),
        epoch_tick_ms: 10,
        pooling: false,
        max_instances: 1,
    };
    let name = args
        .component
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function".into());
    let f = Function::load_file(&name, &args.component, &limits, &opts)?;
    println!(
        "{}: {} bytes, {}, {} in {} ms, batch export: {}",
        args.component.display(),
        f.load_report.size_bytes,
        f.digest,
        if f.load_report.from_cache {
            "loaded from cache"
        } else {
            "compiled"
        },
        f.load_report.load_ms,
        f.load_report.exports_batch
    );
    let inputs = read_lines(&args.input)?;
    let expected = args.expect.as_deref().map(read_expected).transpose()?;
    let mut runner = Runner::new(f);
    let mut problems: Vec<String> = Vec::new();
    let mut stream: Vec<OutputRecord> = Vec::new();
    for (idx, (line_no, line)) in inputs.iter().enumerate() {
        let record = InputRecord {
            key: None,
            value: Some(line.as_bytes().to_vec()),
            headers: vec![],
            topic: "test".into(),
            partition: 0,
            offset: idx as i64,
            timestamp: None,
        };
        let before = runner.stats;
        let result = runner
            .run_batch(std::slice::from_ref(&record))
            .pop()
            .expect("one result");
        let after = runner.stats;
        let micros = (after.wasm_nanos - before.wasm_nanos) / 1000;
        let fuel = match limits.fuel {
            Some(_) => format!(", fuel {}", after.fuel_consumed - before.fuel_consumed),
            None => String::new(),
        };
        let at = format!("{}:{line_no}", args.input.display());
        match &result {
            Ok(outs) => {
                println!("{at}: {} output(s), {micros} µs{fuel}", outs.len());
                for o in outs {
                    println!("    {}", render(o));
                }
            }
            Err(e) => println!("{at}: ERROR [{}] {e} ({micros} µs{fuel})", e.kind()),
        }
        match (&expected, &result) {
            (Some(Expected::PerInput(exp)), _) => {
                check_per_input(&at, exp.get(idx), &result, &mut problems)
            }
            (_, Err(e)) => problems.push(format!("{at}: {} error: {e}", e.kind())),
            (_, Ok(outs)) => stream.extend(outs.iter().cloned()),
        }
    }
    if let Some(Expected::Stream(exp)) = &expected {
        let path = args.expect.as_ref().unwrap().display();
        for (i, e) in exp.iter().enumerate() {
            match stream.get(i) {
                None => problems.push(format!(
                    "{path}:{}: expected {e}, but there are only {} outputs",
                    i + 1,
                    stream.len()
                )),
                Some(o) if !matches_output(e, o) => problems.push(format!(
                    "{path}:{}: expected {e}\n      got {}",
                    i + 1,
                    render(o)
                )),
                Some(_) => {}
            }
        }
        for o in stream.iter().skip(exp.len()) {
            problems.push(format!("{path}: unexpected extra output {}", render(o)));
        }
    }
    if let Some(Expected::PerInput(exp)) = &expected {
        if exp.len() != inputs.len() {
            problems.push(format!(
                "{}: {} lines for {} inputs",
                args.expect.as_ref().unwrap().display(),
                exp.len(),
                inputs.len()
            ));
        }
    }
    let s = runner.stats;
    println!(
        "\n{} record(s), {} instantiation(s), wasm time {} µs{}",
        inputs.len(),
        s.instantiations,
        s.wasm_nanos / 1000,
        limits
            .fuel
            .map(|_| format!(", fuel {}", s.fuel_consumed))
            .unwrap_or_default()
    );
    if problems.is_empty() {
        println!("PASS");
        Ok(())
    } else {
        for p in &problems {
            println!("FAIL {p}");
        }
        bail!("{} problem(s)", problems.len())
    }
}

fn check_per_input(
    at: &str,
    exp: Option<&Value>,
    result: &Result<Vec<OutputRecord>, RecordError>,
    problems: &mut Vec<String>,
) {
    let Some(exp) = exp else {
        problems.push(format!("{at}: no expected line for this input"));
        return;
    };
    match (exp, result) {
        (Value::Array(want), Ok(outs)) => {
            if want.len() != outs.len() || !want.iter().zip(outs).all(|(w, o)| matches_output(w, o))
            {
                let got: Vec<Value> = outs.iter().map(render).collect();
                problems.push(format!(
                    "{at}: expected {exp}\n      got {}",
                    Value::Array(got)
                ));
            }
        }
        (Value::Object(o), Err(e)) if o.get("error").and_then(Value::as_str) == Some(e.kind()) => {}
        (_, Err(e)) => problems.push(format!("{at}: expected {exp}, got {} error: {e}", e.kind())),
        (_, Ok(outs)) => {
            let got: Vec<Value> = outs.iter().map(render).collect();
            problems.push(format!("{at}: expected {exp}, got {}", Value::Array(got)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same;
    use serde_json::json;

    #[test]
    fn numbers_compare_by_value_everything_else_exactly() {
        assert!(same(
            &json!({"a": 60, "b": [1.0]}),
            &json!({"a": 60.0, "b": [1]})
        ));
        assert!(!same(&json!({"a": 60}), &json!({"a": 60.5})));
        assert!(!same(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!same(&json!({"a": "1"}), &json!({"a": 1})));
    }
}
