//! Wiring: watches feed reflector stores and turn events into keys; workers take keys from
//! the queue and reconcile them.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::api::Writer;
use crate::cache::{Cache, Raw, Stored};
use crate::census;
use crate::children::shard_selector;
use crate::crd::VecodexSet;
use crate::events::{EventSender, Recorder};
use crate::hosts::HostIndex;
use crate::http::Health;
use crate::metrics::{Metrics, results};
use crate::policy::Policy;
use crate::queue::{Item, Priority, QueueConfig, Trigger, WorkQueue};
use crate::reconcile::{Context, RecentWrites, Report, Stores, reconcile};
use crate::shard::{ShardConfig, ShardEvent, ShardGate, ShardLoads, ShardManager, WorkGuard};
use crate::validate::Limits;

#[derive(Debug, Clone)]
pub struct Config {
    /// Watch only these namespaces; all namespaces when empty.
    pub namespaces: Vec<String>,
    pub concurrency: usize,
    pub limits: Limits,
    /// The admin's policy.
    pub policy: Policy,
    pub queue: QueueConfig,
    /// Name reported on Events (the pod name in a cluster).
    pub instance: Option<String>,
    /// How long a shutdown waits for in-flight reconciles.
    pub shutdown_timeout: Duration,
    /// Every set is re-queued (at low priority) this often, ±10 %, to find drift that
    /// produced no event.
    pub resync: Duration,
    /// Shards, Leases and this replica's identity.
    pub sharding: ShardConfig,
    /// A reconcile still running after this long is abandoned (its API calls cancelled) and
    /// retried with backoff, so a slow or hung API server cannot hold a worker for ever.
    pub reconcile_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespaces: Vec::new(),
            concurrency: 16,
            limits: Limits::default(),
            policy: Policy::default(),
            queue: QueueConfig::default(),
            instance: None,
            shutdown_timeout: Duration::from_secs(20),
            resync: Duration::from_secs(30 * 60),
            sharding: ShardConfig {
                scheme: crate::shard::Scheme::default(),
                namespace: "default".to_owned(),
                group: "vecodex-operator".to_owned(),
                identity: crate::shard::default_identity(),
                lease_duration: Duration::from_secs(15),
                renew_deadline: Duration::from_secs(10),
                retry_period: Duration::from_secs(2),
            },
            reconcile_timeout: Duration::from_secs(30),
        }
    }
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

/// How long a failed watch waits before it retries: 0.5 s doubling up to 5 s, and back to
/// 0.5 s once a retry works. kube-runtime's default grows to 30 s, which after an API server
/// restart kept the caches stale (and reconciles waiting) for half a minute.
pub(crate) struct WatchBackoff {
    next: Duration,
}

const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(500);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff {
            next: WATCH_BACKOFF_MIN,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(WATCH_BACKOFF_MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_BACKOFF_MIN;
    }
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
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
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
/// brings three versions of its Deployment (our apply, then two status updates); the status
/// refresh that follows compared the last one in full before.
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

/// Starts reflected watches that feed the queue: one per watched namespace and kind.
struct Feed<'a> {
    client: &'a Client,
    watched: &'a [Option<String>],
    queue: &'a Arc<WorkQueue>,
    gate: &'a Arc<ShardGate>,
    shutdown: &'a CancellationToken,
}

impl Feed<'_> {
    fn watch<K, C, F, I>(
        &self,
        tasks: &mut tokio::task::JoinSet<()>,
        config: watcher::Config,
        classify: C,
    ) -> Cache<Stored<K>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
        C: Fn() -> F,
        F: FnMut(Event<Stored<K>>) -> I + Send + 'static,
        I: IntoIterator<Item = Enqueue> + 'static,
        I::IntoIter: Send,
    {
        let stores = self
            .watched
            .iter()
            .map(|ns| {
                let (store, stream) = reflected(
                    api::<Raw<K>>(self.client, ns.as_deref()),
                    config.clone(),
                    None,
                );
                tasks.spawn(pump(
                    stream,
                    self.queue.clone(),
                    self.gate.clone(),
                    classify(),
                    self.shutdown.clone(),
                ));
                (ns.clone(), store)
            })
            .collect();
        Cache::new(stores)
    }
}

/// What a watch event asks of the queue: which key, at which priority, and whether it may
/// end a backoff early (only a spec change may).
pub struct Enqueue {
    pub key: String,
    pub priority: Priority,
    pub trigger: Trigger,
    pub cut_backoff: bool,
}

/// Feeds `queue` from a watch until `shutdown`. Backpressure: when the queue is full the
/// watch is not read until there is room.
///
/// The keys of a list (the first one, or a re-list after the watch could not resume) are
/// queued only once the list is done: the reflector's cache swaps in a listed object only
/// then, and a reconcile started earlier would read the cache as it was before the list (a
/// set changed during an API server outage looked unchanged, and its change waited for the
/// next resync).
async fn pump<K, S, F, I>(
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

/// Set events: a new set or a new generation is a real change (normal priority, ends a
/// backoff); the initial list and metadata or status updates are low priority. A re-list
/// (the watch could not resume, as after an API server restart) is compared with what was
/// known before it: the sets created or changed while the watch was down are real changes
/// too, and must not wait behind the rest of the list or out a backoff. The echo of our own
/// status write queues nothing (see `RecentWrites`).
fn classify_sets(
    recent: Arc<RecentWrites>,
    hosts: Arc<HostIndex>,
) -> impl FnMut(Event<Stored<VecodexSet>>) -> Vec<Enqueue> + Send {
    // Generation per key, as of the last event; during a re-list, the next map is built
    // beside it so that sets deleted meanwhile drop out when the list is done.
    let mut generations: HashMap<String, i64> = HashMap::new();
    let mut relisting: HashMap<String, i64> = HashMap::new();
    let mut listed = false;
    let change = |previous: Option<i64>, generation: i64| match previous {
        None => (Priority::Normal, Trigger::Create),
        Some(g) if g != generation => (Priority::Normal, Trigger::SpecChange),
        Some(_) => (Priority::Low, Trigger::Update),
    };
    // A host changed hands: the sets asking for it (see `hosts`).
    let host_moved = |keys: Vec<String>| {
        keys.into_iter().map(|key| Enqueue {
            key,
            priority: Priority::Normal,
            trigger: Trigger::HostReleased,
            cut_backoff: true,
        })
    };
    move |event| {
        let mut out = Vec::new();
        let (key, priority, trigger) = match event {
            Event::Init => {
                relisting.clear();
                return out;
            }
            Event::InitApply(set) => {
                let Some(key) = set.key() else { return out };
                out.extend(host_moved(hosts.update(&key, set.host_claims())));
                let generation = set.generation.unwrap_or(0);
                relisting.insert(key.clone(), generation);
                match change(generations.get(&key).copied(), generation) {
                    (Priority::Normal, trigger) if listed => (key, Priority::Normal, trigger),
                    _ => (key, Priority::Low, Trigger::InitialList),
                }
            }
            Event::InitDone => {
                // Sets gone while the watch was down give up their hosts.
                for gone in generations.keys().filter(|k| !relisting.contains_key(*k)) {
                    out.extend(host_moved(hosts.update(gone, Vec::new())));
                }
                generations = std::mem::take(&mut relisting);
                listed = true;
                return out;
            }
            Event::Apply(set) => {
                let Some(key) = set.key() else { return out };
                out.extend(host_moved(hosts.update(&key, set.host_claims())));
                let generation = set.generation.unwrap_or(0);
                let previous = generations.insert(key.clone(), generation);
                if previous == Some(generation) && is_echo(&recent, &set) {
                    return out;
                }
                let (priority, trigger) = change(previous, generation);
                (key, priority, trigger)
            }
            Event::Delete(set) => {
                if let Some(key) = set.key() {
                    out.extend(host_moved(hosts.update(&key, Vec::new())));
                    generations.remove(&key);
                }
                return out;
            }
        };
        out.push(Enqueue {
            key,
            priority,
            trigger,
            cut_backoff: priority == Priority::Normal,
        });
        out
    }
}

/// Child events: drift (a change of what the operator manages, or a deletion) is a real
/// change. A change of status only (a Deployment's replicas becoming ready), a child seen for
/// the first time (most often the echo of our own create) and the initial list just need the
/// set's status refreshed: they wait at low priority, behind real changes, and a set whose
/// three Deployments become ready one after another is then refreshed once, not three times.
/// The first list of a shard's watch queues nothing: the shard's sets are all queued once its
/// caches have listed; a later re-list (after a watch error) queues the owners it shows.
/// The echo of our own apply queues nothing (see `RecentWrites`).
fn classify_children<K: Resource<DynamicType = ()>>(
    recent: Arc<RecentWrites>,
) -> impl FnMut(Event<Stored<K>>) -> Option<Enqueue> + Send {
    // uid -> digest of the managed part, hashed to keep the map small at 100,000 children.
    let mut managed: HashMap<u64, u64> = HashMap::new();
    let mut listed = false;
    move |event| {
        let (child, priority, trigger) = match &event {
            Event::InitApply(c) if !listed => {
                managed.insert(uid_key(c), c.digest);
                return None;
            }
            Event::InitDone => {
                listed = true;
                return None;
            }
            Event::Apply(c) => {
                let before = managed.insert(uid_key(c), c.digest);
                if is_echo(&recent, c) {
                    return None;
                }
                if before.is_some_and(|b| b != c.digest) {
                    (c, Priority::Normal, Trigger::ChildDrift)
                } else {
                    (c, Priority::Low, Trigger::ChildStatus)
                }
            }
            Event::Delete(c) => {
                managed.remove(&uid_key(c));
                (c, Priority::Normal, Trigger::ChildDrift)
            }
            Event::InitApply(c) => {
                managed.insert(uid_key(c), c.digest);
                (c, Priority::Low, Trigger::InitialList)
            }
            Event::Init => return None,
        };
        Some(Enqueue {
            key: child.controller_key()?,
            priority,
            trigger,
            cut_backoff: false,
        })
    }
}

fn is_echo<K: Resource<DynamicType = ()>>(recent: &RecentWrites, obj: &Stored<K>) -> bool {
    let key = RecentWrites::key(
        &K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name(),
    );
    recent.is_echo(&key, obj.resource_version())
}

fn uid_key<K>(obj: &Stored<K>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    obj.uid().hash(&mut hasher);
    hasher.finish()
}

/// Re-queues every set every `period` ±10 %, at low priority.
async fn resync(
    stores: Stores,
    queue: Arc<WorkQueue>,
    gate: Arc<ShardGate>,
    period: Duration,
    shutdown: CancellationToken,
) {
    loop {
        // Jitter from the clock's nanoseconds: replicas started together spread out.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = 0.9 + 0.2 * (f64::from(nanos) / 1e9);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period.mul_f64(jitter)) => {}
        }
        let sets = stores.sets.state();
        debug!(sets = sets.len(), "resync");
        for set in sets {
            if let Some(key) = set.key().filter(|k| gate.accepts(k)) {
                queue.add(&key, Priority::Low, Trigger::Resync).await;
            }
        }
    }
}

/// A set found when its shard's children are listed, in the order such sets are queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Takeover {
    /// Its status observed an older generation: changed while no one held the shard.
    Behind,
    NeverReconciled,
    UpToDate,
}

/// Objects per list page of the initial lists and re-lists.
const LIST_PAGE: u32 = 100;

/// How the caches list: from the API server's watch cache (resourceVersion 0), not by a
/// quorum read from etcd. Labels are not indexed in etcd: a quorum list of one shard's
/// children reads and decodes every object of the kind, page after page, and filters them in
/// the API server, so taking over a dead replica's five shards cost twenty scans of every
/// Deployment, Service and Ingress on an API server that was busy already. From the watch
/// cache it is an in-memory filter. The watch that follows starts at the list's version, so
/// nothing is missed; the list may be a moment behind etcd, as every watch event is.
fn list_config() -> watcher::Config {
    watcher::Config::default()
        .any_semantic()
        .page_size(LIST_PAGE)
}

/// The operator's clients of the API server, each with a connection pool of its own: `work`
/// for watches, reconciles and Events, `leases` for the shard manager. A Lease renewal then
/// never waits for a connection behind reconciles, nor loses its connection when a
/// timed-out reconcile drops its requests (with a 2 s API server, renewals that had to open
/// new connections missed the renew deadline).
#[derive(Clone)]
pub struct Clients {
    pub work: Client,
    pub leases: Client,
}

/// Runs the operator until `shutdown` is cancelled, then drains in-flight reconciles.
pub async fn run(
    clients: Clients,
    config: Config,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = clients.work;
    let mut tasks = tokio::task::JoinSet::new();
    let queue = WorkQueue::with_metrics(config.queue.clone(), metrics.queue.clone());
    let (gate, shard_events) =
        ShardGate::new(config.sharding.scheme, config.sharding.renew_deadline);
    let watched: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let feed = Feed {
        client: &client,
        watched: &watched,
        queue: &queue,
        gate: &gate,
        shutdown: &shutdown,
    };
    let recent = Arc::new(RecentWrites::default());
    let hosts = Arc::new(HostIndex::default());
    // Child caches come and go with the shards (`ShardWatches`); the sets are watched whole.
    let stores = Stores::new(
        feed.watch(&mut tasks, list_config(), || {
            classify_sets(recent.clone(), hosts.clone())
        }),
        config.sharding.scheme,
    );
    // A shard can be taken only once the set cache can tell which sets it holds.
    info!("waiting for the set cache to sync");
    tokio::select! {
        _ = shutdown.cancelled() => { tasks.shutdown().await; return Ok(()) }
        r = stores.sets.wait_until_ready() => r?,
    }
    info!(
        sets = stores.sets.len(),
        "set cache synced; starting {} workers", config.concurrency
    );
    health.set_ready(true);
    tasks.spawn(resync(
        stores.clone(),
        queue.clone(),
        gate.clone(),
        config.resync,
        shutdown.clone(),
    ));
    tasks.spawn(follow_shards(
        shard_events,
        ShardWatches {
            client: client.clone(),
            watched: watched.clone(),
            queue: queue.clone(),
            gate: gate.clone(),
            stores: stores.clone(),
            recent: recent.clone(),
            shutdown: shutdown.clone(),
        },
        config.sharding.lease_duration,
    ));
    let release = CancellationToken::new();
    let manager = tokio::spawn(
        ShardManager::new(
            clients.leases,
            config.sharding.clone(),
            gate.clone(),
            metrics.shard.clone(),
            shard_loads(&stores),
        )
        .run(release.clone(), config.shutdown_timeout),
    );
    tasks.spawn({
        let queue = queue.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            while tokio::select! { _ = shutdown.cancelled() => false, _ = tick.tick() => true } {
                queue.update_unfinished_work();
            }
        }
    });

    tasks.spawn(take_census(
        stores.clone(),
        gate.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let writer = Writer::new(client.clone());
    let (events, events_task) = EventSender::start(
        Arc::new(Recorder::new(
            crate::children::FIELD_MANAGER,
            config.instance.clone(),
        )),
        writer.clone(),
    );
    let ctx = Arc::new(Context {
        writer,
        stores,
        events,
        limits: config.limits.clone(),
        policy: config.policy.clone(),
        hosts,
        recent,
        rejected: Default::default(),
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..config.concurrency.max(1) {
        workers.spawn(worker(
            ctx.clone(),
            queue.clone(),
            gate.clone(),
            metrics.clone(),
            config.reconcile_timeout,
        ));
    }

    shutdown.cancelled().await;
    info!("shutting down: no new work, waiting for in-flight reconciles");
    queue.shut_down();
    tasks.shutdown().await;
    if tokio::time::timeout(config.shutdown_timeout, async {
        while workers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!("in-flight reconciles did not finish in time; aborting them");
        workers.shutdown().await;
    }
    // The Events of the last reconciles still go out, briefly.
    drop(ctx);
    if tokio::time::timeout(Duration::from_secs(5), events_task)
        .await
        .is_err()
    {
        warn!("some events were not posted before shutdown");
    }
    // Only now, with no reconcile running, are the Leases released: the next holder never
    // overlaps with us.
    release.cancel();
    if tokio::time::timeout(Duration::from_secs(10), manager)
        .await
        .is_err()
    {
        warn!("releasing the leases took too long");
    }
    info!("stopped");
    Ok(())
}

/// How often the census gauges of the served sets are refreshed.
const CENSUS_PERIOD: Duration = Duration::from_secs(15);

/// Refreshes the census gauges (`vecodex_operator_sets`) from the set cache: the sets of the
/// shards held now, by their Ready condition.
async fn take_census(
    stores: Stores,
    gate: Arc<ShardGate>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(CENSUS_PERIOD);
    while tokio::select! { _ = shutdown.cancelled() => false, _ = tick.tick() => true } {
        let mut held = vec![false; stores.scheme.shards as usize];
        for shard in gate.held() {
            held[shard as usize] = true;
        }
        let sets = stores.sets.state();
        let served: Vec<_> = sets
            .iter()
            .filter(|s| {
                s.namespace()
                    .is_some_and(|ns| held[stores.scheme.shard_of(ns) as usize])
            })
            .map(|s| {
                let status = s.parts::<serde::de::IgnoredAny, census::ReadyOnly>().status;
                (s.generation, s.observed_generation, status)
            })
            .collect();
        let tally = census::count(
            served
                .iter()
                .map(|(generation, observed, status)| census::Entry {
                    generation: *generation,
                    observed_generation: *observed,
                    status: status.as_ref(),
                }),
            jiff::Timestamp::now().as_second(),
        );
        metrics.census(&tally);
    }
}

/// Sets per shard, from the set cache every replica keeps whole: what the shard manager
/// balances.
fn shard_loads(stores: &Stores) -> ShardLoads {
    let (sets, scheme) = (stores.sets.clone(), stores.scheme);
    Arc::new(move || {
        let mut loads = vec![0u64; scheme.shards as usize];
        for set in sets.state() {
            if let Some(ns) = set.namespace() {
                loads[scheme.shard_of(ns) as usize] += 1;
            }
        }
        loads
    })
}

/// Starts and stops the child watches of the shards this replica holds or keeps warm.
#[derive(Clone)]
struct ShardWatches {
    client: Client,
    watched: Vec<Option<String>>,
    queue: Arc<WorkQueue>,
    gate: Arc<ShardGate>,
    stores: Stores,
    recent: Arc<RecentWrites>,
    shutdown: CancellationToken,
}

impl ShardWatches {
    /// Registers `shard`'s caches and starts its child watches (only its children, by label;
    /// of its namespaces when namespaces are listed). Once they have all listed, the shard's
    /// sets are queued if it is held by then; a standby shard's sets are queued when it is
    /// gained (see `follow_shards`). Returns what stops the watches.
    fn start(&self, shard: u32, generation: u64) -> CancellationToken {
        self.stores.start_shard(shard, generation);
        let stop = self.shutdown.child_token();
        let config = list_config().labels(&shard_selector(shard));
        let scheme = self.stores.scheme;
        let mut listed = Vec::new();
        for ns in self
            .watched
            .iter()
            .filter(|ns| ns.as_deref().is_none_or(|ns| scheme.shard_of(ns) == shard))
        {
            let s = &self.stores;
            listed.extend([
                self.watch(&s.deployments, shard, generation, ns, &config, &stop),
                self.watch(&s.services, shard, generation, ns, &config, &stop),
                self.watch(&s.config_maps, shard, generation, ns, &config, &stop),
                self.watch(&s.ingresses, shard, generation, ns, &config, &stop),
            ]);
        }
        let (watches, until) = (self.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = until.cancelled() => return,
                _ = futures::future::join_all(listed) => {}
            }
            // Synced first, held second: `follow_shards` checks them the other way round
            // when the shard is gained, so one of the two queues the sets.
            if watches.stores.mark_synced(shard, generation) && watches.gate.is_held(shard) {
                watches.queue_sets(shard, false).await;
            }
        });
        stop
    }

    /// Whether this replica and its peers have caught up: every shard it holds listed,
    /// nothing queued or being reconciled here, and at most 1 % of all sets (from the set
    /// cache every replica has) with a generation their status has not yet observed, at most
    /// 0.1 % without any status. Only
    /// then are standby caches started or kept: a replica that finishes its part of a cold
    /// start early must not list a third of all children while its peers still converge
    /// theirs on the same API server (it cost the cold start a tenth of its throughput).
    fn caught_up(&self) -> bool {
        self.behind().is_none()
    }

    /// Why this replica has not caught up (see [`caught_up`](Self::caught_up)), if it has not.
    fn behind(&self) -> Option<String> {
        if !self.queue.is_idle() {
            return Some(format!(
                "{} sets queued, {} being reconciled",
                self.queue.len(),
                self.queue.in_progress()
            ));
        }
        let unlisted: Vec<u32> = self
            .gate
            .held()
            .into_iter()
            .filter(|s| !self.stores.children_synced(*s))
            .collect();
        if !unlisted.is_empty() {
            return Some(format!("held shards {unlisted:?} not listed yet"));
        }
        let sets = self.stores.sets.state();
        let (mut behind, mut never) = (0, 0);
        for set in &sets {
            match set.observed_generation {
                None => never += 1,
                Some(observed) if Some(observed) != set.generation => behind += 1,
                Some(_) => {}
            }
        }
        // Sets never reconciled at all (no status yet) are what a cold start is made of: at
        // most 0.1 % of them, since the last 1 % of a cold start of 10,000 sets took 80 s of
        // its 676 when the standby lists started with them. Sets behind by a spec change are
        // what churn is made of, and churn must not keep standby caches away for ever.
        (never * 1000 > sets.len() || (behind + never) * 100 > sets.len()).then(|| {
            format!(
                "{never} of {} sets never reconciled, {behind} behind their spec",
                sets.len()
            )
        })
    }

    /// Queues the sets of a held shard whose caches have listed. Sets whose spec changed
    /// after a status was written (updated while the shard had no holder) go first, at the
    /// priority of any spec change. Sets never reconciled come next but stay low, as after
    /// any initial list: at a cold start, thousands of them must not queue ahead of a
    /// tenant's change. The rest are checks for drift.
    /// `warm`: the caches were kept as a standby, so the takeover listed nothing.
    async fn queue_sets(&self, shard: u32, warm: bool) {
        let mut keys: Vec<(Takeover, String)> = self
            .stores
            .sets
            .state()
            .iter()
            .filter_map(|s| {
                let key = s.key().filter(|k| self.gate.shard_of_key(k) == shard)?;
                let state = match s.observed_generation {
                    None => Takeover::NeverReconciled,
                    Some(g) if Some(g) != s.generation => Takeover::Behind,
                    Some(_) => Takeover::UpToDate,
                };
                Some((state, key))
            })
            .collect();
        keys.sort_by_key(|(state, _)| *state);
        info!(
            shard,
            warm,
            sets = keys.len(),
            behind = keys.iter().filter(|(s, _)| *s == Takeover::Behind).count(),
            "shard's children are cached; queueing its sets"
        );
        for (state, key) in keys {
            let priority = match state {
                Takeover::Behind => Priority::Normal,
                _ => Priority::Low,
            };
            self.queue.add(&key, priority, Trigger::ShardTakeover).await;
        }
    }

    /// One reflected child watch of `shard` feeding the queue until `stop`; returns what
    /// waits for its first list.
    fn watch<K>(
        &self,
        cache: &Cache<Stored<K>>,
        shard: u32,
        generation: u64,
        ns: &Option<String>,
        config: &watcher::Config,
        stop: &CancellationToken,
    ) -> BoxReady
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let (store, stream) = reflected(
            api::<Raw<K>>(&self.client, ns.as_deref()),
            config.clone(),
            Some(self.recent.clone()),
        );
        tokio::spawn(pump(
            stream,
            self.queue.clone(),
            self.gate.clone(),
            classify_children::<K>(self.recent.clone()),
            stop.clone(),
        ));
        cache.insert(shard, generation, ns.clone(), store.clone());
        Box::pin(async move {
            let _ = store.wait_until_ready().await;
        })
    }
}

type BoxReady = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Applies shard ownership changes: a gained shard starts its child watches (which queue its
/// sets once listed), or queues its sets at once if they already run as a standby; a lost
/// one stops them, drops its caches and its queued keys, unless it is a standby.
///
/// Standby shards (see `hash::standby`) get their watches only once the replica has caught
/// up (every shard it holds listed, nothing queued or in progress) and the members have not
/// changed for `settle` (a Lease duration). During a cold start they would compete with the
/// replica's own work for the API server and the CPU, for a failover that may never come;
/// and while a dead replica's replacement is starting, the two survivors would each warm
/// all the shards for a few seconds.
async fn follow_shards(
    mut events: tokio::sync::mpsc::UnboundedReceiver<ShardEvent>,
    watches: ShardWatches,
    settle: Duration,
) {
    let mut running: HashMap<u32, (u64, CancellationToken)> = HashMap::new();
    let mut generation = 0u64;
    let mut wanted_standby: Vec<u32> = Vec::new();
    let mut standby_since = tokio::time::Instant::now();
    // Whether "every standby shard's children are cached" was said for `wanted_standby`.
    let mut announced = false;
    // When it was last said why standby shards wait (every 10 s while they do).
    let mut said_why: Option<tokio::time::Instant> = None;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = |running: &mut HashMap<u32, (u64, CancellationToken)>, shard: u32| {
        if let Some((old, stop)) = running.remove(&shard) {
            stop.cancel();
            watches.stores.drop_shard(shard, old);
        }
    };
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
            _ = check.tick() => {
                let missing: Vec<u32> = wanted_standby
                    .iter()
                    .copied()
                    .filter(|s| !running.contains_key(s))
                    .collect();
                // `behind` reads the whole set cache: only when there is a watch to start.
                if !missing.is_empty() && standby_since.elapsed() >= settle {
                    match watches.behind() {
                        Some(reason) => {
                            if said_why.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                                info!(shards = ?missing, %reason, "standby shards wait until this replica has caught up");
                                said_why = Some(tokio::time::Instant::now());
                            }
                        }
                        None => {
                            said_why = None;
                            // Said again once these have listed too: a shard handed over
                            // before the replica caught up had its caches stopped (see
                            // Lost), after "every standby shard's children are cached" may
                            // already have been said while it was held.
                            announced = false;
                            info!(shards = ?missing, "keeping the caches of standby shards warm");
                            for shard in missing {
                                generation += 1;
                                running.insert(shard, (generation, watches.start(shard, generation)));
                            }
                        }
                    }
                } else if !announced
                    && missing.is_empty()
                    && wanted_standby
                        .iter()
                        .all(|s| watches.stores.children_synced(*s))
                {
                    announced = true;
                    info!(shards = ?wanted_standby, "every standby shard's children are cached");
                }
                continue;
            }
        };
        match event {
            ShardEvent::Gained(shard) => match running.get(&shard) {
                // Kept warm: held first, synced second (the other way round in `start`).
                Some(_) => {
                    if watches.stores.children_synced(shard) {
                        let watches = watches.clone();
                        tokio::spawn(async move { watches.queue_sets(shard, true).await });
                    }
                }
                None => {
                    generation += 1;
                    running.insert(shard, (generation, watches.start(shard, generation)));
                }
            },
            ShardEvent::Lost(shard) => {
                // Kept as a standby only by a replica that has caught up: at a cold start the
                // first replica takes every shard and hands most of them over, and keeping
                // them would double its work while it converges its own.
                let keep = wanted_standby.contains(&shard)
                    && standby_since.elapsed() >= settle
                    && watches.caught_up();
                if !keep {
                    stop(&mut running, shard);
                }
                watches
                    .queue
                    .retain(|k| watches.gate.shard_of_key(k) != shard);
            }
            ShardEvent::Standby(shards) => {
                info!(shards = ?shards, "standby shards changed (the members changed)");
                let unwanted: Vec<u32> = running
                    .keys()
                    .copied()
                    .filter(|s| !shards.contains(s) && !watches.gate.is_held(*s))
                    .collect();
                for shard in unwanted {
                    stop(&mut running, shard);
                }
                wanted_standby = shards;
                standby_since = tokio::time::Instant::now();
                announced = false;
            }
        }
    }
}

async fn worker(
    ctx: Arc<Context>,
    queue: Arc<WorkQueue>,
    gate: Arc<ShardGate>,
    metrics: Metrics,
    timeout: Duration,
) {
    while let Some(item) = queue.get().await {
        let key = item.key.clone();
        // Only while this replica holds the key's shard; a lost shard cancels the reconcile.
        let Some(guard) = gate.begin(&key) else {
            queue.done(&key);
            continue;
        };
        let shard = gate.shard_of_key(&key);
        work(&ctx, &queue, &metrics, item, shard, guard, timeout).await;
        queue.done(&key);
    }
}

/// One reconcile as one trace: a root span `reconcile` with the set, shard, trigger, queue
/// wait and attempt, and, when it ends, the outcome and requeue delay.
async fn work(
    ctx: &Context,
    queue: &WorkQueue,
    metrics: &Metrics,
    item: Item,
    shard: u32,
    guard: WorkGuard,
    timeout: Duration,
) {
    let (ns, name) = item.key.split_once('/').unwrap_or(("", item.key.as_str()));
    let span = info_span!(
        parent: None,
        "reconcile",
        otel.name = "reconcile",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        key = %item.key,
        "k8s.namespace.name" = ns,
        "vecodex.set.name" = name,
        "vecodex.set.uid" = tracing::field::Empty,
        "vecodex.set.generation" = tracing::field::Empty,
        "vecodex.shard" = i64::from(shard),
        "vecodex.trigger" = item.trigger.as_str(),
        "vecodex.priority" = ?item.priority,
        "vecodex.queue_wait_ms" = item.waited.as_millis() as i64,
        "vecodex.attempt" = i64::from(item.attempt),
        "vecodex.outcome" = tracing::field::Empty,
        "vecodex.requeue_delay_ms" = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let (trace_id, span_id) = crate::telemetry::ids(&span);
    span.record("trace_id", tracing::field::display(&trace_id));
    span.record("span_id", tracing::field::display(&span_id));

    let started = std::time::Instant::now();
    let result = tokio::select! {
        r = tokio::time::timeout(timeout, reconcile(ctx, &item.key)).instrument(span.clone()) =>
            Some(r.unwrap_or(Err(crate::reconcile::Error::Timeout(timeout)))),
        _ = guard.token.cancelled() => None,
    };
    drop(guard);
    let (outcome, result_label) = match &result {
        None => ("cancelled: shard lost".to_owned(), results::CANCELLED),
        Some(Ok(Report::Gone)) => ("gone".to_owned(), results::GONE),
        Some(Ok(Report::NotSynced)) => (
            "shard's caches not listed yet".to_owned(),
            results::NOT_SYNCED,
        ),
        Some(Ok(Report::Invalid)) => ("invalid".to_owned(), results::INVALID),
        Some(Ok(Report::Applied {
            writes: 0,
            status_patched: false,
            ..
        })) => ("no-op".to_owned(), results::NOOP),
        Some(Ok(Report::Applied {
            writes,
            status_patched,
            ..
        })) => (
            format!("applied {} objects", writes + usize::from(*status_patched)),
            results::APPLIED,
        ),
        Some(Err(_)) => ("error".to_owned(), results::ERROR),
    };
    span.record("vecodex.outcome", outcome.as_str());
    metrics.reconciled(result_label, started.elapsed(), &trace_id);
    span.in_scope(|| {
        match result {
            None => warn!("shard lost: reconcile cancelled"),
            Some(Ok(report)) => {
                queue.forget(&item.key);
                if let Report::Applied {
                    status_after: Some(after),
                    ..
                } = report
                {
                    // Low priority, as every status refresh: under load the next spec
                    // change (someone waits for its children) goes first, and the status
                    // follows when a worker is free. Until then observedGeneration says the
                    // set is not done.
                    queue.add_after(&item.key, after, Priority::Low, Trigger::ChildStatus);
                }
                match report {
                    Report::Applied {
                        writes: 0,
                        status_patched: false,
                        ..
                    } => debug!("no change"),
                    Report::NotSynced => debug!("the shard's children are still being listed"),
                    Report::Invalid => {
                        span.record("otel.status_code", "ERROR");
                        span.record("otel.status_message", "invalid spec");
                        info!(?report, "reconciled");
                    }
                    report => info!(?report, "reconciled"),
                }
            }
            Some(Err(err)) => {
                let delay = queue.retry(&item.key, item.priority);
                span.record("vecodex.requeue_delay_ms", delay.as_millis() as i64);
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_message", err.to_string().as_str());
                error!(error = %err, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kube::runtime::watcher::Event;

    use super::{carry_verified, classify_children, classify_sets};
    use crate::cache::Stored;
    use crate::crd::VecodexSet;
    use crate::queue::{Priority, Trigger};
    use crate::reconcile::RecentWrites;

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

    fn set(generation: i64) -> VecodexSet {
        let mut set: VecodexSet = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps.vecodex.link/v1alpha1",
            "kind": "VecodexSet",
            "metadata": {"name": "s", "namespace": "t", "generation": generation},
            "spec": {"coordinator": {"image": "a"}, "writer": {"image": "a"}, "searcher": {"image": "a"}}
        }))
        .unwrap();
        set.metadata.generation = Some(generation);
        set
    }

    #[test]
    fn only_new_sets_and_spec_changes_are_urgent() {
        let recent = Arc::new(RecentWrites::default());
        let mut classify = classify_sets(recent.clone(), Default::default());
        assert!(classify(Event::Init).is_empty());
        let listed = classify(Event::InitApply(Stored::new(set(1))))
            .pop()
            .unwrap();
        assert_eq!(
            (listed.key.as_str(), listed.priority, listed.cut_backoff),
            ("t/s", Priority::Low, false)
        );
        assert!(classify(Event::InitDone).is_empty());
        let echo = classify(Event::Apply(Stored::new(set(1)))).pop().unwrap();
        assert_eq!(
            (echo.priority, echo.cut_backoff),
            (Priority::Low, false),
            "status or metadata update"
        );
        let mut written = set(1);
        written.metadata.resource_version = Some("5".into());
        recent.record(
            RecentWrites::key("VecodexSet", "t", "s"),
            None,
            0,
            Some("5".into()),
        );
        assert!(
            classify(Event::Apply(Stored::new(written))).is_empty(),
            "the echo of our own status write"
        );
        let edit = classify(Event::Apply(Stored::new(set(2)))).pop().unwrap();
        assert_eq!(
            (edit.priority, edit.cut_backoff),
            (Priority::Normal, true),
            "spec change"
        );
        assert!(classify(Event::Delete(Stored::new(set(2)))).is_empty());
        let created = classify(Event::Apply(Stored::new(set(1)))).pop().unwrap();
        assert_eq!(
            (created.priority, created.cut_backoff),
            (Priority::Normal, true),
            "a new set"
        );
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

    fn named(name: &str, generation: i64) -> Stored<VecodexSet> {
        let mut set = set(generation);
        set.metadata.name = Some(name.into());
        Stored::new(set)
    }

    #[test]
    fn a_relist_finds_what_changed_while_the_watch_was_down() {
        let mut classify = classify_sets(Default::default(), Default::default());
        classify(Event::Init);
        for name in ["same", "edited", "deleted"] {
            classify(Event::InitApply(named(name, 1)));
        }
        classify(Event::InitDone);

        // The watch could not resume: kube-runtime lists again. "deleted" is not in the
        // re-list: when it comes back after it, it is a new set.
        assert!(classify(Event::Init).is_empty());
        // What each event queues; only what changed cuts a failing set's backoff short.
        let check = |queued: Option<super::Enqueue>, priority, trigger| {
            let e = queued.expect("queued");
            let urgent = priority == Priority::Normal;
            assert_eq!(
                (e.priority, e.trigger, e.cut_backoff),
                (priority, trigger, urgent)
            );
        };
        let same = classify(Event::InitApply(named("same", 1))).pop();
        check(same, Priority::Low, Trigger::InitialList);
        let edited = classify(Event::InitApply(named("edited", 2))).pop();
        check(edited, Priority::Normal, Trigger::SpecChange);
        let created = classify(Event::InitApply(named("created", 1))).pop();
        check(created, Priority::Normal, Trigger::Create);
        classify(Event::InitDone);
        let back = classify(Event::Apply(named("deleted", 1))).pop();
        check(back, Priority::Normal, Trigger::Create);
        let again = classify(Event::Apply(named("edited", 2))).pop();
        check(again, Priority::Low, Trigger::Update);
    }

    #[test]
    fn children_map_to_their_controlling_set() {
        let mut cm = k8s_openapi::api::core::v1::ConfigMap::default();
        cm.metadata.name = Some("s-config".into());
        cm.metadata.namespace = Some("t".into());
        cm.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps.vecodex.link/v1alpha1".into(),
                kind: "VecodexSet".into(),
                name: "s".into(),
                uid: "u".into(),
                controller: Some(true),
                block_owner_deletion: None,
            },
        ]);
        let recent = Arc::new(RecentWrites::default());
        let mut classify = classify_children(recent.clone());
        assert!(
            classify(Event::InitApply(Stored::new(cm.clone()))).is_none(),
            "the first list queues nothing: the shard's sets are queued once it is done"
        );
        assert!(classify(Event::InitDone).is_none());
        let relisted = classify(Event::InitApply(Stored::new(cm.clone()))).unwrap();
        assert_eq!(
            (relisted.key.as_str(), relisted.priority, relisted.trigger),
            ("t/s", Priority::Low, Trigger::InitialList),
            "a re-list after a watch error queues the owner"
        );
        cm.metadata.resource_version = Some("2".into());
        assert_eq!(
            classify(Event::Apply(Stored::new(cm.clone())))
                .unwrap()
                .priority,
            Priority::Low,
            "nothing the operator manages changed"
        );
        cm.data = Some([("k".to_owned(), "v".to_owned())].into());
        let drift = classify(Event::Apply(Stored::new(cm.clone()))).unwrap();
        assert_eq!(
            (drift.priority, drift.trigger),
            (Priority::Normal, Trigger::ChildDrift),
            "a managed field changed"
        );
        cm.data = Some([("k".to_owned(), "ours".to_owned())].into());
        cm.metadata.resource_version = Some("3".into());
        recent.record(
            RecentWrites::key("ConfigMap", "t", "s-config"),
            None,
            0,
            Some("3".into()),
        );
        assert!(
            classify(Event::Apply(Stored::new(cm.clone()))).is_none(),
            "the echo of our own apply: the reconcile that made it knew all it carries"
        );
        cm.metadata.resource_version = Some("4".into());
        cm.data = Some([("k".to_owned(), "theirs".to_owned())].into());
        assert_eq!(
            classify(Event::Apply(Stored::new(cm.clone()))).map(|e| e.trigger),
            Some(Trigger::ChildDrift),
            "a change after our own is someone else's"
        );
        let deleted = classify(Event::Delete(Stored::new(cm.clone()))).unwrap();
        assert_eq!(deleted.priority, Priority::Normal);
        cm.metadata.owner_references = None;
        assert!(
            classify(Event::Apply(Stored::new(cm))).is_none(),
            "not ours"
        );
    }
}
