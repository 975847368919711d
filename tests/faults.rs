//! Faults under churn: three replicas, running with the chart's least-privilege
//! ServiceAccount, reconcile 210 sets over 30 namespaces that keep changing while
//!
//! - (fault 1) the API server and (fault 2) etcd are restarted;
//! - (fault 5) another field manager overwrites a field the operator manages and adds one
//!   it does not, and an autoscaler-style owner scales Deployments whose replicas the sets
//!   leave unset;
//! - (fault 6) sets are deleted while their reconciles are in flight, a namespace is deleted
//!   with its sets, and children are deleted while every replica is down.
//!
//! Every update made before, during and after converges, no replica crashes, nothing is left
//! behind and no error repeats. Each scenario ends with a checker comparing every set's
//! children and status with its spec (`tests/common/fleet.rs`).

mod common;

use std::time::{Duration, Instant};

use common::fleet::{Fleet, sets};
use common::{Replica, client, sa_replica_options, seed_example, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use vecodex_operator::api::HANDOVER_MANAGER;
use vecodex_operator::children::FIELD_MANAGER;

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
    let fleet = Fleet::new("fault", SETS, NAMESPACES);
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
    foreign_field_manager(&client, &fleet).await;
    let mut stopped = deletions(&client, &mut replicas, &fleet, &opts).await;
    no_error_repeats(&replicas).await;

    stopped.append(&mut replicas);
    for r in &stopped {
        // Right after its restart the API server answers 403 until its RBAC caches have
        // loaded the roles and bindings; any refusal outside the outages would mean the
        // chart's RBAC is not enough (creating in a namespace being deleted is refused too,
        // for everyone).
        let text = r.log_text();
        let refused: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Forbidden") || l.contains("code=403") || l.contains("403:"))
            .filter(|l| !l.contains("being terminated"))
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

/// Fault 5: a foreign field manager forces its own searcher replicas onto 20 sets'
/// Deployments and adds an annotation, under churn. The operator puts the replicas back
/// (the checker) and says so in a "Restored" Event; the annotation it does not manage stays.
async fn foreign_field_manager(client: &Client, fleet: &Fleet) {
    let stop = CancellationToken::new();
    let tampered: Vec<usize> = (0..fleet.count)
        .step_by(fleet.count / 20)
        .take(20)
        .collect();
    // The churn goes on around the tampered sets, whose repair must say "Restored" (a spec
    // change would report it as part of applying the change, "Applied").
    let churner = fleet.churn_sparing(
        client.clone(),
        5,
        stop.clone(),
        tampered.iter().copied().collect(),
    );
    // Generations before the tampering: the churn must not have moved them.
    let mut generations = Vec::new();
    let params = PatchParams::apply("intruder").force();
    for &i in &tampered {
        let (ns, name) = fleet.place(i);
        let set = sets(client, &ns).get(&name).await.unwrap();
        generations.push(set.metadata.generation);
        let patch = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": format!("{name}-searcher"),
                         "annotations": {"example.com/owner": "intruder"}},
            "spec": {"replicas": 9},
        });
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .patch(&format!("{name}-searcher"), &params, &Patch::Apply(&patch))
            .await
            .unwrap();
    }
    autoscaled_replicas_stay(client).await;
    stop.cancel();
    churner.await.unwrap();
    let took = fleet
        .converge(
            client,
            "replicas put back after a foreign manager",
            Duration::from_secs(120),
        )
        .await;
    let mut restored_events = 0;
    for (&i, generation) in tampered.iter().zip(&generations) {
        let (ns, name) = fleet.place(i);
        let d = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get(&format!("{name}-searcher"))
            .await
            .unwrap();
        assert_eq!(
            d.annotations().get("example.com/owner").map(String::as_str),
            Some("intruder"),
            "{ns}/{name}: an annotation the operator does not manage stays"
        );
        let now = sets(client, &ns)
            .get(&name)
            .await
            .unwrap()
            .metadata
            .generation;
        assert_eq!(now, *generation, "{ns}/{name}: the churn spared it");
        let want = format!("updated Deployment {name}-searcher");
        let events = Api::<Event>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap();
        assert!(
            events.items.iter().any(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
                    && e.reason.as_deref() == Some("Restored")
                    && e.note.as_deref().unwrap_or("").contains(&want)
            }),
            "{ns}/{name}: a Restored Event says the Deployment was put back"
        );
        restored_events += 1;
    }
    eprintln!(
        "foreign field manager: 20 Deployments put back in {took:?}, {restored_events} Restored Events checked"
    );
}

/// Fault 5, the other half (called under the churn): replicas a set leaves unset belong to
/// whoever sets them, here an autoscaler-style owner scaling through the scale subresource as
/// the HPA controller does. The operator applies new generations without putting them back
/// and holds no claim on them, the status reports them, and once the spec sets them again
/// they are the operator's.
async fn autoscaled_replicas_stay(client: &Client) {
    const WAIT: Duration = Duration::from_secs(60);
    let ns = common::namespace(client, "autoscaled").await;
    let api = sets(client, &ns);
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let names: Vec<String> = (0..3).map(|i| format!("auto-{i}")).collect();
    for name in &names {
        let mut set = seed_example(&ns, name);
        set["spec"]["searcher"]
            .as_object_mut()
            .unwrap()
            .remove("replicas");
        let set: DynamicObject = serde_json::from_value(set).unwrap();
        api.create(&PostParams::default(), &set).await.unwrap();
    }
    let searcher_replicas = |name: &str| {
        let (deployments, name) = (deployments.clone(), format!("{name}-searcher"));
        async move { deployments.get_opt(&name).await.ok()??.spec?.replicas }
    };
    // The autoscaler scales through the scale subresource, as the HPA controller does.
    let scale = |name: &str, replicas: i32| {
        let (deployments, name) = (deployments.clone(), format!("{name}-searcher"));
        let hpa = PatchParams {
            field_manager: Some("hpa-style".into()),
            ..PatchParams::default()
        };
        async move {
            let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
            deployments.patch_scale(&name, &hpa, &patch).await.unwrap();
        }
    };
    let patch_spec = |name: &str, spec: serde_json::Value| {
        let (api, name) = (api.clone(), name.to_owned());
        async move {
            let patch = Patch::Merge(json!({ "spec": spec }));
            api.patch(&name, &PatchParams::default(), &patch)
                .await
                .unwrap();
        }
    };
    for name in &names {
        wait_for(
            &format!("{ns}/{name}: searcher created with the default 1"),
            WAIT,
            || async { (searcher_replicas(name).await == Some(1)).then_some(()) },
        )
        .await;
    }
    for name in &names {
        scale(name, 4).await;
        // A new generation: the operator applies every child again.
        patch_spec(name, json!({"writer": {"replicas": 2}})).await;
    }
    for name in &names {
        let what =
            format!("{ns}/{name}: new generation applied, the searchers' 4 kept and reported");
        wait_for(&what, WAIT, || async {
            let set = api.get(name).await.ok()?;
            let writer = deployments.get(&format!("{name}-writer")).await.ok()?;
            let status = &set.data["status"];
            (status["observedGeneration"] == json!(set.metadata.generation)
                && writer.spec?.replicas == Some(2)
                && status["searcher"]["replicas"] == 4
                && searcher_replicas(name).await == Some(4))
            .then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in &names {
        let searcher = deployments.get(&format!("{name}-searcher")).await.unwrap();
        assert_eq!(
            searcher.spec.as_ref().unwrap().replicas,
            Some(4),
            "{ns}/{name}"
        );
        assert!(
            !replicas_owners(&searcher)
                .iter()
                .any(|(manager, _)| manager == FIELD_MANAGER),
            "{ns}/{name}: the operator owns no unset replicas"
        );
    }
    // Set in the spec, they are the operator's again, over the autoscaler's.
    let first = names[0].as_str();
    patch_spec(first, json!({"searcher": {"replicas": 2}})).await;
    wait_for(
        &format!("{ns}/{first}: the spec's 2 searchers"),
        WAIT,
        || async { (searcher_replicas(first).await == Some(2)).then_some(()) },
    )
    .await;
    // Unset again, the operator lets go of them without moving them: they stay at 2, its
    // apply no longer owns them (a hand-over manager keeps them), and the autoscaler can
    // take them.
    patch_spec(first, json!({"searcher": {"replicas": null}})).await;
    let released = format!("{ns}/{first}: unset again, released at 2");
    wait_for(&released, WAIT, || async {
        let set = api.get(first).await.ok()?;
        let searcher = deployments.get(&format!("{first}-searcher")).await.ok()?;
        let handed_over =
            replicas_owners(&searcher) == [(HANDOVER_MANAGER.to_owned(), "Apply".to_owned())];
        (set.data["status"]["observedGeneration"] == json!(set.metadata.generation)
            && handed_over
            && searcher.spec?.replicas == Some(2))
        .then_some(())
    })
    .await;
    scale(first, 5).await;
    wait_for(
        &format!("{ns}/{first}: the autoscaler's 5 reported"),
        WAIT,
        || async {
            let set = api.get(first).await.ok()?;
            (set.data["status"]["searcher"]["replicas"] == 5
                && searcher_replicas(first).await == Some(5))
            .then_some(())
        },
    )
    .await;
    eprintln!(
        "autoscaled replicas: 3 sets kept their autoscaler's 4 searchers across a new generation"
    );
}

/// The (field manager, operation) of every managedFields entry that owns `spec.replicas`.
fn replicas_owners(deployment: &Deployment) -> Vec<(String, String)> {
    deployment
        .managed_fields()
        .iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0["f:spec"].get("f:replicas").is_some())
        })
        .map(|m| {
            let manager = m.manager.clone().unwrap_or_default();
            (manager, m.operation.clone().unwrap_or_default())
        })
        .collect()
}

/// Fault 6, under churn: 15 sets are updated and deleted at once (their reconciles in
/// flight), a namespace is deleted with its sets; then every replica is stopped, children of
/// 20 sets are deleted, and replicas start again. Everything converges with nothing left
/// behind. Returns the stopped replicas (their logs are checked at the end).
async fn deletions(
    client: &Client,
    replicas: &mut Vec<Replica>,
    fleet: &Fleet,
    opts: &common::ReplicaOptions,
) -> Vec<Replica> {
    let stop = CancellationToken::new();
    let churner = fleet.churn(client.clone(), 5, stop.clone());
    let in_flight: Vec<usize> = (0..fleet.count).filter(|i| i % 14 == 5).take(15).collect();
    for &i in &in_flight {
        fleet.removed.lock().unwrap().insert(i);
        let (ns, name) = fleet.place(i);
        let api = sets(client, &ns);
        let patch = Patch::Merge(json!({"spec": {"searcher": {"replicas": 4}}}));
        api.patch(&name, &PatchParams::default(), &patch)
            .await
            .unwrap();
        api.delete(&name, &DeleteParams::default()).await.unwrap();
    }
    // A whole namespace with its 7 sets (namespace i % 30 holds sets i, i + 30, ...).
    let gone_ns = fleet.namespaces[1].clone();
    for i in (1..fleet.count).step_by(fleet.namespaces.len()) {
        fleet.removed.lock().unwrap().insert(i);
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&gone_ns, &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every replica down; children of 20 sets deleted meanwhile, while the churn goes on.
    for r in replicas.iter() {
        r.signal(libc::SIGTERM);
    }
    for r in replicas.iter_mut() {
        let status = r.child.wait().unwrap();
        assert!(status.success(), "{} exits cleanly: {status}", r.identity);
    }
    let removed = fleet.removed.lock().unwrap().clone();
    let victims: Vec<usize> = (0..fleet.count)
        .filter(|i| i % 10 == 7 && !removed.contains(i))
        .take(20)
        .collect();
    for &i in &victims {
        let (ns, name) = fleet.place(i);
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .delete(&format!("{name}-searcher"), &DeleteParams::default())
            .await
            .unwrap();
        Api::<Service>::namespaced(client.clone(), &ns)
            .delete(&format!("{name}-coordinator"), &DeleteParams::default())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Instant::now();
    let stopped = std::mem::replace(
        replicas,
        ["f4", "f5", "f6"]
            .iter()
            .map(|id| Replica::start_with(id, "faults", SHARDS, opts))
            .collect(),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    churner.await.unwrap();
    wait_for(
        "the deleted namespace to be gone",
        Duration::from_secs(120),
        || async {
            namespaces
                .get_opt(&gone_ns)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    let took = fleet
        .converge(
            client,
            "deletions in flight and while down",
            Duration::from_secs(180),
        )
        .await;
    eprintln!(
        "deletions: {} sets deleted in flight, namespace {gone_ns} deleted, 40 children deleted while down; converged {:?} after the restart",
        in_flight.len(),
        restarted.elapsed().max(took)
    );
    for r in replicas.iter_mut() {
        assert!(
            r.child.try_wait().unwrap().is_none(),
            "replica {} is still running",
            r.identity
        );
    }
    stopped
}

/// After convergence nothing retries: no "reconcile failed" line is added over 10 s and
/// every replica's queue is empty (a deleted set or namespace left no key behind).
async fn no_error_repeats(replicas: &[Replica]) {
    let failures = |r: &Replica| r.log_text().matches("reconcile failed").count();
    let before: Vec<usize> = replicas.iter().map(failures).collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for (r, before) in replicas.iter().zip(before) {
        assert_eq!(
            failures(r),
            before,
            "{}: a reconcile kept failing",
            r.identity
        );
        let metrics = common::replica_http(&r.log, "/metrics").unwrap_or_default();
        let depth = common::metric(&metrics, "workqueue_depth{name=\"vecodexsets\"}");
        assert_eq!(depth, Some(0.0), "{}: the queue is empty", r.identity);
    }
}
