//! The figures of a run, typed: what `results.json` holds, field for field. `tables.py` and
//! the READMEs read these names, so a field is renamed only together with them. A figure
//! that could not be measured is `NaN` or `None`, and both are written as `null`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::track::{Applied, percentile};

/// Requests by `verb resource`, as the API server counted them.
pub type Requests = BTreeMap<String, f64>;

/// A figure as one line of JSON, for the progress log: a run that fails later writes no
/// `results.json`.
pub fn one_line(figure: &impl Serialize) -> String {
    serde_json::to_string(figure).unwrap_or_default()
}

/// The whole run.
#[derive(Serialize)]
pub struct Results {
    pub date: String,
    pub machine: Machine,
    pub commit: String,
    pub build: &'static str,
    pub parameters: Parameters,
    pub limit: Limit,
    pub cold_start: ColdStart,
    pub converge_to_limit_ratio: f64,
    pub flood: Latency,
    pub churn: ChurnRun,
    pub churn_limit: ChurnLimit,
    pub failover: Failover,
    pub idle: Idle,
    pub whole_run_per_replica: Vec<ReplicaStats>,
    pub replica_exits: Vec<String>,
    /// Absent with `--skip-fresh`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_out: Option<ScaleOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    pub memory: Option<Memory>,
    /// The headline figures over `--trials` trials, the main run's first.
    pub trials: Repeats,
    pub bars: Vec<Bar>,
}

/// The machine the run measured on.
#[derive(Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
}

/// The command line that shaped the run.
#[derive(Serialize)]
pub struct Parameters {
    pub sets: usize,
    pub namespaces: usize,
    pub replicas: usize,
    pub shards: u32,
    pub concurrency: usize,
    pub plain_concurrency: Vec<usize>,
    pub churn_rate: f64,
    pub churn_seconds: u64,
    pub churn_sweep: Vec<f64>,
    pub failover_churn_rate: f64,
    pub idle_seconds: u64,
    pub lease_seconds: u64,
    pub trials: usize,
    pub warm_standby: bool,
    pub scale_sets: usize,
    pub scale_out_replicas: Vec<usize>,
    pub sampling_ratio: f64,
    pub profile: crate::profile::Profile,
    pub apiserver_gogc: u32,
    pub apiserver_memory_limit: String,
    /// The full profile's node simulator.
    pub sim_nodes: usize,
    pub pod_ready_seconds: f64,
}

/// CPU seconds of each control-plane process, and their sum.
#[derive(Clone, Copy, Default, Serialize)]
pub struct ControlPlaneCpu {
    #[serde(rename = "kube-apiserver")]
    pub apiserver: f64,
    pub etcd: f64,
    #[serde(rename = "kube-controller-manager")]
    pub controller_manager: f64,
    pub total: f64,
}

impl ControlPlaneCpu {
    pub fn new(apiserver: f64, etcd: f64, controller_manager: f64) -> Self {
        ControlPlaneCpu {
            apiserver,
            etcd,
            controller_manager,
            total: apiserver + etcd + controller_manager,
        }
    }

    /// What each process used between `before` and `self`.
    pub fn since(&self, before: &ControlPlaneCpu) -> ControlPlaneCpu {
        ControlPlaneCpu::new(
            self.apiserver - before.apiserver,
            self.etcd - before.etcd,
            self.controller_manager - before.controller_manager,
        )
    }
}

/// How busy the machine was during a phase: the fraction of all its cores' time spent
/// busy (every process), and the part of it this load-test process used (the churner, the
/// watches that time convergence, the kubelet simulator and the plain client).
#[derive(Clone, Copy, Default, Serialize)]
pub struct Busy {
    pub machine: f64,
    pub loadtest: f64,
}

/// The plain client's cold starts (the limit: the fastest of them) and its churn sweep.
#[derive(Serialize)]
pub struct Limit {
    #[serde(flatten)]
    pub best: LimitRun,
    pub writes_per_set: u32,
    /// Every concurrency of the sweep, each on a control plane of its own.
    pub sweep: Vec<LimitRun>,
    pub churn: Vec<ChurnRun>,
}

/// One cold start of the plain client, at `concurrency` sets in flight.
#[derive(Clone, Serialize)]
pub struct LimitRun {
    pub concurrency: usize,
    pub sets: usize,
    pub seconds: f64,
    pub sets_per_second: f64,
    pub retries: u64,
    pub requests: Requests,
    pub control_plane_cpu_seconds: ControlPlaneCpu,
    pub cpu_seconds_per_set: f64,
    pub cpu_busy: Busy,
}

/// A process's peak RSS and CPU so far.
#[derive(Clone, Serialize)]
pub struct ReplicaStats {
    pub identity: String,
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
}

/// One cold start: replicas started over existing sets, until every set converged.
#[derive(Clone, Serialize)]
pub struct ColdStart {
    pub sets: usize,
    pub replicas: usize,
    pub seconds: f64,
    pub sets_per_second: f64,
    pub reconciles: f64,
    pub reconciles_per_second: f64,
    pub write_requests: f64,
    pub write_requests_per_set: f64,
    pub requests: Requests,
    pub control_plane_cpu_seconds: ControlPlaneCpu,
    pub operator_cpu_seconds: f64,
    pub cpu_seconds_per_set: f64,
    pub per_replica: Vec<ReplicaStats>,
    pub shares: Shares,
    /// The main cold start only: its sets per second over the plain client's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub converge_to_limit_ratio: Option<f64>,
    /// The main cold start only: the plain client's CPU per set over this run's (control
    /// plane and operator together), the ratio if CPU were the only limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_cost_ratio: Option<f64>,
    pub cpu_busy: Busy,
    /// When the first 1 % of the sets, and half of them, had converged, as fractions of
    /// `seconds` (from the replicas' start).
    pub first_percent_at: f64,
    pub half_at: f64,
}

/// How the sets were shared among the replicas of a cold start.
#[derive(Clone, Serialize)]
pub struct Shares {
    pub scheme: String,
    pub per_replica: Vec<Share>,
    pub sets_unheld: usize,
    pub max_over_mean_sets: f64,
    pub min_over_mean_sets: f64,
}

/// One replica's share.
#[derive(Clone, Serialize)]
pub struct Share {
    pub identity: String,
    pub shards: usize,
    pub sets: usize,
    pub share_of_sets: f64,
    pub reconciles: f64,
    pub share_of_reconciles: f64,
    pub cpu_seconds: f64,
    pub cpu_ms_per_reconcile: f64,
    pub queue_wait_p99_seconds: Option<f64>,
    pub queue_wait_p99_above_top_bucket: bool,
    pub peak_rss_mib: f64,
}

/// Update latencies of one scenario: PATCH of the set to its Deployment's new spec.
#[derive(Clone, Default, Serialize)]
pub struct Latency {
    pub updates: usize,
    pub observed: usize,
    pub not_applied_within_60s: usize,
    pub not_applied: Vec<String>,
    pub p50_seconds: f64,
    pub p95_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
    /// The tail, with the wall-clock time each update was sent, to look it up in the
    /// replicas' logs (`--log-level info`) and the API server's slow-request traces.
    pub slowest: Vec<Applied>,
    /// From the PATCH to the set's `status.observedGeneration` reaching the update's
    /// generation: what `kubectl wait` on observedGeneration, or a GitOps tool, waits for.
    pub status_observed: SetLatency,
    /// From the PATCH to the set's `Ready=True` for the update's generation.
    pub status_ready: SetLatency,
    /// Updates whose set had not reported them ready 60 s after the last one was sent.
    pub sets_not_ready_within_60s: usize,
}

/// One set-level latency of a scenario's updates. An update overtaken by the next one of
/// the same set before it was ready is not counted.
#[derive(Clone, Default, Serialize)]
pub struct SetLatency {
    pub updates: usize,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
}

impl SetLatency {
    /// From sorted latencies.
    pub fn of(sorted: &[f64]) -> SetLatency {
        SetLatency {
            updates: sorted.len(),
            p50_seconds: percentile(sorted, 0.50),
            p99_seconds: percentile(sorted, 0.99),
            max_seconds: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// One rate of a churn sweep, by the operator or by the plain client.
#[derive(Clone, Default, Serialize)]
pub struct ChurnRun {
    #[serde(flatten)]
    pub latency: Latency,
    pub rate_per_second: f64,
    pub seconds: u64,
    /// Status writes of the run (by whoever writes sets' status) per update sent.
    pub status_writes_per_update: f64,
    pub cpu_busy: Busy,
    pub control_plane_cpu_seconds: ControlPlaneCpu,
    /// This process: the churner, the watches that time it, the kubelet simulator and the
    /// plain client.
    pub loadtest_cpu_seconds: f64,
    pub apiserver_gc_cycles: Option<f64>,
    /// The operator's runs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_cpu_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconciles: Option<f64>,
    /// Every request until the updates landed: what an update costs each side.
    pub requests: Requests,
}

/// The operator's churn sweep against the plain client's, rate by rate.
#[derive(Serialize)]
pub struct ChurnLimit {
    pub rates: Vec<ChurnRate>,
    pub operator_highest_rate_within_p99_1s: f64,
    pub plain_highest_rate_within_p99_1s: f64,
    /// Each operator run in full; the plain client's are in `limit.churn`.
    pub operator: Vec<ChurnRun>,
}

/// One rate of both sweeps side by side.
#[derive(Serialize)]
pub struct ChurnRate {
    pub rate_per_second: f64,
    pub operator_p99_seconds: f64,
    pub plain_p99_seconds: f64,
    pub operator_p50_seconds: f64,
    pub plain_p50_seconds: f64,
    /// The operator's set-level latencies (see [`Latency`]) and its status writes.
    pub operator_status_observed_p50_seconds: f64,
    pub operator_status_observed_p99_seconds: f64,
    pub operator_status_ready_p50_seconds: f64,
    pub operator_status_ready_p99_seconds: f64,
    pub operator_status_writes_per_update: f64,
    pub operator_control_plane_cpu_seconds: f64,
    pub plain_control_plane_cpu_seconds: f64,
    pub operator_cpu_seconds: Option<f64>,
    pub reconciles: Option<f64>,
    pub operator_loadtest_cpu_seconds: f64,
    pub plain_loadtest_cpu_seconds: f64,
}

/// kill -9 of a replica during churn.
#[derive(Serialize)]
pub struct Failover {
    #[serde(flatten)]
    pub latency: Latency,
    pub killed: String,
    pub churn_rate_per_second: f64,
    pub lease_seconds: u64,
    /// From the kill until every set converged and every update applied.
    pub converged_after_kill_seconds: f64,
    /// Shards the killed replica held.
    pub lost_shards: usize,
    /// From the kill until another replica acquired a lost shard's Lease (its acquireTime),
    /// over the lost shards.
    pub takeover_p50_seconds: f64,
    pub takeover_max_seconds: f64,
    /// Updates sent after the kill, and the longest of them from PATCH to applied.
    pub outage_updates: usize,
    pub outage_update_max_seconds: f64,
    /// From the kill until every set converged.
    pub cpu_busy: Busy,
    pub apiserver_gc_cycles: Option<f64>,
}

/// Writes while nothing changed.
#[derive(Serialize)]
pub struct Idle {
    pub seconds: u64,
    pub write_requests: f64,
    pub write_requests_per_minute: f64,
}

/// Cold starts of the same sets with each replica count, each on a fresh control plane.
#[derive(Serialize)]
pub struct ScaleOut {
    pub sets: usize,
    pub runs: Vec<ScaleRun>,
}

#[derive(Serialize)]
pub struct ScaleRun {
    pub replicas: usize,
    pub sets_per_second: f64,
    pub throughput_vs_one_replica: f64,
    pub shares: Shares,
    pub cold_start: ColdStart,
}

/// Cold starts with tracing off and on, pooled per setting.
#[derive(Serialize)]
pub struct Tracing {
    pub sampling_ratio: f64,
    pub collector_batches: usize,
    /// 1 - (sets per second with tracing) / (sets per second without).
    pub cost: f64,
    pub off: Pooled,
    pub on: Pooled,
}

/// One figure over several trials; the median is the one the bars judge.
#[derive(Clone, Serialize)]
pub struct Trials {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Each trial's value, in the order run.
    pub values: Vec<f64>,
}

impl Trials {
    /// The median (of the middle two for an even count), min and max of `values`.
    pub fn of(values: Vec<f64>) -> Trials {
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Trials {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            values,
        }
    }
}

/// The headline figures repeated: the main run is the first trial. Each further cold-start
/// trial is a limit run at the best concurrency and an operator cold start, each on a
/// control plane of its own; each further churn trial is one more run at `--churn-rate` on
/// the main control plane.
#[derive(Serialize)]
pub struct Repeats {
    pub trials: usize,
    pub converge_to_limit_ratio: Trials,
    /// Churn at `--churn-rate`: p99 from the PATCH to the child Deployment's new spec.
    pub churn_p99_seconds: Trials,
    /// Churn at `--churn-rate`: p99 from the PATCH to the set's observedGeneration.
    pub status_observed_p99_seconds: Trials,
    /// The further trials' runs.
    pub limit_runs: Vec<LimitRun>,
    pub cold_starts: Vec<ColdStart>,
    pub churn_runs: Vec<ChurnRun>,
}

impl Repeats {
    /// One more cold-start trial: its own limit run and operator cold start.
    pub fn add_cold_start(&mut self, limit: LimitRun, cold: ColdStart) {
        let mut values = std::mem::take(&mut self.converge_to_limit_ratio.values);
        values.push(cold.sets_per_second / limit.sets_per_second);
        self.converge_to_limit_ratio = Trials::of(values);
        self.limit_runs.push(limit);
        self.cold_starts.push(cold);
    }
}

/// Cold starts of one configuration taken together: sets per second over their summed
/// time, CPU per set over their summed sets, and each run as it was.
#[derive(Serialize)]
pub struct Pooled {
    pub sets: usize,
    pub seconds: f64,
    pub sets_per_second: f64,
    pub cpu_seconds_per_set: f64,
    pub runs: Vec<ColdStart>,
}

impl Pooled {
    pub fn of(runs: Vec<ColdStart>) -> Pooled {
        let sets: usize = runs.iter().map(|r| r.sets).sum();
        let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
        let cpu: f64 = runs
            .iter()
            .map(|r| r.cpu_seconds_per_set * r.sets as f64)
            .sum();
        Pooled {
            sets,
            seconds,
            sets_per_second: sets as f64 / seconds.max(1e-9),
            cpu_seconds_per_set: cpu / sets.max(1) as f64,
            runs,
        }
    }
}

/// One bar of the load test and this run's figure.
#[derive(Serialize)]
pub struct Bar {
    pub bar: String,
    pub wanted: String,
    pub value: f64,
    pub met: bool,
}

/// Memory per set held (see `memory.rs`).
#[derive(Serialize)]
pub struct Memory {
    pub churn_rate_per_second: f64,
    pub churn_seconds: u64,
    pub runs: Vec<MemoryRun>,
    /// The line through the resident memory after each cold start: its value at 0 sets, and
    /// MiB per 1,000 sets.
    pub base_mib: f64,
    pub slope_mib_per_1000_sets: f64,
    /// The same after the churn.
    pub base_after_churn_mib: f64,
    pub slope_after_churn_mib_per_1000_sets: f64,
}

/// One replica holding `sets` sets.
#[derive(Serialize)]
pub struct MemoryRun {
    pub sets: usize,
    /// Resident memory (`VmRSS`) once every set converged.
    pub rss_after_cold_start_mib: f64,
    /// Resident memory after the churn.
    pub rss_after_churn_mib: f64,
    /// `VmHWM` at the end.
    pub peak_rss_mib: f64,
    pub churn_updates: usize,
}

#[cfg(test)]
mod tests {
    use super::Trials;

    #[test]
    fn trials_judge_the_median_and_keep_every_value() {
        let t = Trials::of(vec![0.9, 0.7, 1.2]);
        assert_eq!((t.median, t.min, t.max), (0.9, 0.7, 1.2));
        assert_eq!(t.values, vec![0.9, 0.7, 1.2]);
        assert_eq!(Trials::of(vec![2.0, 1.0]).median, 1.5);
        assert!(Trials::of(Vec::new()).median.is_nan());
    }
}
