//! A slow API server: every response 2 s late for all three replicas.

use std::time::{Duration, Instant};

use crate::common::fleet::Fleet;
use crate::common::proxy::{Mode, Proxy};
use crate::common::{self};
use crate::common::{
    RELEASE_NS, Replica, ReplicaOptions, metric, replica_http, sa_replica_options,
    shard_holders_in, wait_for,
};
use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::*;

const SLOW_GROUP: &str = "slow";
const LATENCY: Duration = Duration::from_secs(2);
const CONCURRENCY: usize = 8;
const RECONCILE_TIMEOUT: &str = "1500ms";

/// Every response from the API server 2 s late, for all three replicas (default Lease
/// timings): reconciles time out and are retried, the queue stays bounded, requests in flight
/// do not pile up, no shard is lost, and everything converges once the latency is gone.
///
/// The reconcile timeout is shorter than one round trip, so every reconcile that calls the
/// API server times out, however few calls it chains (with a timeout of a few round trips,
/// whether any timed out would hang on that count).
pub(crate) async fn slow_api_server(client: &Client, fleet: &Fleet) {
    let base = sa_replica_options();
    let opts = ReplicaOptions {
        lease_duration_s: 15,
        renew_deadline_s: 10,
        retry_period_s: 2,
        extra_args: vec![
            "--reconcile-timeout".into(),
            RECONCILE_TIMEOUT.into(),
            "--concurrency".into(),
            CONCURRENCY.to_string(),
        ],
        ..base.clone()
    };
    let dir = common::cluster().dir.clone();
    let kubeconfigs = [1, 2, 3].map(|i| dir.join(format!("slow-s{i}.kubeconfig")));
    let proxies = kubeconfigs.clone().map(|kubeconfig| {
        let proxy = Proxy::start(Proxy::upstream_of(&base.kubeconfig));
        proxy.kubeconfig(&base.kubeconfig, &kubeconfig);
        proxy
    });
    let replicas = three_replicas("s", SLOW_GROUP, &opts, kubeconfigs);
    let holders = || shard_holders_in(client, RELEASE_NS, SLOW_GROUP, SHARDS);
    wait_for("s1..s3 balanced", Duration::from_secs(60), || {
        settled_in(client, SLOW_GROUP, &["s1", "s2", "s3"], fleet)
    })
    .await;
    fleet
        .converge(client, "before the slow phase", Duration::from_secs(60))
        .await;
    // A metric that is missing fails the test: nothing defaults to "fine".
    let scrape = |r: &Replica, name: &str| -> f64 {
        let text = replica_http(&r.log, "/metrics")
            .unwrap_or_else(|| panic!("{}: /metrics answers", r.identity));
        metric(&text, name).unwrap_or_else(|| panic!("{}: {name} in /metrics", r.identity))
    };
    let losses_before: Vec<f64> = replicas
        .iter()
        .map(|r| scrape(r, "vecodex_operator_shard_losses_total"))
        .collect();
    let retries_before: f64 = replicas
        .iter()
        .map(|r| scrape(r, "workqueue_retries_total{name=\"vecodexsets\"}"))
        .sum();

    let stop_churn = CancellationToken::new();
    let churner = fleet.churn(client.clone(), 4, stop_churn.clone());
    // Connections open before the latency: the watches (one per kind and held shard) and
    // idle pooled connections.
    let settled: Vec<u64> = proxies.iter().map(|p| p.open_connections().0).collect();
    for p in &proxies {
        p.set(Mode::Delay(LATENCY));
    }
    let slow = Instant::now();
    let mut max_depth = 0.0f64;
    let mut max_open = vec![0u64; proxies.len()];
    while slow.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (i, (r, p)) in replicas.iter().zip(&proxies).enumerate() {
            max_depth = max_depth.max(scrape(r, "workqueue_depth{name=\"vecodexsets\"}"));
            max_open[i] = max_open[i].max(p.open_connections().1);
        }
    }
    let held: usize = holders().await.iter().flatten().count();
    let losses_after: Vec<f64> = replicas
        .iter()
        .map(|r| scrape(r, "vecodex_operator_shard_losses_total"))
        .collect();
    let retries: f64 = replicas
        .iter()
        .map(|r| scrape(r, "workqueue_retries_total{name=\"vecodexsets\"}"))
        .sum::<f64>()
        - retries_before;
    let timeouts: usize = replicas
        .iter()
        .map(|r| {
            r.log_text()
                .lines()
                .filter(|l| l.contains("reconcile failed") && l.contains("did not finish within"))
                .count()
        })
        .sum();
    for p in &proxies {
        p.set(Mode::Pass);
    }
    let fast = Instant::now();
    stop_churn.cancel();
    let applied = churner.await.unwrap();
    let took = fleet
        .converge(
            client,
            "after the latency is gone",
            Duration::from_secs(120),
        )
        .await;
    eprintln!(
        "slow API server (+{LATENCY:?} per response, 40 s, {applied} updates): {timeouts} reconciles timed out, {retries} retries, queue depth at most {max_depth}, connections open per replica {settled:?} before, at most {max_open:?} during, {held}/{SHARDS} shards held; converged {took:?} after the latency was gone ({:?} incl. churn stop)",
        fast.elapsed()
    );
    assert!(timeouts >= 1, "reconciles timed out under a 2 s latency");
    assert!(retries >= 1.0, "timed-out reconciles were retried");
    // Per replica, requests in flight are its workers' (one each: the churn changes one
    // Deployment per set) and its heartbeat's (a list, every shard's renewal and one
    // acquisition per round). The proxy counts a connection abandoned by a timeout until the
    // API server's delayed answer has drained, by which time its requester has started the
    // next one, so each can count twice; the bound allows two heartbeat rounds. All of it
    // comes on top of the connections open before (watches and the idle pool). The count
    // rises as failing sets fill the queue until every worker is busy, then stays. Abandoned
    // requests that kept their connections
    // (a pile-up) would add one per timeout, about 50 per replica in the 40 s. Events (at
    // most EVENTS_IN_FLIGHT more) do not count here: every reconcile times out before its
    // apply answers, and only an answered apply leads to an Event.
    let in_flight = 2 * (CONCURRENCY + 2 * (SHARDS as usize + 1)) as u64;
    for (i, (&before, &during)) in settled.iter().zip(&max_open).enumerate() {
        assert!(
            during <= before + in_flight,
            "requests in flight pile up at replica {i}: {during} connections open at once, {before} before the latency (bound {before} + {in_flight})"
        );
    }
    assert_eq!(held, SHARDS as usize, "every shard stayed held");
    assert_eq!(
        losses_before, losses_after,
        "no replica lost a shard to a 2 s latency"
    );
    assert!(applied > 40, "churn went on ({applied} updates)");
    for r in replicas {
        terminate(r).await;
    }
}
