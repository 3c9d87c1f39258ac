//! Precompiled artifacts on disk, keyed by component digest, wasmtime version
//! and engine settings: a Python component takes ~15 s to compile and ~30 ms
//! to load precompiled.
//!
//! An artifact is native code that runs outside the sandbox, and the cache
//! directory may be a volume other pods write too. So a file is loaded only
//! if its sha256 matches a hash kept outside that directory: the one this
//! process recorded when it wrote or verified the artifact (in memory), or the
//! one an activation names for it ([`RemoteArtifacts::expected`]). Anything
//! else is recompiled from the component bytes, whose digest is known.
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

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Default of `runtime.cache_max_bytes`: half the Helm chart's 1 GiB
/// emptyDir, room for a dozen Python artifacts (~33 MB each).
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;

/// A temporary file older than this was left by a writer that died.
const STALE_TEMP: Duration = Duration::from_secs(3600);

const ARTIFACT_EXT: &str = ".cwasm";

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
    /// Cached files nothing trusted vouches for (e.g. left by another process).
    pub rejected_unknown: u64,
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
    state: Arc<DirState>,
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
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
        let dir = dir.into();
        Self {
            state: dir_state(&dir),
            dir,
            max_bytes: DEFAULT_MAX_BYTES,
            remote: None,
        }
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
        match std::fs::remove_file(&path) {
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

    /// The component in `data` if its hash is the trusted one; otherwise
    /// logs and counts why not.
    fn check_local(
        &self,
        engine: &Engine,
        name: &str,
        path: &Path,
        data: &[u8],
    ) -> Option<Component> {
        let actual = digest(data);
        match self.expected_hash(name) {
            Some(expected) if expected == actual => {
                // SAFETY: these bytes hash to what this process wrote or a
                // verified activation names, and they are what gets loaded.
                match unsafe { Component::deserialize(engine, data) } {
                    Ok(c) => {
                        self.trust(name, actual);
                        Some(c)
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "discarding unusable cached artifact");
                        None
                    }
                }
            }
            Some(expected) => {
                self.state.rejected_mismatch.fetch_add(1, Ordering::Relaxed);
                tracing::error!(path = %path.display(), %expected, %actual, "cached artifact does not match its recorded hash (tampered or corrupt); recompiling from the component");
                None
            }
            None => {
                self.state.rejected_unknown.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = %path.display(), "cached artifact was not produced by this process nor named by an activation; recompiling from the component");
                None
            }
        }
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
        self.trust(name, digest(data));
        let _g = self
            .state
            .evicting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let others = self.make_room(data.len() as u64, name);
        let path = self.dir.join(name);
        let written = match write_atomic(&path, data) {
            Ok(()) => data.len() as u64,
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
            match std::fs::remove_file(self.dir.join(&e.name)) {
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
    let mut out = Vec::new();
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
        } else if name.contains(".tmp")
            && now.duration_since(modified).unwrap_or_default() > STALE_TEMP
        {
            let _ = std::fs::remove_file(ent.path());
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
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = path.with_extension(format!("tmp{}-{nanos}", std::process::id()));
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
}
