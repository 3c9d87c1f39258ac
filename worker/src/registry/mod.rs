//! Uploaded functions and where they run: the function store (blobs,
//! artifacts, manifests), the activation log (a compacted Kafka topic), the
//! watcher that hot-swaps a worker's functions as activations arrive, the
//! control API that accepts uploads and activations, and its CLI client.

pub mod activations;
pub mod api;
pub mod client;
pub mod metrics;
pub mod store;
pub mod watcher;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, KafkaConfig, RegistryConfig};
use crate::sandbox::RemoteArtifacts;
pub use activations::{Activation, ActivationState, Deployed};
pub use store::{FunctionStore, StoreError, VersionManifest, WorkerStatus};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] activations::LogError),
    #[error("registry runtime: {0}")]
    Runtime(std::io::Error),
}

/// The store, the activation log's coordinates, and a small runtime for the
/// async store client. Shared by the watcher, the control API and the
/// artifact cache.
pub struct Registry {
    pub store: FunctionStore,
    pub config: RegistryConfig,
    pub kafka: KafkaConfig,
    pub worker_id: String,
    rt: tokio::runtime::Runtime,
    /// Artifact name → `sha256:` from activation records; see [`Registry::trust`].
    trusted: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Registry {
    pub fn open(config: &Config, base: &Path) -> Result<Arc<Self>, RegistryError> {
        let cfg = config
            .registry
            .clone()
            .expect("Registry::open needs a [registry] section");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("registry")
            .enable_all()
            .build()
            .map_err(RegistryError::Runtime)?;
        let store = {
            let _guard = rt.enter();
            FunctionStore::open(&cfg, base)?
        };
        let worker_id = cfg.worker_id.clone().unwrap_or_else(default_worker_id);
        let reg = Arc::new(Self {
            store,
            config: cfg,
            kafka: config.kafka.clone(),
            worker_id,
            rt,
            trusted: Default::default(),
        });
        reg.block_on(activations::ensure_topic(
            &reg.kafka,
            &reg.config.activations_topic,
        ))?;
        Ok(reg)
    }

    /// Runs a store operation from a plain thread (never from inside an
    /// async task of this runtime).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.handle().block_on(f)
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt.handle().clone()
    }

    /// The artifact tier shared by all workers.
    pub fn remote_artifacts(self: &Arc<Self>) -> Arc<dyn RemoteArtifacts> {
        Arc::new(SharedArtifacts(self.clone()))
    }

    /// Remote artifacts are native code: a worker runs one (fetched, or its
    /// local copy) only if an activation (written by the control plane from
    /// the upload's manifest) names its hash. Anything else is compiled
    /// locally from the blob, whose digest is checked.
    pub fn trust(&self, artifacts: &std::collections::BTreeMap<String, String>) {
        let mut t = self.trusted.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in artifacts {
            t.insert(k.clone(), v.clone());
        }
    }

    pub fn activations_topic(&self) -> &str {
        &self.config.activations_topic
    }
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

struct SharedArtifacts(Arc<Registry>);

impl RemoteArtifacts for SharedArtifacts {
    fn expected(&self, name: &str) -> Option<String> {
        self.0
            .trusted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn fetch(&self, name: &str) -> Option<Vec<u8>> {
        let expected = self.expected(name)?;
        match self.0.block_on(self.0.store.get_artifact(name)) {
            Ok(Some(bytes)) => {
                let actual = crate::sandbox::digest(&bytes);
                if actual == expected {
                    Some(bytes)
                } else {
                    tracing::error!(artifact = name, %expected, %actual, "precompiled artifact in the store does not match its manifest; compiling locally instead");
                    None
                }
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(artifact = name, error = %e, "cannot fetch a precompiled artifact; compiling locally");
                None
            }
        }
    }

    /// Workers keep what they compile to themselves: only the control
    /// plane's artifacts are recorded in manifests, so only those are shared.
    fn store(&self, _name: &str, _bytes: &[u8]) {}
}
