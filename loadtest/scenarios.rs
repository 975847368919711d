//! The scenarios run against the operator: cold start (and the fresh control planes of
//! scale-out and tracing cost) and failover, with the replica helpers they share.

use std::path::Path;
use std::time::{Duration, Instant};

use kube::Client;
use vecodex_operator::crd::VecodexSetSpec;

use crate::args::Args;
use crate::churn::{Churner, latency_summary, settle};
use crate::cluster::is_tenant;
use crate::cluster::{LocalCluster, Otlp, Replica, ReplicaOptions};
use crate::machine::CpuMark;
use crate::results::{ChurnRun, ColdStart, ControlPlaneCpu, Failover, ReplicaStats};
use crate::track::{Tracker, percentile};
use crate::{cluster, shared, shares};

/// Starts `n` replicas; logs go next to the cluster's.
pub(crate) fn start_replicas(
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

pub(crate) async fn reconciles(replicas: &[Replica]) -> f64 {
    let mut total = 0.0;
    for r in replicas {
        total += r.reconciles().await;
    }
    total
}

pub(crate) fn stop_replicas(replicas: &mut [Replica]) {
    for r in replicas.iter_mut() {
        r.stop(libc::SIGTERM);
    }
}

/// The write requests among a reading of [`cluster::requests`] (see `write_requests`).
pub(crate) fn write_total(requests: &std::collections::BTreeMap<String, f64>) -> f64 {
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

/// Where a run's sets live: `namespaces` namespaces (see `cluster::place`), hashed by
/// `scheme` into shards.
pub(crate) struct Placement {
    pub(crate) namespaces: usize,
    pub(crate) scheme: vecodex_operator::shard::Scheme,
}

impl Placement {
    /// Sets spread over `namespaces`, hashed into the run's shards.
    pub fn of(args: &Args, namespaces: usize) -> Placement {
        Placement {
            namespaces,
            scheme: vecodex_operator::shard::Scheme::new(Default::default(), args.shards),
        }
    }
}

/// What a cold start measures from, read just before its replicas start.
pub(crate) struct Before {
    pub cpu: ControlPlaneCpu,
    pub busy: CpuMark,
    pub requests: std::collections::BTreeMap<String, f64>,
}

impl Before {
    pub async fn read(cluster: &LocalCluster, client: &Client) -> anyhow::Result<Before> {
        Ok(Before {
            requests: cluster::requests(client).await?,
            cpu: cluster.cpu_seconds(),
            busy: CpuMark::now(),
        })
    }
}

/// A cold start: `replicas` start over `sets` existing sets; figures until all converged.
/// Besides wall-clock time it reports the CPU seconds per set that the control plane and the
/// operator spent, which other work on a shared machine does not distort.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn cold_start(
    cluster: &LocalCluster,
    before: &Before,
    client: &Client,
    tracker: &Tracker,
    replicas: &[Replica],
    sets: usize,
    placement: &Placement,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<(ColdStart, Vec<(f64, usize)>)> {
    let Before {
        cpu: cpu_before,
        busy: busy_before,
        requests: requests_before,
    } = before;
    let started_to_wait = started.elapsed().as_secs_f64();
    let curve = tracker.wait_converged(sets, is_tenant, timeout).await?;
    let secs = started.elapsed().as_secs_f64();
    let cpu_busy = busy_before.busy();
    // The first sample with `n` sets converged, as a fraction of the run.
    let reached = |n: usize| {
        curve
            .iter()
            .find(|(_, done)| *done >= n.max(1))
            .map_or(f64::NAN, |(at, _)| (at + started_to_wait) / secs)
    };
    let (first_percent_at, half_at) = (reached(sets.div_ceil(100)), reached(sets.div_ceil(2)));
    let writes = cluster::write_requests(client).await? - write_total(requests_before);
    let requests = cluster::requests_delta(requests_before, &cluster::requests(client).await?);
    let reconciles = reconciles(replicas).await;
    let cpu = cluster.cpu_seconds().since(cpu_before);
    let per_replica: Vec<ReplicaStats> = replicas.iter().map(Replica::stats).collect();
    let operator_cpu: f64 = per_replica.iter().map(|r| r.cpu_seconds).sum();
    let per_set = (cpu.total + operator_cpu) / sets.max(1) as f64;
    let set_namespaces: Vec<String> = (0..sets)
        .map(|i| cluster::place(i, placement.namespaces).0)
        .collect();
    let shares = shares::shares(client, replicas, placement.scheme, &set_namespaces).await?;
    Ok((
        ColdStart {
            sets,
            replicas: replicas.len(),
            seconds: secs,
            sets_per_second: sets as f64 / secs,
            reconciles,
            reconciles_per_second: reconciles / secs,
            write_requests: writes,
            write_requests_per_set: writes / sets.max(1) as f64,
            requests,
            control_plane_cpu_seconds: cpu,
            operator_cpu_seconds: operator_cpu,
            cpu_seconds_per_set: per_set,
            per_replica,
            shares,
            converge_to_limit_ratio: None,
            cpu_cost_ratio: None,
            cpu_busy,
            first_percent_at,
            half_at,
        },
        curve,
    ))
}

/// Scenario 6: kill -9 of one replica during churn; churn goes on through the outage (one
/// lease duration); time from the kill until every set is converged and every update applied.
pub(crate) async fn failover(
    client: &Client,
    tracker: &Tracker,
    churner: &mut Churner,
    replicas: &mut [Replica],
    args: &Args,
    rate: f64,
) -> anyhow::Result<Failover> {
    let gc_before = cluster::collect_apiserver_garbage(client).await;
    let before = 5.0_f64.min(args.churn_seconds as f64);
    let mut sent = churner
        .run(client, tracker, args, rate, "failover", before)
        .await;
    let victim = replicas[0].identity.clone();
    let lost_shards: Vec<u32> = shares::shard_holders(client, args.shards)
        .await?
        .iter()
        .enumerate()
        .filter(|(_, h)| h.as_ref().is_some_and(|h| h.identity == victim))
        .map(|(shard, _)| shard as u32)
        .collect();
    replicas[0].stop(libc::SIGKILL);
    let killed = Instant::now();
    let busy_before = CpuMark::now();
    let killed_at = jiff::Timestamp::now();
    // With no other replica nobody takes over until the victim restarts: no takeover to time.
    let takeovers = (replicas.len() > 1).then(|| {
        tokio::spawn(takeovers(
            client.clone(),
            args.shards,
            victim.clone(),
            lost_shards.clone(),
            killed_at,
            args.timeout(),
        ))
    });
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
    let cpu_busy = busy_before.busy();
    let lost = settle(tracker, "failover", Duration::from_secs(60)).await;
    let mut takeover = match takeovers {
        Some(t) => t.await??,
        None => Vec::new(),
    };
    takeover.sort_by(f64::total_cmp);
    // Updates sent after the kill: the ones the outage could delay.
    let mut outage: Vec<f64> = tracker
        .applied("failover")
        .iter()
        .filter(|a| {
            a.sent
                .parse::<jiff::Timestamp>()
                .is_ok_and(|sent| sent >= killed_at)
        })
        .map(|a| a.seconds)
        .collect();
    outage.sort_by(f64::total_cmp);
    Ok(Failover {
        latency: latency_summary(tracker, "failover", sent, &lost),
        killed: victim,
        churn_rate_per_second: rate,
        lease_seconds: args.lease_seconds,
        converged_after_kill_seconds: recovered,
        lost_shards: lost_shards.len(),
        takeover_p50_seconds: percentile(&takeover, 0.5),
        takeover_max_seconds: takeover.last().copied().unwrap_or(f64::NAN),
        outage_updates: outage.len(),
        outage_update_max_seconds: outage.last().copied().unwrap_or(f64::NAN),
        cpu_busy,
        apiserver_gc_cycles: gc_cycles_since(client, gc_before).await,
    })
}

/// Each lost shard's takeover: seconds from `killed_at` until another replica acquired its
/// Lease (the Lease's acquireTime, which the new holder writes in the acquiring update: its
/// first write as the holder). Reads the Leases every 200 ms until every shard has a new
/// holder, at most `timeout`.
async fn takeovers(
    client: Client,
    shards: u32,
    victim: String,
    lost: Vec<u32>,
    killed_at: jiff::Timestamp,
    timeout: Duration,
) -> anyhow::Result<Vec<f64>> {
    let deadline = Instant::now() + timeout;
    let mut taken: Vec<Option<f64>> = vec![None; lost.len()];
    while taken.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            anyhow::bail!("failover: shards of {victim} not taken over after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(holders) = shares::shard_holders(&client, shards).await else {
            continue;
        };
        for (i, &shard) in lost.iter().enumerate() {
            if let Some(h) = &holders[shard as usize]
                && h.identity != victim
                && taken[i].is_none()
            {
                let acquired = h.acquired.unwrap_or_else(jiff::Timestamp::now);
                taken[i] = Some(acquired.duration_since(killed_at).as_secs_f64());
            }
        }
    }
    Ok(taken.into_iter().flatten().collect())
}

/// The API server's GC cycles since `before` (from `collect_apiserver_garbage`), or none
/// with the reason printed when either count could not be read.
pub(crate) async fn gc_cycles_since(client: &Client, before: anyhow::Result<f64>) -> Option<f64> {
    match (before, cluster::gc_cycles(client).await) {
        (Ok(before), Ok(after)) => Some(after - before),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("loadtest: API server GC cycles unknown: {e:#}");
            None
        }
    }
}

/// The failover's churn rate when `--failover-churn-rate` is not given: the highest rate of
/// the sweep (below `--churn-rate`) the operator kept within a p99 of 1 s, else the lowest
/// measured. Not `--churn-rate` itself: that is the stress rate, at which the machine has no
/// headroom left to absorb the backlog of a Lease duration's outage on top of the ongoing
/// churn, so the scenario would measure the backlog and not the failover.
pub(crate) fn default_failover_rate(args: &Args, operator_churn: &[ChurnRun]) -> f64 {
    let lowest = args.churn_rates().into_iter().fold(f64::INFINITY, f64::min);
    operator_churn
        .iter()
        .filter(|c| c.latency.p99_seconds <= 1.0)
        .map(|c| c.rate_per_second)
        .filter(|&rate| rate < args.churn_rate)
        .reduce(f64::max)
        .unwrap_or(lowest)
}

/// A fresh control plane as every run on one starts: the CRD, the simulated kubelet, the
/// tracker's watches, and the sets created.
pub(crate) struct Fresh<'a> {
    pub cluster: &'a LocalCluster,
    pub client: Client,
    pub tracker: Tracker,
}

/// Runs `run` on a fresh control plane with `sets` sets in `namespaces` namespaces (see
/// [`Fresh`]). The kubelet, the tracker and the control plane stop afterwards, whatever
/// `run` returns.
pub(crate) async fn on_fresh_control_plane<T>(
    args: &Args,
    spec: &VecodexSetSpec,
    sets: usize,
    namespaces: usize,
    run: impl AsyncFnOnce(&Fresh<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let cluster = LocalCluster::up(&args.control_plane())?;
    let result = async {
        let client = cluster::client_for(&cluster.kubeconfig()).await?;
        cluster::install_crd(&client).await?;
        let kubelet = args.simulator(client.clone());
        let fresh = Fresh {
            cluster: &cluster,
            tracker: Tracker::start(&client),
            client,
        };
        let result = match cluster::create_sets(&fresh.client, sets, namespaces, spec).await {
            Ok(()) => run(&fresh).await,
            Err(e) => Err(e),
        };
        fresh.tracker.stop();
        kubelet.abort();
        result
    }
    .await;
    cluster.down();
    result
}

/// On a fresh control plane with `sets` sets (their namespaces in the main run's
/// proportion), once it is quiet: starts `replicas` replicas labelled `label`, runs `run` with
/// them, what was read just before they started and when they did, and stops them.
pub(crate) async fn with_fresh_replicas<T>(
    args: &Args,
    spec: &VecodexSetSpec,
    label: &str,
    replicas: usize,
    sets: usize,
    otlp: Option<&Otlp>,
    run: impl AsyncFnOnce(&Fresh<'_>, &[Replica], &Before, Instant) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let namespaces = fresh_namespaces(args, sets);
    eprintln!("loadtest: {label}: fresh control plane, {sets} sets, {replicas} replicas");
    on_fresh_control_plane(args, spec, sets, namespaces, async |fresh: &Fresh<'_>| {
        fresh.cluster.wait_quiet(Duration::from_secs(120)).await;
        let before = Before::read(fresh.cluster, &fresh.client).await?;
        let kubeconfig = fresh.cluster.kubeconfig();
        let opts = args.replica_options(&kubeconfig, otlp);
        let mut running = start_replicas(replicas, &opts, &fresh.cluster.dir, label)?;
        let result = run(fresh, &running, &before, Instant::now()).await;
        stop_replicas(&mut running);
        result
    })
    .await
}

/// The namespaces of a fresh control plane's `sets` sets: the main run's proportion.
pub(crate) fn fresh_namespaces(args: &Args, sets: usize) -> usize {
    (args.namespaces * sets / args.sets.max(1)).max(1)
}

/// A cold start of `replicas` replicas against `sets` sets on a fresh control plane.
pub(crate) async fn fresh_cold_start(
    args: &Args,
    spec: &VecodexSetSpec,
    label: &str,
    replicas: usize,
    sets: usize,
    otlp: Option<&Otlp>,
) -> anyhow::Result<(ColdStart, Vec<(f64, usize)>)> {
    let placement = Placement::of(args, fresh_namespaces(args, sets));
    with_fresh_replicas(
        args,
        spec,
        label,
        replicas,
        sets,
        otlp,
        async |fresh: &Fresh<'_>, running: &[Replica], before: &Before, started: Instant| {
            cold_start(
                fresh.cluster,
                before,
                &fresh.client,
                &fresh.tracker,
                running,
                sets,
                &placement,
                started,
                args.timeout(),
            )
            .await
        },
    )
    .await
}
