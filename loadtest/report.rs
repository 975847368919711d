//! The bars every run is held to, and the summary printed at the end.

use serde_json::{Value, json};

use crate::args::Args;

pub(crate) fn bar(name: &str, wanted: &str, value: f64, met: bool) -> Value {
    json!({"bar": name, "wanted": wanted, "value": value, "met": met})
}

/// Each bar of the load-test issue with this run's figure.
pub(crate) fn bars(r: &Value, args: &Args) -> Value {
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

pub(crate) fn summary(r: &Value, args: &Args) {
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
