//! Faults of the control plane under churn: the API server and etcd restarted while three
//! replicas reconcile sets that keep changing. Every update made before, during and after
//! converges, and no replica crashes. Each scenario ends with a checker comparing every set's
//! children and status with its spec.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Replica, client, seed_example, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use vecodex_operator::crd::VecodexSet;

const SETS: usize = 60;
const NAMESPACES: usize = 20;

fn sets(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<VecodexSet>(&()))
}

fn place(i: usize) -> (String, String) {
    (format!("fault-{}", i % NAMESPACES), format!("s{i}"))
}

/// The searcher replicas each set should end with (the last update that got through).
type Desired = Arc<Mutex<HashMap<usize, i64>>>;

/// A few spec updates per second across the sets until `stop`; failed updates (the control
/// plane is down) are simply not recorded.
fn churn(
    client: Client,
    desired: Desired,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut applied = 0;
        let mut n: usize = 0;
        while !stop.is_cancelled() {
            n += 1;
            let i = (n * 7919) % SETS;
            let replicas = (n % 4 + 1) as i64;
            let (ns, name) = place(i);
            let patch = json!({"spec": {"searcher": {"replicas": replicas}}});
            let api = sets(&client, &ns);
            let params = PatchParams::default();
            let patch = Patch::Merge(patch);
            let call = api.patch(&name, &params, &patch);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), call).await {
                desired.lock().unwrap().insert(i, replicas);
                applied += 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        applied
    })
}

/// Every set's status describes its spec and its searcher Deployment has the desired replicas.
async fn all_converged(client: &Client, desired: &Desired) -> Option<()> {
    let want = desired.lock().unwrap().clone();
    for i in 0..SETS {
        let (ns, name) = place(i);
        let v = serde_json::to_value(sets(client, &ns).get(&name).await.ok()?).ok()?;
        if v["status"]["observedGeneration"] != v["metadata"]["generation"] {
            return None;
        }
        let d = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get(&format!("{name}-searcher"))
            .await
            .ok()?;
        let expected = want.get(&i).copied().unwrap_or(3);
        if d.spec?.replicas != Some(expected as i32) {
            return None;
        }
    }
    Some(())
}

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

async fn fault(client: &Client, replicas: &mut [Replica], desired: &Desired, component: &str) {
    let stop = CancellationToken::new();
    let churner = churn(client.clone(), desired.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
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
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    let applied = churner.await.unwrap();
    assert!(
        applied > 10,
        "churn went on around the outage ({applied} updates)"
    );
    wait_for(
        &format!("every update converged after the {component} restart"),
        Duration::from_secs(120),
        || all_converged(client, desired),
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
}

#[tokio::test]
async fn api_server_and_etcd_restarts_under_churn_lose_nothing() {
    common::cluster();
    let client = client().await;
    for ns in 0..NAMESPACES {
        let obj: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("fault-{ns}")}
        }))
        .unwrap();
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &ApiResource::erase::<Namespace>(&()));
        api.create(&PostParams::default(), &obj).await.unwrap();
    }
    for i in 0..SETS {
        let (ns, name) = place(i);
        sets(&client, &ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(seed_example(&ns, &name)).unwrap(),
            )
            .await
            .unwrap();
    }
    let mut replicas: Vec<Replica> = ["f1", "f2", "f3"]
        .iter()
        .map(|id| Replica::start(id, "faults", 8))
        .collect();
    let desired: Desired = Arc::default();
    wait_for("initial convergence", Duration::from_secs(120), || {
        all_converged(&client, &desired)
    })
    .await;

    fault(&client, &mut replicas, &desired, "kube-apiserver").await;
    fault(&client, &mut replicas, &desired, "etcd").await;

    for r in &replicas {
        r.signal(libc::SIGTERM);
    }
}
