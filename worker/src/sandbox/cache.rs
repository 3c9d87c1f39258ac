//! Precompiled artifacts on disk, keyed by component digest, wasmtime version
//! and engine settings: a Python component takes ~15 s to compile and ~30 ms
//! to load precompiled.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0}")]
    Compile(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

pub fn digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl ArtifactCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path_for(&self, engine: &Engine, digest: &str) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let hex = digest.trim_start_matches("sha256:");
        // The compatibility hash covers the wasmtime version and every engine
        // setting that changes the compiled code (fuel, stack, ...).
        self.dir.join(format!("{hex}-{:016x}.cwasm", h.finish()))
    }

    /// Returns the component and whether it came from the cache. A corrupt or
    /// incompatible cache entry is recompiled, never trusted.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(Component, bool), CacheError> {
        let path = self.path_for(engine, digest);
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with the same compatibility hash, into a directory only
            // the worker writes; wasmtime also checks the header.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok((c, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable cached artifact");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let artifact = engine
            .precompile_component(bytes)
            .map_err(|e| CacheError::Compile(format!("{e:#}")))?;
        write_atomic(&path, &artifact)?;
        // SAFETY: produced just above by this engine.
        let c = unsafe { Component::deserialize(engine, &artifact) }
            .map_err(|e| CacheError::Compile(format!("{e:#}")))?;
        Ok((c, false))
    }
}

fn write_atomic(path: &PathBuf, data: &[u8]) -> Result<(), CacheError> {
    let werr = |source| CacheError::Write {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    // pid alone is 1 in every container: add the time so pods sharing a
    // cache volume never write the same temporary file.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = path.with_extension(format!("tmp{}-{nanos}", std::process::id()));
    std::fs::write(&tmp, data).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}
