//! vecodex-loadtest: drives the operator on real local control planes and reports.
//!
//! Scenarios (loadtest/README.md): limit (a plain client writing the same children), cold
//! start, tenant under flood (during the cold start), churn, failover (kill -9 of a replica
//! during churn), idle, and, each on a fresh control plane, scale-out (1 replica against R)
//! and tracing cost (OTLP export to rotel at the sampling ratio against tracing off). Writes
//! `results.json`, `convergence.svg` and `latency.svg` into `--out` and prints a summary.

mod cluster;
mod kubelet;
mod report;
mod shared;
mod shares;
mod track;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use cluster::{LocalCluster, Otlp, Replica, ReplicaOptions};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use track::{Tracker, percentile};
use vecodex_operator::children;
use vecodex_operator::crd::{VecodexSet, VecodexSetSpec};

#[derive(Parser, Debug, Clone)]
#[command(about = "Load test of vecodex-operator on local control planes")]
struct Args {
    /// VecodexSets of the main cold start (and of the plain client's run).
    #[arg(long, default_value_t = 1000)]
    sets: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Operator replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    #[arg(long, default_value_t = vecodex_operator::shard::DEFAULT_SHARDS)]
    shards: u32,
    /// Reconcile concurrency per replica, and the plain client's concurrency.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Spec updates per second in the churn and failover scenarios.
    #[arg(long, default_value_t = 50.0)]
    churn_rate: f64,
    /// How long the churn scenario runs.
    #[arg(long, default_value_t = 30)]
    churn_seconds: u64,
    /// Lower churn rates, run before --churn-rate, each for --churn-seconds, by the operator
    /// and by the plain client: the highest rate this machine sustains with p99 <= 1 s.
    #[arg(long, value_delimiter = ',', default_values_t = [10.0, 20.0])]
    churn_sweep: Vec<f64>,
    /// Updates per second during the failover scenario. Default: the highest rate of the
    /// sweep the operator kept within a p99 of 1 s in this run (else the lowest rate
    /// measured), so that the scenario measures the failover and not a backlog the machine
    /// cannot absorb (see `default_failover_rate`).
    #[arg(long)]
    failover_churn_rate: Option<f64>,
    /// How long the idle scenario measures.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// The replicas' shard Lease duration (renew deadline 2/3 of it, retry period 1/7).
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Replica counts of the scale-out cold starts, each of --sets sets on a fresh control
    /// plane: each replica's share of sets, reconciles and CPU.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 3, 5])]
    scale_out_replicas: Vec<usize>,
    /// Sets of the tracing-cost cold starts (default: --sets).
    #[arg(long)]
    scale_sets: Option<usize>,
    /// Trace sampling ratio of the tracing-cost scenario.
    #[arg(long, default_value_t = 1.0)]
    sampling_ratio: f64,
    /// Skip the scale-out and tracing-cost scenarios (each starts a fresh control plane).
    #[arg(long)]
    skip_fresh: bool,
    /// GOGC of the control planes' kube-apiserver. At 10,000 sets its live heap is 1.1-2.9
    /// GB; with Go's default (100) it collects every 6 s or so, and each mark phase (1-4 s on
    /// two busy cores) slows every request it overlaps: those were the 2-3 s tails at 50
    /// updates/s, of the plain client as much as the operator's. With 400 it collects about
    /// five times less often. Both sides of every ratio run with it.
    #[arg(long, default_value_t = 400)]
    apiserver_gogc: u32,
    /// GOMEMLIMIT of the control planes' kube-apiserver (Go's syntax; "" for none): with
    /// GOGC 400 and 2.9 GB live its heap would grow to 15 GB of the machine's 24 GiB. Under
    /// churn at 50/s it allocates about 250 MB/s, so with 2-3 GB live even 12 GiB means a
    /// collection every 30-40 s; 8 GiB meant one every 20-25 s.
    #[arg(long, default_value = "12GiB")]
    apiserver_memory_limit: String,
    /// Give up on a convergence after this long.
    #[arg(long, default_value_t = 1800)]
    timeout_seconds: u64,
    /// Where results.json and the charts go.
    #[arg(long, default_value = "loadtest/results")]
    out: PathBuf,
}

impl Args {
    /// The churn rates measured, in order: the sweep's, then --churn-rate.
    fn churn_rates(&self) -> Vec<f64> {
        let mut rates = self.churn_sweep.clone();
        rates.push(self.churn_rate);
        rates
    }

    fn apiserver_gc(&self) -> cluster::ApiServerGc {
        cluster::ApiServerGc {
            gogc: self.apiserver_gogc,
            memory_limit: self.apiserver_memory_limit.clone(),
        }
    }

    fn placement(&self, namespaces: usize) -> Placement {
        Placement {
            namespaces,
            scheme: vecodex_operator::shard::Scheme::new(Default::default(), self.shards),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    fn replica_options<'a>(
        &self,
        kubeconfig: &'a Path,
        otlp: Option<&'a Otlp>,
    ) -> ReplicaOptions<'a> {
        ReplicaOptions {
            kubeconfig,
            shards: self.shards,
            concurrency: self.concurrency,
            lease_seconds: self.lease_seconds,
            otlp,
        }
    }
}

fn is_tenant(ns: &str) -> bool {
    ns.starts_with("tenant-")
}

/// Scenario 2, on a control plane of its own: the same sets exist (created before the clock
/// starts, as for the cold start), and a plain client server-side applies, for each, exactly
/// the children the operator would (its builders; owned by the set, so the garbage collector
/// does the same work) and writes the set's status, one set's requests after another,
/// `concurrency` sets at once. A control plane of its own, so that the controllers' backlog of
/// this phase (the garbage collector and the endpoint controllers run behind the writes) does
/// not land on the operator's cold start.
async fn limit(args: &Args, spec: &VecodexSetSpec) -> anyhow::Result<Value> {
    eprintln!("loadtest: limit: fresh control plane, {} sets", args.sets);
    let cluster = LocalCluster::up(&args.apiserver_gc())?;
    let result = async {
        let client = cluster::client_for(&cluster.kubeconfig()).await?;
        cluster::install_crd(&client).await?;
        let kubelet = kubelet::start(client.clone());
        // Watching as on the main control plane, so that both sides pay for the same
        // watchers (the tracker's watches of every set, child and Deployment).
        let tracker = Tracker::start(&client);
        cluster::create_sets(&client, args.sets, args.namespaces, spec).await?;
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
        let requests_before = cluster::requests(&client).await?;
        let started = Instant::now();
        let shards = args.shards;
        let plain = PlainReconciler::new(&client, shards);
        futures::stream::iter(sets)
            .map(|set| {
                let plain = plain.clone();
                async move { plain.create(&set).await }
            })
            .buffer_unordered(args.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        let secs = started.elapsed().as_secs_f64();
        let cpu = cpu_delta(&cpu_before, &cluster.cpu_seconds());
        let per_set = cpu["total"].as_f64().unwrap_or(0.0) / args.sets as f64;
        let requests =
            cluster::requests_delta(&requests_before, &cluster::requests(&client).await?);

        // The churn limit: the same updates at the same rates, each followed at once by the
        // writes the operator makes for it.
        tracker
            .wait_converged(args.sets, is_tenant, args.timeout())
            .await?;
        cluster.wait_quiet(Duration::from_secs(120)).await;
        let churn = Churner::plain(&client, shards)
            .sweep(
                &cluster,
                &client,
                &tracker,
                args,
                &args.churn_rates(),
                "plain-churn",
                &[],
            )
            .await;
        tracker.stop();
        kubelet.abort();
        Ok(json!({
            "sets": args.sets,
            "seconds": secs,
            "sets_per_second": args.sets as f64 / secs,
            "writes_per_set": 8,
            "retries": PLAIN_RETRIES.load(std::sync::atomic::Ordering::Relaxed),
            "requests": requests,
            "control_plane_cpu_seconds": cpu,
            "cpu_seconds_per_set": per_set,
            "churn": churn,
        }))
    }
    .await;
    cluster.down();
    result
}

/// A server-side apply of the plain client, retried as a controller would retry it when the
/// control plane fails it for a moment (a 5xx such as "etcdserver: request timed out" during
/// an etcd stall, or a dropped connection): up to 5 more tries, 0.5 s apart. An apply is
/// idempotent. Without this, one stall of a few seconds ended a whole run.
async fn retried<T, F, Fut>(mut request: F) -> kube::Result<T>
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
        PLAIN_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How often the plain client retried (reported with the limit).
static PLAIN_RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The plain client's field manager and Event reporter.
const PLAIN_MANAGER: &str = "vecodex-loadtest-plain";

/// Spec updates: each changes a set's searcher replicas to a value it did not have, so its
/// Deployment shows when the update is applied.
#[derive(Default)]
struct Churner {
    current: HashMap<String, i32>,
    n: usize,
    /// With no operator: the plain client makes the update's writes itself.
    plain: Option<PlainReconciler>,
}

/// What the plain client does for each of its churn updates, right after the update (no
/// watch, no queue, no concurrency limit): exactly the writes the operator makes for it, the
/// changed Deployment's apply, the set's status and a Normal Event through the operator's
/// own recorder. The kubelet simulator adds the Deployment's status on both sides.
#[derive(Clone)]
struct PlainReconciler {
    client: Client,
    writer: vecodex_operator::api::Writer,
    recorder: std::sync::Arc<vecodex_operator::events::Recorder>,
    shards: u32,
}

impl PlainReconciler {
    fn new(client: &Client, shards: u32) -> Self {
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
    fn desired(&self, set: &VecodexSet) -> anyhow::Result<children::Desired> {
        let ns = set.namespace().unwrap_or_default();
        let mut desired = children::build(set)?;
        desired.label_shard(
            vecodex_operator::shard::Scheme::new(Default::default(), self.shards).shard_of(&ns),
        );
        Ok(desired)
    }

    async fn apply<K>(&self, obj: &K) -> anyhow::Result<()>
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

    async fn apply_status(&self, set: &VecodexSet) -> anyhow::Result<()> {
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

    /// The limit's work for one set: every child, then the status, one request after another.
    async fn create(&self, set: &VecodexSet) -> anyhow::Result<()> {
        let desired = self.desired(set)?;
        for svc in &desired.services {
            self.apply(svc).await?;
        }
        for d in &desired.deployments {
            self.apply(d).await?;
        }
        if let Some(ing) = &desired.ingress {
            self.apply(ing).await?;
        }
        self.apply_status(set).await
    }

    /// A churn update's writes: the changed Deployment, the status, an Event.
    async fn reconcile(&self, set: &VecodexSet, deployment: &str) -> anyhow::Result<()> {
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

impl Churner {
    fn plain(client: &Client, shards: u32) -> Self {
        Churner {
            plain: Some(PlainReconciler::new(client, shards)),
            ..Churner::default()
        }
    }

    /// Sends one update to `ns/name` (without waiting for the answer) and expects it.
    fn update(
        &mut self,
        client: &Client,
        tracker: &Tracker,
        ns: &str,
        name: &str,
        scenario: &str,
    ) -> tokio::task::JoinHandle<bool> {
        let key = format!("{ns}/{name}");
        // The seed example's searchers have 3 replicas.
        let previous = self.current.get(&key).copied().unwrap_or(3);
        let want = previous % 5 + 1;
        self.current.insert(key, want);
        let deployment = format!("{ns}/{name}-searcher");
        tracker.expect(&deployment, want, scenario);
        let api: Api<VecodexSet> = Api::namespaced(client.clone(), ns);
        let tracker = tracker.clone();
        let name = name.to_owned();
        let plain = self.plain.clone();
        tokio::spawn(async move {
            let patch = json!({"spec": {"searcher": {"replicas": want}}});
            let sent = match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(set) => match &plain {
                    Some(plain) => {
                        let child = format!("{name}-searcher");
                        let done = plain.reconcile(&set, &child).await;
                        if let Err(e) = &done {
                            eprintln!("loadtest: plain client: {deployment}: {e:#}");
                        }
                        done.is_ok()
                    }
                    None => true,
                },
                Err(_) => false,
            };
            if !sent {
                tracker.forget(&deployment);
            }
            sent
        })
    }

    /// `rate` updates per second across the first `sets` sets for `seconds`; returns how many
    /// got through.
    async fn run(
        &mut self,
        client: &Client,
        tracker: &Tracker,
        args: &Args,
        rate: f64,
        scenario: &str,
        seconds: f64,
    ) -> usize {
        let total = (rate * seconds) as usize;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
        let mut sent = Vec::with_capacity(total);
        for _ in 0..total {
            tick.tick().await;
            self.n += 1;
            let i = (self.n * 7919) % args.sets;
            let (ns, name) = cluster::place(i, args.namespaces);
            sent.push(self.update(client, tracker, &ns, &name, scenario));
        }
        let mut ok = 0;
        for s in sent {
            ok += usize::from(s.await.unwrap_or(false));
        }
        ok
    }

    /// The churn scenario at each of `rates` in turn, each for `--churn-seconds` and named
    /// `{prefix}-{rate}`, waiting for every update to land and the control plane to calm
    /// down in between: each rate's latency summary, with the CPU seconds of the control
    /// plane, of the `replicas` (none for the plain client) and of this process (the
    /// churner, the watches that time it, the kubelet simulator and the plain client).
    #[allow(clippy::too_many_arguments)]
    async fn sweep(
        &mut self,
        cluster: &LocalCluster,
        client: &Client,
        tracker: &Tracker,
        args: &Args,
        rates: &[f64],
        prefix: &str,
        replicas: &[Replica],
    ) -> Vec<Value> {
        let mut out = Vec::new();
        let operator_cpu = || -> f64 {
            replicas
                .iter()
                .filter_map(|r| r.stats()["cpu_seconds"].as_f64())
                .sum()
        };
        let own_cpu = || cluster::proc_stats(std::process::id()).map_or(0.0, |(_, cpu)| cpu);
        for &rate in rates {
            // Each rate starts on a quiet control plane: after the cold start the replicas
            // list their standby shards' children, which is not churn's to pay for.
            cluster.wait_quiet(Duration::from_secs(120)).await;
            let gc_before = cluster::collect_apiserver_garbage(client).await;
            let scenario = format!("{prefix}-{rate}");
            let cpu_before = cluster.cpu_seconds();
            let (operator_before, own_before) = (operator_cpu(), own_cpu());
            let reconciles_before = reconciles(replicas).await;
            let requests_before = cluster::requests(client).await.unwrap_or_default();
            let sent = self
                .run(
                    client,
                    tracker,
                    args,
                    rate,
                    &scenario,
                    args.churn_seconds as f64,
                )
                .await;
            let lost = settle(tracker, &scenario, Duration::from_secs(60)).await;
            let mut summary = latency_summary(tracker, &scenario, sent, &lost);
            summary["rate_per_second"] = json!(rate);
            summary["seconds"] = json!(args.churn_seconds);
            summary["control_plane_cpu_seconds"] = cpu_delta(&cpu_before, &cluster.cpu_seconds());
            summary["loadtest_cpu_seconds"] = json!(own_cpu() - own_before);
            summary["apiserver_gc_cycles"] = gc_cycles_since(client, gc_before).await;
            if !replicas.is_empty() {
                summary["operator_cpu_seconds"] = json!(operator_cpu() - operator_before);
                summary["reconciles"] = json!(reconciles(replicas).await - reconciles_before);
            }
            // Every request until the updates landed, by verb and resource: what an update
            // costs each side.
            let requests = cluster::requests(client).await.unwrap_or_default();
            summary["requests"] = json!(cluster::requests_delta(&requests_before, &requests));
            eprintln!("loadtest: {scenario}: {summary}");
            // Every update with its send time, beside results.json: a tail is then read
            // against the replicas' logs update by update, not only its ten slowest.
            let every = json!(tracker.applied(&scenario));
            let file = args.out.join(format!("updates-{scenario}.json"));
            if let Err(e) = std::fs::write(&file, every.to_string()) {
                eprintln!("loadtest: {}: {e}", file.display());
            }
            out.push(summary);
        }
        cluster.wait_quiet(Duration::from_secs(60)).await;
        out
    }
}

/// The operator's churn latencies against the plain client's, rate by rate, and the highest
/// rate each kept within a p99 of 1 s.
fn churn_limit(operator: &[Value], plain: &Value) -> Value {
    let plain = plain.as_array().cloned().unwrap_or_default();
    let p99 = |v: &Value| v["p99_seconds"].as_f64().unwrap_or(f64::INFINITY);
    let highest = |runs: &mut dyn Iterator<Item = &Value>| {
        runs.filter(|v| p99(v) <= 1.0)
            .filter_map(|v| v["rate_per_second"].as_f64())
            .fold(0.0, f64::max)
    };
    let rates: Vec<Value> = operator
        .iter()
        .zip(&plain)
        .map(|(o, p)| {
            json!({
                "rate_per_second": o["rate_per_second"],
                "operator_p99_seconds": o["p99_seconds"],
                "plain_p99_seconds": p["p99_seconds"],
                "operator_p50_seconds": o["p50_seconds"],
                "plain_p50_seconds": p["p50_seconds"],
                "operator_control_plane_cpu_seconds": o["control_plane_cpu_seconds"]["total"],
                "plain_control_plane_cpu_seconds": p["control_plane_cpu_seconds"]["total"],
                "operator_cpu_seconds": o["operator_cpu_seconds"],
                "reconciles": o["reconciles"],
                "operator_loadtest_cpu_seconds": o["loadtest_cpu_seconds"],
                "plain_loadtest_cpu_seconds": p["loadtest_cpu_seconds"],
            })
        })
        .collect();
    json!({
        "rates": rates,
        "operator_highest_rate_within_p99_1s": highest(&mut operator.iter()),
        "plain_highest_rate_within_p99_1s": highest(&mut plain.iter()),
        // Each operator run in full (requests by verb and resource); the plain client's
        // are in `limit.churn`.
        "operator": operator,
    })
}

/// Waits up to `limit` for a scenario's updates to land; returns those that did not.
async fn settle(tracker: &Tracker, scenario: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    while !tracker.pending(scenario).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracker.pending(scenario)
}

fn latency_summary(tracker: &Tracker, scenario: &str, sent: usize, lost: &[String]) -> Value {
    let l = tracker.latencies(scenario);
    json!({
        "updates": sent,
        "observed": l.len(),
        "not_applied_within_60s": lost.len(),
        "not_applied": lost,
        "p50_seconds": percentile(&l, 0.50),
        "p95_seconds": percentile(&l, 0.95),
        "p99_seconds": percentile(&l, 0.99),
        "max_seconds": l.last().copied().unwrap_or(f64::NAN),
        // The tail, with the wall-clock time each update was sent, to look it up in the
        // replicas' logs (`--log-level info`) and the API server's slow-request traces.
        "slowest": tracker.slowest(scenario, 10),
    })
}

/// Scenario 5: one set in its own namespace changes every second from the moment the
/// operator first converged it until `stop`.
fn flood(
    client: Client,
    tracker: Tracker,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        while !tracker.is_converged("flood", "flooded") {
            if stop.is_cancelled() {
                return 0;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut churner = Churner::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut sent = Vec::new();
        while !stop.is_cancelled() {
            tick.tick().await;
            sent.push(churner.update(&client, &tracker, "flood", "flooded", "flood"));
        }
        let mut ok = 0;
        for s in sent {
            ok += usize::from(s.await.unwrap_or(false));
        }
        ok
    })
}

/// Starts `n` replicas; logs go next to the cluster's.
fn start_replicas(
    n: usize,
    opts: &ReplicaOptions,
    logs: &Path,
    label: &str,
) -> anyhow::Result<Vec<Replica>> {
    (0..n)
        .map(|i| {
            Replica::start(
                opts,
                &format!("{label}-{i}"),
                &logs.join(format!("loadtest-{label}-{i}.log")),
            )
        })
        .collect()
}

async fn reconciles(replicas: &[Replica]) -> f64 {
    let mut total = 0.0;
    for r in replicas {
        total += r.reconciles().await;
    }
    total
}

fn stop_replicas(replicas: &mut [Replica]) {
    for r in replicas.iter_mut() {
        r.kill("-TERM");
    }
}

/// The write requests among a reading of [`cluster::requests`] (see `write_requests`).
fn write_total(requests: &std::collections::BTreeMap<String, f64>) -> f64 {
    requests
        .iter()
        .filter(|(k, _)| {
            let resource = k.split_once(' ').map_or("", |(_, r)| r);
            shared::is_write(k)
                && matches!(
                    resource,
                    "deployments"
                        | "services"
                        | "configmaps"
                        | "ingresses"
                        | "vecodexsets"
                        | "vecodexsets/status"
                )
        })
        .map(|(_, n)| n)
        .sum()
}

/// CPU seconds per component between two readings, and their total.
fn cpu_delta(
    before: &serde_json::Map<String, Value>,
    after: &serde_json::Map<String, Value>,
) -> Value {
    let mut delta = serde_json::Map::new();
    let mut total = 0.0;
    for (k, v) in after {
        let d = v.as_f64().unwrap_or(0.0) - before.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        total += d;
        delta.insert(k.clone(), json!(d));
    }
    delta.insert("total".into(), json!(total));
    Value::Object(delta)
}

/// Where a run's sets live: `namespaces` namespaces (see `cluster::place`), hashed by
/// `scheme` into shards.
struct Placement {
    namespaces: usize,
    scheme: vecodex_operator::shard::Scheme,
}

/// A cold start: `replicas` start over `sets` existing sets; figures until all converged.
/// Besides wall-clock time it reports the CPU seconds per set that the control plane and the
/// operator spent, which other work on a shared machine does not distort.
#[allow(clippy::too_many_arguments)]
async fn cold_start(
    cluster: &LocalCluster,
    cpu_before: &serde_json::Map<String, Value>,
    client: &Client,
    tracker: &Tracker,
    replicas: &[Replica],
    sets: usize,
    placement: &Placement,
    started: Instant,
    requests_before: &std::collections::BTreeMap<String, f64>,
    timeout: Duration,
) -> anyhow::Result<(Value, Vec<(f64, usize)>)> {
    let curve = tracker.wait_converged(sets, is_tenant, timeout).await?;
    let secs = started.elapsed().as_secs_f64();
    let writes = cluster::write_requests(client).await? - write_total(requests_before);
    let requests = cluster::requests_delta(requests_before, &cluster::requests(client).await?);
    let reconciles = reconciles(replicas).await;
    let cpu = cpu_delta(cpu_before, &cluster.cpu_seconds());
    let per_replica: Vec<Value> = replicas.iter().map(Replica::stats).collect();
    let operator_cpu: f64 = per_replica
        .iter()
        .filter_map(|r| r["cpu_seconds"].as_f64())
        .sum();
    let per_set = (cpu["total"].as_f64().unwrap_or(0.0) + operator_cpu) / sets.max(1) as f64;
    let set_namespaces: Vec<String> = (0..sets)
        .map(|i| cluster::place(i, placement.namespaces).0)
        .collect();
    let shares = shares::shares(client, replicas, placement.scheme, &set_namespaces).await?;
    Ok((
        json!({
            "sets": sets,
            "replicas": replicas.len(),
            "seconds": secs,
            "sets_per_second": sets as f64 / secs,
            "reconciles": reconciles,
            "reconciles_per_second": reconciles / secs,
            "write_requests": writes,
            "write_requests_per_set": writes / sets.max(1) as f64,
            "requests": requests,
            "control_plane_cpu_seconds": cpu,
            "operator_cpu_seconds": operator_cpu,
            "cpu_seconds_per_set": per_set,
            "per_replica": per_replica,
            "shares": shares,
        }),
        curve,
    ))
}

/// Scenario 6: kill -9 of one replica during churn; churn goes on through the outage (one
/// lease duration); time from the kill until every set is converged and every update applied.
async fn failover(
    client: &Client,
    tracker: &Tracker,
    churner: &mut Churner,
    replicas: &mut [Replica],
    args: &Args,
    rate: f64,
) -> anyhow::Result<Value> {
    let gc_before = cluster::collect_apiserver_garbage(client).await;
    let before = 5.0_f64.min(args.churn_seconds as f64);
    let mut sent = churner
        .run(client, tracker, args, rate, "failover", before)
        .await;
    let victim = replicas[0].identity.clone();
    replicas[0].kill("-KILL");
    let killed = Instant::now();
    sent += churner
        .run(
            client,
            tracker,
            args,
            rate,
            "failover",
            args.lease_seconds as f64,
        )
        .await;
    tracker
        .wait_converged(args.sets, is_tenant, args.timeout())
        .await?;
    let recovered = killed.elapsed().as_secs_f64();
    let lost = settle(tracker, "failover", Duration::from_secs(60)).await;
    let mut result = latency_summary(tracker, "failover", sent, &lost);
    result["killed"] = json!(victim);
    result["churn_rate_per_second"] = json!(rate);
    result["lease_seconds"] = json!(args.lease_seconds);
    result["converged_after_kill_seconds"] = json!(recovered);
    result["apiserver_gc_cycles"] = gc_cycles_since(client, gc_before).await;
    Ok(result)
}

/// The API server's GC cycles since `before` (from `collect_apiserver_garbage`), or null
/// with the reason printed when either count could not be read.
async fn gc_cycles_since(client: &Client, before: anyhow::Result<f64>) -> Value {
    match (before, cluster::gc_cycles(client).await) {
        (Ok(before), Ok(after)) => json!(after - before),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("loadtest: API server GC cycles unknown: {e:#}");
            Value::Null
        }
    }
}

/// The failover's churn rate when `--failover-churn-rate` is not given: the highest rate of
/// the sweep (below `--churn-rate`) the operator kept within a p99 of 1 s, else the lowest
/// measured. Not `--churn-rate` itself: that is the stress rate, at which the machine has no
/// headroom left to absorb the backlog of a Lease duration's outage on top of the ongoing
/// churn, so the scenario would measure the backlog and not the failover.
fn default_failover_rate(args: &Args, operator_churn: &[Value]) -> f64 {
    let lowest = args.churn_rates().into_iter().fold(f64::INFINITY, f64::min);
    operator_churn
        .iter()
        .filter(|c| c["p99_seconds"].as_f64().is_some_and(|p| p <= 1.0))
        .filter_map(|c| c["rate_per_second"].as_f64())
        .filter(|&rate| rate < args.churn_rate)
        .reduce(f64::max)
        .unwrap_or(lowest)
}

/// Cold starts of one configuration taken together: sets per second over their summed
/// time, CPU per set over their summed sets, and each run as it was.
fn pooled(runs: &[Value]) -> Value {
    let sum = |field: &str| -> f64 { runs.iter().filter_map(|r| r[field].as_f64()).sum() };
    let cpu: f64 = runs
        .iter()
        .filter_map(|r| Some(r["cpu_seconds_per_set"].as_f64()? * r["sets"].as_f64()?))
        .sum();
    json!({
        "sets": sum("sets"),
        "seconds": sum("seconds"),
        "sets_per_second": sum("sets") / sum("seconds").max(1e-9),
        "cpu_seconds_per_set": cpu / sum("sets").max(1.0),
        "runs": runs,
    })
}

/// Scale-out and tracing cost: a cold start on a fresh control plane.
async fn fresh_cold_start(
    args: &Args,
    spec: &VecodexSetSpec,
    label: &str,
    replicas: usize,
    sets: usize,
    otlp: Option<&Otlp>,
) -> anyhow::Result<(Value, Vec<(f64, usize)>)> {
    let namespaces = (args.namespaces * sets / args.sets.max(1)).max(1);
    eprintln!("loadtest: {label}: fresh control plane, {sets} sets, {replicas} replicas");
    let cluster = LocalCluster::up(&args.apiserver_gc())?;
    let result = async {
        let client = cluster::client_for(&cluster.kubeconfig()).await?;
        cluster::install_crd(&client).await?;
        let kubelet = kubelet::start(client.clone());
        let tracker = Tracker::start(&client);
        cluster::create_sets(&client, sets, namespaces, spec).await?;
        cluster.wait_quiet(Duration::from_secs(120)).await;
        let requests_before = cluster::requests(&client).await?;
        let kubeconfig = cluster.kubeconfig();
        let opts = args.replica_options(&kubeconfig, otlp);
        let cpu_before = cluster.cpu_seconds();
        let mut running = start_replicas(replicas, &opts, &cluster.dir, label)?;
        let started = Instant::now();
        let result = cold_start(
            &cluster,
            &cpu_before,
            &client,
            &tracker,
            &running,
            sets,
            &args.placement(namespaces),
            started,
            &requests_before,
            args.timeout(),
        )
        .await;
        stop_replicas(&mut running);
        tracker.stop();
        kubelet.abort();
        result
    }
    .await;
    cluster.down();
    result
}

/// rotel-agent (the OTLP collector of the tracing scenarios), from deploy/local/tools.sh.
fn rotel_agent() -> anyhow::Result<PathBuf> {
    if let Some(path) = shared::rotel_agent() {
        return Ok(path);
    }
    let out = Command::new("bash")
        .arg(cluster::repo_root().join("deploy/local/tools.sh"))
        .stderr(Stdio::inherit())
        .output()
        .context("run deploy/local/tools.sh")?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let path = PathBuf::from(dir).join("rotel-agent");
    if !out.status.success() || !path.exists() {
        bail!(
            "rotel-agent not found: deploy/local/tools.sh fetches it from the PyPI wheel rotel==0.0.1a15"
        );
    }
    Ok(path)
}

/// A collector that receives and discards spans, logging one line per batch.
fn start_collector(out: &Path) -> anyhow::Result<(Child, Otlp)> {
    let grpc = shared::free_port()?;
    let log = std::fs::File::create(out.join("rotel.log"))?;
    let http = shared::free_port()?;
    let child = shared::rotel_command(&rotel_agent()?, grpc, http, "basic", out)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .context("start rotel-agent")?;
    shared::wait_listening(grpc);
    let otlp = Otlp {
        endpoint: format!("http://127.0.0.1:{grpc}"),
        sampling_ratio: 0.0,
    };
    Ok((child, otlp))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
    })
}

fn bar(name: &str, wanted: &str, value: f64, met: bool) -> Value {
    json!({"bar": name, "wanted": wanted, "value": value, "met": met})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec = cluster::seed_spec()?;
    std::fs::create_dir_all(&args.out)?;
    eprintln!(
        "loadtest: {} sets over {} namespaces, {} replicas, {} shards, concurrency {}",
        args.sets, args.namespaces, args.replicas, args.shards, args.concurrency
    );

    // 2. The API server's write limit for the same work, on a control plane of its own that
    // is gone before the main one starts.
    let limit = limit(&args, &spec).await?;
    eprintln!("loadtest: limit: {limit}");
    let main = LocalCluster::up(&args.apiserver_gc())?;
    let outcome = main_cluster(&args, &spec, &main, limit).await;
    main.down();
    let MainRun {
        mut results,
        curve,
        latencies,
    } = outcome?;

    let mut curves = vec![(
        format!("{} replicas (main)", args.replicas),
        args.sets,
        curve,
    )];
    if !args.skip_fresh {
        let n = args.scale_sets.unwrap_or(args.sets);
        // Scale-out: the full set count with each replica count.
        let mut scale_runs = Vec::new();
        for &count in &args.scale_out_replicas {
            let label = format!("scale-{count}");
            let (run, run_curve) =
                fresh_cold_start(&args, &spec, &label, count, args.sets, None).await?;
            curves.push((format!("scale-out: {count} replicas"), args.sets, run_curve));
            scale_runs.push(run);
        }
        // Tracing cost in the order off, on, on, off: the machine's speed drifts over the
        // minutes these take (the same configuration twice in a row differed by 15-29 %),
        // and a drift that is steady over the four cancels out of the pooled figures.
        let (base, base_curve) =
            fresh_cold_start(&args, &spec, "tracing-off", args.replicas, n, None).await?;
        let (mut collector, mut otlp) = start_collector(&args.out)?;
        otlp.sampling_ratio = args.sampling_ratio;
        let traced = async {
            let first =
                fresh_cold_start(&args, &spec, "tracing-on", args.replicas, n, Some(&otlp)).await?;
            let second =
                fresh_cold_start(&args, &spec, "tracing-on-2", args.replicas, n, Some(&otlp))
                    .await?;
            anyhow::Ok((first, second))
        }
        .await;
        let _ = collector.kill();
        let _ = collector.wait();
        let ((on, on_curve), (on_2, _)) = traced?;
        let (base_2, _) =
            fresh_cold_start(&args, &spec, "tracing-off-2", args.replicas, n, None).await?;
        // One line per batch received: a tracing-on run that exported nothing measured no
        // tracing, and fails.
        let collector_batches = std::fs::read_to_string(args.out.join("rotel.log"))
            .map(|t| t.matches("Received traces").count())
            .unwrap_or(0);
        if collector_batches == 0 {
            bail!("tracing cost: the collector received no trace from the tracing-on runs");
        }
        let sps = |v: &Value| v["sets_per_second"].as_f64().unwrap_or(0.0);
        let one = scale_runs
            .iter()
            .find(|r| r["replicas"] == 1)
            .map(sps)
            .unwrap_or(f64::NAN);
        results["scale_out"] = json!({
            "sets": args.sets,
            "runs": scale_runs
                .iter()
                .map(|r| {
                    json!({
                        "replicas": r["replicas"],
                        "sets_per_second": r["sets_per_second"],
                        "throughput_vs_one_replica": sps(r) / one,
                        "shares": r["shares"],
                        "cold_start": r,
                    })
                })
                .collect::<Vec<_>>(),
        });
        let off = pooled(&[base, base_2]);
        let on = pooled(&[on, on_2]);
        results["tracing"] = json!({
            "sampling_ratio": args.sampling_ratio,
            "collector_batches": collector_batches,
            "cost": 1.0 - sps(&on) / sps(&off).max(1e-9),
            "off": off,
            "on": on,
        });
        curves.push((
            format!("{} replicas, tracing off", args.replicas),
            n,
            base_curve,
        ));
        curves.push((
            format!(
                "{} replicas, tracing {}",
                args.replicas, args.sampling_ratio
            ),
            n,
            on_curve,
        ));
    }
    results["bars"] = bars(&results, &args);

    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(
        args.out.join("convergence.svg"),
        report::convergence(&curves),
    )?;
    std::fs::write(args.out.join("latency.svg"), report::latency(&latencies))?;
    summary(&results, &args);

    if results["idle"]["write_requests"].as_f64().unwrap_or(1.0) > 0.0 {
        bail!(
            "idle: write requests while nothing changed: {}",
            results["idle"]
        );
    }
    let sweeps = ["operator", "plain"].iter().flat_map(|side| {
        results["churn_limit"][side]
            .as_array()
            .cloned()
            .unwrap_or_default()
    });
    for (s, v) in ["churn", "flood", "failover"]
        .iter()
        .map(|s| (s.to_string(), results[s].clone()))
        .chain(sweeps.map(|v| (format!("churn limit at {}/s", v["rate_per_second"]), v)))
    {
        if v["not_applied_within_60s"].as_u64().unwrap_or(0) > 0 {
            bail!("{s}: updates were lost: {v}");
        }
    }
    if results["replica_exits"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        bail!("replicas exited: {}", results["replica_exits"]);
    }
    Ok(())
}

/// What the main control plane's scenarios give: figures, the cold start's curve and the
/// update latencies per scenario.
struct MainRun {
    results: Value,
    curve: Vec<(f64, usize)>,
    latencies: Vec<(String, Vec<f64>)>,
}

/// Limit, cold start with the flood, churn, failover and idle, on one control plane.
async fn main_cluster(
    args: &Args,
    spec: &VecodexSetSpec,
    cluster: &LocalCluster,
    limit: Value,
) -> anyhow::Result<MainRun> {
    let kubeconfig = cluster.kubeconfig();
    let client = cluster::client_for(&kubeconfig).await?;
    cluster::install_crd(&client).await?;
    let kubelet = kubelet::start(client.clone());
    let tracker = Tracker::start(&client);

    // 1. Cold start, and 5. a tenant flooding its set meanwhile.
    cluster::create_sets(&client, args.sets, args.namespaces, spec).await?;
    cluster::create_namespaces(&client, &["flood".to_owned()]).await?;
    cluster::create_set(&client, "flood", "flooded", spec.clone()).await?;
    let waited = cluster.wait_quiet(Duration::from_secs(300)).await;
    eprintln!("loadtest: control plane quiet after {waited:?}");
    let requests_before = cluster::requests(&client).await?;
    let opts = args.replica_options(&kubeconfig, None);
    let cpu_before = cluster.cpu_seconds();
    let mut replicas = start_replicas(args.replicas, &opts, &cluster.dir, "main")?;
    let started = Instant::now();
    let stop_flood = CancellationToken::new();
    let flooder = flood(client.clone(), tracker.clone(), stop_flood.clone());
    let cold = cold_start(
        cluster,
        &cpu_before,
        &client,
        &tracker,
        &replicas,
        args.sets,
        &args.placement(args.namespaces),
        started,
        &requests_before,
        args.timeout(),
    )
    .await;
    stop_flood.cancel();
    let flood_sent = flooder.await.unwrap_or(0);
    let (mut cold, curve) = cold?;
    let flood_lost = settle(&tracker, "flood", Duration::from_secs(60)).await;
    let flood = latency_summary(&tracker, "flood", flood_sent, &flood_lost);
    eprintln!("loadtest: cold start: {cold}");
    let ratio = cold["sets_per_second"].as_f64().unwrap_or(0.0)
        / limit["sets_per_second"].as_f64().unwrap_or(f64::INFINITY);
    cold["converge_to_limit_ratio"] = json!(ratio);
    // What the ratio would be if CPU were the only limit: the plain client's control-plane CPU
    // per set against the operator run's (control plane and operator together).
    cold["cpu_cost_ratio"] = json!(
        limit["cpu_seconds_per_set"].as_f64().unwrap_or(0.0)
            / cold["cpu_seconds_per_set"]
                .as_f64()
                .unwrap_or(f64::INFINITY)
    );

    // 4. Churn: the sweep's lower rates, then the bar's.
    let mut churner = Churner::default();
    let operator_churn = churner
        .sweep(
            cluster,
            &client,
            &tracker,
            args,
            &args.churn_rates(),
            "churn",
            &replicas,
        )
        .await;
    let churn = operator_churn.last().cloned().unwrap_or_default();
    let churn_limit = churn_limit(&operator_churn, &limit["churn"]);
    let failover_rate = args
        .failover_churn_rate
        .unwrap_or_else(|| default_failover_rate(args, &operator_churn));

    // 6. Failover; the killed replica comes back before the idle measurement.
    let failover = failover(
        &client,
        &tracker,
        &mut churner,
        &mut replicas,
        args,
        failover_rate,
    )
    .await?;
    eprintln!("loadtest: failover: {failover}");
    replicas[0] = Replica::start(
        &opts,
        "main-0-restarted",
        &cluster.dir.join("loadtest-main-0-restarted.log"),
    )?;
    // Shards move back to it (drained hand-over): let that settle before measuring idle.
    tokio::time::sleep(Duration::from_secs(args.lease_seconds * 2)).await;
    tracker
        .wait_converged(args.sets, is_tenant, args.timeout())
        .await?;

    // 3. Idle.
    let idle_before = cluster::write_requests(&client).await?;
    let events_before = cluster::operator_events(&client).await?;
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_writes = cluster::write_requests(&client).await? - idle_before
        + (cluster::operator_events(&client).await? - events_before) as f64;
    let idle_per_minute = idle_writes * 60.0 / args.idle_seconds.max(1) as f64;

    let exits: Vec<String> = replicas
        .iter_mut()
        .filter_map(|r| {
            r.child
                .try_wait()
                .ok()
                .flatten()
                .map(|s| format!("{}: {s}", r.identity))
        })
        .collect();
    let whole_run: Vec<Value> = replicas.iter().map(Replica::stats).collect();
    stop_replicas(&mut replicas);
    tracker.stop();
    kubelet.abort();

    let mut scenarios: Vec<String> = args
        .churn_rates()
        .iter()
        .map(|rate| format!("churn-{rate}"))
        .collect();
    scenarios.extend(["flood", "failover"].map(String::from));
    let latencies = scenarios
        .into_iter()
        .map(|s| {
            let l = tracker.latencies(&s);
            (s, l)
        })
        .collect();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(cluster::repo_root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let results = json!({
        "date": jiff::Timestamp::now().to_string(),
        "machine": machine(),
        "commit": commit,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "parameters": {
            "sets": args.sets, "namespaces": args.namespaces, "replicas": args.replicas,
            "shards": args.shards, "concurrency": args.concurrency,
            "churn_rate": args.churn_rate, "churn_seconds": args.churn_seconds,
            "churn_sweep": args.churn_sweep, "failover_churn_rate": failover_rate,
            "idle_seconds": args.idle_seconds, "lease_seconds": args.lease_seconds,
            "scale_sets": args.scale_sets.unwrap_or(args.sets),
            "scale_out_replicas": args.scale_out_replicas,
            "sampling_ratio": args.sampling_ratio, "apiserver_gogc": args.apiserver_gogc,
            "apiserver_memory_limit": args.apiserver_memory_limit,
        },
        "limit": limit,
        "cold_start": cold,
        "converge_to_limit_ratio": ratio,
        "flood": flood,
        "churn": churn,
        "churn_limit": churn_limit,
        "failover": failover,
        "idle": {"seconds": args.idle_seconds, "write_requests": idle_writes, "write_requests_per_minute": idle_per_minute},
        "whole_run_per_replica": whole_run,
        "replica_exits": exits,
    });
    Ok(MainRun {
        results,
        curve,
        latencies,
    })
}

/// Each bar of the load-test issue with this run's figure.
fn bars(r: &Value, args: &Args) -> Value {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let peak_rss = r["whole_run_per_replica"]
        .as_array()
        .map(|a| a.iter().map(|s| f(&s["peak_rss_mib"])).fold(0.0, f64::max))
        .unwrap_or(f64::NAN);
    let ratio = f(&r["converge_to_limit_ratio"]);
    let idle = f(&r["idle"]["write_requests_per_minute"]);
    let churn = f(&r["churn"]["p99_seconds"]);
    let flood = f(&r["flood"]["p99_seconds"]);
    let failover = f(&r["failover"]["converged_after_kill_seconds"]);
    let failover_bar = args.lease_seconds as f64 + 5.0;
    let imbalance = f(&r["cold_start"]["shares"]["max_over_mean_sets"]);
    let mut bars = vec![
        bar(
            &format!("sets per replica, max/mean ({} replicas)", args.replicas),
            "<= 1.15",
            imbalance,
            imbalance <= 1.15,
        ),
        bar(
            "cold start / plain-client limit",
            ">= 0.8",
            ratio,
            ratio >= 0.8,
        ),
        bar("idle write requests per minute", "0", idle, idle == 0.0),
        bar(
            "peak RSS per replica (MiB)",
            "<= 200",
            peak_rss,
            peak_rss <= 200.0,
        ),
        bar(
            &format!("churn p99 at {}/s (s)", args.churn_rate),
            "<= 1",
            churn,
            churn <= 1.0,
        ),
        bar("tenant under flood p99 (s)", "<= 2", flood, flood <= 2.0),
        bar(
            &format!(
                "failover under {}/s churn: converged after kill (s)",
                r["failover"]["churn_rate_per_second"]
            ),
            &format!("<= lease + 5 = {failover_bar}"),
            failover,
            failover <= failover_bar,
        ),
    ];
    if let Some(cost) = r["tracing"]["cost"].as_f64() {
        bars.push(bar(
            &format!("tracing cost at sampling {}", args.sampling_ratio),
            "<= 0.10",
            cost,
            cost <= 0.10,
        ));
    }
    json!(bars)
}

fn summary(r: &Value, args: &Args) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!("scenario      | figure");
    println!("--------------|------------------------------------------------------------");
    println!(
        "limit         | {:.1} sets/s (plain client, 8 writes/set)",
        f(&r["limit"]["sets_per_second"])
    );
    let c = &r["cold_start"];
    println!(
        "cold start    | {:.1} sets/s over {:.1} s, {:.1} reconciles/s, {:.1} writes/set",
        f(&c["sets_per_second"]),
        f(&c["seconds"]),
        f(&c["reconciles_per_second"]),
        f(&c["write_requests_per_set"])
    );
    println!(
        "ratio         | {:.2} of the plain client's limit",
        f(&r["converge_to_limit_ratio"])
    );
    println!(
        "CPU per set   | plain client: control plane {:.3} s; operator run: {:.3} s (control plane and operator), ratio {:.2}",
        f(&r["limit"]["cpu_seconds_per_set"]),
        f(&c["cpu_seconds_per_set"]),
        f(&c["cpu_cost_ratio"])
    );
    for s in r["whole_run_per_replica"].as_array().into_iter().flatten() {
        println!(
            "replica       | {}: peak RSS {:.1} MiB, {:.1} CPU s",
            s["identity"].as_str().unwrap_or(""),
            f(&s["peak_rss_mib"]),
            f(&s["cpu_seconds"])
        );
    }
    for (name, s) in [
        ("flood", "flood"),
        ("churn", "churn"),
        ("failover", "failover"),
    ] {
        let v = &r[s];
        println!(
            "{name:<13} | {} updates: p50 {:.3} s, p95 {:.3} s, p99 {:.3} s, {} not applied",
            v["updates"],
            f(&v["p50_seconds"]),
            f(&v["p95_seconds"]),
            f(&v["p99_seconds"]),
            v["not_applied_within_60s"]
        );
    }
    for row in r["churn_limit"]["rates"].as_array().into_iter().flatten() {
        println!(
            "churn limit   | {}/s: p99 operator {:.3} s, plain client {:.3} s",
            row["rate_per_second"],
            f(&row["operator_p99_seconds"]),
            f(&row["plain_p99_seconds"])
        );
    }
    println!(
        "churn limit   | highest rate with p99 <= 1 s: operator {}/s, plain client {}/s",
        r["churn_limit"]["operator_highest_rate_within_p99_1s"],
        r["churn_limit"]["plain_highest_rate_within_p99_1s"]
    );
    println!(
        "failover      | converged {:.1} s after kill -9 (lease {} s, churn {}/s)",
        f(&r["failover"]["converged_after_kill_seconds"]),
        args.lease_seconds,
        r["failover"]["churn_rate_per_second"]
    );
    println!(
        "idle          | {:.1} write requests/min",
        f(&r["idle"]["write_requests_per_minute"])
    );
    let shares = &r["cold_start"]["shares"];
    for s in shares["per_replica"].as_array().into_iter().flatten() {
        println!(
            "share         | {}: {} shards, {} sets ({:.1} %), {} reconciles, {:.2} CPU ms per reconcile, queue wait p99 {} s",
            s["identity"].as_str().unwrap_or(""),
            s["shards"],
            s["sets"],
            f(&s["share_of_sets"]) * 100.0,
            s["reconciles"],
            f(&s["cpu_ms_per_reconcile"]),
            s["queue_wait_p99_seconds"]
        );
    }
    println!(
        "imbalance     | max/mean of sets per replica {:.3} (scheme {})",
        f(&shares["max_over_mean_sets"]),
        shares["scheme"].as_str().unwrap_or("")
    );
    if r["scale_out"].is_object() {
        for run in r["scale_out"]["runs"].as_array().into_iter().flatten() {
            println!(
                "scale-out     | {} replicas: {:.1} sets/s (x{:.2} of 1), sets max/mean {:.3}",
                run["replicas"],
                f(&run["sets_per_second"]),
                f(&run["throughput_vs_one_replica"]),
                f(&run["shares"]["max_over_mean_sets"])
            );
        }
        println!(
            "tracing       | off {:.1} sets/s, on ({}) {:.1} sets/s: cost {:.1} %",
            f(&r["tracing"]["off"]["sets_per_second"]),
            args.sampling_ratio,
            f(&r["tracing"]["on"]["sets_per_second"]),
            f(&r["tracing"]["cost"]) * 100.0
        );
    }
    for b in r["bars"].as_array().into_iter().flatten() {
        println!(
            "bar           | {}: {:.3} (wanted {}) {}",
            b["bar"].as_str().unwrap_or(""),
            f(&b["value"]),
            b["wanted"].as_str().unwrap_or(""),
            if b["met"].as_bool() == Some(true) {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    println!(
        "results       | {}",
        args.out.join("results.json").display()
    );
}
