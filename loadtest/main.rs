//! vecodex-loadtest: drives the operator on real local control planes and reports.
//!
//! Scenarios (loadtest/README.md): limit (a plain client writing the same children), cold
//! start, tenant under flood (during the cold start), churn, failover (kill -9 of a replica
//! during churn), idle, and, each on a fresh control plane, scale-out (1 replica against R)
//! and tracing cost (OTLP export to rotel at the sampling ratio against tracing off). Writes
//! `results.json`, `convergence.svg` and `latency.svg` into `--out` and prints a summary.

mod args;
mod charts;
mod churn;
mod cluster;
mod collector;
mod kubelet;
mod machine;
mod memory;
mod nodes;
mod plain;
mod profile;
mod report;
mod results;
mod scenarios;
mod shared;
mod shares;
mod track;
mod work_loop;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use args::Args;
use churn::{Churner, churn_limit, flood, latency_summary, settle};
use clap::Parser;
use cluster::{LocalCluster, Replica};
use collector::start_collector;
use machine::machine;
use plain::limit;
use report::{bars, summary};
use results::{
    Idle, Limit, Parameters, Pooled, Repeats, Results, ScaleOut, ScaleRun, Tracing, Trials,
    one_line,
};
use scenarios::{
    Before, Placement, cold_start, default_failover_rate, failover, fresh_cold_start,
    start_replicas, stop_replicas, write_total,
};
use tokio_util::sync::CancellationToken;
use track::Tracker;
use vecodex_operator::crd::VecodexSetSpec;

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
    eprintln!("loadtest: limit: {}", one_line(&limit));
    let main = LocalCluster::up(&args.control_plane())?;
    let outcome = main_cluster(&args, &spec, &main, limit).await;
    main.down();
    let MainRun {
        mut results,
        curve,
        latencies,
    } = outcome?;

    // Further cold-start trials: a limit run at the best concurrency and an operator cold
    // start, each on a control plane of its own.
    for k in 2..=args.trials {
        let concurrency = results.limit.best.concurrency;
        let trial_limit = plain::limit_once(&args, &spec, concurrency).await?;
        let label = format!("trial-{k}");
        let (cold, _) =
            fresh_cold_start(&args, &spec, &label, args.replicas, args.sets, None).await?;
        eprintln!(
            "loadtest: {label}: limit {:.1} sets/s, cold start {:.1} sets/s",
            trial_limit.sets_per_second, cold.sets_per_second
        );
        results.trials.add_cold_start(trial_limit, cold);
    }

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
        let one = scale_runs
            .iter()
            .find(|r| r.replicas == 1)
            .map_or(f64::NAN, |r| r.sets_per_second);
        results.scale_out = Some(ScaleOut {
            sets: args.sets,
            runs: scale_runs
                .into_iter()
                .map(|r| ScaleRun {
                    replicas: r.replicas,
                    sets_per_second: r.sets_per_second,
                    throughput_vs_one_replica: r.sets_per_second / one,
                    shares: r.shares.clone(),
                    cold_start: r,
                })
                .collect(),
        });
        let off = Pooled::of(vec![base, base_2]);
        let on = Pooled::of(vec![on, on_2]);
        results.tracing = Some(Tracing {
            sampling_ratio: args.sampling_ratio,
            collector_batches,
            cost: 1.0 - on.sets_per_second / off.sets_per_second.max(1e-9),
            off,
            on,
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
    if !args.memory_sets.is_empty() {
        results.memory = Some(memory::memory(&args, &spec).await?);
    }
    results.bars = bars(&results, &args);

    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(
        args.out.join("convergence.svg"),
        charts::convergence(&curves),
    )?;
    std::fs::write(args.out.join("latency.svg"), charts::latency(&latencies))?;
    summary(&results, &args);

    if results.idle.write_requests > 0.0 {
        bail!(
            "idle: {} write requests while nothing changed",
            results.idle.write_requests
        );
    }
    // Every scenario's updates, the plain client's sweep included: a lost update fails the run.
    let sweeps = results
        .limit
        .churn
        .iter()
        .chain(&results.churn_limit.operator)
        .chain(&results.trials.churn_runs)
        .map(|r| {
            (
                format!("churn limit at {}/s", r.rate_per_second),
                &r.latency,
            )
        });
    let lost = [
        ("churn".to_owned(), &results.churn.latency),
        ("flood".to_owned(), &results.flood),
        ("failover".to_owned(), &results.failover.latency),
    ]
    .into_iter()
    .chain(sweeps)
    .find(|(_, l)| l.not_applied_within_60s > 0);
    if let Some((s, l)) = lost {
        bail!("{s}: updates were lost: {:?}", l.not_applied);
    }
    if !results.replica_exits.is_empty() {
        bail!("replicas exited: {:?}", results.replica_exits);
    }
    Ok(())
}

/// What the main control plane's scenarios give: figures, the cold start's curve and the
/// update latencies per scenario.
struct MainRun {
    results: Results,
    curve: Vec<(f64, usize)>,
    latencies: Vec<(String, Vec<f64>)>,
}

/// Limit, cold start with the flood, churn, failover and idle, on one control plane.
async fn main_cluster(
    args: &Args,
    spec: &VecodexSetSpec,
    cluster: &LocalCluster,
    limit: Limit,
) -> anyhow::Result<MainRun> {
    let kubeconfig = cluster.kubeconfig();
    let client = cluster::client_for(&kubeconfig).await?;
    cluster::install_crd(&client).await?;
    let kubelet = args.simulator(client.clone());
    let tracker = Tracker::start(&client);

    // 1. Cold start, and 5. a tenant flooding its set meanwhile.
    cluster::create_sets(&client, args.sets, args.namespaces, spec).await?;
    cluster::create_namespaces(&client, &["flood".to_owned()]).await?;
    cluster::create_set(&client, "flood", "flooded", spec.clone()).await?;
    let waited = cluster.wait_quiet(Duration::from_secs(300)).await;
    eprintln!("loadtest: control plane quiet after {waited:?}");
    let opts = args.replica_options(&kubeconfig, None);
    let before = Before::read(cluster, &client).await?;
    let mut replicas = start_replicas(args.replicas, &opts, &cluster.dir, "main")?;
    let started = Instant::now();
    let stop_flood = CancellationToken::new();
    let flooder = flood(client.clone(), tracker.clone(), stop_flood.clone());
    let cold = cold_start(
        cluster,
        &before,
        &client,
        &tracker,
        &replicas,
        args.sets,
        &Placement::of(args, args.namespaces),
        started,
        args.timeout(),
    )
    .await;
    stop_flood.cancel();
    let flood_sent = flooder.await.unwrap_or(0);
    let (mut cold, curve) = cold?;
    let flood_lost = settle(&tracker, "flood", Duration::from_secs(60)).await;
    let flood = latency_summary(&tracker, "flood", flood_sent, &flood_lost);
    eprintln!("loadtest: cold start: {}", one_line(&cold));
    let ratio = cold.sets_per_second / limit.best.sets_per_second;
    cold.converge_to_limit_ratio = Some(ratio);
    // What the ratio would be if CPU were the only limit: the plain client's control-plane CPU
    // per set against the operator run's (control plane and operator together).
    cold.cpu_cost_ratio = Some(limit.best.cpu_seconds_per_set / cold.cpu_seconds_per_set);

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
    // Further trials of the churn at the bar's rate.
    let mut churn_trials = Vec::new();
    for k in 2..=args.trials {
        let prefix = format!("churn-trial-{k}");
        let runs = churner
            .sweep(
                cluster,
                &client,
                &tracker,
                args,
                &[args.churn_rate],
                &prefix,
                &replicas,
            )
            .await;
        churn_trials.extend(runs);
    }
    let churn_limit = churn_limit(&operator_churn, &limit.churn);
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
    eprintln!("loadtest: failover: {}", one_line(&failover));
    replicas[0] = Replica::start(
        &opts,
        "main-0-restarted",
        &cluster.dir.join("loadtest-main-0-restarted.log"),
    )?;
    // Shards move back to it (drained hand-over): let that settle before measuring idle.
    tokio::time::sleep(Duration::from_secs(args.lease_seconds * 2)).await;
    tracker
        .wait_converged(args.sets, cluster::is_tenant, args.timeout())
        .await?;
    // Nothing may change while idle is measured: every set Ready, so that no controller is
    // still rolling out (in the full profile they run minutes behind a cold start's pods, and
    // each of their reports moves a set's status).
    let waited = Instant::now();
    tracker
        .wait_ready(args.sets, cluster::is_tenant, args.timeout())
        .await?;
    eprintln!("loadtest: every set Ready after {:?}", waited.elapsed());
    cluster.wait_quiet(Duration::from_secs(300)).await;

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
            r.child.try_wait().ok().flatten().map(|s| {
                let log = r.log_text();
                let last = log.lines().last().unwrap_or_default();
                format!("{}: {s} (last log line: {last})", r.identity)
            })
        })
        .collect();
    let whole_run = replicas.iter().map(Replica::stats).collect();
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
    let trials = Repeats {
        trials: args.trials as usize,
        converge_to_limit_ratio: Trials::of(vec![ratio]),
        churn_p99_seconds: Trials::of(
            std::iter::once(&churn)
                .chain(&churn_trials)
                .map(|r| r.latency.p99_seconds)
                .collect(),
        ),
        status_observed_p99_seconds: Trials::of(
            std::iter::once(&churn)
                .chain(&churn_trials)
                .map(|r| r.latency.status_observed.p99_seconds)
                .collect(),
        ),
        limit_runs: Vec::new(),
        cold_starts: Vec::new(),
        churn_runs: churn_trials,
    };
    let results = Results {
        date: jiff::Timestamp::now().to_string(),
        machine: machine(),
        commit,
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        parameters: Parameters {
            sets: args.sets,
            namespaces: args.namespaces,
            replicas: args.replicas,
            shards: args.shards,
            concurrency: args.concurrency,
            plain_concurrency: args.plain_concurrency.clone(),
            churn_rate: args.churn_rate,
            churn_seconds: args.churn_seconds,
            churn_sweep: args.churn_sweep.clone(),
            failover_churn_rate: failover_rate,
            idle_seconds: args.idle_seconds,
            lease_seconds: args.lease_seconds,
            trials: args.trials as usize,
            warm_standby: args.warm_standby,
            scale_sets: args.scale_sets.unwrap_or(args.sets),
            scale_out_replicas: args.scale_out_replicas.clone(),
            sampling_ratio: args.sampling_ratio,
            profile: args.profile,
            apiserver_gogc: args.control_plane().gogc,
            apiserver_memory_limit: args.control_plane().memory_limit,
            sim_nodes: args.sim_nodes,
            pod_ready_seconds: args.pod_ready_seconds,
        },
        limit,
        cold_start: cold,
        converge_to_limit_ratio: ratio,
        flood,
        churn,
        churn_limit,
        failover,
        idle: Idle {
            seconds: args.idle_seconds,
            write_requests: idle_writes,
            write_requests_per_minute: idle_per_minute,
        },
        whole_run_per_replica: whole_run,
        replica_exits: exits,
        scale_out: None,
        tracing: None,
        memory: None,
        trials,
        bars: Vec::new(),
    };
    Ok(MainRun {
        results,
        curve,
        latencies,
    })
}
