//! Tenants sharing one worker: quotas per tenant (records/s, bytes/s), a
//! CPU share per tenant, and the backoff of a function that keeps hitting
//! its deadline or another resource cap.
//!
//! Everything is enforced by the sandbox threads (lanes) at the batch
//! boundary, with one [`governor`] limiter per tenant and resource shared by
//! every lane of every pipeline of that tenant on this worker:
//!
//! - records and input bytes are paid *before* a batch runs (what the lane
//!   just took from its partition queues);
//! - output bytes (what the batch produced and dead-lettered) and CPU are
//!   paid *after*, as a debt the next batch waits for, since neither is
//!   known in advance. CPU is the lane thread's own CPU time
//!   (`CLOCK_THREAD_CPUTIME_ID`), read once per batch: wasm, and the host
//!   work done for the tenant on that thread (decoding its records, checking
//!   and encoding its outputs, page faults of its memory), so a tenant that
//!   used more than its share waits until its share has paid for it;
//! - a lane whose whole batch hit the deadline or another resource cap
//!   (memory, fuel, stack, output size or count) backs off, doubling from
//!   [`BACKOFF_BASE`] up to [`BACKOFF_CAP`], and takes one record at a time
//!   until a record ends otherwise. Each such record costs up to the cap
//!   (a deadline's wall time, 64 MiB of page faults), so retrying them at
//!   full speed would spend the tenant's share on dead letters.
//!
//! While a lane waits (longer than [`PAUSE_AFTER`]) it pauses its partitions
//! (`rd_kafka_pause_partitions`), so librdkafka stops fetching them; the records it already took stay in
//! its hands, in order, and run when the wait ends. Nothing is dropped or
//! dead-lettered for a quota. A wait never outlives a stop (the lane gives
//! its batch up, uncommitted, as on any stop) nor a revoke (the revoked
//! partition's records are given up at the next tick, so the revoke's drain
//! does not wait on tokens).
//!
//! Quotas are per worker: N replicas give a tenant N × its quota in
//! aggregate. Sharing one budget across the group would need coordination on
//! every batch (or a lease protocol) and make a worker's throughput depend
//! on the others'; per worker it is local, cheap and predictable, and
//! partitions spread the tenant's load over the replicas anyway.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use governor::clock::Clock as _;
use governor::{DefaultDirectRateLimiter, Quota};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::TopicPartitionList;

use crate::config::{Config, PipelineConfig};
use crate::source::{LaneInbox, PartitionFeed};
use crate::stats::{PipelineStats, ThrottleReason};

/// First wait after a batch that only hit deadlines (or other caps).
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest backoff: a function that always times out still runs (and
/// dead-letters) a record per lane about this often.
pub const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// How often a waiting lane looks at stop, revokes and new partitions.
const TICK: Duration = Duration::from_millis(20);
/// A throttling episode ends after this long without any lane waiting, so
/// a pipeline held at its rate (a short wait per batch) logs one episode.
const EPISODE_GAP: Duration = Duration::from_secs(1);
/// Waits shorter than this (a rate's steady pacing between batches) do
/// not pause: a pause makes librdkafka drop its prefetched records and fetch
/// them again on resume, and a lane that does not read stops fetching at
/// `queued.min.messages` by itself. Longer waits pause.
const PAUSE_AFTER: Duration = Duration::from_millis(100);
/// CPU share burst: this much of the share may be used at once.
const CPU_BURST: Duration = Duration::from_millis(100);
/// CPU charged to the tenant's share per byte it writes (outputs and dead
/// letters), in picoseconds: the work librdkafka's own threads do for those
/// bytes off the lane (framing, checksum, the socket copy), which no lane's
/// CPU clock sees. About 0.2 ns/byte: the extra `rdk:broker` CPU over the
/// bytes written by tenant a's 1 MB outputs in `--bench noisy` (README).
/// The broker's own work is not the worker's CPU: the bytes quota covers it.
pub const OUTPUT_CPU_PICOS_PER_BYTE: u64 = 200;

/// One token bucket; `burst` is the most one `check_n` may ask for.
struct Bucket {
    limiter: DefaultDirectRateLimiter,
    burst: u32,
}

impl Bucket {
    fn new(per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst.max(1))?;
        Some(Self {
            limiter: DefaultDirectRateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            burst: burst.get(),
        })
    }

    /// Pays as much of `owed` as the bucket holds now, in chunks of at most
    /// the burst (a batch may be larger than the burst); the wait until the
    /// next chunk could go when some is left.
    fn pay(&self, owed: &mut u64) -> Option<Duration> {
        while *owed > 0 {
            let n = (*owed).min(u64::from(self.burst)) as u32;
            let cells = NonZeroU32::new(n)?;
            match self.limiter.check_n(cells) {
                Ok(Ok(())) => *owed -= u64::from(n),
                Ok(Err(not_until)) => {
                    return Some(not_until.wait_time_from(self.limiter.clock().now()));
                }
                // n <= burst: cannot happen; never hold a batch for ever.
                Err(_) => *owed = 0,
            }
        }
        None
    }
}

/// What one tenant's pipelines on this worker share.
pub struct TenantLimiter {
    pub name: String,
    records: Option<Bucket>,
    bytes: Option<Bucket>,
    /// Microseconds of wasm time.
    cpu: Option<Bucket>,
    /// For the throttling log line: the quota as configured.
    pub describe: String,
}

/// The limiters of every tenant with a pipeline on this worker.
#[derive(Default)]
pub struct Quotas {
    tenants: HashMap<String, Arc<TenantLimiter>>,
}

impl Quotas {
    /// One limiter per tenant named by a pipeline. A tenant without
    /// `cpu_share` gets an equal share when two or more tenants run here.
    pub fn from_config(config: &Config) -> Self {
        let named: BTreeSet<&str> = config
            .pipelines
            .iter()
            .filter_map(|p| p.tenant.as_deref())
            .collect();
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let default_share = (named.len() >= 2).then(|| 1.0 / named.len() as f64);
        let mut tenants = HashMap::new();
        for name in named {
            let q = config.tenants.iter().find(|t| t.name == name);
            let share = q.and_then(|q| q.cpu_share).or(default_share);
            let mut describe = Vec::new();
            let records = q.and_then(|q| {
                let rate = q.records_per_second?;
                let burst = q.records_burst.unwrap_or(rate);
                describe.push(format!("{rate} records/s (burst {burst})"));
                Bucket::new(rate, burst)
            });
            let bytes = q.and_then(|q| {
                let rate = q.bytes_per_second?;
                let burst = q.bytes_burst.unwrap_or(rate);
                describe.push(format!("{rate} bytes/s (burst {burst})"));
                Bucket::new(rate, burst)
            });
            let cpu = share.and_then(|s| {
                let micros = (s * cores * 1e6).clamp(1.0, f64::from(u32::MAX)) as u32;
                let burst = (f64::from(micros) * CPU_BURST.as_secs_f64()).max(1.0) as u32;
                describe.push(format!("cpu share {s:.2} of {cores} CPUs"));
                Bucket::new(micros, burst)
            });
            tenants.insert(
                name.to_string(),
                Arc::new(TenantLimiter {
                    name: name.to_string(),
                    records,
                    bytes,
                    cpu,
                    describe: describe.join(", "),
                }),
            );
        }
        Self { tenants }
    }

    pub fn for_pipeline(&self, p: &PipelineConfig) -> Option<Arc<TenantLimiter>> {
        self.tenants.get(p.tenant.as_deref()?).cloned()
    }
}

/// Throttling episodes of one pipeline: one log line when the first lane
/// starts waiting, one when no lane has waited for [`EPISODE_GAP`].
pub struct Episodes {
    pipeline: String,
    tenant: String,
    describe: String,
    stats: Arc<PipelineStats>,
    active: AtomicBool,
    state: Mutex<EpisodeState>,
}

struct EpisodeState {
    waiting: usize,
    started: Option<Instant>,
    last_release: Instant,
}

impl Episodes {
    pub fn new(pipeline: &str, tenant: Option<&TenantLimiter>, stats: Arc<PipelineStats>) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            tenant: tenant.map(|t| t.name.clone()).unwrap_or_default(),
            describe: tenant.map(|t| t.describe.clone()).unwrap_or_default(),
            stats,
            active: AtomicBool::new(false),
            state: Mutex::new(EpisodeState {
                waiting: 0,
                started: None,
                last_release: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EpisodeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self, reason: ThrottleReason, wait: Duration) {
        let mut s = self.lock();
        s.waiting += 1;
        if s.started.is_none() {
            s.started = Some(Instant::now());
            self.active.store(true, Ordering::Release);
            match reason {
                ThrottleReason::DeadlineBackoff => tracing::warn!(
                    pipeline = %self.pipeline,
                    tenant = %self.tenant,
                    reason = reason.label(),
                    wait_ms = wait.as_millis() as u64,
                    "pipeline backing off: its function keeps hitting the deadline; partitions paused"
                ),
                ThrottleReason::ResourceBackoff => tracing::warn!(
                    pipeline = %self.pipeline,
                    tenant = %self.tenant,
                    reason = reason.label(),
                    wait_ms = wait.as_millis() as u64,
                    "pipeline backing off: its function keeps hitting a resource limit (memory, fuel, stack or output); partitions paused"
                ),
                _ => tracing::warn!(
                    pipeline = %self.pipeline,
                    tenant = %self.tenant,
                    reason = reason.label(),
                    quota = %self.describe,
                    "pipeline throttled: tenant over its quota; partitions paused"
                ),
            }
        }
    }

    fn leave(&self) {
        let mut s = self.lock();
        s.waiting = s.waiting.saturating_sub(1);
        s.last_release = Instant::now();
    }

    /// Ends the episode once no lane has waited for a while. Called by the
    /// lanes between batches; one load when no episode is open.
    pub fn tick(&self) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let mut s = self.lock();
        if s.waiting > 0 || s.last_release.elapsed() < EPISODE_GAP {
            return;
        }
        if let Some(started) = s.started.take() {
            self.active.store(false, Ordering::Release);
            let lasted = s.last_release.saturating_duration_since(started);
            tracing::info!(
                pipeline = %self.pipeline,
                tenant = %self.tenant,
                duration_ms = lasted.as_millis() as u64,
                throttled_seconds_total = self.stats.throttled_seconds(),
                "pipeline no longer throttled; partitions resumed"
            );
        }
    }
}

/// One lane's view: what it owes its tenant and its backoff.
pub struct Gate {
    tenant: Option<Arc<TenantLimiter>>,
    episodes: Arc<Episodes>,
    stats: Arc<PipelineStats>,
    /// Records, bytes and CPU microseconds taken but not yet paid for.
    owed: [u64; 3],
    /// Sub-microsecond rest of the CPU time, carried to the next batch.
    cpu_rest_nanos: u64,
    /// The lane thread's CPU time when it was last charged.
    cpu_mark: Option<u64>,
    /// Batches in a row whose every record hit a resource cap.
    streak: u32,
    backoff_until: Option<Instant>,
    /// Which backoff it is, for the metric and the log line.
    backoff_reason: ThrottleReason,
    /// Output bytes per record of the last batch that ran: sizes the next
    /// batch to the bytes burst.
    out_bytes_per_record: u64,
}

/// How many of a batch's function calls were stopped by a cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitHits {
    /// By any resource cap, the deadline included.
    pub resource: u64,
    /// By the deadline.
    pub deadline: u64,
}

impl Gate {
    pub fn new(
        tenant: Option<Arc<TenantLimiter>>,
        episodes: Arc<Episodes>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        Self {
            tenant,
            episodes,
            stats,
            owed: [0; 3],
            cpu_rest_nanos: 0,
            cpu_mark: None,
            streak: 0,
            backoff_until: None,
            backoff_reason: ThrottleReason::DeadlineBackoff,
            out_bytes_per_record: 0,
        }
    }

    /// Between batches with nothing to do: an open episode may end.
    pub fn idle(&self) {
        self.episodes.tick();
    }

    /// Records the lane may take next: one at a time while backing off, so
    /// a function that times out costs one deadline per wait, not a batch's.
    ///
    /// With a bytes quota, a batch is also cut to what the bytes burst
    /// covers at the last batch's output bytes per record: outputs are paid
    /// after the batch, so a batch of 64 maximum-size outputs would reach the
    /// broker as one 64 MB burst (and hold other tenants' produce requests
    /// behind it) before the lane waits for it.
    pub fn batch_limit(&self, batch_size: usize) -> usize {
        if self.streak > 0 {
            return 1;
        }
        let burst = self
            .tenant
            .as_ref()
            .and_then(|t| t.bytes.as_ref())
            .map(|b| u64::from(b.burst));
        match burst {
            Some(burst) if self.out_bytes_per_record > 0 => {
                let fits = (burst / self.out_bytes_per_record).max(1);
                batch_size.min(usize::try_from(fits).unwrap_or(usize::MAX))
            }
            _ => batch_size,
        }
    }

    /// The batch just taken (records and their bytes).
    pub fn owe_input(&mut self, records: usize, bytes: u64) {
        if let Some(t) = &self.tenant {
            if t.records.is_some() {
                self.owed[0] += records as u64;
            }
            if t.bytes.is_some() {
                self.owed[1] += bytes;
            }
        }
    }

    /// Whether produced bytes count (the tenant has a bytes quota or a CPU
    /// share): the lane adds them up only then.
    pub fn charges_output(&self) -> bool {
        self.tenant
            .as_ref()
            .is_some_and(|t| t.bytes.is_some() || t.cpu.is_some())
    }

    /// What a batch produced: outputs and dead letters, paid for like the
    /// input bytes but after the fact, before the next batch runs; and the
    /// producer threads' CPU for them, on the CPU share. `ran` is the
    /// batch's function calls, for the next batch's size.
    pub fn owe_output(&mut self, bytes: u64, ran: usize) {
        let Some(t) = &self.tenant else { return };
        if ran > 0 {
            self.out_bytes_per_record = bytes / ran as u64;
        }
        if t.bytes.is_some() {
            self.owed[1] += bytes;
        }
        if t.cpu.is_some() {
            self.owe_cpu_nanos(bytes.saturating_mul(OUTPUT_CPU_PICOS_PER_BYTE) / 1_000);
        }
    }

    fn owe_cpu_nanos(&mut self, nanos: u64) {
        let n = self.cpu_rest_nanos.saturating_add(nanos);
        self.owed[2] = self.owed[2].saturating_add(n / 1_000);
        self.cpu_rest_nanos = n % 1_000;
    }

    /// Starts the lane's CPU clock, so the first batch is not charged for
    /// the thread's start-up.
    pub fn start(&mut self) {
        if self.tenant.as_ref().is_some_and(|t| t.cpu.is_some()) {
            self.cpu_mark = thread_cpu_nanos();
        }
    }

    /// After a batch: the CPU it cost (the thread's CPU time since the last
    /// charge; the batch's wasm time where that clock is missing) and how
    /// many of its function calls a cap stopped.
    pub fn after_batch(&mut self, wasm_nanos: u64, ran: usize, hits: LimitHits) {
        if let Some(t) = &self.tenant {
            if t.cpu.is_some() {
                let used = match (self.cpu_mark, thread_cpu_nanos()) {
                    (Some(before), Some(now)) => {
                        self.cpu_mark = Some(now);
                        now.saturating_sub(before)
                    }
                    (None, now) => {
                        self.cpu_mark = now;
                        wasm_nanos
                    }
                    (Some(_), None) => wasm_nanos,
                };
                self.owe_cpu_nanos(used);
            }
        }
        if ran == 0 {
            return;
        }
        // Only a batch with no record that ended otherwise: one poison
        // record among good ones is dead-lettered and costs nothing more.
        if hits.resource >= ran as u64 {
            self.streak = self.streak.saturating_add(1);
            self.backoff_reason = if hits.deadline >= ran as u64 {
                ThrottleReason::DeadlineBackoff
            } else {
                ThrottleReason::ResourceBackoff
            };
            let wait = BACKOFF_BASE
                .saturating_mul(1u32 << (self.streak - 1).min(16))
                .min(BACKOFF_CAP);
            self.backoff_until = Some(Instant::now() + wait);
        } else {
            self.streak = 0;
            self.backoff_until = None;
        }
    }

    /// Why and how long the lane must wait before it runs its batch, paying
    /// what it can meanwhile; `None` = go.
    fn next_wait(&mut self) -> Option<(ThrottleReason, Duration)> {
        if let Some(until) = self.backoff_until {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Some((self.backoff_reason, left));
            }
            self.backoff_until = None;
        }
        let t = self.tenant.as_ref()?;
        for (i, (bucket, reason)) in [
            (&t.records, ThrottleReason::Records),
            (&t.bytes, ThrottleReason::Bytes),
            (&t.cpu, ThrottleReason::Cpu),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(b) = bucket {
                if let Some(wait) = b.pay(&mut self.owed[i]) {
                    return Some((reason, wait));
                }
            }
        }
        None
    }

    /// Waits until the batch may run, its lane's partitions paused
    /// meanwhile. `keep` is called every tick: it gives up the records of
    /// revoked partitions and says whether any are left to wait for. False
    /// when the worker is stopping (the caller gives its batch up).
    pub fn admit<C: ConsumerContext>(
        &mut self,
        consumer: &Weak<BaseConsumer<C>>,
        inbox: &LaneInbox,
        stopping: impl Fn() -> bool,
        mut keep: impl FnMut() -> bool,
    ) -> bool {
        let Some((mut reason, mut wait)) = self.next_wait() else {
            self.episodes.tick();
            return true;
        };
        self.episodes.enter(reason, wait);
        let mut paused = TopicPartitionList::new();
        let mut known = u64::MAX;
        let mut go = true;
        let started = Instant::now();
        loop {
            // Again on every change of the lane's partitions: one assigned
            // during the wait is paused too.
            if wait >= PAUSE_AFTER || started.elapsed() >= PAUSE_AFTER {
                if let Some((g, feeds)) = inbox.feeds_since(known) {
                    known = g;
                    pause(consumer, &feeds, &mut paused);
                }
            }
            let slice = wait.min(TICK);
            std::thread::sleep(slice);
            self.stats.add_throttled(reason, slice);
            if stopping() {
                go = false;
                break;
            }
            if !keep() {
                break;
            }
            match self.next_wait() {
                Some((r, w)) => (reason, wait) = (r, w),
                None => break,
            }
        }
        if paused.count() > 0 {
            if let Some(c) = consumer.upgrade() {
                // A partition revoked meanwhile is refused here, harmlessly.
                if let Err(e) = c.resume(&paused) {
                    tracing::debug!(error = %e, "resume after throttling");
                }
            }
        }
        self.episodes.leave();
        go
    }
}

/// The calling thread's CPU time (user + system), in nanoseconds. One
/// `clock_gettime` per batch: not in the vDSO for this clock, so a system
/// call (well under a microsecond), never per record.
pub fn thread_cpu_nanos() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a
        // constant every supported Unix defines.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        if rc != 0 {
            return None;
        }
        Some((ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

fn pause<C: ConsumerContext>(
    consumer: &Weak<BaseConsumer<C>>,
    feeds: &[Arc<PartitionFeed>],
    paused: &mut TopicPartitionList,
) {
    let Some(c) = consumer.upgrade() else {
        return;
    };
    let mut tpl = TopicPartitionList::with_capacity(feeds.len());
    for f in feeds {
        if paused.find_partition(&f.topic, f.partition).is_none() {
            tpl.add_partition(&f.topic, f.partition);
            paused.add_partition(&f.topic, f.partition);
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = c.pause(&tpl) {
            tracing::debug!(error = %e, "pause while throttled");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_pays_a_batch_larger_than_its_burst_in_chunks() {
        let b = Bucket::new(1_000, 100).unwrap();
        let mut owed = 250;
        let wait = b.pay(&mut owed).expect("only the burst is there at once");
        assert_eq!(owed, 150, "the first 100 are paid");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
    }

    fn gate(bytes: Option<Bucket>, cpu: Option<Bucket>) -> Gate {
        let stats = Arc::new(PipelineStats::default());
        let tenant = Arc::new(TenantLimiter {
            name: "t".into(),
            records: None,
            bytes,
            cpu,
            describe: String::new(),
        });
        let ep = Arc::new(Episodes::new("p", Some(&tenant), stats.clone()));
        Gate::new(Some(tenant), ep, stats)
    }

    #[test]
    fn batches_are_cut_to_the_bytes_burst_at_the_last_output_size() {
        let mut g = gate(Bucket::new(5_000_000, 5_000_000), None);
        assert_eq!(g.batch_limit(64), 64, "no output seen yet");
        g.owe_output(64 * 1_000_000, 64);
        g.after_batch(0, 64, LimitHits::default());
        assert_eq!(g.batch_limit(64), 5, "five 1 MB outputs fit the burst");
        g.owe_output(10 * 1_000, 10);
        g.after_batch(0, 10, LimitHits::default());
        assert_eq!(g.batch_limit(64), 64, "small outputs again: whole batches");
        g.owe_output(2 * 20_000_000, 2);
        g.after_batch(0, 2, LimitHits::default());
        assert_eq!(g.batch_limit(64), 1, "an output over the burst: one record");
        let mut free = gate(None, None);
        free.owe_output(64 * 1_000_000, 64);
        free.after_batch(0, 64, LimitHits::default());
        assert_eq!(free.batch_limit(64), 64, "no bytes quota: not cut");
    }

    #[test]
    fn output_bytes_are_a_debt_on_the_bytes_quota() {
        let mut g = gate(Bucket::new(1_000, 1_000), None);
        assert!(g.charges_output());
        g.owe_input(1, 10);
        assert!(g.next_wait().is_none(), "the input fits the burst");
        g.owe_output(5_000, 1);
        let (reason, wait) = g.next_wait().expect("the outputs are over the burst");
        assert_eq!(reason, ThrottleReason::Bytes);
        assert!(wait > Duration::ZERO, "{wait:?}");
        assert!(g.owed[1] >= 4_000, "still owed: {}", g.owed[1]);

        let mut free = gate(None, None);
        assert!(
            !free.charges_output(),
            "no bytes quota, no CPU share: nothing added up"
        );
        free.owe_output(u64::MAX, 1);
        assert!(free.next_wait().is_none());
    }

    #[test]
    fn output_bytes_are_charged_to_the_cpu_share_for_the_producer_threads() {
        let mut g = gate(None, Bucket::new(1_000_000, 100_000));
        assert!(g.charges_output(), "a CPU share alone counts outputs");
        g.owe_output(10_000_000, 1);
        let want = 10_000_000 * OUTPUT_CPU_PICOS_PER_BYTE / 1_000_000;
        assert_eq!(g.owed[2], want, "µs owed for 10 MB written");
        assert_eq!(g.owed[1], 0, "no bytes quota, no bytes owed");
    }

    #[test]
    fn cpu_charged_is_the_threads_cpu_time_not_wasm_time() {
        if thread_cpu_nanos().is_none() {
            return;
        }
        let mut g = gate(None, Bucket::new(1_000_000, 100_000));
        g.start();
        // Host work with no wasm time at all: charged.
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        g.after_batch(0, 1, LimitHits::default());
        let busy = g.owed[2];
        // Thread CPU may lag wall time under load, never exceed it much.
        assert!(
            busy > 0 && busy <= 200_000,
            "spun 30 ms wall, charged {busy} µs"
        );
        // Blocked, not running: (almost) nothing, whatever the wasm time says.
        std::thread::sleep(Duration::from_millis(50));
        g.after_batch(50_000_000, 1, LimitHits::default());
        let slept = g.owed[2] - busy;
        assert!(slept < 20_000, "slept 50 ms, charged {slept} µs");
    }

    #[test]
    fn deadline_backoff_doubles_caps_and_resets() {
        let stats = Arc::new(PipelineStats::default());
        let ep = Arc::new(Episodes::new("p", None, stats.clone()));
        let mut g = Gate::new(None, ep, stats);
        assert_eq!(g.batch_limit(64), 64);
        let mut last = Duration::ZERO;
        let deadline = LimitHits {
            resource: 1,
            deadline: 1,
        };
        for _ in 0..8 {
            g.after_batch(0, 1, deadline);
            let (reason, wait) = g.next_wait().expect("backing off");
            assert_eq!(reason, ThrottleReason::DeadlineBackoff);
            assert!(wait >= last.min(BACKOFF_CAP - TICK), "{wait:?} < {last:?}");
            assert!(wait <= BACKOFF_CAP);
            last = wait;
        }
        assert!(last > BACKOFF_CAP - Duration::from_millis(50));
        assert_eq!(g.batch_limit(64), 1, "one record at a time");
        g.after_batch(
            0,
            4,
            LimitHits {
                resource: 3,
                deadline: 3,
            },
        );
        assert!(g.next_wait().is_none(), "a record in time ends the backoff");
        assert_eq!(g.batch_limit(64), 64);
    }

    #[test]
    fn other_resource_caps_back_off_but_a_poison_record_among_good_ones_does_not() {
        let stats = Arc::new(PipelineStats::default());
        let ep = Arc::new(Episodes::new("p", None, stats.clone()));
        let mut g = Gate::new(None, ep, stats);
        // A batch of 64 with one record over its memory cap: no backoff.
        g.after_batch(
            0,
            64,
            LimitHits {
                resource: 1,
                deadline: 0,
            },
        );
        assert!(g.next_wait().is_none());
        assert_eq!(g.batch_limit(64), 64);
        // Every record at the memory cap (one also at the deadline).
        g.after_batch(
            0,
            64,
            LimitHits {
                resource: 64,
                deadline: 1,
            },
        );
        let (reason, wait) = g.next_wait().expect("backing off");
        assert_eq!(reason, ThrottleReason::ResourceBackoff);
        assert!(wait > Duration::ZERO && wait <= BACKOFF_BASE);
        assert_eq!(g.batch_limit(64), 1);
        g.after_batch(0, 1, LimitHits::default());
        assert!(g.next_wait().is_none(), "a success ends it");
    }
}
