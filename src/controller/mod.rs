//! Wiring: watches feed reflector stores and turn events into keys; workers take keys from
//! the queue and reconcile them; the shard manager decides which keys this replica serves.
//! `run` starts it all, waits for the shutdown signal, and stops it in order.

mod shards;
mod tasks;
mod triggers;
mod watch;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::shards::{ShardWatches, follow_shards, shard_loads};
use self::watch::{Sink, list_config};
use crate::api::Writer;
use crate::cache::Cache;
use crate::events::{EventSender, Recorder};
use crate::hosts::HostIndex;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::queue::{QueueConfig, WorkQueue};
use crate::recent_writes::RecentWrites;
use crate::reconcile::Context;
use crate::shard::{ShardConfig, ShardGate, ShardManager};
use crate::stores::Stores;
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
            sharding: ShardConfig::default(),
            reconcile_timeout: Duration::from_secs(30),
        }
    }
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

/// How long the Events of the last reconciles may take to go out at shutdown.
const EVENTS_DRAIN: Duration = Duration::from_secs(5);
/// How long releasing the Leases may take at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `start` leaves running, for `stop`.
struct Running {
    queue: Arc<WorkQueue>,
    tasks: JoinSet<()>,
    workers: JoinSet<()>,
    ctx: Arc<Context>,
    events_task: JoinHandle<()>,
    /// Cancelled to release the Leases, once no reconcile runs.
    release: CancellationToken,
    manager: JoinHandle<()>,
}

/// Runs the operator until `shutdown` is cancelled, then drains in-flight reconciles.
pub async fn run(
    clients: Clients,
    config: Config,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Some(running) = start(clients, &config, metrics, health, &shutdown).await? else {
        return Ok(());
    };
    shutdown.cancelled().await;
    stop(running, &config).await;
    Ok(())
}

/// Starts the set watch, waits for its cache, then starts the shard manager, the workers and
/// the periodic tasks. `None`: shut down before the set cache synced.
async fn start(
    clients: Clients,
    config: &Config,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Running>> {
    let client = clients.work;
    let mut tasks = JoinSet::new();
    let queue = WorkQueue::with_metrics(config.queue.clone(), metrics.queue.clone());
    let (gate, shard_events) =
        ShardGate::new(config.sharding.scheme, config.sharding.renew_deadline);
    let sink = Sink {
        queue: queue.clone(),
        gate: gate.clone(),
    };
    let watched: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let recent = Arc::new(RecentWrites::default());
    let hosts = Arc::new(HostIndex::default());
    // Child caches come and go with the shards (`shards`); the sets are watched whole.
    let set_stores = watched
        .iter()
        .map(|ns| {
            let store = watch::spawn(
                &client,
                ns.as_deref(),
                list_config(),
                None,
                &sink,
                triggers::classify_sets(recent.clone(), hosts.clone()),
                shutdown.clone(),
            );
            (ns.clone(), store)
        })
        .collect();
    let stores = Stores::new(Cache::new(set_stores), config.sharding.scheme);
    // A shard can be taken only once the set cache can tell which sets it holds.
    info!("waiting for the set cache to sync");
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(None),
        r = stores.sets.wait_until_ready() => r?,
    }
    info!(
        sets = stores.sets.len(),
        "set cache synced; starting {} workers", config.concurrency
    );
    health.set_ready(true);
    tasks.spawn(tasks::resync(
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
            watched,
            sink,
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
    tasks.spawn(tasks::unfinished_work(queue.clone(), shutdown.clone()));
    tasks.spawn(tasks::take_census(
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
    let mut workers = JoinSet::new();
    for _ in 0..config.concurrency.max(1) {
        workers.spawn(worker::worker(
            ctx.clone(),
            queue.clone(),
            gate.clone(),
            metrics.clone(),
            config.reconcile_timeout,
        ));
    }
    Ok(Some(Running {
        queue,
        tasks,
        workers,
        ctx,
        events_task,
        release,
        manager,
    }))
}

/// Stops in order: no new work, in-flight reconciles finish (or are aborted after the
/// shutdown timeout), their Events go out, and only then are the Leases released, so the
/// next holder never overlaps with this replica.
async fn stop(running: Running, config: &Config) {
    let Running {
        queue,
        mut tasks,
        mut workers,
        ctx,
        events_task,
        release,
        manager,
    } = running;
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
    drop(ctx);
    if tokio::time::timeout(EVENTS_DRAIN, events_task)
        .await
        .is_err()
    {
        warn!("some events were not posted before shutdown");
    }
    release.cancel();
    if tokio::time::timeout(RELEASE_TIMEOUT, manager)
        .await
        .is_err()
    {
        warn!("releasing the leases took too long");
    }
    info!("stopped");
}
