//! Churn: spec changes at a fixed rate, each tracked until its child has the new spec, by
//! the operator or by the plain client; and the flood of one tenant during a cold start.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use vecodex_operator::crd::VecodexSet;

use crate::args::Args;
use crate::cluster::{LocalCluster, Replica};
use crate::machine::CpuMark;
use crate::plain::PlainReconciler;
use crate::results::{ChurnLimit, ChurnRate, ChurnRun, Latency, SetLatency, one_line};
use crate::scenarios::{gc_cycles_since, reconciles};
use crate::track::{Tracker, percentile};
use crate::{cluster, shared};

/// Spec updates: each changes a set's searcher replicas to a value it did not have, so its
/// Deployment shows when the update is applied.
#[derive(Default)]
pub(crate) struct Churner {
    pub(crate) current: HashMap<String, i32>,
    pub(crate) n: usize,
    /// With no operator: the plain client makes the update's writes itself.
    pub(crate) plain: Option<PlainReconciler>,
}

impl Churner {
    pub(crate) fn plain(client: &Client, shards: u32) -> Self {
        Churner {
            plain: Some(PlainReconciler::new(client, shards)),
            ..Churner::default()
        }
    }

    /// Sends one update to `ns/name` (without waiting for the answer) and expects it.
    pub(crate) fn update(
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
        // The set's own status is followed for the operator only: the plain client writes
        // observedGeneration but no conditions.
        let set = format!("{ns}/{name}");
        let token = self
            .plain
            .is_none()
            .then(|| tracker.expect_set(&set, scenario));
        let api: Api<VecodexSet> = Api::namespaced(client.clone(), ns);
        let tracker = tracker.clone();
        let name = name.to_owned();
        let plain = self.plain.clone();
        tokio::spawn(async move {
            let patch = json!({"spec": {"searcher": {"replicas": want}}});
            let answer = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            if let Some(token) = token {
                tracker.update_answered(
                    &set,
                    token,
                    answer.as_ref().ok().and_then(|s| s.metadata.generation),
                );
            }
            let sent = match answer {
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
    pub(crate) async fn run(
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
    pub(crate) async fn sweep(
        &mut self,
        cluster: &LocalCluster,
        client: &Client,
        tracker: &Tracker,
        args: &Args,
        rates: &[f64],
        prefix: &str,
        replicas: &[Replica],
    ) -> Vec<ChurnRun> {
        let mut out = Vec::new();
        let operator_cpu = || -> f64 { replicas.iter().map(|r| r.stats().cpu_seconds).sum() };
        let own_cpu = || cluster::proc_stats(std::process::id()).map_or(0.0, |(_, cpu)| cpu);
        for &rate in rates {
            // Each rate starts on a quiet control plane: after the cold start the replicas
            // list their standby shards' children, which is not churn's to pay for.
            cluster.wait_quiet(Duration::from_secs(120)).await;
            let gc_before = cluster::collect_apiserver_garbage(client).await;
            let scenario = format!("{prefix}-{rate}");
            let cpu_before = cluster.cpu_seconds();
            let busy_before = CpuMark::now();
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
            let latency = latency_summary(tracker, &scenario, sent, &lost);
            let cpu_busy = busy_before.busy();
            let control_plane_cpu_seconds = cluster.cpu_seconds().since(&cpu_before);
            let loadtest_cpu_seconds = own_cpu() - own_before;
            let apiserver_gc_cycles = gc_cycles_since(client, gc_before).await;
            let (operator_cpu_seconds, reconciles) = if replicas.is_empty() {
                (None, None)
            } else {
                (
                    Some(operator_cpu() - operator_before),
                    Some(reconciles(replicas).await - reconciles_before),
                )
            };
            // Every request until the updates landed, by verb and resource: what an update
            // costs each side.
            let requests = cluster::requests(client).await.unwrap_or_default();
            let requests = cluster::requests_delta(&requests_before, &requests);
            let status_writes: f64 = requests
                .iter()
                .filter(|(k, _)| shared::is_write(k) && k.ends_with(" vecodexsets/status"))
                .map(|(_, n)| n)
                .sum();
            let summary = ChurnRun {
                status_writes_per_update: status_writes / latency.updates.max(1) as f64,
                cpu_busy,
                latency,
                rate_per_second: rate,
                seconds: args.churn_seconds,
                control_plane_cpu_seconds,
                loadtest_cpu_seconds,
                apiserver_gc_cycles,
                operator_cpu_seconds,
                reconciles,
                requests,
            };
            eprintln!("loadtest: {scenario}: {}", one_line(&summary));
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
pub(crate) fn churn_limit(operator: &[ChurnRun], plain: &[ChurnRun]) -> ChurnLimit {
    let highest = |runs: &[ChurnRun]| {
        runs.iter()
            .filter(|r| r.latency.p99_seconds <= 1.0)
            .map(|r| r.rate_per_second)
            .fold(0.0, f64::max)
    };
    let rates = operator
        .iter()
        .zip(plain)
        .map(|(o, p)| ChurnRate {
            rate_per_second: o.rate_per_second,
            operator_p99_seconds: o.latency.p99_seconds,
            plain_p99_seconds: p.latency.p99_seconds,
            operator_p50_seconds: o.latency.p50_seconds,
            plain_p50_seconds: p.latency.p50_seconds,
            operator_status_observed_p50_seconds: o.latency.status_observed.p50_seconds,
            operator_status_observed_p99_seconds: o.latency.status_observed.p99_seconds,
            operator_status_ready_p50_seconds: o.latency.status_ready.p50_seconds,
            operator_status_ready_p99_seconds: o.latency.status_ready.p99_seconds,
            operator_status_writes_per_update: o.status_writes_per_update,
            operator_control_plane_cpu_seconds: o.control_plane_cpu_seconds.total,
            plain_control_plane_cpu_seconds: p.control_plane_cpu_seconds.total,
            operator_cpu_seconds: o.operator_cpu_seconds,
            reconciles: o.reconciles,
            operator_loadtest_cpu_seconds: o.loadtest_cpu_seconds,
            plain_loadtest_cpu_seconds: p.loadtest_cpu_seconds,
        })
        .collect();
    ChurnLimit {
        rates,
        operator_highest_rate_within_p99_1s: highest(operator),
        plain_highest_rate_within_p99_1s: highest(plain),
        operator: operator.to_vec(),
    }
}

/// Waits up to `limit` for a scenario's updates to land and their sets to report them
/// ready; returns the updates whose Deployment did not get them.
pub(crate) async fn settle(tracker: &Tracker, scenario: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    while (!tracker.pending(scenario).is_empty() || tracker.sets_pending(scenario) > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracker.pending(scenario)
}

pub(crate) fn latency_summary(
    tracker: &Tracker,
    scenario: &str,
    sent: usize,
    lost: &[String],
) -> Latency {
    let l = tracker.latencies(scenario);
    let (observed, ready) = tracker.set_latencies(scenario);
    Latency {
        updates: sent,
        observed: l.len(),
        not_applied_within_60s: lost.len(),
        not_applied: lost.to_vec(),
        p50_seconds: percentile(&l, 0.50),
        p95_seconds: percentile(&l, 0.95),
        p99_seconds: percentile(&l, 0.99),
        max_seconds: l.last().copied().unwrap_or(f64::NAN),
        slowest: tracker.slowest(scenario, 10),
        status_observed: SetLatency::of(&observed),
        status_ready: SetLatency::of(&ready),
        sets_not_ready_within_60s: tracker.sets_pending(scenario),
    }
}

/// Scenario 5: one set in its own namespace changes every second from the moment the
/// operator first converged it until `stop`.
pub(crate) fn flood(
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
