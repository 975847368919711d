//! The plain client: the baseline the operator is compared with. It writes the same
//! children the operator would, with no cache, queue or shards, as fast as the API server
//! takes them; its rate is the limit the scenarios measure against.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use vecodex_operator::children;
use vecodex_operator::crd::{VecodexSet, VecodexSetSpec};

use crate::args::Args;
use crate::churn::Churner;
use crate::cluster;
use crate::cluster::is_tenant;
use crate::machine::CpuMark;
use crate::results::{ChurnRun, Limit, LimitRun, one_line};
use crate::scenarios::{Fresh, on_fresh_control_plane};

/// Scenario 2: for each concurrency of `--plain-concurrency`, on a control plane of its own
/// where the same sets exist (created before the clock starts, as for the cold start), a plain
/// client server-side applies, for each set, exactly the children the operator would (its
/// builders; owned by the set, so the garbage collector does the same work), all of a set's
/// children at once, then the set's status, `concurrency` sets at once. The fastest run is
/// the limit. A control plane of its own, so that the controllers' backlog of one run (the
/// garbage collector and the endpoint controllers run behind the writes) does not land on the
/// next. The churn sweep runs once, on the first run's control plane.
pub(crate) async fn limit(args: &Args, spec: &VecodexSetSpec) -> anyhow::Result<Limit> {
    let mut sweep = Vec::new();
    let mut churn = Vec::new();
    for (i, &concurrency) in args.plain_concurrency.iter().enumerate() {
        let (run, run_churn) = limit_at(args, spec, concurrency, i == 0).await?;
        eprintln!(
            "loadtest: limit at concurrency {concurrency}: {}",
            one_line(&run)
        );
        sweep.push(run);
        churn.extend(run_churn);
    }
    let best = sweep
        .iter()
        .max_by(|a, b| a.sets_per_second.total_cmp(&b.sets_per_second))
        .cloned()
        .context("--plain-concurrency names no concurrency")?;
    Ok(Limit {
        best,
        writes_per_set: WRITES_PER_SET,
        sweep,
        churn,
    })
}

/// One more run of the limit at `concurrency` sets in flight, on a control plane of its own.
pub(crate) async fn limit_once(
    args: &Args,
    spec: &VecodexSetSpec,
    concurrency: usize,
) -> anyhow::Result<LimitRun> {
    Ok(limit_at(args, spec, concurrency, false).await?.0)
}

/// One run of the limit at `concurrency` sets in flight, and the plain client's churn sweep
/// after it when `with_churn`.
async fn limit_at(
    args: &Args,
    spec: &VecodexSetSpec,
    concurrency: usize,
    with_churn: bool,
) -> anyhow::Result<(LimitRun, Vec<ChurnRun>)> {
    eprintln!(
        "loadtest: limit: fresh control plane, {} sets, {concurrency} in flight",
        args.sets
    );
    // The tracker watches as on the main control plane, so that both sides pay for the same
    // watchers (its watches of every set, child and Deployment).
    on_fresh_control_plane(
        args,
        spec,
        args.sets,
        args.namespaces,
        async |fresh: &Fresh<'_>| {
            let Fresh {
                cluster,
                client,
                tracker,
            } = fresh;
            // Every set, page by page (10,000 are more than one page).
            let mut sets: Vec<VecodexSet> = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let lp = kube::api::ListParams {
                    limit: Some(500),
                    continue_token: token.take(),
                    ..Default::default()
                };
                let page = Api::<VecodexSet>::all(client.clone()).list(&lp).await?;
                sets.extend(page.items);
                match page.metadata.continue_.filter(|t| !t.is_empty()) {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
            let waited = cluster.wait_quiet(Duration::from_secs(300)).await;
            eprintln!("loadtest: limit: control plane quiet after {waited:?}");
            let cpu_before = cluster.cpu_seconds();
            let busy_before = CpuMark::now();
            let retries_before = PLAIN_RETRIES.load(Ordering::Relaxed);
            let requests_before = cluster::requests(client).await?;
            let started = Instant::now();
            let shards = args.shards;
            let plain = PlainReconciler::new(client, shards);
            futures::stream::iter(sets)
                .map(|set| {
                    let plain = plain.clone();
                    async move { plain.create(&set).await }
                })
                .buffer_unordered(concurrency)
                .try_collect::<Vec<()>>()
                .await?;
            let secs = started.elapsed().as_secs_f64();
            let cpu_busy = busy_before.busy();
            let cpu = cluster.cpu_seconds().since(&cpu_before);
            let per_set = cpu.total / args.sets as f64;
            let requests =
                cluster::requests_delta(&requests_before, &cluster::requests(client).await?);
            let run = LimitRun {
                concurrency,
                sets: args.sets,
                seconds: secs,
                sets_per_second: args.sets as f64 / secs,
                retries: PLAIN_RETRIES.load(Ordering::Relaxed) - retries_before,
                requests,
                control_plane_cpu_seconds: cpu,
                cpu_seconds_per_set: per_set,
                cpu_busy,
            };
            if !with_churn {
                return Ok((run, Vec::new()));
            }
            // The churn limit: the same updates at the same rates, each followed at once by the
            // writes the operator makes for it.
            tracker
                .wait_converged(args.sets, is_tenant, args.timeout())
                .await?;
            cluster.wait_quiet(Duration::from_secs(120)).await;
            let churn = Churner::plain(client, shards)
                .sweep(
                    cluster,
                    client,
                    tracker,
                    args,
                    &args.churn_rates(),
                    "plain-churn",
                    &[],
                )
                .await;
            Ok((run, churn))
        },
    )
    .await
}

/// A server-side apply of the plain client, retried as a controller would retry it when the
/// control plane fails it for a moment (a 5xx such as "etcdserver: request timed out" during
/// an etcd stall, or a dropped connection): up to 5 more tries, 0.5 s apart. An apply is
/// idempotent. Without this, one stall of a few seconds ended a whole run.
pub(crate) async fn retried<T, F, Fut>(mut request: F) -> kube::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<T>>,
{
    let mut tries = 0;
    loop {
        match request().await {
            Err(kube::Error::Api(e)) if e.code >= 500 && tries < 5 => {}
            Err(kube::Error::HyperError(_) | kube::Error::Service(_)) if tries < 5 => {}
            done => return done,
        }
        tries += 1;
        PLAIN_RETRIES.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How often the plain client retried (reported with the limit).
pub(crate) static PLAIN_RETRIES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// The limit's writes per set (see `PlainReconciler::create`): three Services, three
/// Deployments, the Ingress and the status.
pub(crate) const WRITES_PER_SET: u32 = 8;

/// The plain client's field manager and Event reporter.
pub(crate) const PLAIN_MANAGER: &str = "vecodex-loadtest-plain";

/// What the plain client does for each of its churn updates, right after the update (no
/// watch, no queue, no concurrency limit): exactly the writes the operator makes for it, the
/// changed Deployment's apply, the set's status and a Normal Event through the operator's
/// own recorder. The kubelet simulator adds the Deployment's status on both sides.
#[derive(Clone)]
pub(crate) struct PlainReconciler {
    pub(crate) client: Client,
    pub(crate) writer: vecodex_operator::api::Writer,
    pub(crate) recorder: std::sync::Arc<vecodex_operator::events::Recorder>,
    pub(crate) shards: u32,
}

impl PlainReconciler {
    pub(crate) fn new(client: &Client, shards: u32) -> Self {
        PlainReconciler {
            client: client.clone(),
            writer: vecodex_operator::api::Writer::new(client.clone()),
            recorder: std::sync::Arc::new(vecodex_operator::events::Recorder::new(
                PLAIN_MANAGER,
                None,
            )),
            shards,
        }
    }

    /// The set's children as the operator builds them, labelled with their shard.
    pub(crate) fn desired(&self, set: &VecodexSet) -> anyhow::Result<children::Desired> {
        let ns = set.namespace().unwrap_or_default();
        let mut desired = children::build(set)?;
        desired.label_shard(
            vecodex_operator::shard::Scheme::new(Default::default(), self.shards).shard_of(&ns),
        );
        Ok(desired)
    }

    pub(crate) async fn apply<K>(&self, obj: &K) -> anyhow::Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + serde::Serialize
            + serde::de::DeserializeOwned
            + Clone
            + std::fmt::Debug,
    {
        let api = Api::<K>::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        let params = PatchParams::apply(PLAIN_MANAGER).force();
        let (name, patch) = (obj.name_any(), Patch::Apply(obj));
        retried(|| api.patch(&name, &params, &patch)).await?;
        Ok(())
    }

    pub(crate) async fn apply_status(&self, set: &VecodexSet) -> anyhow::Result<()> {
        let status = json!({
            "apiVersion": "apps.vecodex.link/v1alpha1", "kind": "VecodexSet",
            "metadata": {"name": set.name_any()},
            "status": {"observedGeneration": set.metadata.generation},
        });
        let api = Api::<VecodexSet>::namespaced(
            self.client.clone(),
            &set.namespace().unwrap_or_default(),
        );
        let params = PatchParams::apply(PLAIN_MANAGER).force();
        let (name, patch) = (set.name_any(), Patch::Apply(&status));
        retried(|| api.patch_status(&name, &params, &patch)).await?;
        Ok(())
    }

    /// The limit's work for one set: every child at once, then the status.
    pub(crate) async fn create(&self, set: &VecodexSet) -> anyhow::Result<()> {
        let desired = self.desired(set)?;
        let mut writes: Vec<BoxFuture<'_, anyhow::Result<()>>> = Vec::new();
        writes.extend(desired.services.iter().map(|s| self.apply(s).boxed()));
        writes.extend(desired.deployments.iter().map(|d| self.apply(d).boxed()));
        writes.extend(desired.ingress.iter().map(|i| self.apply(i).boxed()));
        futures::future::try_join_all(writes).await?;
        self.apply_status(set).await
    }

    /// A churn update's writes: the changed Deployment, the status, an Event.
    pub(crate) async fn reconcile(&self, set: &VecodexSet, deployment: &str) -> anyhow::Result<()> {
        let desired = self.desired(set)?;
        let d = desired
            .deployments
            .iter()
            .find(|d| d.name_any() == deployment)
            .context("no such Deployment among the set's children")?;
        self.apply(d).await?;
        self.apply_status(set).await?;
        self.recorder
            .publish(
                &self.writer,
                &set.object_ref(&()),
                vecodex_operator::events::EventType::Normal,
                "Applied",
                format!("updated Deployment {deployment}"),
                None,
            )
            .await?;
        Ok(())
    }
}
