//! The simulators' work loop: work items deduplicated while queued, done a few at a time.
//! An item already queued is not queued again; it leaves the queue once its work is done, so
//! a later event queues it again.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

pub(crate) struct WorkLoop<W> {
    queued: Arc<Mutex<HashSet<W>>>,
    tx: UnboundedSender<W>,
    worker: JoinHandle<()>,
}

impl<W: Hash + Eq + Clone + Send + 'static> WorkLoop<W> {
    /// Runs `work` on each item sent, `workers` at once.
    pub fn start<F, Fut>(workers: usize, work: F) -> WorkLoop<W>
    where
        F: Fn(W) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<W>();
        let queued: Arc<Mutex<HashSet<W>>> = Arc::default();
        let done = queued.clone();
        let worker = tokio::spawn(
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
                .map(move |w: W| {
                    let done = done.clone();
                    let job = work(w.clone());
                    async move {
                        job.await;
                        done.lock().unwrap_or_else(|e| e.into_inner()).remove(&w);
                    }
                })
                .buffer_unordered(workers)
                .for_each(|()| async {}),
        );
        WorkLoop { queued, tx, worker }
    }

    /// Claims `w` for the queue: false if it is queued already.
    pub fn claim(&self, w: &W) -> bool {
        self.queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(w.clone())
    }

    /// Where claimed items are sent to be worked on.
    pub fn sender(&self) -> UnboundedSender<W> {
        self.tx.clone()
    }
}

impl<W> Drop for WorkLoop<W> {
    fn drop(&mut self) {
        self.worker.abort();
    }
}
