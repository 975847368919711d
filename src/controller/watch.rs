//! Reflected watches that feed the queue: each watch keeps its cache (a reflector store of
//! [`Stored`] objects) and turns its events into keys, through a classifier (see
//! `triggers`) and the shard gate. A list's keys are queued only once the list is done.

use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::triggers::Enqueue;
use crate::backoff::WatchBackoff;
use crate::cache::{CachedKind, Raw, Stored};
use crate::queue::WorkQueue;
use crate::recent_writes::RecentWrites;
use crate::shard::ShardGate;

/// Objects per list page of the initial lists and re-lists.
const LIST_PAGE: u32 = 100;

/// How the caches list: from the API server's watch cache (resourceVersion 0), not by a
/// quorum read from etcd. etcd does not index labels: a quorum list of one shard's children
/// reads and decodes every object of the kind, where the watch cache filters in memory. The
/// watch that follows starts at the list's version, so nothing is missed; the list may be a
/// moment behind etcd, as every watch event is.
pub fn list_config() -> watcher::Config {
    watcher::Config::default()
        .any_semantic()
        .page_size(LIST_PAGE)
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A kind the caches watch: a namespaced API object the watcher can read.
pub trait Watched:
    CachedKind
    + Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: CachedKind
        + Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Where watch events go: the queue, for the keys whose shard the gate accepts.
#[derive(Clone)]
pub struct Sink {
    pub queue: Arc<WorkQueue>,
    pub gate: Arc<ShardGate>,
}

/// Starts one reflected watch of `K` in `namespace` (all namespaces: `None`), feeding `sink`
/// through `classify` until `stop`, and returns its store. `recent`, for children: this
/// replica's writes (see [`carry_verified`]).
pub fn spawn<K, F, I>(
    client: &Client,
    namespace: Option<&str>,
    config: watcher::Config,
    recent: Option<Arc<RecentWrites>>,
    sink: &Sink,
    classify: F,
    stop: CancellationToken,
) -> Store<Stored<K>>
where
    K: Watched,
    F: FnMut(Event<Stored<K>>) -> I + Send + 'static,
    I: IntoIterator<Item = Enqueue> + 'static,
    I::IntoIter: Send,
{
    let (store, stream) = reflected(api::<Raw<K>>(client, namespace), config, recent);
    tokio::spawn(pump(
        stream,
        sink.queue.clone(),
        sink.gate.clone(),
        classify,
        stop,
    ));
    store
}

/// What a reflected watch yields.
type WatchedEvent<K> = Result<Event<Stored<K>>, watcher::Error>;

/// A reflected watch of `K`, kept in the store as [`Stored`] (read as [`Raw`]).
/// `recent`, for children: this replica's writes, to carry the subset memo to new versions
/// (see [`carry_verified`]).
fn reflected<K>(
    api: Api<Raw<K>>,
    config: watcher::Config,
    recent: Option<Arc<RecentWrites>>,
) -> (Store<Stored<K>>, impl Stream<Item = WatchedEvent<K>> + Send)
where
    K: CachedKind + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, mut writer) = reflector::store();
    let cached = store.clone();
    let stream = watcher::watcher(api, config)
        .backoff(WatchBackoff::default())
        // What `WatchStreamExt::reflect` does, for a store of `Lookup` (not `Resource`) items.
        .map_ok(move |event| {
            let event = match event {
                Event::Apply(o) => Event::Apply(Stored::from_raw(o)),
                Event::Delete(o) => Event::Delete(Stored::from_raw(o)),
                Event::InitApply(o) => Event::InitApply(Stored::from_raw(o)),
                Event::Init => Event::Init,
                Event::InitDone => Event::InitDone,
            };
            if let (Event::Apply(new), Some(recent)) = (&event, &recent) {
                carry_verified(recent, &cached, new);
            }
            writer.apply_watcher_event(&event);
            event
        });
    (store, stream)
}

/// Gives a new version of a child what is known to be a subset of it without comparing: the
/// echo of our own apply holds what it wrote, and a version that changes nothing the operator
/// manages (a status update) holds what the version before it held. Each spec change of a set
/// brings three versions of its Deployment (our apply, then two status updates), and the
/// status refresh that follows need not compare the last one in full.
fn carry_verified<K>(recent: &RecentWrites, cached: &Store<Stored<K>>, new: &Stored<K>)
where
    K: Resource<DynamicType = ()> + Clone,
{
    let ns = new.namespace().unwrap_or_default();
    let key = RecentWrites::key(&K::kind(&()), ns, new.name());
    if let Some(written) = recent.echo_digest(&key, new.resource_version()) {
        new.mark_verified(written);
    } else if let Some(older) = cached.get(&ObjectRef::new(new.name()).within(ns)) {
        new.inherit_verified(&older);
    }
}

/// Feeds `queue` from a watch until `shutdown`. Backpressure: when the queue is full the
/// watch is not read until there is room.
///
/// The keys of a list (the first one, or a re-list after the watch could not resume) are
/// queued only once the list is done: the reflector's cache swaps in a listed object only
/// then, and a reconcile started earlier would read the cache as it was before the list (a
/// set changed during an API server outage looked unchanged, and its change waited for the
/// next resync).
pub(super) async fn pump<K, S, F, I>(
    stream: S,
    queue: Arc<WorkQueue>,
    gate: Arc<ShardGate>,
    mut classify: F,
    shutdown: CancellationToken,
) where
    K: Lookup<DynamicType = ()> + Send,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    F: FnMut(Event<K>) -> I + Send,
    I: IntoIterator<Item = Enqueue>,
    I::IntoIter: Send,
{
    let mut stream = std::pin::pin!(stream);
    let mut listed: Vec<Enqueue> = Vec::new();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(event)) => {
                let (listing, done) = match &event {
                    Event::Init => {
                        // A list that failed half-way starts over.
                        listed.clear();
                        (false, false)
                    }
                    Event::InitApply(_) => (true, false),
                    Event::InitDone => (false, true),
                    _ => (false, false),
                };
                for e in classify(event) {
                    if listing {
                        listed.push(e);
                    } else {
                        enqueue(&queue, &gate, e).await;
                    }
                }
                if done {
                    for e in std::mem::take(&mut listed) {
                        enqueue(&queue, &gate, e).await;
                    }
                }
            }
            Some(Err(e)) => {
                warn!(error = %e, kind = %K::kind(&()), "watch error; retrying with backoff")
            }
            None => return,
        }
    }
}

/// Queues what a watch event asks for, unless the key's shard is held elsewhere (a gained
/// shard queues all its sets from the cache).
async fn enqueue(queue: &WorkQueue, gate: &ShardGate, e: Enqueue) {
    if !gate.accepts(&e.key) {
        return;
    }
    if e.cut_backoff {
        queue.add_now(&e.key, e.priority, e.trigger).await;
    } else {
        queue.add(&e.key, e.priority, e.trigger).await;
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;

    use super::carry_verified;
    use crate::cache::Stored;
    use crate::controller::triggers::classify_sets;
    use crate::controller::triggers::tests::named;
    use crate::recent_writes::RecentWrites;

    #[test]
    fn new_versions_of_a_child_carry_what_was_verified() {
        use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
        use kube::runtime::reflector::store;
        let (cached, mut writer) = store::<Stored<Deployment>>();
        let recent = RecentWrites::default();
        let version = |rv: &str, replicas: i32, ready: i32| {
            let mut d = Deployment::default();
            d.metadata.name = Some("s-searcher".into());
            d.metadata.namespace = Some("t".into());
            d.metadata.resource_version = Some(rv.into());
            d.spec = Some(DeploymentSpec {
                replicas: Some(replicas),
                ..Default::default()
            });
            d.status = Some(DeploymentStatus {
                ready_replicas: Some(ready),
                ..Default::default()
            });
            Stored::new(d)
        };
        let mut arrive = |new: Stored<Deployment>| {
            carry_verified(&recent, &cached, &new);
            writer.apply_watcher_event(&Event::Apply(new.clone()));
            new
        };
        // Our apply of desired digest 7 produced version 2: its echo holds 7.
        recent.record("Deployment/t/s-searcher".into(), None, 7, Some("2".into()));
        assert!(arrive(version("2", 2, 0)).verified(7));
        // A status update keeps it; so does the next one.
        assert!(arrive(version("3", 2, 1)).verified(7));
        assert!(arrive(version("4", 2, 2)).verified(7));
        // Someone else's change of the spec does not.
        assert!(!arrive(version("5", 3, 2)).verified(7));
        // Nor does a status update after it: nothing was verified on the version before.
        assert!(!arrive(version("6", 3, 3)).verified(7));
    }

    /// A list's keys reach the queue only when the list is done (the cache shows the listed
    /// objects only then).
    #[tokio::test(start_paused = true)]
    async fn a_list_is_queued_once_it_is_done() {
        use std::time::Duration;

        use futures::StreamExt as _;
        use tokio_util::sync::CancellationToken;

        use crate::queue::{QueueConfig, WorkQueue};
        use crate::shard::ShardGate;

        let queue = WorkQueue::new(QueueConfig::default());
        let (gate, _events) = ShardGate::new(
            crate::shard::Scheme::new(Default::default(), 1),
            Duration::from_secs(60),
        );
        gate.gain(0, tokio::time::Instant::now());
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let pumped = tokio::spawn(super::pump(
            rx.map(Ok),
            queue.clone(),
            gate.clone(),
            classify_sets(Default::default(), Default::default()),
            CancellationToken::new(),
        ));
        let settle = || tokio::time::sleep(Duration::from_millis(10));
        for event in [Event::Init, Event::InitApply(named("a", 1))] {
            tx.unbounded_send(event).unwrap();
        }
        settle().await;
        assert!(queue.is_empty(), "nothing queued while the list goes on");
        tx.unbounded_send(Event::InitDone).unwrap();
        settle().await;
        assert_eq!(queue.len(), 1, "the listed set, once the list is done");
        // Outside a list, events are queued at once.
        tx.unbounded_send(Event::Apply(named("b", 1))).unwrap();
        settle().await;
        assert_eq!(queue.len(), 2);
        // A list interrupted by an error starts over with Init: what it had is dropped.
        for event in [Event::Init, Event::InitApply(named("c", 1)), Event::Init] {
            tx.unbounded_send(event).unwrap();
        }
        tx.unbounded_send(Event::InitDone).unwrap();
        settle().await;
        assert_eq!(queue.len(), 2, "c was listed by the abandoned list only");
        drop(tx);
        pumped.await.unwrap();
    }
}
