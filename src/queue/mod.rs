//! The work queue between the watches and the workers, with client-go's workqueue semantics
//! and what kube-runtime's `Controller` lacks:
//!
//! - a key (a [`SetKey`]) is queued at most once and never processed by two workers at
//!   once; an add while it is processed marks it dirty, and it runs again right after;
//! - bounded: state grows with distinct keys, never with events; at capacity `add` waits;
//! - three priorities (a new set's first status is `Finish`; initial list, resyncs and
//!   takeovers are `Low`), and round-robin across namespaces within a priority, so one
//!   tenant's flood cannot starve another's change;
//! - failures wait `max(per-key exponential backoff, global token bucket)`; success resets
//!   the key's backoff; a plain event does not cut a backoff short, a spec change does.

mod bucket;
mod fair;
mod metrics;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::key::SetKey;

pub use bucket::TokenBucket;
use fair::Lane;
pub use metrics::QueueMetrics;

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Name in the metrics' `name` label.
    pub name: String,
    /// Queued keys at which producers wait.
    pub capacity: usize,
    /// First retry delay; doubles with each consecutive failure of a key.
    pub base_delay: Duration,
    /// Longest per-key retry delay.
    pub max_delay: Duration,
    /// Retries per second over all keys (token bucket); 0 disables it.
    pub retry_rate: f64,
    pub retry_burst: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            name: "vecodexsets".to_owned(),
            capacity: 100_000,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(1000),
            retry_rate: 10.0,
            retry_burst: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Initial list, resync, shard takeover: work that no one is waiting for.
    Low = 0,
    /// A create, a spec change (also one a shard takeover finds unapplied), a child's drift.
    Normal = 1,
    /// The first status of a set whose children were applied: finishing a set goes before
    /// starting another.
    Finish = 2,
}

impl Priority {
    /// Highest first: the order in which [`WorkQueue::get`] serves them.
    const SERVED: [Priority; 3] = [Priority::Finish, Priority::Normal, Priority::Low];
}

/// Why a key was queued (the trace's `vecodex.trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    Create,
    SpecChange,
    /// A status, label or annotation change of the set.
    Update,
    ChildDrift,
    /// A child's status changed, or a child was seen for the first time.
    ChildStatus,
    InitialList,
    Resync,
    Retry,
    ShardTakeover,
    /// The set's Ingress host changed hands (see `hosts`).
    HostReleased,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Create => "create",
            Trigger::SpecChange => "spec change",
            Trigger::Update => "update",
            Trigger::ChildDrift => "child drift",
            Trigger::ChildStatus => "child status",
            Trigger::InitialList => "initial list",
            Trigger::Resync => "resync",
            Trigger::Retry => "retry",
            Trigger::ShardTakeover => "shard takeover",
            Trigger::HostReleased => "host released",
        }
    }
}

/// A key handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: SetKey,
    pub priority: Priority,
    /// Why it was queued (the first reason, or the one that raised its priority).
    pub trigger: Trigger,
    /// 1 for a first try, n+1 after n consecutive failures.
    pub attempt: u32,
    /// How long it waited in the queue.
    pub waited: Duration,
}

struct Queued {
    priority: Priority,
    trigger: Trigger,
    since: Instant,
}

struct State {
    lanes: [Lane; 3],
    queued: HashMap<SetKey, Queued>,
    /// Keys being processed, with their start.
    processing: HashMap<SetKey, Instant>,
    /// Keys added while processed, with the highest priority they were added at.
    dirty: HashMap<SetKey, (Priority, Trigger)>,
    /// Keys in backoff: when they come back, and at which priority.
    waiting: HashMap<SetKey, (Instant, Priority, Trigger)>,
    timeline: BTreeSet<(Instant, SetKey)>,
    failures: HashMap<SetKey, u32>,
    bucket: TokenBucket,
    shut_down: bool,
}

pub struct WorkQueue {
    state: Mutex<State>,
    /// Signals workers that a key is ready.
    ready: Notify,
    /// Signals producers waiting for capacity.
    space: Notify,
    /// Signals the timer that an earlier deadline arrived.
    timer: Arc<Notify>,
    config: QueueConfig,
    metrics: QueueMetrics,
}

impl WorkQueue {
    /// A queue with its backoff timer running on the current Tokio runtime.
    pub fn new(config: QueueConfig) -> Arc<Self> {
        Self::with_metrics(config, QueueMetrics::default())
    }

    pub fn with_metrics(config: QueueConfig, metrics: QueueMetrics) -> Arc<Self> {
        metrics.init(&config.name);
        let queue = Arc::new(WorkQueue {
            state: Mutex::new(State {
                lanes: Default::default(),
                queued: HashMap::new(),
                processing: HashMap::new(),
                dirty: HashMap::new(),
                waiting: HashMap::new(),
                timeline: BTreeSet::new(),
                failures: HashMap::new(),
                bucket: TokenBucket::new(config.retry_rate, config.retry_burst, Instant::now()),
                shut_down: false,
            }),
            ready: Notify::new(),
            space: Notify::new(),
            timer: Arc::new(Notify::new()),
            metrics,
            config,
        });
        tokio::spawn(Self::run_timer(Arc::downgrade(&queue), queue.timer.clone()));
        queue
    }

    pub fn metrics(&self) -> &QueueMetrics {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few map operations that cannot leave the state
        // half-changed, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` unless it is already queued (then raises its priority if needed), marks
    /// it dirty if it is being processed, and leaves it alone while it waits out a backoff.
    /// Waits while the queue is at capacity.
    pub async fn add(&self, key: &SetKey, priority: Priority, trigger: Trigger) {
        self.add_inner(key, priority, trigger, false).await;
    }

    /// Like [`add`](Self::add), but also ends a backoff: for changes someone waits for
    /// (a spec change).
    pub async fn add_now(&self, key: &SetKey, priority: Priority, trigger: Trigger) {
        self.add_inner(key, priority, trigger, true).await;
    }

    async fn add_inner(
        &self,
        key: &SetKey,
        priority: Priority,
        trigger: Trigger,
        cut_backoff: bool,
    ) {
        loop {
            let space = self.space.notified();
            {
                let mut s = self.lock();
                if s.shut_down {
                    return;
                }
                if cut_backoff && let Some((at, _, _)) = s.waiting.remove(key) {
                    s.timeline.remove(&(at, key.clone()));
                }
                let full = s.queued.len() >= self.config.capacity;
                let is_new = !s.queued.contains_key(key)
                    && !s.processing.contains_key(key)
                    && !s.waiting.contains_key(key);
                if !(full && is_new) {
                    self.insert(&mut s, key, priority, trigger);
                    return;
                }
            }
            // Backpressure: wait for a worker to take a key.
            space.await;
        }
    }

    /// Puts a key where it belongs; the caller holds the lock.
    fn insert(&self, s: &mut State, key: &SetKey, priority: Priority, trigger: Trigger) {
        if s.waiting.contains_key(key) {
            return;
        }
        if s.processing.contains_key(key) {
            let d = s.dirty.entry(key.clone()).or_insert((priority, trigger));
            if priority > d.0 {
                *d = (priority, trigger);
            }
            return;
        }
        if let Some(q) = s.queued.get_mut(key) {
            if priority > q.priority {
                let old = q.priority;
                q.priority = priority;
                q.trigger = trigger;
                s.lanes[old as usize].remove(key);
                s.lanes[priority as usize].push(key);
            }
            return;
        }
        s.queued.insert(
            key.clone(),
            Queued {
                priority,
                trigger,
                since: Instant::now(),
            },
        );
        s.lanes[priority as usize].push(key);
        self.metrics.added(&self.config.name, s.queued.len());
        self.ready.notify_one();
    }

    /// Waits for the next key: the highest priority first, namespaces in turn. `None` once the
    /// queue is shut down.
    pub async fn get(&self) -> Option<Item> {
        loop {
            let ready = self.ready.notified();
            {
                let mut s = self.lock();
                if s.shut_down {
                    return None;
                }
                let next = Priority::SERVED
                    .iter()
                    .find_map(|p| s.lanes[*p as usize].pop());
                if let Some(key) = next {
                    let now = Instant::now();
                    let queued = s.queued.remove(&key);
                    let (priority, trigger, since) = queued
                        .map_or((Priority::Low, Trigger::Update, now), |q| {
                            (q.priority, q.trigger, q.since)
                        });
                    let attempt = s.failures.get(&key).copied().unwrap_or(0).saturating_add(1);
                    s.processing.insert(key.clone(), now);
                    let waited = now.saturating_duration_since(since);
                    self.metrics
                        .taken(&self.config.name, s.queued.len(), waited);
                    if !s.queued.is_empty() {
                        // Wake another worker for the rest.
                        self.ready.notify_one();
                    }
                    drop(s);
                    self.space.notify_one();
                    return Some(Item {
                        key,
                        priority,
                        trigger,
                        attempt,
                        waited,
                    });
                }
            }
            ready.await;
        }
    }

    /// Marks `key` finished; a key that became dirty meanwhile is queued again.
    pub fn done(&self, key: &SetKey) {
        let mut s = self.lock();
        if let Some(started) = s.processing.remove(key) {
            self.metrics.worked(
                &self.config.name,
                Instant::now().saturating_duration_since(started),
            );
        }
        if let Some((priority, trigger)) = s.dirty.remove(key)
            && !s.shut_down
        {
            self.insert(&mut s, key, priority, trigger);
        }
    }

    /// Queues `key` after `delay` (an earlier deadline of the key wins). Until then, adds
    /// of the key are absorbed, except those that end a backoff.
    pub fn add_after(&self, key: &SetKey, delay: Duration, priority: Priority, trigger: Trigger) {
        let mut s = self.lock();
        let at = Instant::now() + delay;
        self.schedule(&mut s, key, at, priority, trigger);
    }

    /// The key succeeded: its backoff starts over.
    pub fn forget(&self, key: &SetKey) {
        self.lock().failures.remove(key);
    }

    /// The key failed: it comes back after `max(per-key backoff, token bucket delay)`.
    /// Returns that delay.
    pub fn retry(&self, key: &SetKey, priority: Priority) -> Duration {
        let mut s = self.lock();
        let failures = s.failures.entry(key.clone()).or_insert(0);
        let exp = (*failures).min(63);
        *failures = failures.saturating_add(1);
        let backoff = if exp >= 32 {
            self.config.max_delay
        } else {
            self.config
                .base_delay
                .saturating_mul(1 << exp)
                .min(self.config.max_delay)
        };
        let now = Instant::now();
        let delay = backoff.max(s.bucket.reserve(now));
        self.metrics.retried(&self.config.name);
        self.schedule(&mut s, key, now + delay, priority, Trigger::Retry);
        delay
    }

    fn schedule(
        &self,
        s: &mut State,
        key: &SetKey,
        at: Instant,
        priority: Priority,
        trigger: Trigger,
    ) {
        if s.shut_down {
            return;
        }
        // One deadline per key: the earliest wins, as in client-go's delaying queue.
        if let Some((old, p, t)) = s.waiting.get(key).copied() {
            if old <= at {
                return;
            }
            s.timeline.remove(&(old, key.clone()));
            s.waiting.insert(key.clone(), (at, p.max(priority), t));
        } else {
            s.waiting.insert(key.clone(), (at, priority, trigger));
        }
        let earliest = s.timeline.first().is_none_or(|(first, _)| at < *first);
        s.timeline.insert((at, key.clone()));
        if earliest {
            self.timer.notify_one();
        }
    }

    /// Moves keys whose backoff ended into the queue; returns the next deadline.
    fn release_due(&self) -> Option<Instant> {
        let mut s = self.lock();
        let now = Instant::now();
        while let Some((at, key)) = s.timeline.first().cloned() {
            if at > now {
                return Some(at);
            }
            s.timeline.pop_first();
            if let Some((_, priority, trigger)) = s.waiting.remove(&key) {
                self.insert(&mut s, &key, priority, trigger);
            }
        }
        None
    }

    async fn run_timer(queue: std::sync::Weak<WorkQueue>, timer: Arc<Notify>) {
        loop {
            let notified = timer.notified();
            let Some(q) = queue.upgrade() else { return };
            let next = q.release_due();
            if q.lock().shut_down {
                return;
            }
            drop(q);
            // Hold no strong reference while sleeping, so a dropped queue ends this task.
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => {}
                    }
                }
                None => {
                    tokio::select! {
                        _ = notified => {}
                        // Recheck now and then whether the queue is gone.
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        }
    }

    /// Drops everything about the keys for which `keep` is false (a shard was lost): queued,
    /// waiting and dirty keys, and their failure counts. A key's backoff measures its own
    /// failures; the failures that led to a lost shard (most often the API server not
    /// answering until the renew deadline) are not the key's, and whichever replica holds the
    /// shard next starts the key afresh. A replica that wins the shard back does the same.
    pub fn retain(&self, keep: impl Fn(&SetKey) -> bool) {
        let mut s = self.lock();
        let dropped: Vec<SetKey> = s.queued.keys().filter(|k| !keep(k)).cloned().collect();
        for key in &dropped {
            if let Some(q) = s.queued.remove(key) {
                s.lanes[q.priority as usize].remove(key);
            }
        }
        let waiting: Vec<(Instant, SetKey)> = s
            .waiting
            .iter()
            .filter(|(k, _)| !keep(k))
            .map(|(k, (at, _, _))| (*at, k.clone()))
            .collect();
        for (at, key) in waiting {
            s.waiting.remove(&key);
            s.timeline.remove(&(at, key));
        }
        s.dirty.retain(|k, _| keep(k));
        s.failures.retain(|k, _| keep(k));
        self.metrics.depth(&self.config.name, s.queued.len());
    }

    /// Keys being reconciled now.
    pub fn in_progress(&self) -> usize {
        self.lock().processing.len()
    }

    /// Keys ready to be handed out.
    pub fn len(&self) -> usize {
        self.lock().queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nothing queued and nothing being processed (keys waiting out a backoff or a delay do
    /// not count).
    pub fn is_idle(&self) -> bool {
        let s = self.lock();
        s.queued.is_empty() && s.processing.is_empty()
    }

    /// Keys waiting out a backoff.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Refreshes the gauges about work in progress (client-go does this every 500 ms).
    pub fn update_unfinished_work(&self) {
        let s = self.lock();
        let now = Instant::now();
        let ages = s
            .processing
            .values()
            .map(|start| now.saturating_duration_since(*start));
        let (total, longest) = ages.fold((Duration::ZERO, Duration::ZERO), |(t, l), a| {
            (t + a, l.max(a))
        });
        self.metrics.unfinished(&self.config.name, total, longest);
    }

    /// Stops handing out keys; workers finish what they hold.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.ready.notify_waiters();
        self.space.notify_waiters();
        self.timer.notify_one();
    }
}

#[cfg(test)]
mod tests;
