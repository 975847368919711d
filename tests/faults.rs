//! Faults of the control plane under churn: the API server and etcd restarted while three
//! replicas, running with the chart's least-privilege ServiceAccount, reconcile 210 sets over
//! 30 namespaces that keep changing. Every update made before, during and after converges,
//! and no replica crashes. Each scenario ends with a checker comparing every set's children
//! and status with its spec (`tests/common/fleet.rs`).

mod common;

use std::time::{Duration, Instant};

use common::fleet::Fleet;
use common::{Replica, client, sa_replica_options, wait_for};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ListParams};
use tokio_util::sync::CancellationToken;

const SETS: usize = 210;
const NAMESPACES: usize = 30;
const SHARDS: u32 = 8;

async fn api_up(client: &Client) -> Option<()> {
    Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .ok()
        .map(|_| ())
}

/// `deploy/local/cluster.sh <action> <this binary's cluster> <component>`.
fn cluster_sh(action: &str, component: &str) {
    let out = std::process::Command::new("bash")
        .arg(common::repo_root().join("deploy/local/cluster.sh"))
        .arg(action)
        .arg(&common::cluster().dir)
        .arg(component)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{action} {component}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// From the stop of a component to 30 s after the API server answered again.
type Window = (jiff::Timestamp, jiff::Timestamp);

async fn fault(
    client: &Client,
    replicas: &mut [Replica],
    fleet: &Fleet,
    component: &str,
) -> Window {
    let stop = CancellationToken::new();
    let churner = fleet.churn(client.clone(), 5, stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = jiff::Timestamp::now();
    cluster_sh("stop", component);
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster_sh("start", component);
    let back = Instant::now();
    wait_for(
        "the API server to answer again",
        Duration::from_secs(60),
        || api_up(client),
    )
    .await;
    let answered = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    let applied = churner.await.unwrap();
    assert!(
        applied > 10,
        "churn went on around the outage ({applied} updates)"
    );
    fleet
        .converge(
            client,
            &format!("every update after the {component} restart"),
            Duration::from_secs(180),
        )
        .await;
    eprintln!(
        "{component} restart: converged {:?} after it came back ({applied} updates)",
        back.elapsed()
    );
    for r in replicas.iter_mut() {
        assert!(
            r.child.try_wait().unwrap().is_none(),
            "replica {} is still running",
            r.identity
        );
    }
    (stopped, answered + jiff::SignedDuration::from_secs(30))
}

#[tokio::test]
async fn api_server_and_etcd_restarts_under_churn_lose_nothing() {
    common::cluster();
    let client = client().await;
    let fleet = Fleet::new("fault", SETS, NAMESPACES, SHARDS);
    fleet.create(&client).await;
    let opts = sa_replica_options();
    let started = Instant::now();
    let mut replicas: Vec<Replica> = ["f1", "f2", "f3"]
        .iter()
        .map(|id| Replica::start_with(id, "faults", SHARDS, &opts))
        .collect();
    fleet
        .converge(&client, "initial convergence", Duration::from_secs(240))
        .await;
    eprintln!(
        "{SETS} sets converged {:?} after the start",
        started.elapsed()
    );

    let windows = [
        fault(&client, &mut replicas, &fleet, "kube-apiserver").await,
        fault(&client, &mut replicas, &fleet, "etcd").await,
    ];

    for r in &replicas {
        // Right after its restart the API server answers 403 until its RBAC caches have
        // loaded the roles and bindings; any refusal outside the outages would mean the
        // chart's RBAC is not enough.
        let text = r.log_text();
        let refused: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Forbidden") || l.contains("code=403") || l.contains("403:"))
            .filter(|l| {
                let at: Option<jiff::Timestamp> =
                    l.split_whitespace().next().and_then(|t| t.parse().ok());
                !at.is_some_and(|at| windows.iter().any(|(a, b)| *a <= at && at <= *b))
            })
            .collect();
        assert!(
            refused.is_empty(),
            "{}: requests forbidden with the chart's RBAC: {refused:?}",
            r.identity
        );
        r.signal(libc::SIGTERM);
    }
}
