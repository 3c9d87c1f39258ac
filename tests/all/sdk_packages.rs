//! `init` and `build` of the installed binary with no checkout and no SDK
//! package: the errors a new user sees first. (The packages themselves are
//! built, installed and used by scripts/check-sdk-packages.sh in CI.)

use std::path::Path;
use std::process::{Command, Output};

use crate::support::unique;

/// The binary as installed: `PIPELINE_SDK_HOME=` (empty) stops it from
/// finding this checkout by walking up from target/release.
fn installed(dir: &Path, path: &str, args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline-worker"))
        .current_dir(dir)
        .env("PIPELINE_SDK_HOME", "")
        .env_remove("VIRTUAL_ENV")
        .env_remove("PIPELINE_SDK_RUST")
        .env("PATH", path)
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

fn scratch() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(unique("sdk-pkg"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn init_writes_the_sdk_dependency_and_build_names_the_missing_package() {
    let work = scratch();
    for (lang, name, manifest, needle, install) in [
        (
            "python",
            "py_fn",
            "requirements.txt",
            "pipeline-sdk==0.2.*",
            "pip install 'pipeline-sdk==0.2.*'",
        ),
        (
            "js",
            "js_fn",
            "package.json",
            "\"pipeline-sdk\": \"0.2.x\"",
            "no node on PATH",
        ),
    ] {
        let (out, text) = installed(&work, "/nonexistent", &["init", "--lang", lang, name]);
        assert!(out.status.success(), "init {lang}: {text}");
        let m = std::fs::read_to_string(work.join(name).join(manifest)).unwrap();
        assert!(m.contains(needle), "{name}/{manifest}:\n{m}");
        let wit = std::fs::read_to_string(work.join(name).join("wit/transform.wit")).unwrap();
        assert_eq!(wit, pipeline_worker::scaffold::WIT);
        // An empty PATH: no python3 / node, and so no SDK; the message says
        // what to install (the tool, then the package).
        let (out, text) = installed(&work, "/nonexistent", &["build", name]);
        assert!(
            !out.status.success(),
            "build {name} without its SDK succeeded:\n{text}"
        );
        assert!(text.contains(install), "build {name}:\n{text}");
        assert!(!work.join(name).join(format!("{name}.wasm")).exists());
    }
}

#[test]
fn rust_init_outside_a_checkout_asks_where_the_crate_is_and_writes_nothing() {
    let work = scratch();
    let (out, text) = installed(&work, "/nonexistent", &["init", "--lang", "rust", "rs_fn"]);
    if out.status.success() {
        // Built with PIPELINE_SDK_GIT_URL: the default is that git dependency.
        let m = std::fs::read_to_string(work.join("rs_fn/Cargo.toml")).unwrap();
        assert!(m.contains("pipeline-sdk = { git = "), "{m}");
        return;
    }
    assert!(
        text.contains("--rust-sdk: say where the pipeline-sdk crate is"),
        "{text}"
    );
    assert!(!work.join("rs_fn").exists(), "a half-made project was left");
    let (out, text) = installed(&work, "/nonexistent", &["build", "."]);
    assert!(!out.status.success());
    assert!(
        text.contains("no Cargo.toml, .py, .js or .ts file"),
        "{text}"
    );
}
