//! The bars every run is held to, and the summary printed at the end.

use crate::args::Args;
use crate::results::{Bar, Latency, Results};

fn bar(name: &str, wanted: &str, value: f64, met: bool) -> Bar {
    Bar {
        bar: name.to_owned(),
        wanted: wanted.to_owned(),
        value,
        met,
    }
}

/// Each bar of the load test with this run's figure. A figure that was not measured (NaN)
/// meets no bar.
pub(crate) fn bars(r: &Results, args: &Args) -> Vec<Bar> {
    let peak_rss = r
        .whole_run_per_replica
        .iter()
        .map(|s| s.peak_rss_mib)
        .fold(0.0, f64::max);
    let ratio = r.trials.converge_to_limit_ratio.median;
    let idle = r.idle.write_requests_per_minute;
    let churn = r.trials.churn_p99_seconds.median;
    let observed = r.trials.status_observed_p99_seconds.median;
    let trials = match args.trials {
        1 => String::new(),
        n => format!(", median of {n} trials"),
    };
    let flood = r.flood.p99_seconds;
    let failover = r.failover.converged_after_kill_seconds;
    let failover_bar = args.lease_seconds as f64 + 5.0;
    let imbalance = r.cold_start.shares.max_over_mean_sets;
    let mut bars = vec![
        bar(
            &format!("sets per replica, max/mean ({} replicas)", args.replicas),
            "<= 1.15",
            imbalance,
            imbalance <= 1.15,
        ),
        bar(
            &format!("cold start / plain-client limit (its best concurrency{trials})"),
            ">= 0.9",
            ratio,
            ratio >= 0.9,
        ),
        bar("idle write requests per minute", "0", idle, idle == 0.0),
        bar(
            "peak RSS per replica (MiB)",
            "<= 120",
            peak_rss,
            peak_rss <= 120.0,
        ),
        bar(
            &format!(
                "churn at {}/s: the set's observedGeneration p99 (s{trials})",
                args.churn_rate
            ),
            "<= 1",
            observed,
            observed <= 1.0,
        ),
        bar(
            &format!("churn p99 at {}/s (s{trials})", args.churn_rate),
            "<= 1",
            churn,
            churn <= 1.0,
        ),
        bar("tenant under flood p99 (s)", "<= 2", flood, flood <= 2.0),
        bar(
            "cold start: first 1 % of sets converged (fraction of its duration)",
            "<= 0.1",
            r.cold_start.first_percent_at,
            r.cold_start.first_percent_at <= 0.1,
        ),
        bar(
            "cold start: half of the sets converged (fraction of its duration)",
            "<= 0.6",
            r.cold_start.half_at,
            r.cold_start.half_at <= 0.6,
        ),
        bar(
            "failover: takeover of every lost shard after kill (s)",
            &format!("<= lease + 1 = {}", args.lease_seconds + 1),
            r.failover.takeover_max_seconds,
            r.failover.takeover_max_seconds <= args.lease_seconds as f64 + 1.0,
        ),
        bar(
            "failover: every update sent after kill applied within (s)",
            &format!("<= lease + 3 = {}", args.lease_seconds + 3),
            r.failover.outage_update_max_seconds,
            r.failover.outage_update_max_seconds <= args.lease_seconds as f64 + 3.0,
        ),
        bar(
            &format!(
                "failover under {}/s churn: converged after kill (s)",
                r.failover.churn_rate_per_second
            ),
            &format!("<= lease + 5 = {failover_bar}"),
            failover,
            failover <= failover_bar,
        ),
    ];
    if let Some(tracing) = &r.tracing {
        bars.push(bar(
            &format!("tracing cost at sampling {}", args.sampling_ratio),
            "<= 0.10",
            tracing.cost,
            tracing.cost <= 0.10,
        ));
    }
    if let Some(memory) = &r.memory {
        let slope = memory
            .slope_mib_per_1000_sets
            .max(memory.slope_after_churn_mib_per_1000_sets);
        bars.push(bar(
            "memory per 1,000 sets held, after cold start or churn (MiB)",
            "<= 6",
            slope,
            slope <= 6.0,
        ));
    }
    bars
}

fn latency_line(name: &str, l: &Latency) {
    println!(
        "{name:<13} | {} updates: p50 {:.3} s, p95 {:.3} s, p99 {:.3} s, {} not applied",
        l.updates, l.p50_seconds, l.p95_seconds, l.p99_seconds, l.not_applied_within_60s
    );
    println!(
        "{:<13} | set status: observedGeneration p50 {:.3} s, p99 {:.3} s; Ready p50 {:.3} s, p99 {:.3} s; {} not ready",
        "",
        l.status_observed.p50_seconds,
        l.status_observed.p99_seconds,
        l.status_ready.p50_seconds,
        l.status_ready.p99_seconds,
        l.sets_not_ready_within_60s
    );
}

pub(crate) fn summary(r: &Results, args: &Args) {
    println!("scenario      | figure");
    println!("--------------|------------------------------------------------------------");
    println!(
        "limit         | {:.1} sets/s (plain client, {} writes/set, {} sets in flight)",
        r.limit.best.sets_per_second, r.limit.writes_per_set, r.limit.best.concurrency
    );
    for run in &r.limit.sweep {
        println!(
            "limit sweep   | {} in flight: {:.1} sets/s, machine {:.0} % busy (load test {:.0} %)",
            run.concurrency,
            run.sets_per_second,
            run.cpu_busy.machine * 100.0,
            run.cpu_busy.loadtest * 100.0
        );
    }
    let c = &r.cold_start;
    println!(
        "cold start    | {:.1} sets/s over {:.1} s, {:.1} reconciles/s, {:.1} writes/set, machine {:.0} % busy (load test {:.0} %)",
        c.sets_per_second,
        c.seconds,
        c.reconciles_per_second,
        c.write_requests_per_set,
        c.cpu_busy.machine * 100.0,
        c.cpu_busy.loadtest * 100.0
    );
    println!(
        "ratio         | {:.2} of the plain client's limit",
        r.converge_to_limit_ratio
    );
    println!(
        "CPU per set   | plain client: control plane {:.3} s; operator run: {:.3} s (control plane and operator), ratio {:.2}",
        r.limit.best.cpu_seconds_per_set,
        c.cpu_seconds_per_set,
        c.cpu_cost_ratio.unwrap_or(f64::NAN)
    );
    for s in &r.whole_run_per_replica {
        println!(
            "replica       | {}: peak RSS {:.1} MiB, {:.1} CPU s",
            s.identity, s.peak_rss_mib, s.cpu_seconds
        );
    }
    latency_line("flood", &r.flood);
    latency_line("churn", &r.churn.latency);
    latency_line("failover", &r.failover.latency);
    for row in &r.churn_limit.rates {
        println!(
            "churn limit   | {}/s: p99 operator {:.3} s, plain client {:.3} s; operator's set status: observedGeneration p99 {:.3} s, Ready p99 {:.3} s, {:.2} status writes per update",
            row.rate_per_second,
            row.operator_p99_seconds,
            row.plain_p99_seconds,
            row.operator_status_observed_p99_seconds,
            row.operator_status_ready_p99_seconds,
            row.operator_status_writes_per_update
        );
    }
    println!(
        "churn limit   | highest rate with p99 <= 1 s: operator {}/s, plain client {}/s",
        r.churn_limit.operator_highest_rate_within_p99_1s,
        r.churn_limit.plain_highest_rate_within_p99_1s
    );
    println!(
        "failover      | converged {:.1} s after kill -9 (lease {} s, churn {}/s); {} shards taken over after p50 {:.2} s, max {:.2} s; {} updates sent after the kill applied within {:.2} s",
        r.failover.converged_after_kill_seconds,
        r.failover.lease_seconds,
        r.failover.churn_rate_per_second,
        r.failover.lost_shards,
        r.failover.takeover_p50_seconds,
        r.failover.takeover_max_seconds,
        r.failover.outage_updates,
        r.failover.outage_update_max_seconds
    );
    let t = &r.trials;
    for (name, figure) in [
        ("cold start / limit", &t.converge_to_limit_ratio),
        ("churn p99 (s)", &t.churn_p99_seconds),
        ("observedGeneration p99 (s)", &t.status_observed_p99_seconds),
    ] {
        println!(
            "trials        | {name}: median {:.3} of {} (min {:.3}, max {:.3})",
            figure.median, t.trials, figure.min, figure.max
        );
    }
    if let Some(m) = &r.memory {
        for run in &m.runs {
            println!(
                "memory        | {} sets on 1 replica: RSS {:.1} MiB after the cold start, {:.1} MiB after {} updates",
                run.sets, run.rss_after_cold_start_mib, run.rss_after_churn_mib, run.churn_updates
            );
        }
        println!(
            "memory        | {:.2} MiB per 1,000 sets over a base of {:.1} MiB ({:.2} and {:.1} after churn)",
            m.slope_mib_per_1000_sets,
            m.base_mib,
            m.slope_after_churn_mib_per_1000_sets,
            m.base_after_churn_mib
        );
    }
    println!(
        "idle          | {:.1} write requests/min",
        r.idle.write_requests_per_minute
    );
    let shares = &c.shares;
    for s in &shares.per_replica {
        println!(
            "share         | {}: {} shards, {} sets ({:.1} %), {} reconciles, {:.2} CPU ms per reconcile, queue wait p99 {}",
            s.identity,
            s.shards,
            s.sets,
            s.share_of_sets * 100.0,
            s.reconciles,
            s.cpu_ms_per_reconcile,
            s.queue_wait_p99_seconds
                .map_or("unknown".to_owned(), |p| format!("{p} s"))
        );
    }
    println!(
        "imbalance     | max/mean of sets per replica {:.3} (scheme {})",
        shares.max_over_mean_sets, shares.scheme
    );
    if let Some(scale_out) = &r.scale_out {
        for run in &scale_out.runs {
            println!(
                "scale-out     | {} replicas: {:.1} sets/s (x{:.2} of 1), sets max/mean {:.3}",
                run.replicas,
                run.sets_per_second,
                run.throughput_vs_one_replica,
                run.shares.max_over_mean_sets
            );
        }
    }
    if let Some(t) = &r.tracing {
        println!(
            "tracing       | off {:.1} sets/s, on ({}) {:.1} sets/s: cost {:.1} %",
            t.off.sets_per_second,
            t.sampling_ratio,
            t.on.sets_per_second,
            t.cost * 100.0
        );
    }
    for b in &r.bars {
        println!(
            "bar           | {}: {:.3} (wanted {}) {}",
            b.bar,
            b.value,
            b.wanted,
            if b.met { "met" } else { "MISSED" }
        );
    }
    println!(
        "results       | {}",
        args.out.join("results.json").display()
    );
}
