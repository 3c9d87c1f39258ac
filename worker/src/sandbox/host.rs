//! What a guest can reach: the `pipeline:transform/host` log import and WASI
//! 0.2 with nothing behind it. No preopened directory, no environment, no
//! arguments, empty stdin, every socket address refused, no name lookup.
//! stdout/stderr become log lines attributed to the function, truncated and
//! rate-limited.
//!
//! # One call's output
//!
//! Lines are held until the call ends (at most [`MAX_HELD_LINES`]), because
//! what happens to them depends on how it ended: a call that returned logs
//! them; a call that failed (trap, deadline, fuel) hands its stderr and
//! error-level `log` text to the record's error instead, and logs only the
//! rest; a batch call that failed logs nothing, since its records are
//! replayed one by one and print it all again, each attributable. stderr
//! and error-level `log` text are also captured per call, bounded to the
//! first [`text::GUEST_TEXT_HEAD`] bytes and the last ones (see
//! [`GuestOutput`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::pipeline::transform::host::Level;
use super::text;
use super::{bindings, bindings_v01};
use crate::config::Limits;

/// Longest single guest log line kept; the rest is cut.
const MAX_LINE: usize = 1024;
/// Guest output buffered per instance before a newline; longer runs are cut.
const MAX_PENDING: usize = 8 * 1024;
/// Rate limit per function: burst and lines per second.
const LOG_BURST: u32 = 100;
const LOG_PER_SEC: u32 = 50;
/// Lines of one call held until it ends; more are counted, not logged (the
/// rate limit would drop them anyway).
pub const MAX_HELD_LINES: usize = LOG_BURST as usize;

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: Limiter,
    log: Arc<GuestLog>,
    output: Arc<Mutex<CallOutput>>,
    stdout: GuestPipe,
    stderr: GuestPipe,
}

impl HostState {
    pub fn new(limits: &Limits, log: Arc<GuestLog>) -> Self {
        let output = Arc::new(Mutex::new(CallOutput::default()));
        let stdout = GuestPipe::new(output.clone(), "stdout");
        let stderr = GuestPipe::new(output.clone(), "stderr");
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
            output,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> std::sync::MutexGuard<'_, CallOutput> {
        self.output.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a call's output: what instantiation printed is logged, the
    /// capture starts empty.
    pub fn begin_call(&mut self) {
        self.end_call(CallEnd::Returned);
    }

    /// Ends a call's output (see the module docs); returns what was captured
    /// for the record's error when the call `Failed`.
    pub fn end_call(&mut self, how: CallEnd) -> GuestOutput {
        // A trailing line the guest did not end with a newline.
        self.stdout.flush_partial();
        self.stderr.flush_partial();
        let out = std::mem::take(&mut *self.output());
        match how {
            CallEnd::Returned => {
                out.emit(&self.log, false);
                GuestOutput::default()
            }
            CallEnd::Failed => {
                out.emit(&self.log, true);
                out.capture.finish()
            }
            CallEnd::Replayed => GuestOutput::default(),
        }
    }
}

/// How a call ended, for [`HostState::end_call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// It returned results: every line is logged.
    Returned,
    /// It trapped or ran out of time or fuel: its captured text goes to the
    /// record's error, the other lines to the log.
    Failed,
    /// A batch call that failed and whose records are replayed: nothing is
    /// logged, the replay prints it again.
    Replayed,
}

/// What a failed call wrote to stderr or logged at error level: a Rust
/// panic's message and location, an uncaught exception. Sanitized (see
/// [`text::sanitize`], newlines kept) and at most [`text::MAX_GUEST_TEXT`]
/// bytes: its first [`text::GUEST_TEXT_HEAD`] bytes and its last ones, with
/// the number of bytes cut between them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestOutput(String);

impl GuestOutput {
    /// Sanitizes and bounds `s`.
    pub fn new(s: &str) -> Self {
        let clean = text::sanitize(s.trim(), true);
        Self(text::head_and_tail(
            clean.trim(),
            text::MAX_GUEST_TEXT,
            text::GUEST_TEXT_HEAD,
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Nothing when empty, else `; guest output:` and the text on the next line,
/// so it reads after the error it explains.
impl std::fmt::Display for GuestOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "; guest output:\n{}", self.0)
        }
    }
}

/// One call's lines, held until it ends, and its captured text.
#[derive(Default)]
struct CallOutput {
    held: Vec<HeldLine>,
    /// Lines past [`MAX_HELD_LINES`].
    dropped: u64,
    capture: Capture,
}

struct HeldLine {
    level: Level,
    stream: &'static str,
    line: String,
    /// Part of the capture too (stderr, error-level `log`).
    captured: bool,
}

impl CallOutput {
    fn hold(&mut self, level: Level, stream: &'static str, line: String, captured: bool) {
        if self.held.len() < MAX_HELD_LINES {
            self.held.push(HeldLine {
                level,
                stream,
                line,
                captured,
            });
        } else {
            self.dropped += 1;
        }
    }

    /// Logs the held lines; with `skip_captured`, only those that are not in
    /// the record's error already.
    fn emit(&self, log: &GuestLog, skip_captured: bool) {
        for h in &self.held {
            if !(skip_captured && h.captured) {
                log.emit(h.level, h.stream, &h.line);
            }
        }
        if self.dropped > 0 {
            tracing::warn!(function = %log.function, dropped = self.dropped, "guest log lines of one call over the limit of {MAX_HELD_LINES}; not logged");
        }
    }
}

/// The first [`text::GUEST_TEXT_HEAD`] bytes and a window of the last
/// [`text::MAX_GUEST_TEXT`] bytes of a call's stderr and error-level `log`
/// text, and how much there was: bounded whatever the guest prints.
#[derive(Default)]
struct Capture {
    head: Vec<u8>,
    /// Between one and two windows' worth, so trimming is amortised.
    tail: Vec<u8>,
    total: usize,
}

impl Capture {
    fn push(&mut self, bytes: &[u8]) {
        self.total = self.total.saturating_add(bytes.len());
        let room = text::GUEST_TEXT_HEAD.saturating_sub(self.head.len());
        let (head, rest) = bytes.split_at(room.min(bytes.len()));
        self.head.extend_from_slice(head);
        let window = text::MAX_GUEST_TEXT;
        if rest.len() >= window {
            self.tail.clear();
            self.tail.extend_from_slice(&rest[rest.len() - window..]);
        } else {
            self.tail.extend_from_slice(rest);
            if self.tail.len() > 2 * window {
                self.tail.drain(..self.tail.len() - window);
            }
        }
    }

    fn finish(self) -> GuestOutput {
        if self.total == 0 {
            return GuestOutput::default();
        }
        let window = text::MAX_GUEST_TEXT;
        let tail = &self.tail[self.tail.len().saturating_sub(window)..];
        let cut = self.total - self.head.len() - tail.len();
        if cut == 0 {
            let mut all = self.head;
            all.extend_from_slice(tail);
            return GuestOutput::new(&String::from_utf8_lossy(&all));
        }
        // Bytes were lost between head and window: say so, and let
        // `GuestOutput::new` cut the window down to its bound.
        let text = format!(
            "{}\n… [{cut} bytes cut] …\n{}",
            String::from_utf8_lossy(&self.head),
            String::from_utf8_lossy(tail)
        );
        GuestOutput::new(&text)
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

impl HostState {
    fn guest_log(&mut self, level: Level, message: String) {
        let captured = level == Level::Error;
        let mut out = self.output();
        if captured {
            out.capture.push(message.as_bytes());
            out.capture.push(b"\n");
        }
        out.hold(level, "log", super::truncate(&message, MAX_LINE), captured);
    }
}

impl bindings::pipeline::transform::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.guest_log(level, message);
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
        self.guest_log(level, message);
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
/// per function so a chatty guest cannot flood the worker's log; and the
/// one line per failed record (see [`super::Function::log_record_error`]),
/// limited on its own so that neither crowds out the other.
pub struct GuestLog {
    function: String,
    lines: LineLimit,
    failures: LineLimit,
}

/// GCRA (governor): `LOG_BURST` lines at once, then `LOG_PER_SEC`, and a
/// count of what it dropped for the next line admitted to report.
struct LineLimit<C: governor::clock::Clock = governor::clock::DefaultClock> {
    limiter: governor::RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        C,
        governor::middleware::NoOpMiddleware<C::Instant>,
    >,
    dropped: AtomicU64,
}

fn log_quota() -> governor::Quota {
    const PER_SEC: std::num::NonZeroU32 = std::num::NonZeroU32::new(LOG_PER_SEC).unwrap();
    const BURST: std::num::NonZeroU32 = std::num::NonZeroU32::new(LOG_BURST).unwrap();
    governor::Quota::per_second(PER_SEC).allow_burst(BURST)
}

impl LineLimit {
    fn new() -> Self {
        Self::with_clock(governor::clock::DefaultClock::default())
    }
}

impl<C: governor::clock::Clock> LineLimit<C> {
    fn with_clock(clock: C) -> Self {
        Self {
            limiter: governor::RateLimiter::direct_with_clock(log_quota(), clock),
            dropped: AtomicU64::new(0),
        }
    }

    /// `Some(lines dropped since the last admitted one)`, or `None` to drop.
    fn admit(&self) -> Option<u64> {
        if self.limiter.check().is_ok() {
            Some(self.dropped.swap(0, Ordering::Relaxed))
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl GuestLog {
    pub fn new(function: &str) -> Self {
        Self {
            function: function.to_string(),
            lines: LineLimit::new(),
            failures: LineLimit::new(),
        }
    }

    fn admit(&self) -> Option<u64> {
        self.lines.admit()
    }

    /// The failed-record line's rate limit: `Some(suppressed before it)`.
    pub(super) fn admit_failure(&self) -> Option<u64> {
        self.failures.admit()
    }

    pub fn emit(&self, level: Level, stream: &str, message: &str) {
        let Some(dropped) = self.admit() else { return };
        if dropped > 0 {
            tracing::warn!(function = %self.function, dropped, "guest log lines suppressed by the rate limit");
        }
        let line = text::sanitize(&super::truncate(message.trim_end(), MAX_LINE), false);
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
/// guest's `print`); lines are held in the call's output, stderr is captured
/// too.
#[derive(Clone)]
struct GuestPipe {
    output: Arc<Mutex<CallOutput>>,
    stream: &'static str,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl GuestPipe {
    fn new(output: Arc<Mutex<CallOutput>>, stream: &'static str) -> Self {
        Self {
            output,
            stream,
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn is_stderr(&self) -> bool {
        self.stream == "stderr"
    }

    fn level(&self) -> Level {
        if self.is_stderr() {
            Level::Warn
        } else {
            Level::Info
        }
    }

    fn output(&self) -> std::sync::MutexGuard<'_, CallOutput> {
        self.output.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, data: &[u8]) {
        if self.is_stderr() {
            self.output().capture.push(data);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in data.split_inclusive(|b| *b == b'\n') {
            if pending.len() < MAX_PENDING {
                let room = MAX_PENDING - pending.len();
                pending.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            if chunk.ends_with(b"\n") {
                let line = String::from_utf8_lossy(&pending).into_owned();
                pending.clear();
                self.output()
                    .hold(self.level(), self.stream, line, self.is_stderr());
            }
        }
    }

    fn flush_partial(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.is_empty() {
            let line = String::from_utf8_lossy(&pending).into_owned();
            pending.clear();
            drop(pending);
            self.output()
                .hold(self.level(), self.stream, line, self.is_stderr());
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
    use std::time::Duration;

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
    fn guest_lines_burst_then_rate_and_count_what_was_dropped() {
        let clock = governor::clock::FakeRelativeClock::default();
        let l = LineLimit::with_clock(clock.clone());
        for i in 0..LOG_BURST {
            assert_eq!(l.admit(), Some(0), "line {i} of the burst");
        }
        assert_eq!(l.admit(), None);
        assert_eq!(l.admit(), None);
        // One line's worth of time (1/50 s) admits exactly one more, which
        // reports the two dropped before it.
        clock.advance(Duration::from_millis(1000 / LOG_PER_SEC as u64));
        assert_eq!(l.admit(), Some(2));
        assert_eq!(l.admit(), None);
        // A long quiet spell refills the burst, no more.
        clock.advance(Duration::from_secs(60));
        assert_eq!(l.admit(), Some(1), "the line dropped before the spell");
        for _ in 1..LOG_BURST {
            assert_eq!(l.admit(), Some(0));
        }
        assert_eq!(l.admit(), None);
        assert_eq!(l.admit(), None);
        clock.advance(Duration::from_millis(1000 / LOG_PER_SEC as u64));
        assert_eq!(l.admit(), Some(2));
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
