//! What a guest can reach: the `pipeline:transform/host` log import and WASI
//! 0.2 with nothing behind it. No preopened directory, no environment, no
//! arguments, empty stdin, every socket address refused, no name lookup.
//! stdout/stderr become log lines attributed to the function, truncated and
//! rate-limited.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::pipeline::transform::host::Level;
use super::{bindings, bindings_v01};
use crate::config::Limits;

/// Longest single guest log line kept; the rest is cut.
const MAX_LINE: usize = 1024;
/// Guest output buffered per instance before a newline; longer runs are cut.
const MAX_PENDING: usize = 8 * 1024;
/// Token bucket per function: burst and lines per second.
const LOG_BURST: f64 = 100.0;
const LOG_PER_SEC: f64 = 50.0;

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: Limiter,
    log: Arc<GuestLog>,
    stdout: GuestPipe,
    stderr: GuestPipe,
}

impl HostState {
    pub fn new(limits: &Limits, log: Arc<GuestLog>) -> Self {
        let stdout = GuestPipe::new(log.clone(), "stdout");
        let stderr = GuestPipe::new(log.clone(), "stderr");
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_resources);
        Self {
            wasi,
            table,
            limiter: Limiter::new(limits),
            log,
            stdout,
            stderr,
        }
    }

    /// Emits a trailing line the guest did not end with a newline.
    pub fn flush_output(&mut self) {
        self.stdout.flush_partial();
        self.stderr.flush_partial();
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::pipeline::transform::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.log.emit(level, "log", &message);
    }
}

impl bindings::pipeline::transform::types::Host for HostState {}

impl bindings_v01::pipeline::transform::host::Host for HostState {
    fn log(&mut self, level: bindings_v01::pipeline::transform::host::Level, message: String) {
        use bindings_v01::pipeline::transform::host::Level as L;
        let level = match level {
            L::Trace => Level::Trace,
            L::Debug => Level::Debug,
            L::Info => Level::Info,
            L::Warn => Level::Warn,
            L::Error => Level::Error,
        };
        self.log.emit(level, "log", &message);
    }
}

impl bindings_v01::pipeline::transform::types::Host for HostState {}

/// WASI is linked async so that a guest blocked in a WASI call (a sleep, a
/// `poll`, a stream read) only suspends its fiber: the runner's per-call
/// timeout then drops the call (see the module docs). Both minors of our
/// `host` interface are linked; they have distinct names, so they coexist.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    bindings::TransformBatch::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    bindings_v01::TransformBatch::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
}

/// Bytes a table element is counted as against `memory_bytes` (a funcref is
/// a pointer on the 64-bit hosts we run on).
pub const TABLE_ELEMENT_BYTES: usize = 8;

/// Why the limiter refused a growth. Returned as the error of
/// `memory_growing`/`table_growing`, so wasmtime turns it into the trap and
/// the runner finds it again by downcasting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("instance memory would grow to {total} bytes (linear memories {memories} + tables {tables}), over memory_bytes {limit}")]
    InstanceMemory {
        total: usize,
        memories: usize,
        tables: usize,
        limit: usize,
    },
    #[error(
        "a table would grow from {current} to {desired} elements, over max_table_elements {limit}"
    )]
    TableElements {
        current: usize,
        desired: usize,
        limit: usize,
    },
}

/// Caps the whole instance: the sum of every linear memory's size plus every
/// table's elements (at [`TABLE_ELEMENT_BYTES`] each) stays within
/// `memory_bytes`, and each table within `max_table_elements`. wasmtime asks
/// the limiter for each memory and table as it is created (from 0 to its
/// minimum) and for every growth, so the running sums are exact. A growth
/// the limiter admitted that then fails (OS refusal) stays counted: the
/// error is on the safe side.
pub struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    memories: usize,
    tables: usize,
}

impl Limiter {
    fn new(limits: &Limits) -> Self {
        Self {
            memory_bytes: limits.memory_bytes as usize,
            table_elements: limits.max_table_elements,
            memories: 0,
            tables: 0,
        }
    }

    /// Linear memory and table bytes currently held by the instance.
    #[cfg(test)]
    pub fn used_bytes(&self) -> usize {
        self.memories.saturating_add(self.tables)
    }

    fn admit(&mut self, memories: usize, tables: usize) -> wasmtime::Result<bool> {
        let total = memories.saturating_add(tables);
        if total > self.memory_bytes {
            return Err(wasmtime::Error::new(LimitError::InstanceMemory {
                total,
                memories,
                tables,
                limit: self.memory_bytes,
            }));
        }
        self.memories = memories;
        self.tables = tables;
        Ok(true)
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let memories = self
            .memories
            .saturating_sub(current)
            .saturating_add(desired);
        self.admit(memories, self.tables)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(wasmtime::Error::new(LimitError::TableElements {
                current,
                desired,
                limit: self.table_elements,
            }));
        }
        let tables = self
            .tables
            .saturating_sub(current.saturating_mul(TABLE_ELEMENT_BYTES))
            .saturating_add(desired.saturating_mul(TABLE_ELEMENT_BYTES));
        self.admit(self.memories, tables)
    }
}

/// The function's log: host `log` calls and stdout/stderr lines, rate-limited
/// per function so a chatty guest cannot flood the worker's log.
pub struct GuestLog {
    function: String,
    bucket: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl GuestLog {
    pub fn new(function: &str) -> Self {
        Self {
            function: function.to_string(),
            bucket: Mutex::new(Bucket {
                tokens: LOG_BURST,
                last: Instant::now(),
                dropped: 0,
            }),
        }
    }

    fn admit(&self) -> Option<u64> {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens =
            (b.tokens + now.duration_since(b.last).as_secs_f64() * LOG_PER_SEC).min(LOG_BURST);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.dropped))
        } else {
            b.dropped += 1;
            None
        }
    }

    pub fn emit(&self, level: Level, stream: &str, message: &str) {
        let Some(dropped) = self.admit() else { return };
        if dropped > 0 {
            tracing::warn!(function = %self.function, dropped, "guest log lines suppressed by the rate limit");
        }
        let line = super::truncate(message.trim_end(), MAX_LINE);
        let f = self.function.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "guest", function = f, stream, "{line}"),
            Level::Debug => tracing::debug!(target: "guest", function = f, stream, "{line}"),
            Level::Info => tracing::info!(target: "guest", function = f, stream, "{line}"),
            Level::Warn => tracing::warn!(target: "guest", function = f, stream, "{line}"),
            Level::Error => tracing::error!(target: "guest", function = f, stream, "{line}"),
        }
    }
}

/// A guest stdout/stderr. Never fails a write (a full pipe must not break the
/// guest's `print`); lines go to the function's log.
#[derive(Clone)]
struct GuestPipe {
    log: Arc<GuestLog>,
    stream: &'static str,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl GuestPipe {
    fn new(log: Arc<GuestLog>, stream: &'static str) -> Self {
        Self {
            log,
            stream,
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn level(&self) -> Level {
        if self.stream == "stderr" {
            Level::Warn
        } else {
            Level::Info
        }
    }

    fn push(&self, data: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in data.split_inclusive(|b| *b == b'\n') {
            if pending.len() < MAX_PENDING {
                let room = MAX_PENDING - pending.len();
                pending.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            if chunk.ends_with(b"\n") {
                let line = String::from_utf8_lossy(&pending).into_owned();
                pending.clear();
                self.log.emit(self.level(), self.stream, &line);
            }
        }
    }

    fn flush_partial(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.is_empty() {
            let line = String::from_utf8_lossy(&pending).into_owned();
            pending.clear();
            drop(pending);
            self.log.emit(self.level(), self.stream, &line);
        }
    }
}

impl IsTerminal for GuestPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(memory_bytes: u64) -> Limiter {
        Limiter::new(&Limits {
            memory_bytes,
            max_table_elements: 1000,
            ..Limits::default()
        })
    }

    fn refused(r: wasmtime::Result<bool>) -> LimitError {
        r.expect_err("growth must be refused")
            .downcast::<LimitError>()
            .expect("typed LimitError")
    }

    #[test]
    fn memories_and_tables_share_one_budget() {
        let mut l = limiter(100 << 20);
        // Two memories created at 40 MiB each fit; growing either past the
        // shared 100 MiB does not, although each stays under it on its own.
        assert!(l.memory_growing(0, 40 << 20, None).unwrap());
        assert!(l.memory_growing(0, 40 << 20, None).unwrap());
        assert_eq!(l.used_bytes(), 80 << 20);
        let e = refused(l.memory_growing(40 << 20, 61 << 20, None));
        assert!(
            matches!(e, LimitError::InstanceMemory { total, .. } if total == 101 << 20),
            "{e}"
        );
        assert_eq!(l.used_bytes(), 80 << 20, "a refused growth is not counted");
        // Tables count TABLE_ELEMENT_BYTES per element against the same budget.
        assert!(l.table_growing(0, 1000, None).unwrap());
        assert_eq!(l.used_bytes(), (80 << 20) + 1000 * TABLE_ELEMENT_BYTES);
        let room = (100 << 20) - l.used_bytes();
        assert!(l.memory_growing(40 << 20, (40 << 20) + room, None).unwrap());
        refused(l.memory_growing(0, 1, None));
    }

    #[test]
    fn a_table_is_capped_by_elements_too() {
        let mut l = limiter(1 << 30);
        let e = refused(l.table_growing(10, 1001, None));
        assert_eq!(
            e,
            LimitError::TableElements {
                current: 10,
                desired: 1001,
                limit: 1000
            }
        );
    }
}
