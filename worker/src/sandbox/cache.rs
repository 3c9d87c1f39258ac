//! Precompiled artifacts on disk, keyed by component digest, wasmtime version
//! and engine settings: a Python component takes ~15 s to compile and ~30 ms
//! to load precompiled.
//!
//! An artifact is native code that runs outside the sandbox, and the cache
//! directory may be a volume other pods write too. So a file is loaded only
//! if its sha256 matches a hash kept outside that directory: the one this
//! process recorded when it wrote or verified the artifact (in memory), the
//! one an activation names for it ([`RemoteArtifacts::expected`]), or the one
//! its sidecar (`<artifact>.mac`) authenticates with a key that lives outside
//! the directory ([`CacheKey`]), so artifacts survive a restart without
//! trusting whoever can write the volume. Anything else is recompiled from
//! the component bytes, whose digest is known.
//!
//! The directory is bounded by size: least recently used artifacts go first,
//! never one that a function of this process holds ([`ArtifactPin`]) or that
//! the owner marked active ([`ArtifactCache::hold_active`]).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Default of `runtime.cache_max_bytes`: half the Helm chart's 1 GiB
/// emptyDir, room for a dozen Python artifacts (~33 MB each).
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;

/// A temporary file older than this was left by a writer that died.
const STALE_TEMP: Duration = Duration::from_secs(3600);

const ARTIFACT_EXT: &str = ".cwasm";
/// Appended to an artifact's file name for its MAC sidecar.
const MAC_EXT: &str = ".mac";

/// Environment variable holding the cache key (e.g. from a Kubernetes Secret).
pub const KEY_ENV: &str = "PIPELINE_WORKER_CACHE_KEY";
/// Shorter keys are refused: the key is all that stands between whoever can
/// write the cache volume and native code this process runs.
pub const MIN_KEY_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The secret that authenticates artifact sidecars. Its bytes never appear in
/// `Debug` output or logs.
#[derive(Clone)]
pub struct CacheKey {
    bytes: Arc<[u8]>,
    /// Where it came from, for logs: the variable, a file, or "per-process".
    source: String,
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheKeyError {
    #[error("environment variable {KEY_ENV}: must be at least {MIN_KEY_BYTES} bytes, got {0}")]
    EnvTooShort(usize),
    #[error("config key `runtime.cache_key_file`: cannot read {path}: {source}")]
    FileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "config key `runtime.cache_key_file`: {path} holds {len} bytes, a key needs at least {MIN_KEY_BYTES}"
    )]
    FileTooShort { path: PathBuf, len: usize },
    #[error(
        "config key `runtime.cache_key_file`: {path} is inside runtime.cache_dir ({cache_dir}); whoever can write the cache could forge artifacts with it, keep it elsewhere"
    )]
    FileInCacheDir { path: PathBuf, cache_dir: PathBuf },
}

impl CacheKey {
    pub fn from_bytes(bytes: &[u8], source: impl Into<String>) -> Self {
        Self {
            bytes: bytes.into(),
            source: source.into(),
        }
    }

    /// A random key for this process only: its sidecars vouch for nothing
    /// after a restart. Shared by every cache of the process.
    pub fn per_process() -> Self {
        static KEY: OnceLock<CacheKey> = OnceLock::new();
        KEY.get_or_init(|| {
            let mut b = [0u8; 32];
            // Without OS randomness the key would be guessable; then no
            // sidecar is trusted at all (an empty key never verifies one).
            let bytes: &[u8] = match getrandom::fill(&mut b) {
                Ok(()) => &b,
                Err(e) => {
                    tracing::error!(error = %e, "no OS randomness for the artifact cache key; cached artifacts are trusted only by hash");
                    &[]
                }
            };
            Self::from_bytes(bytes, "per-process")
        })
        .clone()
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The key, from (in order) `env_value` (the value of [`KEY_ENV`]),
    /// `key_file` (`runtime.cache_key_file`), or the default key file in the
    /// user's state directory, created when missing. Without a usable default
    /// file (no home, read-only filesystem) a per-process key, logged once.
    pub fn resolve(
        env_value: Option<&str>,
        key_file: Option<&Path>,
        cache_dir: &Path,
    ) -> Result<Self, CacheKeyError> {
        if let Some(v) = env_value {
            if v.len() < MIN_KEY_BYTES {
                return Err(CacheKeyError::EnvTooShort(v.len()));
            }
            return Ok(Self::from_bytes(v.as_bytes(), KEY_ENV));
        }
        if let Some(path) = key_file {
            refuse_inside(path, cache_dir)?;
            let bytes = std::fs::read(path).map_err(|source| CacheKeyError::FileUnreadable {
                path: path.to_path_buf(),
                source,
            })?;
            if bytes.len() < MIN_KEY_BYTES {
                return Err(CacheKeyError::FileTooShort {
                    path: path.to_path_buf(),
                    len: bytes.len(),
                });
            }
            return Ok(Self::from_bytes(&bytes, path.display().to_string()));
        }
        let default = default_key_path();
        match default
            .as_deref()
            .ok_or_else(|| "neither XDG_STATE_HOME nor HOME is set".to_string())
            .and_then(|p| {
                if inside(p, cache_dir) {
                    return Err(format!("{} is inside runtime.cache_dir", p.display()));
                }
                read_or_create_key(p).map_err(|e| format!("{}: {e}", p.display()))
            }) {
            Ok(bytes) => Ok(Self::from_bytes(
                &bytes,
                default.unwrap_or_default().display().to_string(),
            )),
            Err(why) => {
                static LOGGED: std::sync::Once = std::sync::Once::new();
                LOGGED.call_once(|| {
                    tracing::warn!(reason = %why, "no artifact cache key file (set {KEY_ENV} or runtime.cache_key_file); using a per-process key, so artifacts cached by earlier processes will be recompiled");
                });
                Ok(Self::per_process())
            }
        }
    }

    /// HMAC-SHA256 over the artifact's file name and the sha256 of its bytes:
    /// the name binds it to its component digest and engine, so a valid pair
    /// cannot be moved under another name.
    fn mac(&self, name: &str, sha: &[u8; 32]) -> Option<HmacSha256> {
        if self.bytes.is_empty() {
            return None;
        }
        let mut m = HmacSha256::new_from_slice(&self.bytes).ok()?;
        m.update(name.as_bytes());
        m.update(sha);
        Some(m)
    }

    fn sign(&self, name: &str, sha: &[u8; 32]) -> Option<Vec<u8>> {
        self.mac(name, sha)
            .map(|m| m.finalize().into_bytes().to_vec())
    }

    fn verify(&self, name: &str, sha: &[u8; 32], tag: &[u8]) -> bool {
        self.mac(name, sha)
            .is_some_and(|m| m.verify_slice(tag).is_ok())
    }
}

/// `$XDG_STATE_HOME/pipeline-worker/cache.key`, else
/// `$HOME/.local/state/pipeline-worker/cache.key`.
fn default_key_path() -> Option<PathBuf> {
    let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    let state = nonempty("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("pipeline-worker").join("cache.key"))
}

/// Whether `path` would live inside `cache_dir` (both resolved through
/// symlinks as far as they exist).
fn inside(path: &Path, cache_dir: &Path) -> bool {
    let resolve = |p: &Path| {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        std::fs::canonicalize(&abs).unwrap_or(abs)
    };
    let dir = resolve(cache_dir);
    let file = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => resolve(parent).join(name),
        _ => resolve(path),
    };
    file.starts_with(&dir)
}

fn refuse_inside(path: &Path, cache_dir: &Path) -> Result<(), CacheKeyError> {
    // Created first so a symlinked cache directory resolves like the cache will.
    let _ = std::fs::create_dir_all(cache_dir);
    if inside(path, cache_dir) {
        return Err(CacheKeyError::FileInCacheDir {
            path: path.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Reads the default key file, creating it (32 random bytes, mode 0600) when
/// missing. Created under a temporary name and linked into place, so two
/// processes starting together agree on one key and none reads a partial one.
fn read_or_create_key(path: &Path) -> Result<Vec<u8>, String> {
    match std::fs::read(path) {
        Ok(b) if b.len() >= MIN_KEY_BYTES => return Ok(b),
        Ok(b) => {
            return Err(format!(
                "holds {} bytes, a key needs at least {MIN_KEY_BYTES} (delete it to get a new one)",
                b.len()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.to_string()),
    }
    let dir = path.parent().ok_or("no parent directory")?;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| e.to_string())?;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| e.to_string())?;
    let tmp = path.with_extension(format!("tmp{}-{}", std::process::id(), nanos()));
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    };
    let r = write();
    let _ = std::fs::remove_file(&tmp);
    r.map_err(|e| e.to_string())?;
    // Whoever linked first won; everyone uses that key.
    match std::fs::read(path) {
        Ok(b) if b.len() >= MIN_KEY_BYTES => Ok(b),
        Ok(b) => Err(format!("holds {} bytes after creation", b.len())),
        Err(e) => Err(e.to_string()),
    }
}

fn nanos() -> u32 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0}")]
    Compile(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}; refusing to use it")]
    Untrusted { path: PathBuf, reason: String },
}

/// A second tier shared by every worker (the function store): an artifact
/// compiled once, by the upload or by the first worker, is fetched by the rest.
pub trait RemoteArtifacts: Send + Sync {
    /// The artifact, only if it hashes to [`RemoteArtifacts::expected`].
    fn fetch(&self, name: &str) -> Option<Vec<u8>>;
    fn store(&self, name: &str, bytes: &[u8]);
    /// The `sha256:` a verified activation recorded for this artifact, which
    /// also vouches for a local copy of it.
    fn expected(&self, name: &str) -> Option<String>;
}

/// What this process knows about one cache directory. Shared by every
/// [`ArtifactCache`] on that directory in the process, so one cannot evict
/// what another holds, and trust covers everything the process produced.
#[derive(Default)]
struct DirState {
    /// Artifact name → `sha256:` of the bytes this process wrote or verified.
    trusted: Mutex<HashMap<String, String>>,
    /// Artifact name → live functions using it.
    pins: Mutex<HashMap<String, usize>>,
    /// Artifact names the owner marked active (the control plane's activations).
    held: Mutex<HashSet<String>>,
    /// One eviction pass at a time within the process.
    evicting: Mutex<()>,
    size_bytes: AtomicU64,
    evictions: AtomicU64,
    rejected_mismatch: AtomicU64,
    rejected_unknown: AtomicU64,
    rejected_bad_mac: AtomicU64,
    over_limit: AtomicBool,
}

fn dir_state(dir: &Path) -> Arc<DirState> {
    static DIRS: OnceLock<Mutex<HashMap<PathBuf, Arc<DirState>>>> = OnceLock::new();
    let _ = std::fs::create_dir_all(dir);
    let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut dirs = DIRS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    dirs.entry(key)
        .or_insert_with(|| {
            let s = DirState::default();
            let size = scan(dir).iter().map(|e| e.len).sum();
            s.size_bytes.store(size, Ordering::Relaxed);
            Arc::new(s)
        })
        .clone()
}

/// Cache figures for `/metrics`, as last measured by this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub size_bytes: u64,
    pub limit_bytes: u64,
    pub evictions: u64,
    /// Cached files whose hash differed from the trusted one (tampered or corrupt).
    pub rejected_mismatch: u64,
    /// Cached files nothing trusted vouches for and without a sidecar.
    pub rejected_unknown: u64,
    /// Cached files whose sidecar MAC does not verify with this key (tampered,
    /// or written by a process with another key).
    pub rejected_bad_mac: u64,
    /// Active artifacts alone exceeded the bound at the last write.
    pub over_limit: bool,
}

/// Keeps an artifact from eviction while it lives (held by a loaded function).
pub struct ArtifactPin {
    state: Arc<DirState>,
    name: String,
}

impl std::fmt::Debug for ArtifactPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ArtifactPin").field(&self.name).finish()
    }
}

impl Drop for ArtifactPin {
    fn drop(&mut self) {
        let mut pins = self.state.pins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = pins.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.name);
            }
        }
    }
}

/// A component ready to link, whether it came from the cache, and the pin
/// that keeps its artifact while the function lives.
pub struct Loaded {
    pub component: Component,
    pub from_cache: bool,
    pub pin: ArtifactPin,
}

#[derive(Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    max_bytes: u64,
    remote: Option<Arc<dyn RemoteArtifacts>>,
    key: CacheKey,
    state: Arc<DirState>,
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .field("remote", &self.remote.is_some())
            .field("key", &self.key)
            .finish()
    }
}

pub fn digest(bytes: &[u8]) -> String {
    hex_digest(&Sha256::digest(bytes).into())
}

fn hex_digest(d: &[u8; 32]) -> String {
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn sidecar_name(name: &str) -> String {
    format!("{name}{MAC_EXT}")
}

/// What the sidecar says about an artifact.
#[derive(Debug, PartialEq, Eq)]
enum MacCheck {
    Verified,
    Missing,
    Bad,
}

impl ArtifactCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            state: dir_state(&dir),
            dir,
            max_bytes: DEFAULT_MAX_BYTES,
            remote: None,
            key: CacheKey::per_process(),
        }
    }

    /// The key for sidecars; without one, [`CacheKey::per_process`].
    pub fn with_key(mut self, key: CacheKey) -> Self {
        self.key = key;
        self
    }

    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    pub fn with_remote(mut self, remote: Arc<dyn RemoteArtifacts>) -> Self {
        self.remote = Some(remote);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stats(&self) -> CacheStats {
        let s = &self.state;
        CacheStats {
            size_bytes: s.size_bytes.load(Ordering::Relaxed),
            limit_bytes: self.max_bytes,
            evictions: s.evictions.load(Ordering::Relaxed),
            rejected_mismatch: s.rejected_mismatch.load(Ordering::Relaxed),
            rejected_unknown: s.rejected_unknown.load(Ordering::Relaxed),
            rejected_bad_mac: s.rejected_bad_mac.load(Ordering::Relaxed),
            over_limit: s.over_limit.load(Ordering::Relaxed),
        }
    }

    /// File name of the artifact of `digest` for this engine. The
    /// compatibility hash covers the wasmtime version and every engine
    /// setting that changes the compiled code (fuel, stack, pool, ...).
    pub fn artifact_name(engine: &Engine, digest: &str) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let hex = digest.trim_start_matches("sha256:");
        format!("{hex}-{:016x}{ARTIFACT_EXT}", h.finish())
    }

    pub fn pin(&self, name: &str) -> ArtifactPin {
        *self
            .state
            .pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default() += 1;
        ArtifactPin {
            state: self.state.clone(),
            name: name.to_string(),
        }
    }

    /// Removes the artifact and its sidecar; a file already gone is fine.
    fn delete(&self, name: &str) -> std::io::Result<()> {
        let r = std::fs::remove_file(self.dir.join(name));
        match std::fs::remove_file(self.dir.join(sidecar_name(name))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(artifact = %name, error = %e, "cannot delete the artifact's MAC sidecar")
            }
        }
        r
    }

    fn check_mac(&self, name: &str, sha: &[u8; 32]) -> MacCheck {
        match std::fs::read(self.dir.join(sidecar_name(name))) {
            Ok(tag) if self.key.verify(name, sha, &tag) => MacCheck::Verified,
            Ok(_) => MacCheck::Bad,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MacCheck::Missing,
            Err(_) => MacCheck::Bad,
        }
    }

    /// Writes the sidecar vouching for `sha` under `name`, after the artifact
    /// itself, so a reader never finds a new sidecar beside an old artifact
    /// from this writer. A failure costs only a recompile in a later process.
    fn write_mac(&self, name: &str, sha: &[u8; 32]) {
        let Some(tag) = self.key.sign(name, sha) else {
            return;
        };
        if let Err(e) = write_atomic(&self.dir.join(sidecar_name(name)), &tag) {
            tracing::warn!(error = %e, "cannot write the artifact's MAC sidecar; a new process compiles it again");
        }
    }

    /// Replaces the set of artifacts the owner considers active beyond the
    /// pinned ones (the control plane: those of current activations).
    pub fn hold_active(&self, names: impl IntoIterator<Item = String>) {
        *self.state.held.lock().unwrap_or_else(|p| p.into_inner()) = names.into_iter().collect();
    }

    /// The hash this process recorded for `name`, if it wrote or verified it.
    pub fn trusted_hash(&self, name: &str) -> Option<String> {
        self.state
            .trusted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn expected_hash(&self, name: &str) -> Option<String> {
        self.trusted_hash(name)
            .or_else(|| self.remote.as_ref().and_then(|r| r.expected(name)))
    }

    /// The cached artifact's bytes, only if they hash to what this process
    /// recorded (the control plane reads back what it compiled this way
    /// before storing it for every worker).
    pub fn read_trusted(&self, name: &str) -> Result<Vec<u8>, CacheError> {
        let path = self.dir.join(name);
        let bytes = std::fs::read(&path).map_err(|source| CacheError::Read {
            path: path.clone(),
            source,
        })?;
        let actual = digest(&bytes);
        match self.trusted_hash(name) {
            Some(e) if e == actual => Ok(bytes),
            Some(e) => {
                self.state.rejected_mismatch.fetch_add(1, Ordering::Relaxed);
                Err(CacheError::Untrusted {
                    path,
                    reason: format!("hashes to {actual}, this process wrote {e}"),
                })
            }
            None => Err(CacheError::Untrusted {
                path,
                reason: "this process did not write it".into(),
            }),
        }
    }

    /// Deletes the local copy (the control plane, once the store has it).
    pub fn remove(&self, name: &str) {
        let path = self.dir.join(name);
        match self.delete(name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete the local artifact copy")
            }
        }
        let _g = self
            .state
            .evicting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let size = scan(&self.dir).iter().map(|e| e.len).sum();
        self.state.size_bytes.store(size, Ordering::Relaxed);
    }

    /// Returns the component and whether it came from the cache (local or
    /// remote). A cached file is deserialized only from bytes whose hash was
    /// checked against a trusted one, never straight from the shared file,
    /// so it cannot change between the check and the load.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        digest_: &str,
        bytes: &[u8],
    ) -> Result<Loaded, CacheError> {
        let name = Self::artifact_name(engine, digest_);
        let path = self.dir.join(&name);
        // Pinned before anything is written, so a concurrent load's eviction
        // pass cannot take it.
        let pin = self.pin(&name);
        match std::fs::read(&path) {
            Ok(data) => {
                if let Some(c) = self.check_local(engine, &name, &path, &data) {
                    touch(&path);
                    return Ok(Loaded {
                        component: c,
                        from_cache: true,
                        pin,
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read cached artifact; compiling")
            }
        }
        if let Some(remote) = &self.remote {
            if let Some(data) = remote.fetch(&name) {
                // SAFETY: `fetch` returns only bytes whose hash an activation
                // (from the control plane's manifest) names; wasmtime also
                // checks the header against this engine.
                match unsafe { Component::deserialize(engine, &data) } {
                    Ok(c) => {
                        self.install(&name, &data);
                        return Ok(Loaded {
                            component: c,
                            from_cache: true,
                            pin,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(artifact = %name, error = %e, "fetched artifact does not load on this engine; compiling")
                    }
                }
            }
        }
        let artifact = engine
            .precompile_component(bytes)
            .map_err(|e| CacheError::Compile(format!("{e:#}")))?;
        // SAFETY: produced just above by this engine.
        let c = unsafe { Component::deserialize(engine, &artifact) }
            .map_err(|e| CacheError::Compile(format!("{e:#}")))?;
        self.install(&name, &artifact);
        if let Some(remote) = &self.remote {
            remote.store(&name, &artifact);
        }
        Ok(Loaded {
            component: c,
            from_cache: false,
            pin,
        })
    }

    /// The component in `data` if its hash is one this process or an
    /// activation trusts, or its sidecar authenticates it; otherwise logs and
    /// counts why not.
    fn check_local(
        &self,
        engine: &Engine,
        name: &str,
        path: &Path,
        data: &[u8],
    ) -> Option<Component> {
        let sha: [u8; 32] = Sha256::digest(data).into();
        let actual = hex_digest(&sha);
        let expected = self.expected_hash(name);
        let mac = self.check_mac(name, &sha);
        if expected.as_deref() == Some(actual.as_str()) || mac == MacCheck::Verified {
            // SAFETY: these bytes hash to what this process wrote, what a
            // verified activation names, or what a holder of the key wrote
            // after compiling or verifying them; and they are what gets loaded.
            return match unsafe { Component::deserialize(engine, data) } {
                Ok(c) => {
                    if mac != MacCheck::Verified {
                        self.write_mac(name, &sha);
                    }
                    self.trust(name, actual);
                    Some(c)
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable cached artifact");
                    None
                }
            };
        }
        match (expected, mac) {
            (Some(expected), _) => {
                self.state.rejected_mismatch.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %path.display(), %expected, %actual, "cached artifact does not match its recorded hash (tampered or corrupt); recompiling from the component");
            }
            (None, MacCheck::Bad) => {
                self.state.rejected_bad_mac.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), key = %self.key.source(), "cached artifact's MAC sidecar does not verify (tampered, or written with another cache key); recompiling from the component");
            }
            (None, _) => {
                self.state.rejected_unknown.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = %path.display(), "cached artifact has no MAC sidecar and was not produced by this process nor named by an activation; recompiling from the component");
            }
        }
        None
    }

    fn trust(&self, name: &str, hash: String) {
        self.state
            .trusted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), hash);
    }

    /// Records the artifact as trusted, makes room for it and writes it. A
    /// failed write only costs a later recompile: the component is loaded.
    fn install(&self, name: &str, data: &[u8]) {
        let sha: [u8; 32] = Sha256::digest(data).into();
        self.trust(name, hex_digest(&sha));
        let _g = self
            .state
            .evicting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let others = self.make_room(data.len() as u64, name);
        let path = self.dir.join(name);
        let written = match write_atomic(&path, data) {
            Ok(()) => {
                self.write_mac(name, &sha);
                data.len() as u64
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the artifact cache; the function is loaded, the next start compiles again");
                0
            }
        };
        self.state
            .size_bytes
            .store(others + written, Ordering::Relaxed);
    }

    /// Evicts least recently used artifacts until `incoming` more bytes fit
    /// in the bound, skipping active ones. Returns the bytes that remain
    /// besides `replacing`. Files that vanish meanwhile (another process
    /// sharing the directory evicted them) are simply gone.
    fn make_room(&self, incoming: u64, replacing: &str) -> u64 {
        let mut entries: Vec<Entry> = scan(&self.dir)
            .into_iter()
            .filter(|e| e.name != replacing)
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.len).sum();
        if total + incoming <= self.max_bytes {
            self.state.over_limit.store(false, Ordering::Relaxed);
            return total;
        }
        let active: HashSet<String> = {
            let pins = self.state.pins.lock().unwrap_or_else(|p| p.into_inner());
            let held = self.state.held.lock().unwrap_or_else(|p| p.into_inner());
            pins.keys().chain(held.iter()).cloned().collect()
        };
        entries.sort_by_key(|e| e.modified);
        for e in entries {
            if total + incoming <= self.max_bytes {
                break;
            }
            if active.contains(&e.name) {
                continue;
            }
            match self.delete(&e.name) {
                Ok(()) => {
                    self.state.evictions.fetch_add(1, Ordering::Relaxed);
                    total -= e.len;
                    tracing::info!(artifact = %e.name, size_bytes = e.len, "evicted least recently used artifact");
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => total -= e.len,
                Err(err) => {
                    tracing::warn!(artifact = %e.name, error = %err, "cannot evict artifact")
                }
            }
        }
        let over = total + incoming > self.max_bytes;
        let was = self.state.over_limit.swap(over, Ordering::Relaxed);
        if over && !was {
            tracing::warn!(
                size_bytes = total + incoming,
                limit_bytes = self.max_bytes,
                "artifacts in use alone exceed runtime.cache_max_bytes; keeping them (active artifacts are never evicted)"
            );
        }
        total
    }
}

struct Entry {
    name: String,
    len: u64,
    modified: SystemTime,
}

/// Every artifact in the directory; removes temporary files a dead writer left.
fn scan(dir: &Path) -> Vec<Entry> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    let stale = |m: SystemTime| now.duration_since(m).unwrap_or_default() > STALE_TEMP;
    let mut out = Vec::new();
    let mut sidecars = Vec::new();
    for ent in rd.flatten() {
        let Ok(name) = ent.file_name().into_string() else {
            continue;
        };
        let Ok(meta) = ent.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if name.ends_with(ARTIFACT_EXT) {
            out.push(Entry {
                name,
                len: meta.len(),
                modified,
            });
        } else if let Some(artifact) = name.strip_suffix(MAC_EXT) {
            if stale(modified) {
                sidecars.push(artifact.to_string());
            }
        } else if name.contains(".tmp") && stale(modified) {
            let _ = std::fs::remove_file(ent.path());
        }
    }
    // A sidecar whose artifact is gone (another process evicted it between
    // its two deletions); only old ones, so a writer's is never taken.
    for artifact in sidecars {
        if !out.iter().any(|e| e.name == artifact) {
            let _ = std::fs::remove_file(dir.join(sidecar_name(&artifact)));
        }
    }
    out
}

/// Marks a use for LRU order: the modification time, since access times are
/// often not kept (noatime), and every process sharing the directory sees it.
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CacheError> {
    let werr = |source| CacheError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    // pid alone is 1 in every container: add the time so pods sharing a
    // cache volume never write the same temporary file.
    let tmp = path.with_extension(format!("tmp{}-{}", std::process::id(), nanos()));
    if let Err(e) = std::fs::write(&tmp, data) {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        werr(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pw-cache-unit-{tag}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn set_age(dir: &Path, name: &str, secs_ago: u64) {
        let f = std::fs::File::options()
            .write(true)
            .open(dir.join(name))
            .unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
            .unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = scan(dir).into_iter().map(|e| e.name).collect();
        v.sort();
        v
    }

    #[test]
    fn least_recently_used_goes_first_and_the_bound_holds() {
        let dir = tmpdir("lru");
        let c = ArtifactCache::new(&dir).with_max_bytes(300);
        for (n, age) in [("a.cwasm", 30), ("b.cwasm", 10), ("c.cwasm", 20)] {
            c.install(n, &[0u8; 100]);
            set_age(&dir, n, age);
        }
        assert_eq!(c.stats().size_bytes, 300);
        assert_eq!(c.stats().evictions, 0);
        c.install("d.cwasm", &[1u8; 150]);
        // a (oldest) and c (next) had to go to fit 150 more into 300.
        assert_eq!(names(&dir), ["b.cwasm", "d.cwasm"]);
        let s = c.stats();
        assert_eq!((s.evictions, s.size_bytes, s.over_limit), (2, 250, false));
        assert!(s.size_bytes <= s.limit_bytes);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pinned_and_held_artifacts_are_never_evicted_even_over_the_bound() {
        let dir = tmpdir("pins");
        let c = ArtifactCache::new(&dir).with_max_bytes(250);
        c.install("old.cwasm", &[0u8; 100]);
        set_age(&dir, "old.cwasm", 100);
        c.install("held.cwasm", &[0u8; 100]);
        set_age(&dir, "held.cwasm", 90);
        let pin = c.pin("old.cwasm");
        c.hold_active(["held.cwasm".to_string()]);
        c.install("new.cwasm", &[0u8; 100]);
        assert_eq!(names(&dir), ["held.cwasm", "new.cwasm", "old.cwasm"]);
        let s = c.stats();
        assert!(s.over_limit, "{s:?}");
        assert_eq!((s.evictions, s.size_bytes), (0, 300));
        // Unpinned, the oldest goes on the next write.
        drop(pin);
        let _new = c.pin("new.cwasm");
        c.install("newer.cwasm", &[0u8; 50]);
        assert_eq!(names(&dir), ["held.cwasm", "new.cwasm", "newer.cwasm"]);
        let s = c.stats();
        assert_eq!((s.evictions, s.size_bytes, s.over_limit), (1, 250, false));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_pin_held_by_another_cache_on_the_same_directory_counts() {
        let dir = tmpdir("shared-state");
        let a = ArtifactCache::new(&dir).with_max_bytes(150);
        let b = ArtifactCache::new(&dir).with_max_bytes(150);
        a.install("x.cwasm", &[0u8; 100]);
        set_age(&dir, "x.cwasm", 50);
        let _pin = a.pin("x.cwasm");
        b.install("y.cwasm", &[0u8; 100]);
        assert_eq!(names(&dir), ["x.cwasm", "y.cwasm"]);
        assert_eq!(b.trusted_hash("x.cwasm"), Some(digest(&[0u8; 100])));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn vanished_files_and_stale_temporaries_do_not_get_in_the_way() {
        let dir = tmpdir("vanish");
        let c = ArtifactCache::new(&dir).with_max_bytes(150);
        c.install("a.cwasm", &[0u8; 100]);
        std::fs::write(dir.join("b.tmp1-2"), b"partial").unwrap();
        set_age(&dir, "b.tmp1-2", 2 * STALE_TEMP.as_secs());
        std::fs::write(dir.join("c.tmp1-3"), b"being written").unwrap();
        // Another process evicts a meanwhile.
        std::fs::remove_file(dir.join("a.cwasm")).unwrap();
        c.install("d.cwasm", &[0u8; 100]);
        assert_eq!(names(&dir), ["d.cwasm"]);
        assert!(!dir.join("b.tmp1-2").exists(), "stale temporary removed");
        assert!(dir.join("c.tmp1-3").exists(), "a fresh temporary is kept");
        assert_eq!(c.stats().evictions, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn read_trusted_refuses_a_changed_or_foreign_file() {
        let dir = tmpdir("trust");
        let c = ArtifactCache::new(&dir);
        c.install("mine.cwasm", b"native code");
        assert_eq!(c.read_trusted("mine.cwasm").unwrap(), b"native code");
        std::fs::write(dir.join("mine.cwasm"), b"native codf").unwrap();
        let e = c.read_trusted("mine.cwasm").unwrap_err().to_string();
        assert!(e.contains("mine.cwasm") && e.contains("hashes to"), "{e}");
        assert_eq!(c.stats().rejected_mismatch, 1);
        std::fs::write(dir.join("foreign.cwasm"), b"x").unwrap();
        let e = c.read_trusted("foreign.cwasm").unwrap_err().to_string();
        assert!(e.contains("did not write it"), "{e}");
        c.remove("mine.cwasm");
        assert!(!dir.join("mine.cwasm").exists());
        assert_eq!(c.stats().size_bytes, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn key(c: u8) -> CacheKey {
        CacheKey::from_bytes(&[c; 32], "test")
    }

    fn sha_of(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    #[test]
    fn a_sidecar_verifies_only_for_its_key_name_and_bytes() {
        let dir = tmpdir("mac");
        let c = ArtifactCache::new(&dir).with_key(key(1));
        c.install("x.cwasm", b"native code");
        let tag = std::fs::read(dir.join("x.cwasm.mac")).unwrap();
        assert_eq!(tag.len(), 32);
        let good = sha_of(b"native code");
        assert_eq!(c.check_mac("x.cwasm", &good), MacCheck::Verified);
        // Another key (another process's per-process key, another Secret).
        let other = ArtifactCache::new(&dir).with_key(key(2));
        assert_eq!(other.check_mac("x.cwasm", &good), MacCheck::Bad);
        // Changed bytes.
        assert_eq!(
            c.check_mac("x.cwasm", &sha_of(b"native codf")),
            MacCheck::Bad
        );
        // A valid pair copied under another artifact's name.
        std::fs::copy(dir.join("x.cwasm.mac"), dir.join("y.cwasm.mac")).unwrap();
        assert_eq!(c.check_mac("y.cwasm", &good), MacCheck::Bad);
        // A flipped bit in the sidecar, and a truncated one.
        let mut bad = tag.clone();
        bad[0] ^= 1;
        std::fs::write(dir.join("x.cwasm.mac"), &bad).unwrap();
        assert_eq!(c.check_mac("x.cwasm", &good), MacCheck::Bad);
        std::fs::write(dir.join("x.cwasm.mac"), &tag[..31]).unwrap();
        assert_eq!(c.check_mac("x.cwasm", &good), MacCheck::Bad);
        std::fs::remove_file(dir.join("x.cwasm.mac")).unwrap();
        assert_eq!(c.check_mac("x.cwasm", &good), MacCheck::Missing);
        // A key without bytes (no OS randomness) writes and accepts nothing.
        let none = ArtifactCache::new(&dir).with_key(CacheKey::from_bytes(&[], "none"));
        none.install("z.cwasm", b"z");
        assert!(!dir.join("z.cwasm.mac").exists());
        std::fs::write(dir.join("z.cwasm.mac"), b"").unwrap();
        assert_eq!(none.check_mac("z.cwasm", &sha_of(b"z")), MacCheck::Bad);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn eviction_takes_the_sidecar_too_and_orphans_are_cleaned() {
        let dir = tmpdir("mac-evict");
        let c = ArtifactCache::new(&dir)
            .with_key(key(3))
            .with_max_bytes(150);
        c.install("a.cwasm", &[0u8; 100]);
        set_age(&dir, "a.cwasm", 50);
        assert!(dir.join("a.cwasm.mac").exists());
        std::fs::write(dir.join("gone.cwasm.mac"), [0u8; 32]).unwrap();
        set_age(&dir, "gone.cwasm.mac", 2 * STALE_TEMP.as_secs());
        std::fs::write(dir.join("fresh.cwasm.mac"), [0u8; 32]).unwrap();
        c.install("b.cwasm", &[0u8; 100]);
        assert_eq!(names(&dir), ["b.cwasm"]);
        assert!(
            !dir.join("a.cwasm.mac").exists(),
            "evicted with its artifact"
        );
        assert!(dir.join("b.cwasm.mac").exists());
        assert!(!dir.join("gone.cwasm.mac").exists(), "stale orphan removed");
        assert!(
            dir.join("fresh.cwasm.mac").exists(),
            "a writer's may be next"
        );
        assert_eq!(c.stats().size_bytes, 100, "sidecars are not artifacts");
        c.remove("b.cwasm");
        assert!(!dir.join("b.cwasm.mac").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn key_sources_are_checked_and_name_their_setting() {
        let dir = tmpdir("keys");
        let cache_dir = dir.join("cache");
        let e = CacheKey::resolve(Some("short"), None, &cache_dir).unwrap_err();
        assert!(matches!(e, CacheKeyError::EnvTooShort(5)), "{e:?}");
        assert!(e.to_string().contains(KEY_ENV), "{e}");
        let long = "k".repeat(MIN_KEY_BYTES);
        let inside_file = cache_dir.join("cache.key");
        std::fs::create_dir_all(&cache_dir).unwrap();
        std::fs::write(&inside_file, [7u8; 32]).unwrap();
        // The variable wins over the file.
        let k = CacheKey::resolve(Some(&long), Some(&inside_file), &cache_dir).unwrap();
        assert_eq!((k.source(), &*k.bytes), (KEY_ENV, long.as_bytes()));
        let e = CacheKey::resolve(None, Some(&inside_file), &cache_dir).unwrap_err();
        assert!(matches!(e, CacheKeyError::FileInCacheDir { .. }), "{e:?}");
        assert!(e.to_string().contains("runtime.cache_key_file"), "{e}");
        // Also through a path that only resolves into it.
        let sneaky = cache_dir.join("sub/../cache.key");
        std::fs::create_dir_all(cache_dir.join("sub")).unwrap();
        assert!(matches!(
            CacheKey::resolve(None, Some(&sneaky), &cache_dir),
            Err(CacheKeyError::FileInCacheDir { .. })
        ));
        let missing = dir.join("missing.key");
        let e = CacheKey::resolve(None, Some(&missing), &cache_dir).unwrap_err();
        assert!(
            e.to_string().contains("runtime.cache_key_file")
                && e.to_string().contains("missing.key"),
            "{e}"
        );
        let short = dir.join("short.key");
        std::fs::write(&short, [1u8; 8]).unwrap();
        assert!(matches!(
            CacheKey::resolve(None, Some(&short), &cache_dir),
            Err(CacheKeyError::FileTooShort { len: 8, .. })
        ));
        let good = dir.join("good.key");
        std::fs::write(&good, [9u8; 40]).unwrap();
        let k = CacheKey::resolve(None, Some(&good), &cache_dir).unwrap();
        assert_eq!(&*k.bytes, &[9u8; 40]);
        assert!(
            !format!("{k:?}").contains("9, 9"),
            "Debug must not show the key: {k:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_default_key_file_is_created_once_private_and_then_reused() {
        let dir = tmpdir("default-key");
        let path = dir.join("state/pipeline-worker/cache.key");
        let first = read_or_create_key(&path).unwrap();
        assert_eq!(first.len(), 32);
        assert_ne!(first, [0u8; 32]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        assert_eq!(read_or_create_key(&path).unwrap(), first);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, ["cache.key"], "no temporary left");
        std::fs::write(&path, [1u8; 4]).unwrap();
        let e = read_or_create_key(&path).unwrap_err();
        assert!(e.contains("4 bytes"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
