//! An upload body streamed to a file in the staging directory, hashed and
//! size-capped as it arrives, so an upload that is receiving or queued for
//! compilation holds disk, not memory. The file is removed when the upload
//! ends however it ends: stored, refused, or cut off by the client (the
//! request future is dropped, and the file with it).

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::StatusCode;
use sha2::{Digest, Sha256};

use super::{err, internal, Api, ApiResult};

/// File names this module creates; only those are swept at start-up.
const PREFIX: &str = "upload-";

/// A received body: on disk until the compile reads it once.
pub struct Staged {
    file: tempfile::TempPath,
    pub size: usize,
    /// `sha256:<hex>`, as [`crate::sandbox::digest`] writes it.
    pub digest: String,
    /// The first bytes, for the checks that need no compilation.
    pub head: Vec<u8>,
}

impl Staged {
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The whole body, read once (the compile needs it in memory).
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.file)
    }
}

/// Where bodies are staged: `staging/` of a local store (the same
/// filesystem as the blobs), else of the control plane's cache directory.
pub fn dir(store_dir: Option<&Path>, cache_dir: &Path) -> PathBuf {
    store_dir.unwrap_or(cache_dir).join("staging")
}

/// Creates the directory and removes what a killed control plane left
/// there (one replica runs, so nothing in it belongs to a live upload).
pub fn prepare(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut removed = 0;
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(PREFIX)
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The body if it fits in `control.max_component_bytes`, else how much was
/// seen; the whole body within `control.body_read_timeout_ms`. A declared
/// length over twice the limit is refused before reading (the client may
/// then see a reset). An oversized body is otherwise read on (not kept: its
/// file is removed at once) up to twice the limit, so that the client
/// receives the 413 rather than a reset connection: the tenant is
/// authenticated by then.
pub async fn receive(
    api: &Api,
    tenant: &str,
    body: Body,
    declared: Option<usize>,
) -> ApiResult<Result<Staged, usize>> {
    use futures::StreamExt;
    let max = api.max_bytes;
    if let Some(n) = declared.filter(|n| *n > max.saturating_mul(2)) {
        return Ok(Err(n));
    }
    let staging = |e: std::io::Error| {
        internal(format!(
            "staging the upload in {}: {e}",
            api.staging.display()
        ))
    };
    let (file, path) = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{tenant}-"))
        .suffix(".wasm.part")
        .tempfile_in(&api.staging)
        .map_err(staging)?
        .into_parts();
    // Writes are blocking: each chunk goes to a blocking thread with the
    // file, which comes back with the result.
    let mut file = Some(file);
    let mut kept = Some(path);
    let mut hasher = Sha256::new();
    let mut head = Vec::with_capacity(HEAD);
    let deadline = tokio::time::Instant::now() + api.body_timeout;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                api.metrics.http_timeout("body");
                return Err(super::body_timeout(api));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "invalid-body",
                    format!("reading the upload: {e}"),
                ))
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        api.metrics.body_bytes(chunk.len());
        seen += chunk.len();
        if seen > max {
            // Too large: nothing of it is kept.
            file = None;
            kept = None;
            if seen > max.saturating_mul(2) {
                break;
            }
            continue;
        }
        hasher.update(&chunk);
        let room = HEAD.saturating_sub(head.len()).min(chunk.len());
        head.extend_from_slice(&chunk[..room]);
        let mut f = file.take().expect("a file while within the limit");
        let (f, r) = tokio::task::spawn_blocking(move || {
            let r = f.write_all(&chunk);
            (f, r)
        })
        .await
        .map_err(internal)?;
        r.map_err(staging)?;
        file = Some(f);
    }
    match (seen > max, file, kept) {
        (false, Some(f), Some(path)) => {
            // The compile reads it back from the page cache; no fsync: a
            // staged body does not outlive the process.
            drop(f);
            Ok(Ok(Staged {
                file: path,
                size: seen,
                digest: format!("sha256:{}", hex(&hasher.finalize())),
                head,
            }))
        }
        _ => Ok(Err(seen)),
    }
}

/// Reads and drops the body of an upload refused before it was read (a bad
/// name, too many uploads, over the rate), bounded as [`receive`] bounds a
/// body: up to twice `control.max_component_bytes`, within
/// `control.body_read_timeout_ms`. A client still sending when the server
/// closes gets a reset instead of the answer (reqwest reports a broken pipe
/// and never shows the refusal); the tenant is authenticated by then, so
/// reading what it may send anyway is no new cost.
pub async fn discard(api: &Api, body: Body, declared: Option<usize>) {
    use futures::StreamExt;
    let cap = api.max_bytes.saturating_mul(2);
    if declared.is_some_and(|n| n > cap) {
        return;
    }
    let deadline = tokio::time::Instant::now() + api.body_timeout;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(deadline, stream.next()).await {
        api.metrics.body_bytes(chunk.len());
        seen += chunk.len();
        if seen > cap {
            break;
        }
    }
}

/// Bytes kept in memory for the magic-number and layer checks.
const HEAD: usize = 8;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
