//! The customer's local loop before `test`: `init` writes a ready project,
//! `build` runs the right toolchain (componentize-py, cargo, componentize-js)
//! against our WIT and prints the size and digest of the component.
//!
//! Two ways to find the SDK, so that an installed binary works from any
//! folder and the repository's own scripts keep working:
//! - a checkout (`PIPELINE_SDK_HOME`, else found by walking up from the
//!   working directory and the executable): the `scripts/build-*.sh` of that
//!   checkout, which use its `sdk-wit/` tree;
//! - otherwise the installed SDK packages: the `pipeline-sdk` Python package
//!   (its `pipeline-sdk` command), the `pipeline-sdk` npm package (its
//!   `pipeline-sdk-js` command), cargo with the `wasm32-wasip2` target. The
//!   WIT and the templates are in the binary, so `init` needs neither.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};

/// The WIT this worker runs (the one source of truth; the SDK packages carry
/// copies that a test below compares with it).
pub const WIT: &str = include_str!("../../sdk-wit/wit/transform.wit");
/// The WIT package the templates and the SDK packages target.
pub const WIT_PACKAGE: &str = "pipeline:transform@0.2.0";
/// The SDK packages' version range for that WIT: their major.minor is the
/// WIT's (README "Writing functions": the version scheme).
const SDK_RANGE_PY: &str = "pipeline-sdk==0.2.*";
const SDK_RANGE_NPM: &str = "0.2.x";
/// Where `init --lang rust` points the `pipeline-sdk` git dependency when
/// neither `--rust-sdk` nor a checkout says otherwise: set when the release
/// binary is built, since only the publisher knows its repository URL.
const RUST_SDK_GIT: Option<&str> = option_env!("PIPELINE_SDK_GIT_URL");

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Python,
    Rust,
    Js,
    /// TypeScript: built like `js` after its types are stripped (no type
    /// checking in the build; `tsconfig.json` lets `tsc --noEmit` check it).
    Ts,
}

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Language of the function.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// Project folder to create (also the function's name).
    pub name: String,
    /// Rust only: where the `pipeline-sdk` crate comes from, a folder (an
    /// unpacked `cargo package` of it, or sdk-wit/rust of a checkout) or a git
    /// URL of the pipeline-worker repository. Default: the checkout's
    /// sdk-wit/rust when run inside one.
    #[arg(long, env = "PIPELINE_SDK_RUST", value_name = "PATH|GIT_URL")]
    pub rust_sdk: Option<String>,
    /// A columnar function (Rust, JavaScript or TypeScript): one call per
    /// batch over an Apache Arrow record batch, with a `pipeline.toml`
    /// declaring its schema.
    #[arg(long)]
    pub columnar: bool,
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Project folder (default: the current one).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Where to write the component (default: <dir>/<name>.wasm).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

/// A toolchain `build` needs and did not find: what is missing and the
/// command that installs it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{missing}\n  install: {install}")]
pub struct MissingTool {
    pub missing: String,
    pub install: String,
}

/// The checkout holding `sdk-wit/wit/transform.wit` and `scripts/`, if any.
/// `PIPELINE_SDK_HOME` set to a folder must be one; set but empty, it means
/// "use the installed packages" even inside a checkout.
pub fn sdk_home() -> anyhow::Result<Option<PathBuf>> {
    let is_checkout =
        |d: &Path| d.join("sdk-wit/wit/transform.wit").is_file() && d.join("scripts").is_dir();
    if let Some(h) = std::env::var_os("PIPELINE_SDK_HOME") {
        if h.is_empty() {
            return Ok(None);
        }
        let p = PathBuf::from(h);
        if is_checkout(&p) {
            return Ok(Some(p));
        }
        bail!(
            "PIPELINE_SDK_HOME={} has no sdk-wit/wit/transform.wit and scripts/ (unset it to use the installed SDK packages)",
            p.display()
        );
    }
    let mut starts = vec![std::env::current_dir()?];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    Ok(starts
        .iter()
        .flat_map(|s| s.ancestors())
        .find(|d| is_checkout(d))
        .map(Path::to_path_buf))
}

/// The first executable file named `tool` in the `PATH`-style list `path`.
fn on_path(tool: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The `pipeline-sdk` command of the Python package: the project's `.venv`,
/// the active virtualenv, then `PATH`.
fn python_sdk(dir: &Path, path: Option<&OsStr>) -> Result<PathBuf, MissingTool> {
    let mut candidates = vec![dir.join(".venv/bin/pipeline-sdk")];
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        candidates.push(PathBuf::from(v).join("bin/pipeline-sdk"));
    }
    if let Some(p) = candidates.into_iter().find(|p| is_executable(p)) {
        return Ok(p);
    }
    if let Some(p) = on_path("pipeline-sdk", path) {
        return Ok(p);
    }
    let python = ["python3", "python"]
        .into_iter()
        .find(|t| on_path(t, path).is_some());
    let Some(python) = python else {
        return Err(MissingTool {
            missing: "a Python function needs Python >= 3.9 and the pipeline-sdk package; no python3 on PATH".into(),
            install: format!("apt-get install python3 python3-venv (or your OS's package), then python3 -m venv .venv && .venv/bin/pip install '{SDK_RANGE_PY}'"),
        });
    };
    let also = if on_path("componentize-py", path).is_some() {
        " (componentize-py is there, but the SDK is bundled into every component, so the build needs the pipeline-sdk package, which depends on the right componentize-py)"
    } else {
        ""
    };
    Err(MissingTool {
        missing: format!(
            "no `pipeline-sdk` command (the pipeline-sdk Python package) in {}, $VIRTUAL_ENV/bin or PATH{also}",
            dir.join(".venv/bin").display()
        ),
        install: format!(
            "{python} -m venv {venv} && {venv}/bin/pip install '{SDK_RANGE_PY}'   (or: pip install -r {req}, or pip install ./pipeline_sdk-*.whl)",
            venv = dir.join(".venv").display(),
            req = dir.join("requirements.txt").display(),
        ),
    })
}

/// The `pipeline-sdk-js` command of the npm package: the project's
/// node_modules, then `PATH` (a global install); node itself first.
fn js_sdk(dir: &Path, path: Option<&OsStr>) -> Result<PathBuf, MissingTool> {
    if on_path("node", path).is_none() {
        return Err(MissingTool {
            missing: "a JavaScript function needs Node.js >= 20 and the pipeline-sdk npm package; no node on PATH".into(),
            install: "install Node.js 20 or later (https://nodejs.org, or apt-get install nodejs npm), then npm install in the project".into(),
        });
    }
    let local = dir.join("node_modules/.bin/pipeline-sdk-js");
    if is_executable(&local) {
        return Ok(local);
    }
    if let Some(p) = on_path("pipeline-sdk-js", path) {
        return Ok(p);
    }
    Err(MissingTool {
        missing: format!(
            "no `pipeline-sdk-js` command (the pipeline-sdk npm package) in {} or PATH",
            local.parent().unwrap().display()
        ),
        install: format!(
            "cd {} && npm install   (its package.json depends on pipeline-sdk {SDK_RANGE_NPM}; or npm install ./pipeline-sdk-*.tgz)",
            dir.display()
        ),
    })
}

/// cargo, and the `wasm32-wasip2` standard library of the toolchain that
/// builds `dir` (rustup's override files apply, hence `current_dir`).
fn rust_toolchain(dir: &Path, path: Option<&OsStr>) -> Result<PathBuf, MissingTool> {
    let Some(cargo) = on_path("cargo", path) else {
        return Err(MissingTool {
            missing: "a Rust function needs cargo with the wasm32-wasip2 target; no cargo on PATH".into(),
            install: "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --target wasm32-wasip2".into(),
        });
    };
    let sysroot = Command::new(cargo.with_file_name("rustc"))
        .args(["--print", "sysroot"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match sysroot {
        Some(root) if root.join("lib/rustlib/wasm32-wasip2/lib").is_dir() => Ok(cargo),
        Some(root) => Err(MissingTool {
            missing: format!(
                "the Rust target wasm32-wasip2 is not installed in the toolchain at {}",
                root.display()
            ),
            install: "rustup target add wasm32-wasip2".into(),
        }),
        None => Err(MissingTool {
            missing: format!("`rustc --print sysroot` failed next to {}", cargo.display()),
            install: "rustup toolchain install stable --target wasm32-wasip2".into(),
        }),
    }
}

// The templates target `pipeline:transform@0.2.0` (through the SDKs) and
// show the one 0.2 difference a new function must decide on: a tombstone
// (null value) is distinct from an empty value. They pass tombstones on, so a
// pipeline switched to `tombstones = "function"` keeps its deletes.
const PY_TEMPLATE: &str = r#"from pipeline_sdk import transform, Record

# pipeline:transform@0.2.0. A tombstone (null value) reaches the function only
# with the pipeline's tombstones = "function": record.value is None then, and
# record.fields would raise InvalidInput.


@transform
def NAME(record: Record) -> Record:
    """Add computed fields to each event record."""
    if record.value is None:  # a tombstone: pass the delete on, keyed
        return record
    record.fields["session_duration_minutes"] = (
        record.fields["session_end"] - record.fields["session_start"]
    ) / 60.0
    return record
"#;

const RUST_TEMPLATE: &str = r#"use pipeline_sdk::{FieldsExt, Output, Record, TransformError};

// pipeline:transform@0.2.0. A tombstone (null value) reaches the function only
// with the pipeline's tombstones = "function": record.value() is None then,
// and record.fields() is invalid-input.
fn transform(record: Record) -> Result<Vec<Output>, TransformError> {
    if record.is_tombstone() {
        return Ok(vec![Output::from(record)]); // pass the delete on, keyed
    }
    let mut fields = record.fields()?;
    let start = fields.require_f64("session_start")?;
    let end = fields.require_f64("session_end")?;
    fields.insert("session_duration_minutes".into(), ((end - start) / 60.0).into());
    Ok(vec![Output::from(record).with_json(&fields)])
}

pipeline_sdk::export_transform!(transform);
"#;

const JS_TEMPLATE: &str = r#"import { transform } from "pipeline-sdk";

// pipeline:transform@0.2.0. A tombstone (null value) reaches the function only
// with the pipeline's tombstones = "function": record.value === null then,
// and record.fields throws InvalidInput.
export default transform((record) => {
  if (record.value === null) return record; // a tombstone: pass the delete on, keyed
  record.fields.session_duration_minutes =
    (record.fields.session_end - record.fields.session_start) / 60;
  return record;
});
"#;

// Types must be erasable: build-js.sh strips them (amaro, strip-only) rather
// than compiling, so the template avoids enum / namespace / parameter properties.
const TS_TEMPLATE: &str = r#"import { transform, Record } from "pipeline-sdk";

// pipeline:transform@0.2.0. A tombstone (null value) reaches the function only
// with the pipeline's tombstones = "function": record.value === null then,
// and record.fields throws InvalidInput. Types are stripped at build time, not
// checked: run `npx tsc --noEmit` for that (tsconfig.json maps pipeline-sdk).
interface Session {
  session_start: number;
  session_end: number;
  session_duration_minutes?: number;
}

export default transform((record: Record): Record => {
  if (record.value === null) return record; // a tombstone: pass the delete on, keyed
  const start: number = record.require("session_start", "number");
  const end: number = record.require("session_end", "number");
  (record.fields as Session).session_duration_minutes = (end - start) / 60;
  return record;
});
"#;

// Columnar: one call per batch. The conversion is one vectorised pass over
// the column (`PrimitiveArray::unary`, in arrow-array itself, so the project
// needs no arrow crate beyond the SDK's); the `_error` column shows how one
// row is refused without failing the batch.
const RUST_COLUMNAR_TEMPLATE: &str = r#"use std::sync::Arc;

use pipeline_sdk::columnar::arrow_array::{cast::AsArray, types::Float64Type, Float64Array};
use pipeline_sdk::columnar::{self, DataType, Field, RecordBatch, Schema};
use pipeline_sdk::TransformError;

// pipeline:transform@0.2.0, world transform-columnar: the worker decodes up to
// `batch_size` records into one batch of the schema in pipeline.toml (fields
// not declared there are dropped) and calls this once per batch. Output row i
// comes from the input row named by its `_row` column; key, headers and
// timestamp are that input's.
fn convert(batch: RecordBatch) -> Result<RecordBatch, TransformError> {
    let celsius = batch
        .column_by_name("celsius")
        .and_then(|c| c.as_primitive_opt::<Float64Type>())
        .ok_or_else(|| {
            TransformError::invalid_input("no float64 column `celsius`: declare it in pipeline.toml's schema")
        })?;
    // One pass over the whole column: no per-record call, no JSON parsing.
    let fahrenheit: Float64Array = celsius.unary(|c| c * 9.0 / 5.0 + 32.0);
    // A non-null `_error` dead-letters that row's record (kind `failed`);
    // the rest of the batch is produced.
    let errors: Vec<Option<String>> = celsius
        .iter()
        .map(|c| match c {
            Some(c) if c < -273.15 => Some(format!("celsius {c} is below absolute zero")),
            _ => None,
        })
        .collect();

    let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new("fahrenheit", DataType::Float64, true)));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(fahrenheit));
    let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| TransformError::failed(format!("building the output batch: {e}")))?;
    columnar::with_errors(columnar::with_row_index(out)?, errors) // 1:1, in order
}

pipeline_sdk::export_columnar!(convert);

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_sdk::columnar::{arrow_array::StringArray, ArrayRef};

    // `cargo test` runs natively, through the same Arrow IPC path as the worker.
    #[test]
    fn converts_and_refuses_impossible_readings() {
        let input = RecordBatch::try_from_iter([
            ("sensor", Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
            ("celsius", Arc::new(Float64Array::from(vec![100.0, -300.0]))),
        ])
        .unwrap();
        let out = columnar::call(convert, &input).unwrap();
        let f = out.column_by_name("fahrenheit").unwrap().as_primitive::<Float64Type>();
        assert_eq!(f.value(0), 212.0);
        let errors = out.column_by_name(columnar::ERROR).unwrap().as_string::<i32>();
        assert!(errors.is_null(0) && errors.value(1).contains("below absolute zero"));
    }
}
"#;

const COLUMNAR_SAMPLE: &str = "{\"sensor\":\"greenhouse-1\",\"celsius\":21.5}\n{\"sensor\":\"freezer-2\",\"celsius\":-40.0}\n{\"sensor\":\"probe-3\",\"celsius\":-300.0}\n{\"sensor\":\"boiler-4\",\"celsius\":100.0}\n";
// The flat golden layout: one line per output, an error line for the refused
// row. Values as the worker writes them (arrow-json, schema order).
const COLUMNAR_EXPECTED: &str = "{\"sensor\":\"greenhouse-1\",\"celsius\":21.5,\"fahrenheit\":70.7}\n{\"sensor\":\"freezer-2\",\"celsius\":-40.0,\"fahrenheit\":-40.0}\n{\"error\":\"failed\",\"message\":\"celsius -300 is below absolute zero\"}\n{\"sensor\":\"boiler-4\",\"celsius\":100.0,\"fahrenheit\":212.0}\n";

// The JavaScript columnar template also routes through `_topic` (the
// pipeline's second output topic), so it shows all three mapping columns.
// TOPIC is replaced by the project's topic prefix.
const JS_COLUMNAR_TEMPLATE: &str = r#"import { columnar, InvalidInput, withColumn, withErrors, withRowIndex, withTopics } from "pipeline-sdk/columnar";

// pipeline:transform@0.2.0, world transform-columnar: the worker decodes up to
// `batch_size` records into one Arrow batch of the schema in pipeline.toml
// (fields not declared there are dropped) and calls this once per batch with
// it as an apache-arrow Table. Output row i comes from the input row named by
// its `_row` column; key, headers and timestamp are that input's.

// Readings at or above this go to the pipeline's second output topic.
const ALERT_CELSIUS = 90;

export default columnar(function convert(table) {
  const celsius = table.getChild("celsius");
  if (celsius === null || String(celsius.type) !== "Float64") {
    throw new InvalidInput("no float64 column `celsius`: declare it in pipeline.toml's schema");
  }
  // The whole column as one Float64Array: no per-record call, no JSON
  // parsing (the schema declares it non-nullable, so every slot is a reading).
  const c = celsius.toArray();
  const fahrenheit = new Float64Array(c.length);
  const errors = new Array(c.length).fill(null);
  const topics = new Array(c.length).fill(null);
  for (let i = 0; i < c.length; i++) {
    fahrenheit[i] = (c[i] * 9) / 5 + 32;
    // A non-null `_error` dead-letters that row's record (kind `failed`);
    // the rest of the batch is produced.
    if (c[i] < -273.15) errors[i] = `celsius ${c[i]} is below absolute zero`;
    // `_topic`: one of pipeline.toml's output_topics; null = the first.
    else if (c[i] >= ALERT_CELSIUS) topics[i] = "TOPIC-alerts";
  }
  const out = withColumn(table, "fahrenheit", fahrenheit);
  return withTopics(withErrors(withRowIndex(out), errors), topics); // 1:1, in order
});
"#;

// Erasable types only, as for the per-record TS template.
const TS_COLUMNAR_TEMPLATE: &str = r#"import { columnar, InvalidInput, withColumn, withErrors, withRowIndex, withTopics } from "pipeline-sdk/columnar";
import type { Table } from "apache-arrow";

// pipeline:transform@0.2.0, world transform-columnar: the worker decodes up to
// `batch_size` records into one Arrow batch of the schema in pipeline.toml
// (fields not declared there are dropped) and calls this once per batch with
// it as an apache-arrow Table. Output row i comes from the input row named by
// its `_row` column; key, headers and timestamp are that input's. Types are
// stripped at build time, not checked: run `npx tsc --noEmit` for that.

// Readings at or above this go to the pipeline's second output topic.
const ALERT_CELSIUS = 90;

export default columnar(function convert(table: Table): Table {
  const celsius = table.getChild("celsius");
  if (celsius === null || String(celsius.type) !== "Float64") {
    throw new InvalidInput("no float64 column `celsius`: declare it in pipeline.toml's schema");
  }
  // The whole column as one Float64Array: no per-record call, no JSON
  // parsing (the schema declares it non-nullable, so every slot is a reading).
  const c = celsius.toArray() as Float64Array;
  const fahrenheit = new Float64Array(c.length);
  const errors: (string | null)[] = new Array(c.length).fill(null);
  const topics: (string | null)[] = new Array(c.length).fill(null);
  for (let i = 0; i < c.length; i++) {
    fahrenheit[i] = (c[i] * 9) / 5 + 32;
    // A non-null `_error` dead-letters that row's record (kind `failed`);
    // the rest of the batch is produced.
    if (c[i] < -273.15) errors[i] = `celsius ${c[i]} is below absolute zero`;
    // `_topic`: one of pipeline.toml's output_topics; null = the first.
    else if (c[i] >= ALERT_CELSIUS) topics[i] = "TOPIC-alerts";
  }
  const out = withColumn(table, "fahrenheit", fahrenheit);
  return withTopics(withErrors(withRowIndex(out), errors), topics); // 1:1, in order
});
"#;

/// The JS templates' golden file: the Rust one with the boiling reading on
/// the alerts topic.
fn js_columnar_expected(topic: &str) -> String {
    COLUMNAR_EXPECTED.replace(
        "{\"sensor\":\"boiler-4\",\"celsius\":100.0,\"fahrenheit\":212.0}",
        &format!("{{\"topic\":\"{topic}-alerts\",\"value\":{{\"sensor\":\"boiler-4\",\"celsius\":100.0,\"fahrenheit\":212.0}}}}"),
    )
}

/// The apache-arrow the JS SDK bundles into columnar components (its
/// package.json pins it; a test below checks they agree).
const JS_ARROW_VERSION: &str = "21.2.0";

/// The columnar project's further dependencies: none (the SDK re-exports the
/// arrow crates it uses), and how to add kernels at the SDK's arrow version.
const COLUMNAR_CARGO_EXTRA: &str = "# The `columnar` feature brings arrow-array, arrow-schema, arrow-ipc and\n# arrow-select (re-exported as pipeline_sdk::columnar::*). Add kernels at the\n# same arrow version, without default features, e.g.\n#   arrow-arith = { version = \"60.1\", default-features = false }\n";

/// A worker config for the columnar project: `test --config` takes the
/// schema (and limits) from it, and `run` can use it as is.
fn columnar_pipeline_toml(name: &str, alerts: bool) -> String {
    let topic = name.replace('_', "-");
    let outputs = if alerts {
        format!("[\"{topic}-out\", \"{topic}-alerts\"]   # the first is the default; the function routes to the second")
    } else {
        format!("[\"{topic}-out\"]")
    };
    format!(
        r#"# A worker config running {name}: `pipeline-worker test --config pipeline.toml`
# takes the schema and limits from it, `pipeline-worker run --config pipeline.toml`
# runs it against Kafka.
[kafka]
brokers = "127.0.0.1:9092"

[[pipelines]]
name = "{topic}"
input_topics = ["{topic}-in"]
output_topics = {outputs}
dead_letter_topic = "{topic}-dead-letters"
component = "{name}.wasm"    # relative to this file; `pipeline-worker build` writes it
format = "json"              # each value is one JSON object
batch_size = 64              # rows per call (and per Arrow batch)

# The Arrow schema of every batch. Input fields not declared here are
# dropped; a value that does not fit (wrong type, a non-nullable field
# missing) is dead-lettered `invalid-input` naming the field, before the call.
[[pipelines.schema]]
name = "sensor"
type = "utf8"
nullable = false

[[pipelines.schema]]
name = "celsius"
type = "float64"
nullable = false
"#
    )
}

const SAMPLE: &str = "{\"event_id\":\"e1\",\"session_start\":1700000000,\"session_end\":1700003600}\n{\"event_id\":\"e2\",\"session_start\":1700000000,\"session_end\":1700000300}\n";
const EXPECTED: &str = "{\"event_id\":\"e1\",\"session_start\":1700000000,\"session_end\":1700003600,\"session_duration_minutes\":60.0}\n{\"event_id\":\"e2\",\"session_start\":1700000000,\"session_end\":1700000300,\"session_duration_minutes\":5.0}\n";

/// The `pipeline-sdk` dependency line of a Rust project, decided before
/// anything is written so that a refusal leaves no half-made project.
fn rust_sdk_dependency(spec: Option<&str>, checkout: Option<&Path>) -> anyhow::Result<String> {
    let toml_str = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let is_url = |s: &str| s.contains("://") || s.starts_with("git@");
    let from_path = |p: &Path| -> anyhow::Result<String> {
        let manifest = p.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("--rust-sdk {}: no Cargo.toml there", p.display()))?;
        if !text.contains("name = \"pipeline-sdk\"") {
            bail!(
                "--rust-sdk {}: {} is not the pipeline-sdk crate",
                p.display(),
                manifest.display()
            );
        }
        let abs = p.canonicalize()?;
        Ok(format!(
            "pipeline-sdk = {{ path = {} }}",
            toml_str(&abs.display().to_string())
        ))
    };
    match (spec, checkout, RUST_SDK_GIT) {
        (Some(s), _, _) if is_url(s) => Ok(format!("pipeline-sdk = {{ git = {} }}", toml_str(s))),
        (Some(s), _, _) => from_path(Path::new(s)),
        (None, Some(home), _) => from_path(&home.join("sdk-wit/rust")),
        (None, None, Some(url)) => Ok(format!("pipeline-sdk = {{ git = {} }}", toml_str(url))),
        (None, None, None) => bail!(
            "--rust-sdk: say where the pipeline-sdk crate is, a folder (an unpacked `cargo package` of sdk-wit/rust, or sdk-wit/rust of a checkout) or the git URL of the pipeline-worker repository; this binary has no default (it was built without PIPELINE_SDK_GIT_URL)"
        ),
    }
}

/// `dep` (one `pipeline-sdk = { ... }` line) with cargo features added.
fn with_features(dep: &str, features: &[&str]) -> String {
    let list = features
        .iter()
        .map(|f| format!("{f:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    match dep.strip_suffix(" }") {
        Some(head) => format!("{head}, features = [{list}] }}"),
        None => dep.to_owned(),
    }
}

pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let name = &args.name;
    if name.is_empty()
        || !name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        bail!("NAME {name:?}: use a letter then letters, digits or _ (it becomes a module/crate name)");
    }
    let dir = PathBuf::from(name);
    if dir.exists() {
        bail!("{} already exists; pick another NAME", dir.display());
    }
    if args.columnar && args.lang == Lang::Python {
        bail!("--columnar: Python has no columnar (Arrow) SDK; use --lang rust, js or ts. pyarrow has no WASI build, and the other Arrow readers on PyPI are native extensions with no WASI wheels, so componentize-py cannot bundle any of them; a Python function stays per-record (JSON).");
    }
    let sdk = sdk_home()?;
    let rust_dep = match args.lang {
        Lang::Rust => {
            let dep = rust_sdk_dependency(args.rust_sdk.as_deref(), sdk.as_deref())?;
            Some(if args.columnar {
                with_features(&dep, &["columnar"])
            } else {
                dep
            })
        }
        _ => None,
    };
    std::fs::create_dir_all(dir.join("wit"))?;
    let write = |file: &str, text: &str| -> anyhow::Result<()> {
        std::fs::write(dir.join(file), text)
            .with_context(|| format!("writing {}", dir.join(file).display()))
    };
    let topic = name.replace('_', "-");
    let js = matches!(args.lang, Lang::Js | Lang::Ts);
    if args.columnar {
        write("sample.jsonl", COLUMNAR_SAMPLE)?;
        if js {
            write("expected.jsonl", &js_columnar_expected(&topic))?;
        } else {
            write("expected.jsonl", COLUMNAR_EXPECTED)?;
        }
        write("pipeline.toml", &columnar_pipeline_toml(name, js))?;
    } else {
        write("sample.jsonl", SAMPLE)?;
        write("expected.jsonl", EXPECTED)?;
    }
    // For reading and for other tools (jco types, wit-bindgen): the SDK
    // packages carry the same file and build against their own copy.
    write("wit/transform.wit", WIT)?;
    let npm_package = || {
        let mut deps = serde_json::json!({ "pipeline-sdk": SDK_RANGE_NPM });
        if args.columnar {
            // For editors and tsc; the build bundles the SDK's own pinned
            // copy, which npm dedupes with this one at the same version.
            deps["apache-arrow"] = JS_ARROW_VERSION.into();
        }
        let manifest = serde_json::json!({
            "name": name.to_ascii_lowercase().replace('_', "-"),
            "private": true,
            "type": "module",
            "scripts": { "build": "pipeline-worker build ." },
            "dependencies": deps,
        });
        serde_json::to_string_pretty(&manifest).map(|s| s + "\n")
    };
    let install = match args.lang {
        Lang::Python => {
            write(&format!("{name}.py"), &PY_TEMPLATE.replace("NAME", name))?;
            write(
                "requirements.txt",
                &format!("# The SDK and, through it, the pinned componentize-py. Its 0.2 line\n# targets the WIT {WIT_PACKAGE}.\n{SDK_RANGE_PY}\n"),
            )?;
            format!("python3 -m venv {name}/.venv && {name}/.venv/bin/pip install -r {name}/requirements.txt")
        }
        Lang::Js => {
            if args.columnar {
                write(
                    &format!("{name}.js"),
                    &JS_COLUMNAR_TEMPLATE.replace("TOPIC", &topic),
                )?;
            } else {
                write(&format!("{name}.js"), JS_TEMPLATE)?;
            }
            write("package.json", &npm_package()?)?;
            format!("(cd {name} && npm install)")
        }
        Lang::Ts => {
            if args.columnar {
                write(
                    &format!("{name}.ts"),
                    &TS_COLUMNAR_TEMPLATE.replace("TOPIC", &topic),
                )?;
            } else {
                write(&format!("{name}.ts"), TS_TEMPLATE)?;
            }
            write("package.json", &npm_package()?)?;
            // In a checkout the SDK is not in node_modules: point tsc at it
            // (and, for a columnar function, at its columnar module and the
            // apache-arrow it bundles).
            let paths = match &sdk {
                Some(home) => {
                    let js = home.join("sdk-wit/js");
                    let quoted = |p: PathBuf| serde_json::Value::String(p.display().to_string());
                    let mut map = vec![format!(
                        "\"pipeline-sdk\": [{}]",
                        quoted(js.join("pipeline-sdk.d.ts"))
                    )];
                    if args.columnar {
                        map.push(format!(
                            "\"pipeline-sdk/columnar\": [{}]",
                            quoted(js.join("pipeline-sdk-columnar.d.ts"))
                        ));
                        map.push(format!(
                            "\"apache-arrow\": [{}]",
                            quoted(js.join("node_modules/apache-arrow/Arrow.dom.d.ts"))
                        ));
                    }
                    format!("    \"paths\": {{ {} }},\n", map.join(", "))
                }
                None => String::new(),
            };
            write(
                "tsconfig.json",
                &format!(
                    "{{\n  \"compilerOptions\": {{\n{paths}    \"target\": \"es2022\",\n    \"module\": \"es2022\",\n    \"moduleResolution\": \"bundler\",\n    \"strict\": true,\n    \"noEmit\": true\n  }},\n  \"files\": [\"{name}.ts\"]\n}}\n"
                ),
            )?;
            format!("(cd {name} && npm install)")
        }
        Lang::Rust => {
            std::fs::create_dir_all(dir.join("src"))?;
            write(
                "src/lib.rs",
                if args.columnar {
                    RUST_COLUMNAR_TEMPLATE
                } else {
                    RUST_TEMPLATE
                },
            )?;
            write(
                "Cargo.toml",
                &format!(
                    "[package]\nname = \"{}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\n# The pipeline-worker Rust SDK (WIT {WIT_PACKAGE}), by path or by git:\n#   pipeline-sdk = {{ path = \"/path/to/pipeline-sdk\" }}   # sdk-wit/rust, or an unpacked `cargo package` of it\n#   pipeline-sdk = {{ git = \"https://…/pipeline-worker.git\" }}\n{}\n{}\n# Built on its own, not as part of another workspace.\n[workspace]\n",
                    name.replace('_', "-"),
                    rust_dep.as_deref().expect("decided above"),
                    if args.columnar {
                        COLUMNAR_CARGO_EXTRA
                    } else {
                        ""
                    },
                ),
            )?;
            "rustup target add wasm32-wasip2".to_owned()
        }
    };
    let mut lang = format!("{:?}", args.lang).to_lowercase();
    let (test, about) = if args.columnar {
        lang.push_str(", columnar");
        (
            format!("pipeline-worker test --config {name}/pipeline.toml --input {name}/sample.jsonl --expect {name}/expected.jsonl"),
            if js {
                "It gets one Apache Arrow record batch per call, as an apache-arrow `Table` of the schema declared in `pipeline.toml` (`[[pipelines.schema]]`), and returns one; tombstones never become rows (the pipeline's `tombstones` decides: pass, drop or dead-letter). The build bundles apache-arrow (the version the SDK pins) into the component: about 16 MB, and a JavaScript loop over a column is far slower than the Rust SDK's kernels (see the SDK's README)."
            } else {
                "It gets one Apache Arrow record batch per call, of the schema declared in `pipeline.toml` (`[[pipelines.schema]]`), and returns one batch; tombstones never become rows (the pipeline's `tombstones` decides: pass, drop or dead-letter). A columnar component carries arrow's code: about 2.5 MB with cargo's default release profile, ten times that with debug info (`debug = \"line-tables-only\"` or more), which a worker does not need to show a panic's file and line."
            },
        )
    } else {
        (
            format!("pipeline-worker test --component {name}/{name}.wasm --input {name}/sample.jsonl --expect {name}/expected.jsonl"),
            "A tombstone (null value) reaches it only with the pipeline's `tombstones = \"function\"`; the template passes it on unchanged.",
        )
    };
    let next = format!("  {install}\n  pipeline-worker build {name}\n  {test}");
    write(
        "README.md",
        &format!(
            "# {name}\n\nA pipeline-worker function ({lang}), WIT `{WIT_PACKAGE}` (`wit/transform.wit`). {about}\n\n```sh\n{}\n```\n",
            next.lines().map(str::trim_start).collect::<Vec<_>>().join("\n")
        ),
    )?;
    println!("created {}/ ({lang}); next:\n{next}", dir.display());
    Ok(())
}

fn detect(dir: &Path) -> anyhow::Result<(Lang, String, PathBuf)> {
    let dir_name = dir
        .canonicalize()
        .with_context(|| format!("{}: no such project folder", dir.display()))?
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function".into());
    let manifest = dir.join("Cargo.toml");
    if manifest.exists() {
        return Ok((Lang::Rust, dir_name, manifest));
    }
    let by_ext = |ext: &str| -> anyhow::Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        v.sort();
        Ok(v)
    };
    for (lang, ext) in [(Lang::Python, "py"), (Lang::Js, "js"), (Lang::Ts, "ts")] {
        let files = by_ext(ext)?;
        match files.as_slice() {
            [] => continue,
            [one] => {
                let stem = one.file_stem().unwrap().to_string_lossy().into_owned();
                return Ok((lang, stem, one.clone()));
            }
            many => bail!(
                "{}: {} .{ext} files ({}); a function project has exactly one",
                dir.display(),
                many.len(),
                many.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    bail!(
        "{}: no Cargo.toml, .py, .js or .ts file to build",
        dir.display()
    )
}

pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    let (lang, name, src) = detect(&args.dir)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.dir.join(format!("{name}.wasm")));
    let sdk = sdk_home()?;
    let path = std::env::var_os("PATH");
    let started = Instant::now();
    // Each tool shows its own progress (componentize-py and componentize-js
    // through the SDK's elapsed-time ticker, cargo its per-crate lines).
    let status = match (lang, &sdk) {
        (Lang::Python, Some(home)) => run_tool(
            lang,
            &src,
            &out,
            Command::new(home.join("scripts/build-python.sh"))
                .arg(&src)
                .arg(&out),
        ),
        (Lang::Js | Lang::Ts, Some(home)) => run_tool(
            lang,
            &src,
            &out,
            Command::new(home.join("scripts/build-js.sh"))
                .arg(&src)
                .arg(&out),
        ),
        (Lang::Python, None) => {
            let tool = python_sdk(&args.dir, path.as_deref())?;
            run_tool(
                lang,
                &src,
                &out,
                Command::new(tool)
                    .arg("build")
                    .arg(&src)
                    .arg("-o")
                    .arg(&out),
            )
        }
        (Lang::Js | Lang::Ts, None) => {
            let tool = js_sdk(&args.dir, path.as_deref())?;
            run_tool(
                lang,
                &src,
                &out,
                Command::new(tool)
                    .arg("build")
                    .arg(&src)
                    .arg("-o")
                    .arg(&out),
            )
        }
        (Lang::Rust, _) => {
            let cargo = rust_toolchain(&args.dir, path.as_deref())?;
            let target_dir = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| args.dir.join("target"));
            println!("cargo build --release --target wasm32-wasip2 (the first build compiles the SDK and its dependencies; later ones take seconds)");
            let st = run_tool(
                lang,
                &src,
                &out,
                Command::new(cargo)
                    .args([
                        "build",
                        "--release",
                        "--target",
                        "wasm32-wasip2",
                        "--manifest-path",
                    ])
                    .arg(&src)
                    .env("CARGO_TARGET_DIR", &target_dir),
            )?;
            if st.success() {
                let built = target_dir.join(format!(
                    "wasm32-wasip2/release/{}.wasm",
                    crate_name(&src)?.replace('-', "_")
                ));
                std::fs::copy(&built, &out).with_context(|| {
                    format!("copying {} (is the crate a cdylib?)", built.display())
                })?;
            }
            Ok(st)
        }
    }?;
    if !status.success() {
        bail!(
            "building {} failed (see the toolchain's message above)",
            src.display()
        );
    }
    let bytes = std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?;
    println!(
        "built {}: {} bytes, {} in {:.1} s",
        out.display(),
        bytes.len(),
        crate::sandbox::digest(&bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The artifact is named after the package, which need not be the folder.
fn crate_name(manifest: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not valid TOML", manifest.display()))?;
    table
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{}: no [package] name", manifest.display()))
}

fn run_tool(
    lang: Lang,
    src: &Path,
    out: &Path,
    cmd: &mut Command,
) -> anyhow::Result<std::process::ExitStatus> {
    println!(
        "building {} ({lang:?}) → {} with {}",
        src.display(),
        out.display(),
        cmd.get_program().to_string_lossy()
    );
    cmd.status()
        .with_context(|| format!("running {}", cmd.get_program().to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pw-scaffold-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn fake_tool(dir: &Path, name: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Every packaged copy of the WIT is byte for byte the source of truth;
    /// `scripts/sync-wit.sh` refreshes them.
    #[test]
    fn wit_copies_match_the_source() {
        for (copy, text) in [
            (
                "sdk-wit/rust/wit/transform.wit",
                include_str!("../../sdk-wit/rust/wit/transform.wit"),
            ),
            (
                "sdk-wit/python/pipeline_sdk/wit/transform.wit",
                include_str!("../../sdk-wit/python/pipeline_sdk/wit/transform.wit"),
            ),
            (
                "sdk-wit/js/wit/transform.wit",
                include_str!("../../sdk-wit/js/wit/transform.wit"),
            ),
        ] {
            assert!(
                text == WIT,
                "{copy} differs from sdk-wit/wit/transform.wit: run scripts/sync-wit.sh"
            );
        }
    }

    /// The SDK packages' major.minor is the WIT package's, which is what the
    /// templates and the version ranges written by `init` name.
    #[test]
    fn sdk_package_versions_follow_the_wit() {
        let wit_version = WIT
            .lines()
            .find_map(|l| l.trim().strip_prefix("package pipeline:transform@"))
            .and_then(|v| v.strip_suffix(';'))
            .expect("package line in the WIT");
        assert_eq!(format!("pipeline:transform@{wit_version}"), WIT_PACKAGE);
        let minor = |v: &str| v.rsplit_once('.').unwrap().0.to_owned();
        let cargo: toml::Table = include_str!("../../sdk-wit/rust/Cargo.toml")
            .parse()
            .unwrap();
        let pyproject: toml::Table = include_str!("../../sdk-wit/python/pyproject.toml")
            .parse()
            .unwrap();
        let npm: serde_json::Value =
            serde_json::from_str(include_str!("../../sdk-wit/js/package.json")).unwrap();
        for (file, v) in [
            (
                "sdk-wit/rust/Cargo.toml",
                cargo["package"]["version"].as_str(),
            ),
            (
                "sdk-wit/python/pyproject.toml",
                pyproject["project"]["version"].as_str(),
            ),
            ("sdk-wit/js/package.json", npm["version"].as_str()),
        ] {
            let v = v.unwrap_or_else(|| panic!("{file}: no version"));
            assert_eq!(
                minor(v),
                minor(wit_version),
                "{file}: version {v} does not target WIT {wit_version}"
            );
        }
        assert_eq!(
            SDK_RANGE_PY,
            format!("pipeline-sdk=={}.*", minor(wit_version))
        );
        assert_eq!(SDK_RANGE_NPM, format!("{}.x", minor(wit_version)));
    }

    #[test]
    fn on_path_finds_executables_only() {
        let d = scratch("path");
        std::fs::write(d.join("plain"), "").unwrap();
        fake_tool(&d, "tool");
        let path = std::env::join_paths([Path::new("/nonexistent"), &d]).unwrap();
        assert_eq!(on_path("tool", Some(&path)), Some(d.join("tool")));
        assert_eq!(on_path("plain", Some(&path)), None);
        assert_eq!(on_path("tool", None), None);
    }

    #[test]
    fn missing_python_sdk_names_the_package_and_the_install_command() {
        let d = scratch("py");
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let project = d.join("proj");
        std::fs::create_dir_all(&project).unwrap();
        // No python at all.
        let e = python_sdk(&project, Some(OsStr::new(""))).unwrap_err();
        assert!(e.missing.contains("no python3"), "{e}");
        // Python, componentize-py, but no pipeline-sdk.
        fake_tool(&bin, "python3");
        fake_tool(&bin, "componentize-py");
        let e = python_sdk(&project, Some(bin.as_os_str())).unwrap_err();
        assert!(
            e.missing.contains("no `pipeline-sdk` command")
                && e.missing.contains("componentize-py is there"),
            "{e}"
        );
        assert!(
            e.install.contains("pip install 'pipeline-sdk==0.2.*'"),
            "{e}"
        );
        // The project's own .venv wins.
        std::fs::create_dir_all(project.join(".venv/bin")).unwrap();
        fake_tool(&project.join(".venv/bin"), "pipeline-sdk");
        assert_eq!(
            python_sdk(&project, Some(OsStr::new(""))).unwrap(),
            project.join(".venv/bin/pipeline-sdk")
        );
    }

    #[test]
    fn missing_js_sdk_names_node_then_the_package() {
        let d = scratch("js");
        let e = js_sdk(&d, Some(OsStr::new(""))).unwrap_err();
        assert!(
            e.missing.contains("no node on PATH") && e.install.contains("Node.js 20"),
            "{e}"
        );
        fake_tool(&d, "node");
        let e = js_sdk(&d, Some(d.as_os_str())).unwrap_err();
        assert!(
            e.missing.contains("pipeline-sdk-js") && e.install.contains("npm install"),
            "{e}"
        );
        std::fs::create_dir_all(d.join("node_modules/.bin")).unwrap();
        fake_tool(&d.join("node_modules/.bin"), "pipeline-sdk-js");
        assert_eq!(
            js_sdk(&d, Some(d.as_os_str())).unwrap(),
            d.join("node_modules/.bin/pipeline-sdk-js")
        );
    }

    #[test]
    fn missing_rust_toolchain_names_cargo_then_the_target() {
        let d = scratch("rs");
        let e = rust_toolchain(&d, Some(OsStr::new(""))).unwrap_err();
        assert!(
            e.missing.contains("no cargo on PATH") && e.install.contains("rustup"),
            "{e}"
        );
        // A rustc whose sysroot has no wasm32-wasip2 standard library.
        use std::os::unix::fs::PermissionsExt as _;
        fake_tool(&d, "cargo");
        let rustc = d.join("rustc");
        std::fs::write(&rustc, format!("#!/bin/sh\necho {}\n", d.display())).unwrap();
        std::fs::set_permissions(&rustc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = rust_toolchain(&d, Some(d.as_os_str())).unwrap_err();
        assert_eq!(e.install, "rustup target add wasm32-wasip2", "{e}");
        std::fs::create_dir_all(d.join("lib/rustlib/wasm32-wasip2/lib")).unwrap();
        assert_eq!(
            rust_toolchain(&d, Some(d.as_os_str())).unwrap(),
            d.join("cargo")
        );
    }

    #[test]
    fn columnar_adds_the_sdk_feature_to_either_kind_of_dependency() {
        assert_eq!(
            with_features("pipeline-sdk = { path = \"/a b\" }", &["columnar"]),
            "pipeline-sdk = { path = \"/a b\", features = [\"columnar\"] }"
        );
        let git = with_features(
            "pipeline-sdk = { git = \"https://h/pw.git\" }",
            &["columnar"],
        );
        let table: toml::Table = git.parse().unwrap();
        assert_eq!(
            table["pipeline-sdk"]["features"].as_array().unwrap()[0].as_str(),
            Some("columnar")
        );
        // The generated config is one the worker accepts, with the schema
        // that the sample and golden files were written for.
        let config = crate::config::Config::from_str_with_env(
            &columnar_pipeline_toml("my_fn", false),
            Path::new("/p/my_fn/pipeline.toml"),
            [],
        )
        .unwrap();
        let p = &config.pipelines[0];
        assert_eq!(
            p.component.as_deref(),
            Some(Path::new("/p/my_fn/my_fn.wasm"))
        );
        let schema = p.arrow_schema(None).unwrap().expect("a schema");
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["sensor", "celsius"]);
    }

    #[test]
    fn js_columnar_project_routes_to_a_declared_topic_with_the_sdks_arrow() {
        // The JS templates route boiling readings to the config's second
        // output topic, and the golden file expects them there.
        let config = crate::config::Config::from_str_with_env(
            &columnar_pipeline_toml("my_fn", true),
            Path::new("/p/my_fn/pipeline.toml"),
            [],
        )
        .unwrap();
        assert_eq!(
            config.pipelines[0].output_topics,
            ["my-fn-out", "my-fn-alerts"]
        );
        for template in [JS_COLUMNAR_TEMPLATE, TS_COLUMNAR_TEMPLATE] {
            assert!(template.contains("\"TOPIC-alerts\""));
        }
        let golden = js_columnar_expected("my-fn");
        assert_ne!(golden, COLUMNAR_EXPECTED);
        let routed: Vec<serde_json::Value> = golden
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v.get("topic").is_some())
            .collect();
        assert_eq!(routed.len(), 1, "{golden}");
        assert_eq!(routed[0]["topic"], "my-fn-alerts");
        assert_eq!(routed[0]["value"]["fahrenheit"], 212.0);
        // package.json's apache-arrow is the one the SDK bundles.
        let npm: serde_json::Value =
            serde_json::from_str(include_str!("../../sdk-wit/js/package.json")).unwrap();
        assert_eq!(
            npm["dependencies"]["apache-arrow"].as_str(),
            Some(JS_ARROW_VERSION)
        );
    }

    #[test]
    fn rust_sdk_dependency_by_git_or_by_path_and_refused_otherwise() {
        assert_eq!(
            rust_sdk_dependency(Some("https://git.example/pw.git"), None).unwrap(),
            "pipeline-sdk = { git = \"https://git.example/pw.git\" }"
        );
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk-wit/rust");
        let dep = rust_sdk_dependency(Some(crate_dir.to_str().unwrap()), None).unwrap();
        assert!(
            dep.starts_with("pipeline-sdk = { path = \"/") && dep.ends_with("sdk-wit/rust\" }"),
            "{dep}"
        );
        let e = rust_sdk_dependency(Some("/nonexistent"), None).unwrap_err();
        assert!(
            format!("{e:#}").contains("--rust-sdk /nonexistent: no Cargo.toml"),
            "{e:#}"
        );
        let worker = Path::new(env!("CARGO_MANIFEST_DIR"));
        let e = rust_sdk_dependency(Some(worker.to_str().unwrap()), None).unwrap_err();
        assert!(
            format!("{e:#}").contains("is not the pipeline-sdk crate"),
            "{e:#}"
        );
        if RUST_SDK_GIT.is_none() {
            let e = rust_sdk_dependency(None, None).unwrap_err();
            assert!(
                format!("{e:#}").starts_with("--rust-sdk: say where"),
                "{e:#}"
            );
        }
    }
}
