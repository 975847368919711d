//! Endings and failures: garbage collection, shutdown, name collisions, deletions mid-flight
//! and children the API server rejects.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::common::{self, namespace, seed_example, wait_for};
use crate::helpers::*;

#[tokio::test]
async fn deleting_the_set_garbage_collects_its_children() {
    let (client, ns) = setup("gc").await;
    create(&client, &ns, seed_example(&ns, "gc")).await;
    wait_children(&client, &ns, "gc", 3, 1, 0).await;
    sets(&client, &ns)
        .delete("gc", &DeleteParams::default())
        .await
        .unwrap();
    // The 1.20 garbage collector learns new types at a 30 s discovery resync.
    wait_for(
        "children garbage-collected",
        Duration::from_secs(90),
        || async {
            let c = children(&client, &ns, "gc").await;
            (c.0.is_empty() && c.1.is_empty() && c.2.is_empty()).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn sigterm_stops_the_operator_cleanly() {
    let (client, _) = setup("sigterm").await;
    let ns = namespace(&client, "sigterm-only").await;
    let cluster = common::cluster();
    let log = cluster
        .dir
        .join(format!("operator-sigterm-{}.log", std::process::id()));
    let mut child = common::spawn_operator(
        &cluster.kubeconfig,
        &log,
        &["--namespace", &ns, "--lease-group", "sigterm-test"],
    );
    wait_for("the second operator to sync", WAIT, || async {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("set cache synced")
            .then_some(())
    })
    .await;
    common::shared::signal(&child, libc::SIGTERM);
    let status = wait_for("exit after SIGTERM", Duration::from_secs(15), || {
        let s = child.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(std::fs::read_to_string(&log).unwrap().contains("stopped"));
}

#[tokio::test]
async fn a_name_collision_is_retried_with_growing_delays_while_others_converge() {
    let (client, ns) = setup("collide").await;
    // A Service the operator does not own, under the name the set needs.
    let squatter: Service = serde_json::from_value(json!({
        "metadata": {"name": "cl-searcher", "namespace": ns},
        "spec": {"ports": [{"port": 80}]}
    }))
    .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    services
        .create(&PostParams::default(), &squatter)
        .await
        .unwrap();
    create(&client, &ns, seed_example(&ns, "cl")).await;
    create(&client, &ns, seed_example(&ns, "fine")).await;

    // The other set converges meanwhile.
    wait_children(&client, &ns, "fine", 3, 1, 0).await;
    wait_status(&client, &ns, "fine", "the other set's status", |s| {
        condition(s, "Ready").is_some()
    })
    .await;

    // The colliding one fails, says why, and is retried with growing delays.
    let set = wait_for("ApplyFailed", WAIT, || async {
        let set = get_set(&client, &ns, "cl").await;
        condition(&set, "Ready")
            .is_some_and(|c| c["reason"] == "ApplyFailed")
            .then_some(set)
    })
    .await;
    let message = condition(&set, "Ready").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("cl-searcher") && message.contains("not controlled"),
        "{message}"
    );
    // Refused, not half-taken: the squatter carries no owner and no field of ours.
    let live = services.get("cl-searcher").await.unwrap();
    assert!(
        live.metadata.owner_references.is_none(),
        "{:?}",
        live.metadata.owner_references
    );
    let managers: Vec<_> = live
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.as_deref())
        .collect();
    assert!(
        !managers.contains(&"vecodex-operator"),
        "the operator wrote to the squatter: {managers:?}"
    );
    let key = format!("key={ns}/cl");
    let delays = wait_for(
        "backoff to grow past 2 s",
        Duration::from_secs(60),
        || async {
            let delays: Vec<u64> = common::operator_log()
                .lines()
                .filter(|l| l.contains(&key) && l.contains("reconcile failed"))
                .filter_map(|l| {
                    l.split("retry_in_ms=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .collect();
            (delays.last().copied().unwrap_or(0) >= 2000).then_some(delays)
        },
    )
    .await;
    assert!(
        delays.windows(2).all(|w| w[1] >= w[0]),
        "delays grow: {delays:?}"
    );
    assert_eq!(delays[0], 5, "the first retry waits the base delay");
    let warning = events(&client, &ns, "cl")
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("ApplyFailed"))
        .expect("a Warning event");
    assert!(
        warning.series.map_or(0, |s| s.count) >= 2,
        "repeats are counted on one Event"
    );
    let metrics = common::operator_metrics().await;
    let retries: f64 = metrics
        .lines()
        .find(|l| l.starts_with("workqueue_retries_total{name=\"vecodexsets\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("workqueue_retries_total");
    assert!(
        retries >= delays.len() as f64,
        "retries visible in metrics: {retries}"
    );

    // The collision goes and the spec changes: worked on at once, not after the backoff.
    services
        .delete("cl-searcher", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the squatter to be gone", WAIT, || async {
        services
            .get_opt("cl-searcher")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let changed = std::time::Instant::now();
    merge_spec(&client, &ns, "cl", json!({"searcher": {"replicas": 2}})).await;
    wait_children(&client, &ns, "cl", 3, 1, 0).await;
    wait_status(&client, &ns, "cl", "convergence after the fix", |s| {
        condition(s, "Ready").is_some_and(|c| c["reason"] != "ApplyFailed")
    })
    .await;
    let took = changed.elapsed();
    assert!(
        took < Duration::from_millis(delays.last().copied().unwrap_or(0)),
        "a spec change ended the {} ms backoff early (took {took:?})",
        delays.last().unwrap()
    );
}

/// "reconcile failed" lines of the shared operator for keys starting with `prefix`.
fn failures_for(prefix: &str) -> usize {
    common::operator_log()
        .lines()
        .filter(|l| l.contains("reconcile failed") && l.contains(&format!("key={prefix}")))
        .count()
}

#[tokio::test]
async fn deletions_mid_flight_leave_no_error_loop_and_no_leftovers() {
    let (client, ns) = setup("deletions").await;
    // A set deleted right after its creation, while its first reconcile runs.
    create(&client, &ns, seed_example(&ns, "fleeting")).await;
    sets(&client, &ns)
        .delete("fleeting", &DeleteParams::default())
        .await
        .unwrap();
    // The 1.20 garbage collector may need its 30 s discovery resync.
    wait_for(
        "no leftovers of the deleted set",
        Duration::from_secs(90),
        || async {
            let c = children(&client, &ns, "fleeting").await;
            (c.0.is_empty() && c.1.is_empty() && c.2.is_empty() && c.3.is_empty()).then_some(())
        },
    )
    .await;
    assert!(
        failures_for(&format!("{ns}/fleeting")) <= 2,
        "no error loop for a deleted set"
    );

    // A namespace deleted with sets in it.
    let doomed = common::namespace(&client, "doomed").await;
    for name in ["a", "b"] {
        create(&client, &doomed, seed_example(&doomed, name)).await;
    }
    wait_children(&client, &doomed, "a", 3, 1, 0).await;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&doomed, &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the namespace gone", Duration::from_secs(120), || async {
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .get_opt(&doomed)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        failures_for(&format!("{doomed}/")) <= 4,
        "no error loop for sets of a deleted namespace"
    );
}

/// Versions of every child of a set, by kind and name: a Deployment's generation (its
/// controller's status writes move its resourceVersion), the others' resourceVersion.
async fn child_versions(client: &Client, ns: &str, set: &str) -> BTreeMap<String, String> {
    let (d, s, i, c) = children(client, ns, set).await;
    let mut out = BTreeMap::new();
    for (kind, name, version) in d
        .iter()
        .map(|o| {
            let generation = o.metadata.generation.unwrap_or_default();
            (
                "Deployment",
                o.name_any(),
                Some(format!("generation {generation}")),
            )
        })
        .chain(
            s.iter()
                .map(|o| ("Service", o.name_any(), o.resource_version())),
        )
        .chain(
            i.iter()
                .map(|o| ("Ingress", o.name_any(), o.resource_version())),
        )
        .chain(
            c.iter()
                .map(|o| ("ConfigMap", o.name_any(), o.resource_version())),
        )
    {
        out.insert(format!("{kind} {name}"), version.unwrap_or_default());
    }
    out
}

/// A value `validate` accepts but the API server refuses (422): pod annotations over the
/// 256 KiB the API server allows on an object's metadata.
fn oversized_annotations() -> Value {
    json!({"example.com/blob": "x".repeat(300 * 1024)})
}

/// A child the API server rejects leaves no half-applied set: a new set whose searcher
/// Deployment is refused gets no child at all (what the reconcile created before the
/// rejection is undone); a converged set whose update would change two Deployments, one of
/// them refused, keeps every child as it was (the whole update is dry-run first). Both are
/// `InvalidSpec` saying the API server rejected a child, and nothing is retried until the
/// spec changes.
#[tokio::test]
async fn a_child_the_api_server_rejects_leaves_no_half_applied_set() {
    let (client, ns) = setup("rejected").await;
    let rejected = |s: &Value| {
        condition(s, "Ready").is_some_and(|c| {
            c["reason"] == "InvalidSpec"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(vecodex_operator::reconcile::REJECTED))
        })
    };

    // 1. A new set.
    let mut new = seed_example(&ns, "fresh");
    new["spec"]["searcher"]["podAnnotations"] = oversized_annotations();
    create(&client, &ns, new).await;
    wait_status(&client, &ns, "fresh", "a new set refused", rejected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        child_versions(&client, &ns, "fresh").await,
        BTreeMap::new(),
        "no child of a new set the API server refused"
    );

    // 2. An update of a converged set that changes two Deployments, one of them refused.
    create(&client, &ns, seed_example(&ns, "steady")).await;
    wait_children(&client, &ns, "steady", 3, 1, 0).await;
    wait_status(&client, &ns, "steady", "the set converged", |s| {
        condition(s, "Ready").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = child_versions(&client, &ns, "steady").await;
    assert_eq!(before.len(), 7);
    sets(&client, &ns)
        .patch(
            "steady",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "writer": {"image": "vecodex-writer-image:v2"},
                "searcher": {"podAnnotations": oversized_annotations()},
            }})),
        )
        .await
        .unwrap();
    wait_status(&client, &ns, "steady", "the update refused", rejected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        child_versions(&client, &ns, "steady").await,
        before,
        "a refused update changes no child, not even the writer it could have changed"
    );
    let writer = deployment(&client, &ns, "steady-writer").await.unwrap();
    assert_eq!(
        container(&writer).image.as_deref(),
        Some("vecodex-writer-image:latest")
    );

    // 3. Fixed: the writer's change goes through.
    sets(&client, &ns)
        .patch(
            "steady",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"searcher": {"podAnnotations": null}}})),
        )
        .await
        .unwrap();
    wait_for("the fixed update applied", WAIT, || async {
        let d = deployment(&client, &ns, "steady-writer").await?;
        (container(&d).image.as_deref() == Some("vecodex-writer-image:v2")).then_some(())
    })
    .await;
}
