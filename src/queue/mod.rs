//! The work queue between the watches and the workers, with client-go's workqueue semantics:
//! a key is queued at most once, never processed by two workers at once, and an add while it
//! is processed marks it dirty so it runs again right after. Failed keys come back after a
//! per-key exponential backoff that resets when the key succeeds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// First retry delay; doubles with each consecutive failure.
    pub base_delay: Duration,
    /// Longest retry delay.
    pub max_delay: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(1000),
        }
    }
}

#[derive(Default)]
struct State {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
    shut_down: bool,
}

pub struct WorkQueue {
    state: Mutex<State>,
    notify: Notify,
    config: QueueConfig,
}

impl WorkQueue {
    pub fn new(config: QueueConfig) -> Arc<Self> {
        Arc::new(WorkQueue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            config,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic while holding it; the state itself stays consistent
        // because every critical section is a few set operations.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` unless it is already queued; marks it dirty if it is being processed.
    pub fn add(&self, key: &str) {
        let mut s = self.lock();
        if s.shut_down || s.queued.contains(key) {
            return;
        }
        if s.processing.contains(key) {
            s.dirty.insert(key.to_owned());
            return;
        }
        s.queued.insert(key.to_owned());
        s.ready.push_back(key.to_owned());
        drop(s);
        self.notify.notify_one();
    }

    /// Waits for the next key; `None` once the queue is shut down.
    pub async fn get(&self) -> Option<String> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if s.shut_down {
                    return None;
                }
                if let Some(key) = s.ready.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    if !s.ready.is_empty() {
                        // Wake another worker for the rest.
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Marks `key` finished; a key that became dirty meanwhile is queued again.
    pub fn done(&self, key: &str) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.remove(key) && !s.shut_down && s.queued.insert(key.to_owned()) {
            s.ready.push_back(key.to_owned());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// The key succeeded: its backoff starts over.
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// The delay the next failure of `key` waits: base * 2^failures, capped.
    pub fn next_backoff(&self, key: &str) -> Duration {
        let mut s = self.lock();
        let n = s.failures.entry(key.to_owned()).or_insert(0);
        let exp = (*n).min(40);
        *n = n.saturating_add(1);
        let delay = self.config.base_delay.saturating_mul(1u32 << exp.min(31));
        let delay = if exp > 31 {
            self.config.max_delay
        } else {
            delay
        };
        delay.min(self.config.max_delay)
    }

    /// Queues `key` again after its backoff.
    pub fn retry(self: &Arc<Self>, key: &str) -> Duration {
        let delay = self.next_backoff(key);
        self.add_after(key, delay);
        delay
    }

    pub fn add_after(self: &Arc<Self>, key: &str, delay: Duration) {
        let queue = Arc::clone(self);
        let key = key.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(&key);
        });
    }

    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys; workers finish what they hold.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{QueueConfig, WorkQueue};

    #[tokio::test(start_paused = true)]
    async fn keys_are_deduplicated() {
        let q = WorkQueue::new(QueueConfig::default());
        q.add("a/x");
        q.add("a/x");
        q.add("a/y");
        assert_eq!(q.len(), 2);
        assert_eq!(q.get().await.as_deref(), Some("a/x"));
        assert_eq!(q.get().await.as_deref(), Some("a/y"));
    }

    #[tokio::test(start_paused = true)]
    async fn add_while_processing_runs_again_after_done() {
        let q = WorkQueue::new(QueueConfig::default());
        q.add("a/x");
        let key = q.get().await.unwrap();
        q.add("a/x");
        assert_eq!(q.len(), 0, "not handed to a second worker while processing");
        q.done(&key);
        assert_eq!(q.get().await.as_deref(), Some("a/x"));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_and_resets_on_success() {
        let q = WorkQueue::new(QueueConfig {
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(30),
        });
        let delays: Vec<_> = (0..5).map(|_| q.next_backoff("a/x").as_millis()).collect();
        assert_eq!(delays, [5, 10, 20, 30, 30]);
        q.forget("a/x");
        assert_eq!(q.next_backoff("a/x").as_millis(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_requeues_after_the_delay() {
        let q = WorkQueue::new(QueueConfig::default());
        q.retry("a/x");
        assert!(q.is_empty());
        tokio::time::sleep(Duration::from_millis(6)).await;
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shut_down_releases_waiting_workers() {
        let q = WorkQueue::new(QueueConfig::default());
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.get().await }
        });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(waiter.await.unwrap(), None);
    }
}
