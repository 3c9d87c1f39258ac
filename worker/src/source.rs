//! The Kafka side that reads: consumer-group membership, per-partition offset
//! watermarks, and commit-on-revoke.
//!
//! An input offset is stored for commit only when every record it produced
//! (outputs or its dead letter) has been acknowledged by the broker, and only
//! as a contiguous watermark: with records of one partition in flight at
//! once, offset N+1 finishing first must not commit past N.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{
    base_consumer::PartitionQueue, BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance,
};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

/// Offsets of one partition between "consumed" and "fully delivered".
pub struct PartitionTracker {
    pub topic: String,
    pub partition: i32,
    state: Mutex<TrackerState>,
    drained: Condvar,
    /// Set when the partition is revoked: its records still queued for a
    /// sandbox are skipped (the next owner reads them from the commit).
    revoked: AtomicBool,
}

#[derive(Default)]
struct TrackerState {
    /// Registered offsets in consumption order, with their done flag.
    pending: VecDeque<(i64, bool)>,
    /// Next offset to commit (last contiguous done + 1).
    watermark: Option<i64>,
    /// The watermark last handed to `store_offset`.
    stored: Option<i64>,
    /// The lowest offset given up without being processed: the watermark
    /// never passes it, so it and everything after it are read again.
    cap: Option<i64>,
}

impl PartitionTracker {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
            state: Mutex::new(TrackerState::default()),
            drained: Condvar::new(),
            revoked: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, offset: i64) {
        let mut s = self.lock();
        if s.cap.is_some_and(|c| offset >= c) {
            // Given up on: processing it may duplicate, never commit past it.
            return;
        }
        s.pending.push_back((offset, false));
    }

    /// Marks an offset fully delivered and advances the watermark over every
    /// contiguous done offset at the front.
    pub fn complete(&self, offset: i64) {
        let mut s = self.lock();
        if let Ok(i) = s.pending.binary_search_by_key(&offset, |(o, _)| *o) {
            s.pending[i].1 = true;
        }
        while let Some(&(o, true)) = s.pending.front() {
            if s.cap.is_some_and(|c| o >= c) {
                break;
            }
            s.pending.pop_front();
            s.watermark = Some(o + 1);
        }
        if s.pending.is_empty() {
            self.drained.notify_all();
        }
    }

    /// Forgets the newest registered offset, which was never handed to a
    /// sandbox (shutdown while its lane was full). The watermark can then
    /// reach it but not pass it, so it is read again after a restart.
    pub fn abandon_last(&self, offset: i64) {
        let mut s = self.lock();
        if s.pending.back().is_some_and(|(o, _)| *o == offset) {
            s.pending.pop_back();
        }
        if s.pending.is_empty() {
            self.drained.notify_all();
        }
    }

    /// Gives up on `offset` and every later one of this partition (a lane
    /// stopping, a revoked partition's queued records, a dead thread's
    /// batch): they are never processed here, the watermark stays below
    /// them and the next reader processes them.
    pub fn abandon(&self, offset: i64) {
        let mut s = self.lock();
        let cap = s.cap.map_or(offset, |c| c.min(offset));
        s.cap = Some(cap);
        s.pending.retain(|(o, _)| *o < cap);
        if s.pending.is_empty() {
            self.drained.notify_all();
        }
    }

    /// Forgets everything registered and every cap: an aborted transaction
    /// rewound the partition, so its records are read and registered again.
    pub fn reset(&self) {
        let mut s = self.lock();
        s.pending.clear();
        s.cap = None;
        self.drained.notify_all();
    }

    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> usize {
        self.lock().pending.len()
    }

    /// The watermark, if it moved since the last call.
    pub fn take_new_watermark(&self) -> Option<i64> {
        let mut s = self.lock();
        if s.watermark != s.stored {
            s.stored = s.watermark;
            s.watermark
        } else {
            None
        }
    }

    pub fn watermark(&self) -> Option<i64> {
        self.lock().watermark
    }

    /// Waits until nothing is in flight; false on timeout.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while !s.pending.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .drained
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Completion of one input record: done when all its produced records are acked.
pub struct Pending {
    remaining: AtomicUsize,
    tracker: Arc<PartitionTracker>,
    offset: i64,
}

impl Pending {
    pub fn new(count: usize, tracker: Arc<PartitionTracker>, offset: i64) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(count),
            tracker,
            offset,
        })
    }

    pub fn ack(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.complete(self.offset);
        }
    }
}

pub type TrackerKey = (String, i32);

/// The partitions this member owns, shared by the consumer thread, the
/// rebalance callback and the sandbox threads.
#[derive(Default)]
pub struct Trackers {
    map: Mutex<HashMap<TrackerKey, Arc<PartitionTracker>>>,
    /// Bumped whenever a tracker is removed, so lookup caches know to drop
    /// a tracker that no longer belongs to this member.
    generation: AtomicU64,
}

impl Trackers {
    pub fn get_or_create(&self, topic: &str, partition: i32) -> Arc<PartitionTracker> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = m.get(&(topic.to_string(), partition)) {
            return t.clone();
        }
        let t = Arc::new(PartitionTracker::new(topic, partition));
        m.insert((topic.to_string(), partition), t.clone());
        t
    }

    /// The tracker of a partition this consumer owns now.
    pub fn get(&self, topic: &str, partition: i32) -> Option<Arc<PartitionTracker>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    fn remove(&self, topic: &str, partition: i32) -> Option<Arc<PartitionTracker>> {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let t = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(topic.to_string(), partition));
        if let Some(t) = &t {
            t.revoked.store(true, Ordering::Release);
        }
        t
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn all(&self) -> Vec<Arc<PartitionTracker>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn in_flight(&self) -> usize {
        self.all().iter().map(|t| t.in_flight()).sum()
    }

    /// Hands every moved watermark to librdkafka; auto-commit sends them.
    /// `rd_kafka_offsets_store` takes the next offset to read as is (unlike
    /// `rd_kafka_offset_store`, which adds one to a message offset).
    pub fn store_offsets<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) {
        for t in self.all() {
            if let Some(off) = t.take_new_watermark() {
                let mut tpl = TopicPartitionList::with_capacity(1);
                let stored = tpl
                    .add_partition_offset(&t.topic, t.partition, Offset::Offset(off))
                    .and_then(|()| consumer.store_offsets(&tpl));
                if let Err(e) = stored {
                    tracing::debug!(topic = %t.topic, partition = t.partition, offset = off, error = %e, "offset store refused (partition no longer assigned?)");
                }
            }
        }
    }
}

/// One assigned partition's own librdkafka queue, read by its sandbox thread.
pub struct PartitionFeed {
    pub topic: String,
    pub partition: i32,
    pub queue: PartitionQueue<SourceContext>,
}

/// The partitions one sandbox thread reads. Each assigned partition gets its
/// own librdkafka queue (split off the consumer's before its first fetch),
/// and exactly one thread reads it, so the thread takes records straight from
/// librdkafka, in batches, with no hop through the consumer thread. A thread
/// that falls behind simply reads less: its partitions' queues fill up to
/// librdkafka's prefetch limits (`queued.min.messages`,
/// `queued.max.messages.kbytes`) and fetching them stops by itself, with
/// nothing paused, nothing dropped and nothing fetched twice, while the
/// consumer thread keeps polling for the group.
#[derive(Default)]
pub struct LaneInbox {
    feeds: Mutex<Vec<Arc<PartitionFeed>>>,
    /// Bumped when `feeds` changes, so a reader's copy is refreshed.
    generation: AtomicU64,
    /// Set by a queue's non-empty callback; the reader waits on it.
    ready: Mutex<bool>,
    wake: Condvar,
}

impl LaneInbox {
    fn attach(&self, feed: Arc<PartitionFeed>) {
        self.feeds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(feed);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.notify();
    }

    fn detach(&self, topic: &str, partition: i32) {
        self.feeds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|f| !(f.partition == partition && f.topic == topic));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn clear(&self) {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.notify();
    }

    /// The feeds as of `generation`; `None` when `known` is current.
    pub fn feeds_since(&self, known: u64) -> Option<(u64, Vec<Arc<PartitionFeed>>)> {
        let g = self.generation.load(Ordering::Acquire);
        if g == known {
            return None;
        }
        let feeds = self.feeds.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some((g, feeds))
    }

    pub fn notify(&self) {
        *self.ready.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Waits until a queue turns non-empty (or the set of queues changes),
    /// at most `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        if !*ready {
            ready = self
                .wake
                .wait_timeout(ready, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *ready = false;
    }
}

/// Which sandbox thread reads which partition.
pub struct Lanes {
    pub inboxes: Vec<Arc<LaneInbox>>,
    /// Set once the consumer exists; queues are split through it.
    pub consumer: OnceLock<Weak<BaseConsumer<SourceContext>>>,
    assigned: Mutex<HashMap<TrackerKey, usize>>,
}

impl Lanes {
    pub fn new(n: usize) -> Self {
        Self {
            inboxes: (0..n.max(1)).map(|_| Arc::default()).collect(),
            consumer: OnceLock::new(),
            assigned: Mutex::default(),
        }
    }

    /// Splits the partition's queue off the consumer's and gives it to the
    /// sandbox thread with the fewest partitions. Idempotent.
    pub fn attach(&self, topic: &str, partition: i32) -> bool {
        let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        let key = (topic.to_string(), partition);
        if assigned.contains_key(&key) {
            return true;
        }
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return false;
        };
        let Some(mut queue) = consumer.split_partition_queue(topic, partition) else {
            tracing::warn!(topic, partition, "cannot split the partition's queue");
            return false;
        };
        let mut load = vec![0usize; self.inboxes.len()];
        for lane in assigned.values() {
            load[*lane] += 1;
        }
        let lane = (0..load.len()).min_by_key(|l| load[*l]).unwrap_or(0);
        let inbox = self.inboxes[lane].clone();
        // The callback holds a weak reference: the inbox owns the queue.
        let weak = Arc::downgrade(&inbox);
        queue.set_nonempty_callback(move || {
            if let Some(i) = weak.upgrade() {
                i.notify();
            }
        });
        inbox.attach(Arc::new(PartitionFeed {
            topic: topic.to_string(),
            partition,
            queue,
        }));
        assigned.insert(key, lane);
        true
    }

    pub fn detach(&self, topic: &str, partition: i32) {
        let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lane) = assigned.remove(&(topic.to_string(), partition)) {
            self.inboxes[lane].detach(topic, partition);
        }
    }

    /// Drops every partition queue: they hold the consumer, which cannot
    /// close while one is alive.
    pub fn clear(&self) {
        self.assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for i in &self.inboxes {
            i.clear();
        }
    }
}

/// What an exactly-once pipeline does on revoke instead of draining and
/// committing watermarks: finish its open transaction (commit, or abort when
/// the assignment was `lost`) before librdkafka releases the partitions.
/// Implemented by `crate::txn`, which sits above this module.
pub trait RevokeHook: Send + Sync {
    fn on_revoke(&self, consumer: &BaseConsumer<SourceContext>, lost: bool);
}

/// Rebalance handling. On revoke: skip the revoked partitions' records still
/// queued, wait for those being processed (all partitions against one
/// deadline), then commit their watermarks synchronously so the next
/// owner starts right after them. On a lost assignment: commit nothing, the
/// partitions already belong to someone else.
pub struct SourceContext {
    pub pipeline: String,
    pub trackers: Arc<Trackers>,
    /// How long a revoke waits for in-flight records. The wait runs inside
    /// `poll`, so it stays well under `max.poll.interval.ms`: a longer one would
    /// lose the whole assignment (records left are processed by the next owner).
    pub revoke_timeout: Duration,
    pub stats: Arc<crate::stats::PipelineStats>,
    /// Set when the pipeline stops: a revoke during the consumer's close
    /// waits no longer than the stop's one deadline.
    pub shutdown_deadline: Mutex<Option<Instant>>,
    pub lanes: Arc<Lanes>,
    /// Set for an exactly-once pipeline (see [`RevokeHook`]).
    pub revoke_hook: OnceLock<Arc<dyn RevokeHook>>,
}

/// Broker reachability comes from what the client itself reports: a group
/// join (which needs the coordinator) sets it at once, so readiness does not
/// wait for the first statistics tick; librdkafka's "all brokers down" error
/// clears it without waiting for one; statistics keep it current either way.
impl ClientContext for SourceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.stats.broker_up.store(false, Ordering::Relaxed);
        }
        tracing::error!(pipeline = %self.pipeline, "librdkafka: {error}: {reason}");
    }

    fn stats(&self, s: rdkafka::Statistics) {
        let up = s.brokers.values().any(|b| b.state == "UP");
        self.stats.broker_up.store(up, Ordering::Relaxed);
        let mut lag = self.stats.lag.lock().unwrap_or_else(|p| p.into_inner());
        lag.clear();
        for (topic, t) in &s.topics {
            for (p, part) in &t.partitions {
                // -1 is librdkafka's internal UA partition; lag -1 = unknown.
                if *p >= 0 && part.consumer_lag >= 0 {
                    lag.insert((topic.clone(), *p), part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let lost = consumer.assignment_lost();
                let mut commit = TopicPartitionList::new();
                // Removing first marks every revoked tracker, so the lanes skip
                // all their queued records while we wait on the first one.
                let revoked: Vec<_> = tpl
                    .elements()
                    .iter()
                    .filter_map(|e| {
                        // Records not yet taken belong to the next owner.
                        self.lanes.detach(e.topic(), e.partition());
                        self.trackers.remove(e.topic(), e.partition())
                    })
                    .collect();
                if let Some(hook) = self.revoke_hook.get() {
                    // Lanes are between batches once the hook holds the
                    // transaction gate; the revoked trackers are marked, so
                    // no lane starts another record of those partitions.
                    hook.on_revoke(consumer, lost);
                    return;
                }
                let mut deadline = Instant::now() + self.revoke_timeout;
                if let Some(stop) = *self
                    .shutdown_deadline
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                {
                    deadline = deadline.min(stop);
                }
                for t in revoked {
                    if lost {
                        continue;
                    }
                    let e = (&t.topic, t.partition);
                    if !t.wait_drained(deadline.saturating_duration_since(Instant::now())) {
                        tracing::warn!(pipeline = %self.pipeline, topic = %e.0, partition = e.1, in_flight = t.in_flight(), "revoked partition did not drain in time; its unacknowledged records will be processed again by the next owner");
                    }
                    if let Some(off) = t.watermark() {
                        let _ = commit.add_partition_offset(e.0, e.1, Offset::Offset(off));
                    }
                }
                if lost {
                    tracing::warn!(pipeline = %self.pipeline, partitions = tpl.count(), "assignment lost; not committing");
                } else if commit.count() > 0 {
                    match consumer.commit(&commit, CommitMode::Sync) {
                        Ok(()) => {
                            tracing::info!(pipeline = %self.pipeline, partitions = commit.count(), "committed revoked partitions")
                        }
                        Err(e) => {
                            tracing::warn!(pipeline = %self.pipeline, error = %e, "commit on revoke failed")
                        }
                    }
                }
            }
            Rebalance::Assign(tpl) => {
                // Before the assignment starts fetching: no record of these
                // partitions may reach the consumer's own queue.
                for e in tpl.elements() {
                    self.trackers.get_or_create(e.topic(), e.partition());
                    self.lanes.attach(e.topic(), e.partition());
                }
            }
            Rebalance::Error(e) => {
                tracing::warn!(pipeline = %self.pipeline, error = %e, "rebalance error")
            }
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        // A commit the coordinator accepted: brokers are back after an outage
        // even when no statistics tick (or no rebalance) says so.
        if result.is_ok() {
            self.stats.broker_up.store(true, Ordering::Relaxed);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // An assignment came from the group coordinator: a broker answered.
            self.stats.broker_up.store(true, Ordering::Relaxed);
            self.stats.joined.store(true, Ordering::Relaxed);
            tracing::info!(pipeline = %self.pipeline, partitions = ?tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>(), "partitions assigned");
        }
    }
}

/// The consumer thread's view of [`Trackers`]: a lookup per record without
/// the shared lock or a key allocation. Revokes happen inside `poll` on the
/// same thread, so the generation check always runs after them.
pub struct TrackerCache {
    generation: u64,
    entries: Vec<Arc<PartitionTracker>>,
}

impl TrackerCache {
    pub fn new() -> Self {
        Self {
            generation: u64::MAX,
            entries: Vec::new(),
        }
    }

    /// `None` for a partition this consumer no longer owns: librdkafka can
    /// still hand out a message fetched before the revoke, and processing it
    /// would duplicate what the new owner reads from the committed offset.
    pub fn get(
        &mut self,
        trackers: &Trackers,
        topic: &str,
        partition: i32,
    ) -> Option<Arc<PartitionTracker>> {
        let generation = trackers.generation();
        if generation != self.generation {
            self.entries.clear();
            self.generation = generation;
        }
        if let Some(t) = self
            .entries
            .iter()
            .find(|t| t.partition == partition && t.topic == topic)
        {
            return Some(t.clone());
        }
        let t = trackers.get(topic, partition)?;
        self.entries.push(t.clone());
        Some(t)
    }
}

impl Default for TrackerCache {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_waits_for_the_oldest_offset() {
        let t = Arc::new(PartitionTracker::new("t", 0));
        for o in 10..14 {
            t.register(o);
        }
        t.complete(11);
        t.complete(12);
        assert_eq!(t.watermark(), None, "10 is still in flight");
        t.complete(10);
        assert_eq!(t.watermark(), Some(13));
        assert_eq!(t.take_new_watermark(), Some(13));
        assert_eq!(t.take_new_watermark(), None);
        assert_eq!(t.in_flight(), 1);
        t.complete(13);
        assert_eq!(t.watermark(), Some(14));
        assert!(t.wait_drained(Duration::from_millis(1)));
    }

    #[test]
    fn pending_completes_after_last_ack() {
        let t = Arc::new(PartitionTracker::new("t", 0));
        t.register(5);
        let p = Pending::new(3, t.clone(), 5);
        p.ack();
        p.ack();
        assert_eq!(t.watermark(), None);
        p.ack();
        assert_eq!(t.watermark(), Some(6));
    }

    #[test]
    fn cache_serves_only_owned_partitions() {
        let trackers = Trackers::default();
        let mut cache = TrackerCache::new();
        assert!(cache.get(&trackers, "t", 0).is_none(), "not assigned yet");
        let a = trackers.get_or_create("t", 0);
        assert!(Arc::ptr_eq(&a, &cache.get(&trackers, "t", 0).unwrap()));
        assert!(trackers.remove("t", 0).is_some());
        assert!(
            cache.get(&trackers, "t", 0).is_none(),
            "a revoked partition's records must be skipped"
        );
        let b = trackers.get_or_create("t", 0);
        let c = cache.get(&trackers, "t", 0).unwrap();
        assert!(!Arc::ptr_eq(&a, &c) && Arc::ptr_eq(&b, &c));
    }

    #[test]
    fn abandoned_offsets_cap_the_watermark() {
        let t = PartitionTracker::new("t", 0);
        for o in 0..5 {
            t.register(o);
        }
        t.complete(0);
        t.abandon(2);
        assert_eq!(t.in_flight(), 1, "only 1 is left below the cap");
        t.complete(1);
        // A late ack of an abandoned offset must not move past the cap.
        t.complete(3);
        assert_eq!(t.watermark(), Some(2));
        assert!(t.wait_drained(Duration::from_millis(1)));
        t.register(5);
        t.complete(5);
        assert_eq!(
            t.watermark(),
            Some(2),
            "never past the first abandoned offset"
        );
        assert_eq!(t.in_flight(), 0, "nothing at or past the cap is tracked");
    }

    #[test]
    fn drain_times_out_while_in_flight() {
        let t = PartitionTracker::new("t", 0);
        t.register(1);
        assert!(!t.wait_drained(Duration::from_millis(20)));
    }
}
