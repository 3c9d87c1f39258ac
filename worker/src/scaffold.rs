//! The customer's local loop before `test`: `init` writes a ready project,
//! `build` runs the right toolchain (componentize-py, cargo, jco) against our
//! WIT and prints the size and digest of the component.
//!
//! Both need the SDK tree (`sdk-wit/`, `scripts/`): found through
//! `PIPELINE_SDK_HOME`, else by walking up from the working directory and
//! from the executable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};

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

/// The folder holding `sdk-wit/wit/transform.wit` and `scripts/`.
pub fn sdk_home() -> anyhow::Result<PathBuf> {
    if let Ok(h) = std::env::var("PIPELINE_SDK_HOME") {
        let p = PathBuf::from(h);
        if p.join("sdk-wit/wit/transform.wit").exists() {
            return Ok(p);
        }
        bail!(
            "PIPELINE_SDK_HOME={} has no sdk-wit/wit/transform.wit",
            p.display()
        );
    }
    let mut starts = vec![std::env::current_dir()?];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    for start in starts {
        for dir in start.ancestors() {
            if dir.join("sdk-wit/wit/transform.wit").exists() && dir.join("scripts").is_dir() {
                return Ok(dir.to_path_buf());
            }
        }
    }
    bail!("cannot find the pipeline SDK (sdk-wit/ and scripts/); set PIPELINE_SDK_HOME to the pipeline-worker checkout")
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

const SAMPLE: &str = "{\"event_id\":\"e1\",\"session_start\":1700000000,\"session_end\":1700003600}\n{\"event_id\":\"e2\",\"session_start\":1700000000,\"session_end\":1700000300}\n";
const EXPECTED: &str = "{\"event_id\":\"e1\",\"session_start\":1700000000,\"session_end\":1700003600,\"session_duration_minutes\":60.0}\n{\"event_id\":\"e2\",\"session_start\":1700000000,\"session_end\":1700000300,\"session_duration_minutes\":5.0}\n";

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
    let sdk = sdk_home()?;
    std::fs::create_dir_all(&dir)?;
    let write = |file: &str, text: &str| -> anyhow::Result<()> {
        std::fs::write(dir.join(file), text)
            .with_context(|| format!("writing {}", dir.join(file).display()))
    };
    write("sample.jsonl", SAMPLE)?;
    write("expected.jsonl", EXPECTED)?;
    match args.lang {
        Lang::Python => write(&format!("{name}.py"), &PY_TEMPLATE.replace("NAME", name))?,
        Lang::Js => write(&format!("{name}.js"), JS_TEMPLATE)?,
        Lang::Ts => {
            write(&format!("{name}.ts"), TS_TEMPLATE)?;
            write(
                "tsconfig.json",
                &format!(
                    "{{\n  \"compilerOptions\": {{\n    \"target\": \"es2022\",\n    \"module\": \"es2022\",\n    \"moduleResolution\": \"bundler\",\n    \"strict\": true,\n    \"noEmit\": true,\n    \"paths\": {{ \"pipeline-sdk\": [{}] }}\n  }},\n  \"files\": [\"{name}.ts\"]\n}}\n",
                    serde_json::Value::String(
                        sdk.join("sdk-wit/js/pipeline-sdk.d.ts").display().to_string()
                    )
                ),
            )?;
        }
        Lang::Rust => {
            std::fs::create_dir_all(dir.join("src"))?;
            write("src/lib.rs", RUST_TEMPLATE)?;
            write(
                "Cargo.toml",
                &format!(
                    "[package]\nname = \"{}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\npipeline-sdk = {{ path = \"{}\" }}\n\n# Built on its own, not as part of another workspace.\n[workspace]\n",
                    name.replace('_', "-"),
                    sdk.join("sdk-wit/rust").display()
                ),
            )?;
        }
    }
    let lang = format!("{:?}", args.lang).to_lowercase();
    write(
        "README.md",
        &format!(
            "# {name}\n\nA pipeline-worker function ({lang}), WIT `pipeline:transform@0.2.0`. A tombstone (null value) reaches it only with the pipeline's `tombstones = \"function\"`; the template passes it on unchanged.\n\n```sh\npipeline-worker build {name}\npipeline-worker test --component {name}/{name}.wasm --input {name}/sample.jsonl --expect {name}/expected.jsonl\n```\n"
        ),
    )?;
    println!("created {}/ ({lang}); next:\n  pipeline-worker build {name}\n  pipeline-worker test --component {name}/{name}.wasm --input {name}/sample.jsonl --expect {name}/expected.jsonl", dir.display());
    Ok(())
}

fn detect(dir: &Path) -> anyhow::Result<(Lang, String, PathBuf)> {
    let dir_name = dir
        .canonicalize()?
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "function".into());
    if dir.join("Cargo.toml").exists() {
        return Ok((Lang::Rust, dir_name.clone(), dir.join("Cargo.toml")));
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
    let sdk = sdk_home()?;
    let (lang, name, src) = detect(&args.dir)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.dir.join(format!("{name}.wasm")));
    let started = Instant::now();
    println!("building {} ({lang:?}) → {}", src.display(), out.display());
    let status = match lang {
        Lang::Python => Command::new(sdk.join("scripts/build-python.sh")).arg(&src).arg(&out).status(),
        Lang::Js | Lang::Ts => Command::new(sdk.join("scripts/build-js.sh")).arg(&src).arg(&out).status(),
        Lang::Rust => {
            println!("cargo build --release --target wasm32-wasip2 (the first build compiles the SDK; later ones take seconds)");
            let target_dir = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| args.dir.join("target"));
            let st = Command::new("cargo")
                .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
                .arg(&src)
                .env("CARGO_TARGET_DIR", &target_dir)
                .status();
            if let Ok(s) = &st {
                if s.success() {
                    let crate_file = name.replace('-', "_");
                    let built = target_dir.join(format!("wasm32-wasip2/release/{crate_file}.wasm"));
                    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
                }
            }
            st
        }
    }
    .with_context(|| format!("running the {lang:?} toolchain"))?;
    if !status.success() {
        bail!("build failed (see the toolchain's message above)");
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
