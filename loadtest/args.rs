//! The load test's command line: every knob of every scenario, with its default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::cluster::{self, Otlp, ReplicaOptions};
use crate::profile::Profile;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load test of vecodex-operator on local control planes")]
pub struct Args {
    /// VecodexSets of the main cold start (and of the plain client's run).
    #[arg(long, default_value_t = 1000)]
    pub sets: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 100)]
    pub namespaces: usize,
    /// Operator replicas.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    #[arg(long, default_value_t = vecodex_operator::shard::DEFAULT_SHARDS)]
    pub shards: u32,
    /// Reconcile concurrency per replica.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// The plain client's sets in flight, one limit run each on a control plane of its own;
    /// the fastest is the limit.
    #[arg(long, value_delimiter = ',', default_values_t = [16usize, 32, 64, 128])]
    pub plain_concurrency: Vec<usize>,
    /// Spec updates per second in the churn and failover scenarios.
    #[arg(long, default_value_t = 50.0)]
    pub churn_rate: f64,
    /// Trials of the headline figures (the cold start's ratio to the limit, churn p99 at
    /// --churn-rate): the main run, then each further trial as described in `Repeats`; the
    /// bars judge the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub trials: u32,
    /// How long the churn scenario runs.
    #[arg(long, default_value_t = 30)]
    pub churn_seconds: u64,
    /// Lower churn rates, run before --churn-rate, each for --churn-seconds, by the operator
    /// and by the plain client: the highest rate this machine sustains with p99 <= 1 s.
    #[arg(long, value_delimiter = ',', default_values_t = [10.0, 20.0])]
    pub churn_sweep: Vec<f64>,
    /// Updates per second during the failover scenario. Default: the highest rate of the
    /// sweep the operator kept within a p99 of 1 s in this run (else the lowest rate
    /// measured), so that the scenario measures the failover and not a backlog the machine
    /// cannot absorb (see `default_failover_rate`).
    #[arg(long)]
    pub failover_churn_rate: Option<f64>,
    /// How long the idle scenario measures.
    #[arg(long, default_value_t = 60)]
    pub idle_seconds: u64,
    /// Whether the replicas keep warm standby caches (`--warm-standby`).
    #[arg(long, default_value_t = vecodex_operator::shard::ShardConfig::default().warm_standby, action = clap::ArgAction::Set)]
    pub warm_standby: bool,
    /// The replicas' shard Lease duration (renew deadline 2/3 of it, retry period 1/7).
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    /// Replica counts of the scale-out cold starts, each of --sets sets on a fresh control
    /// plane: each replica's share of sets, reconciles and CPU.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 3, 5])]
    pub scale_out_replicas: Vec<usize>,
    /// Sets of the tracing-cost cold starts (default: --sets).
    #[arg(long)]
    pub scale_sets: Option<usize>,
    /// Trace sampling ratio of the tracing-cost scenario.
    #[arg(long, default_value_t = 1.0)]
    pub sampling_ratio: f64,
    /// Set counts of the memory scenario, each held by one replica on a control plane of its
    /// own (none: the scenario does not run).
    #[arg(long, value_delimiter = ',')]
    pub memory_sets: Vec<usize>,
    /// Updates per second of the memory scenario's churn.
    #[arg(long, default_value_t = 20.0)]
    pub memory_churn_rate: f64,
    /// How long the memory scenario churns before its second reading.
    #[arg(long, default_value_t = 300)]
    pub memory_churn_seconds: u64,
    /// Skip the scale-out and tracing-cost scenarios (each starts a fresh control plane).
    #[arg(long)]
    pub skip_fresh: bool,
    /// The control-plane profile (see `profile.rs`).
    #[arg(long, value_enum, default_value_t = Profile::Lean)]
    pub profile: Profile,
    /// Fake Nodes of the full profile's node simulator.
    #[arg(long, default_value_t = 10)]
    pub sim_nodes: usize,
    /// In the full profile, how long after it was bound a pod is marked Running and Ready.
    #[arg(long, default_value_t = 1.0)]
    pub pod_ready_seconds: f64,
    /// GOGC of the control planes' kube-apiserver (default: the profile's; 400 in the lean
    /// one). At 10,000 sets its live heap is 1.1-2.9 GB; with Go's default (100) it collects
    /// every 6 s or so, and each mark phase (1-4 s on two busy cores) slows every request it
    /// overlaps. With 400 it collects about five times less often. Both sides of every ratio
    /// run with it.
    #[arg(long)]
    pub apiserver_gogc: Option<u32>,
    /// GOMEMLIMIT of the control planes' kube-apiserver (Go's syntax; "" for none; default:
    /// the profile's, 12GiB in the lean one): with GOGC 400 and 2.9 GB live its heap would
    /// grow to 15 GB of the machine's 24 GiB.
    #[arg(long)]
    pub apiserver_memory_limit: Option<String>,
    /// Give up on a convergence after this long.
    #[arg(long, default_value_t = 1800)]
    pub timeout_seconds: u64,
    /// Where results.json and the charts go.
    #[arg(long, default_value = "loadtest/results")]
    pub out: PathBuf,
}

impl Args {
    /// The churn rates measured, in order: the sweep's, then --churn-rate.
    pub fn churn_rates(&self) -> Vec<f64> {
        let mut rates = self.churn_sweep.clone();
        rates.push(self.churn_rate);
        rates
    }

    /// How the control planes run: the profile's settings, and any GC flag given.
    pub fn control_plane(&self) -> cluster::ControlPlaneSettings {
        let (gogc, memory_limit) = self.profile.apiserver_gc();
        cluster::ControlPlaneSettings {
            gogc: self.apiserver_gogc.unwrap_or(gogc),
            memory_limit: self
                .apiserver_memory_limit
                .clone()
                .unwrap_or_else(|| memory_limit.to_owned()),
            controllers: self.profile.controllers(),
        }
    }

    /// Starts the profile's kubelet stand-in on `client`'s control plane.
    pub fn simulator(&self, client: kube::Client) -> tokio::task::JoinHandle<()> {
        self.profile.simulator(
            client,
            self.sim_nodes,
            Duration::from_secs_f64(self.pod_ready_seconds),
        )
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds)
    }

    pub fn replica_options<'a>(
        &self,
        kubeconfig: &'a Path,
        otlp: Option<&'a Otlp>,
    ) -> ReplicaOptions<'a> {
        ReplicaOptions {
            kubeconfig,
            shards: self.shards,
            concurrency: self.concurrency,
            lease_seconds: self.lease_seconds,
            warm_standby: self.warm_standby,
            otlp,
        }
    }
}
