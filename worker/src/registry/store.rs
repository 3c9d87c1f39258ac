//! The function store: component blobs and precompiled artifacts,
//! content-addressed, plus one manifest per uploaded version and one status
//! object per (pipeline, worker). Any `object_store` backend: a local
//! directory by default, S3-compatible by configuration.
//!
//! ```text
//! blobs/sha256/<hex>.wasm                               the component, as uploaded
//! artifacts/<hex>-<engine>.cwasm                        precompiled for one engine config
//! tenants/<tenant>/functions/<name>/<version>.json      manifest (written last: the commit point)
//! tenants/<tenant>/functions/<name>/<version>.deleted   tombstone: a number is never reused
//! status/<pipeline>/<worker>.json                       what each worker runs
//! staging/upload-<tenant>-*.wasm.part                   local store: upload bodies being received
//! ```

use std::path::Path;
use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::config::RegistryConfig;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry.store {url:?}: {message}")]
    Config { url: String, message: String },
    #[error("function store: {0}")]
    Backend(#[from] object_store::Error),
    #[error("function store: {path} is not valid JSON: {message}")]
    Corrupt { path: String, message: String },
    #[error("blob {digest}: its content hashes to {actual}; refusing to run it")]
    DigestMismatch { digest: String, actual: String },
}

/// One uploaded version of a function. Immutable once written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionManifest {
    pub tenant: String,
    pub function: String,
    pub version: u64,
    pub digest: String,
    pub size_bytes: u64,
    /// The world export it implements, e.g. `pipeline:transform/transformer@0.1.0`.
    pub world: String,
    pub exports_batch: bool,
    /// RFC 3339.
    pub created_at: String,
    pub compile_ms: u64,
    /// Artifacts precompiled at upload (one per engine configuration):
    /// file name → `sha256:` of its bytes. Workers run a fetched artifact
    /// only if it hashes to this (it is native code, outside the sandbox).
    pub artifacts: std::collections::BTreeMap<String, String>,
}

/// What one worker runs for one pipeline, written after every load attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    pub worker: String,
    pub pipeline: String,
    /// `active` (runs the desired version), `failed` (kept the previous one),
    /// `waiting` (nothing activated yet).
    pub state: String,
    pub running_version: Option<String>,
    pub running_digest: Option<String>,
    pub desired_version: Option<u64>,
    pub desired_digest: Option<String>,
    pub error: Option<String>,
    pub updated_at: String,
}

#[derive(Clone)]
pub struct FunctionStore {
    inner: Arc<dyn ObjectStore>,
    description: String,
    /// The directory of a local store.
    local_dir: Option<std::path::PathBuf>,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn blob_path(digest: &str) -> ObjPath {
    ObjPath::from(format!(
        "blobs/sha256/{}.wasm",
        digest.trim_start_matches("sha256:")
    ))
}

fn artifact_path(name: &str) -> ObjPath {
    ObjPath::from(format!("artifacts/{name}"))
}

fn function_prefix(tenant: &str, function: &str) -> ObjPath {
    ObjPath::from(format!("tenants/{tenant}/functions/{function}"))
}

fn manifest_path(tenant: &str, function: &str, version: u64) -> ObjPath {
    ObjPath::from(format!(
        "tenants/{tenant}/functions/{function}/{version:010}.json"
    ))
}

impl FunctionStore {
    /// `store` relative paths are resolved against `base` (the config's directory).
    pub fn open(cfg: &RegistryConfig, base: &Path) -> Result<Self, StoreError> {
        let url = cfg.store.trim();
        let cerr = |message: String| StoreError::Config {
            url: url.to_string(),
            message,
        };
        if !url.contains("://") {
            let dir = if Path::new(url).is_absolute() {
                Path::new(url).to_path_buf()
            } else {
                base.join(url)
            };
            return Self::local(&dir).map_err(|e| cerr(e.to_string()));
        }
        let parsed = url::Url::parse(url).map_err(|e| cerr(e.to_string()))?;
        if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|()| cerr("not an absolute file path".into()))?;
            return Self::local(&dir).map_err(|e| cerr(e.to_string()));
        }
        let (store, prefix): (Box<dyn ObjectStore>, ObjPath) = if parsed.scheme() == "s3" {
            // From the environment first (AWS_ACCESS_KEY_ID, AWS_REGION,
            // AWS_ENDPOINT, ...), then `store_options` on top.
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(url);
            for (k, v) in &cfg.store_options {
                let key: object_store::aws::AmazonS3ConfigKey = k
                    .parse()
                    .map_err(|e| cerr(format!("store_options.{k}: {e}")))?;
                b = b.with_config(key, v);
            }
            let store = b.build().map_err(|e| cerr(e.to_string()))?;
            let prefix = ObjPath::from_url_path(parsed.path()).map_err(|e| cerr(e.to_string()))?;
            (Box::new(store), prefix)
        } else {
            object_store::parse_url_opts(&parsed, cfg.store_options.iter())
                .map_err(|e| cerr(e.to_string()))?
        };
        let inner: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        Ok(Self {
            inner,
            description: url.to_string(),
            local_dir: None,
        })
    }

    pub fn local(dir: &Path) -> Result<Self, std::io::Error> {
        std::fs::create_dir_all(dir)?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(std::io::Error::other)?;
        Ok(Self {
            inner: Arc::new(fs),
            description: dir.display().to_string(),
            local_dir: Some(dir.to_path_buf()),
        })
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    /// The directory, for a local store (`None` for S3 and the like).
    pub fn local_dir(&self) -> Option<&Path> {
        self.local_dir.as_deref()
    }

    pub async fn put_blob(&self, digest: &str, bytes: bytes::Bytes) -> Result<(), StoreError> {
        self.inner
            .put(&blob_path(digest), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// The blob, verified against its digest: a store that was tampered with
    /// or corrupted never gets code into the sandbox.
    pub async fn get_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let bytes = self.inner.get(&blob_path(digest)).await?.bytes().await?;
        let actual = crate::sandbox::digest(&bytes);
        if actual != digest {
            return Err(StoreError::DigestMismatch {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(bytes.to_vec())
    }

    pub async fn delete_blob(&self, digest: &str) -> Result<(), StoreError> {
        ignore_not_found(self.inner.delete(&blob_path(digest)).await)
    }

    pub async fn put_artifact(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.inner
            .put(&artifact_path(name), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    pub async fn get_artifact(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.inner.get(&artifact_path(name)).await {
            Ok(r) => Ok(Some(r.bytes().await?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_artifact(&self, name: &str) -> Result<(), StoreError> {
        ignore_not_found(self.inner.delete(&artifact_path(name)).await)
    }

    /// Writes the manifest only if that version does not exist yet; returns
    /// false when another upload took the number first.
    pub async fn create_manifest(&self, m: &VersionManifest) -> Result<bool, StoreError> {
        let body = serde_json::to_vec_pretty(m).expect("manifest serializes");
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .inner
            .put_opts(
                &manifest_path(&m.tenant, &m.function, m.version),
                PutPayload::from(body),
                opts,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_manifest(
        &self,
        tenant: &str,
        function: &str,
        version: u64,
    ) -> Result<Option<VersionManifest>, StoreError> {
        self.get_json(&manifest_path(tenant, function, version))
            .await
    }

    /// Removes the manifest and leaves a tombstone, so the version number is
    /// never given to other code.
    pub async fn delete_manifest(
        &self,
        tenant: &str,
        function: &str,
        version: u64,
    ) -> Result<(), StoreError> {
        let tomb = ObjPath::from(format!(
            "tenants/{tenant}/functions/{function}/{version:010}.deleted"
        ));
        self.inner.put(&tomb, PutPayload::from_static(b"")).await?;
        ignore_not_found(
            self.inner
                .delete(&manifest_path(tenant, function, version))
                .await,
        )
    }

    /// One more than the highest version ever used (deleted ones included).
    pub async fn next_version(&self, tenant: &str, function: &str) -> Result<u64, StoreError> {
        let metas: Vec<_> = self
            .inner
            .list(Some(&function_prefix(tenant, function)))
            .try_collect()
            .await?;
        let max = metas
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|f| f.split('.').next())
            .filter_map(|n| n.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Ok(max + 1)
    }

    /// Every version of a function, oldest first.
    pub async fn list_versions(
        &self,
        tenant: &str,
        function: &str,
    ) -> Result<Vec<VersionManifest>, StoreError> {
        let metas: Vec<_> = self
            .inner
            .list(Some(&function_prefix(tenant, function)))
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for m in metas {
            if m.location.extension() == Some("json") {
                if let Some(v) = self.get_json::<VersionManifest>(&m.location).await? {
                    out.push(v);
                }
            }
        }
        out.sort_by_key(|m| m.version);
        Ok(out)
    }

    /// Names of the tenant's functions.
    pub async fn list_functions(&self, tenant: &str) -> Result<Vec<String>, StoreError> {
        let prefix = ObjPath::from(format!("tenants/{tenant}/functions"));
        let listed = self.inner.list_with_delimiter(Some(&prefix)).await?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every manifest of every tenant that references `digest`.
    pub async fn digest_in_use(&self, digest: &str) -> Result<bool, StoreError> {
        let metas: Vec<_> = self
            .inner
            .list(Some(&ObjPath::from("tenants")))
            .try_collect()
            .await?;
        for m in metas {
            if m.location.extension() != Some("json") {
                continue;
            }
            if let Some(v) = self.get_json::<VersionManifest>(&m.location).await? {
                if v.digest == digest {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    pub async fn put_status(&self, s: &WorkerStatus) -> Result<(), StoreError> {
        let path = ObjPath::from(format!("status/{}/{}.json", s.pipeline, s.worker));
        let body = serde_json::to_vec_pretty(s).expect("status serializes");
        self.inner.put(&path, PutPayload::from(body)).await?;
        Ok(())
    }

    pub async fn delete_status(&self, pipeline: &str, worker: &str) -> Result<(), StoreError> {
        let path = ObjPath::from(format!("status/{pipeline}/{worker}.json"));
        ignore_not_found(self.inner.delete(&path).await)
    }

    pub async fn list_status(&self, pipeline: &str) -> Result<Vec<WorkerStatus>, StoreError> {
        let metas: Vec<_> = self
            .inner
            .list(Some(&ObjPath::from(format!("status/{pipeline}"))))
            .try_collect()
            .await?;
        let mut out = Vec::new();
        for m in metas {
            if let Some(s) = self.get_json::<WorkerStatus>(&m.location).await? {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.worker.cmp(&b.worker));
        Ok(out)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &ObjPath,
    ) -> Result<Option<T>, StoreError> {
        let bytes = match self.inner.get(path).await {
            Ok(r) => r.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: path.to_string(),
                message: e.to_string(),
            })
    }
}

fn ignore_not_found(r: Result<(), object_store::Error>) -> Result<(), StoreError> {
    match r {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(store: &str, opts: &[(&str, &str)]) -> RegistryConfig {
        RegistryConfig {
            store: store.into(),
            store_options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            activations_topic: "a".into(),
            worker_id: None,
        }
    }

    #[test]
    fn s3_urls_take_options_and_name_a_bad_one() {
        let ok = FunctionStore::open(
            &cfg(
                "s3://bucket/some/prefix",
                &[
                    ("aws_region", "eu-west-1"),
                    ("aws_endpoint", "http://127.0.0.1:9000"),
                    ("aws_allow_http", "true"),
                ],
            ),
            Path::new("."),
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
        let bad = FunctionStore::open(&cfg("s3://bucket", &[("aws_regoin", "x")]), Path::new("."));
        let msg = bad.err().expect("refused").to_string();
        assert!(msg.contains("store_options.aws_regoin"), "{msg}");
    }

    #[test]
    fn relative_directories_resolve_against_the_config() {
        let base = std::env::temp_dir().join(format!("pw-store-test-{}", std::process::id()));
        let s = FunctionStore::open(&cfg("store", &[]), &base).unwrap();
        assert!(base.join("store").is_dir(), "{}", s.describe());
        let _ = std::fs::remove_dir_all(&base);
    }
}
