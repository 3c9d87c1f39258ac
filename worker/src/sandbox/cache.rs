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

/// A second tier shared by every worker (the function store): an artifact
/// compiled once, by the upload or by the first worker, is fetched by the rest.
pub trait RemoteArtifacts: Send + Sync {
    fn fetch(&self, name: &str) -> Option<Vec<u8>>;
    fn store(&self, name: &str, bytes: &[u8]);
}

#[derive(Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    remote: Option<std::sync::Arc<dyn RemoteArtifacts>>,
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .field("remote", &self.remote.is_some())
            .finish()
    }
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
            dir: dir.into(),
            remote: None,
        }
    }

    pub fn with_remote(mut self, remote: std::sync::Arc<dyn RemoteArtifacts>) -> Self {
        self.remote = Some(remote);
        self
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// File name of the artifact of `digest` for this engine. The
    /// compatibility hash covers the wasmtime version and every engine
    /// setting that changes the compiled code (fuel, stack, pool, ...).
    pub fn artifact_name(engine: &Engine, digest: &str) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let hex = digest.trim_start_matches("sha256:");
        format!("{hex}-{:016x}.cwasm", h.finish())
    }

    fn path_for(&self, engine: &Engine, digest: &str) -> PathBuf {
        self.dir.join(Self::artifact_name(engine, digest))
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
        if !path.exists() {
            if let Some(remote) = &self.remote {
                let name = Self::artifact_name(engine, digest);
                if let Some(bytes) = remote.fetch(&name) {
                    write_atomic(&path, &bytes)?;
                }
            }
        }
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
        if let Some(remote) = &self.remote {
            remote.store(&Self::artifact_name(engine, digest), &artifact);
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
