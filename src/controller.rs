//! Wiring: watches feed reflector stores and turn events into keys; workers take keys from
//! the queue and reconcile them.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::api::Writer;
use crate::children::managed_selector;
use crate::crd::{GROUP, KIND, VecodexSet};
use crate::events::Recorder;
use crate::queue::{QueueConfig, WorkQueue};
use crate::reconcile::{Context, Report, Stores, reconcile};
use crate::validate::Limits;

#[derive(Debug, Clone)]
pub struct Config {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    pub concurrency: usize,
    pub limits: Limits,
    pub queue: QueueConfig,
    /// Name reported on Events (the pod name in a cluster).
    pub instance: Option<String>,
    /// How long a shutdown waits for in-flight reconciles.
    pub shutdown_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: None,
            concurrency: 8,
            limits: Limits::default(),
            queue: QueueConfig::default(),
            instance: None,
            shutdown_timeout: Duration::from_secs(20),
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

/// Drops what the reconcile never reads, so the stores stay small.
fn trim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A reflected, trimmed watch of `K`; `on_object` turns each seen object into queue adds.
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<Event<K>, watcher::Error>> + Send,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(trim::<K>)
        .reflect(writer);
    (store, stream)
}

fn watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, config)
}

/// The key of the set controlling a child, if a VecodexSet does.
pub fn owner_key<K: Resource>(child: &K) -> Option<String> {
    let ns = child.meta().namespace.as_deref()?;
    child
        .owner_references()
        .iter()
        .find(|o| {
            o.controller == Some(true)
                && o.kind == KIND
                && o.api_version.starts_with(&format!("{GROUP}/"))
        })
        .map(|o| format!("{ns}/{}", o.name))
}

pub fn key_of<K: Resource>(obj: &K) -> Option<String> {
    Some(format!(
        "{}/{}",
        obj.meta().namespace.as_deref()?,
        obj.meta().name.as_deref()?
    ))
}

/// Runs watches that feed `queue` until `shutdown`; `to_key` maps an object to the set to
/// reconcile. Deletions of children matter (they are recreated); deletions of sets do not.
async fn pump<K, S>(
    stream: S,
    queue: Arc<WorkQueue>,
    to_key: fn(&K) -> Option<String>,
    on_delete: bool,
    shutdown: CancellationToken,
) where
    K: Resource<DynamicType = ()> + Send,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(Event::Apply(obj) | Event::InitApply(obj))) => {
                if let Some(key) = to_key(&obj) {
                    queue.add(&key);
                }
            }
            Some(Ok(Event::Delete(obj))) if on_delete => {
                if let Some(key) = to_key(&obj) {
                    queue.add(&key);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                warn!(error = %e, kind = %K::kind(&()), "watch error; retrying with backoff")
            }
            None => return,
        }
    }
}

/// Runs the operator until `shutdown` is cancelled, then drains in-flight reconciles.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ns = config.namespace.as_deref();
    let children = watcher::Config::default().labels(&managed_selector());
    let (sets, sets_stream) = reflected(api::<VecodexSet>(&client, ns), watcher::Config::default());
    let (deployments, deployments_stream) =
        reflected(api::<Deployment>(&client, ns), children.clone());
    let (services, services_stream) = reflected(api::<Service>(&client, ns), children.clone());
    let (config_maps, config_maps_stream) =
        reflected(api::<ConfigMap>(&client, ns), children.clone());
    let (ingresses, ingresses_stream) = reflected(api::<Ingress>(&client, ns), children);

    let queue = WorkQueue::new(config.queue.clone());
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(pump(
        sets_stream,
        queue.clone(),
        key_of::<VecodexSet>,
        false,
        shutdown.clone(),
    ));
    tasks.spawn(pump(
        deployments_stream,
        queue.clone(),
        owner_key::<Deployment>,
        true,
        shutdown.clone(),
    ));
    tasks.spawn(pump(
        services_stream,
        queue.clone(),
        owner_key::<Service>,
        true,
        shutdown.clone(),
    ));
    tasks.spawn(pump(
        config_maps_stream,
        queue.clone(),
        owner_key::<ConfigMap>,
        true,
        shutdown.clone(),
    ));
    tasks.spawn(pump(
        ingresses_stream,
        queue.clone(),
        owner_key::<Ingress>,
        true,
        shutdown.clone(),
    ));

    let stores = Stores {
        sets,
        deployments,
        services,
        config_maps,
        ingresses,
    };
    // Reconciling before every cache is filled would re-create children that merely have
    // not been listed yet.
    info!("waiting for caches to sync");
    let synced = async {
        stores.sets.wait_until_ready().await?;
        stores.deployments.wait_until_ready().await?;
        stores.services.wait_until_ready().await?;
        stores.config_maps.wait_until_ready().await?;
        stores.ingresses.wait_until_ready().await
    };
    tokio::select! {
        _ = shutdown.cancelled() => { tasks.shutdown().await; return Ok(()) }
        r = synced => r?,
    }
    info!(
        sets = stores.sets.len(),
        "caches synced; starting {} workers", config.concurrency
    );

    let ctx = Arc::new(Context {
        writer: Writer::new(client.clone()),
        stores,
        recorder: Recorder::new(crate::children::FIELD_MANAGER, config.instance.clone()),
        limits: config.limits.clone(),
        recent: Default::default(),
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..config.concurrency.max(1) {
        workers.spawn(worker(ctx.clone(), queue.clone()));
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
    info!("stopped");
    Ok(())
}

async fn worker(ctx: Arc<Context>, queue: Arc<WorkQueue>) {
    while let Some(key) = queue.get().await {
        let span = info_span!("reconcile", key = %key);
        let result = reconcile(&ctx, &key).instrument(span.clone()).await;
        span.in_scope(|| match result {
            Ok(report) => {
                queue.forget(&key);
                match report {
                    Report::Applied {
                        writes: 0,
                        status_patched: false,
                    } => debug!("no change"),
                    report => info!(?report, "reconciled"),
                }
            }
            Err(err) => {
                let delay = queue.retry(&key);
                error!(error = %err, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
            }
        });
        queue.done(&key);
    }
}
