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
    dir: Option<PathBuf>,
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
        Self {
            dir: Some(dir.into()),
        }
    }

    /// No caching at all (tests of the compile path).
    pub fn disabled() -> Self {
        Self { dir: None }
    }

    fn path_for(&self, engine: &Engine, digest: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let hex = digest.trim_start_matches("sha256:");
        // The compatibility hash covers the wasmtime version and every engine
        // setting that changes the compiled code (fuel, stack, ...).
        Some(dir.join(format!("{hex}-{:016x}.cwasm", h.finish())))
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
        if let Some(p) = &path {
            if p.exists() {
                // SAFETY: the file was written by `precompile_component` of an
                // engine with the same compatibility hash, into a directory only
                // the worker writes; wasmtime also checks the header.
                match unsafe { Component::deserialize_file(engine, p) } {
                    Ok(c) => return Ok((c, true)),
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "discarding unusable cached artifact");
                        let _ = std::fs::remove_file(p);
                    }
                }
            }
        }
        let artifact = engine
            .precompile_component(bytes)
            .map_err(|e| CacheError::Compile(format!("{e:#}")))?;
        if let Some(p) = &path {
            write_atomic(p, &artifact)?;
        }
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
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}
