//! A set's life: its children and status, spec changes and pruning, drift repaired.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::common::{self, seed_example, wait_for};
use crate::helpers::*;

#[tokio::test]
async fn seed_example_gets_all_its_children_and_a_truthful_status() {
    let (client, ns) = setup("seed").await;
    create(&client, &ns, seed_example(&ns, "search-cluster")).await;
    let (deployments, services, ingresses, config_maps) =
        wait_children(&client, &ns, "search-cluster", 3, 1, 0).await;
    assert!(config_maps.is_empty(), "the seed has no config");

    let mut names: Vec<_> = deployments.iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "search-cluster-coordinator",
            "search-cluster-searcher",
            "search-cluster-writer"
        ]
    );
    let writer = deployments
        .iter()
        .find(|d| d.name_any() == "search-cluster-writer")
        .unwrap();
    let c = container(writer);
    assert_eq!(c.image.as_deref(), Some("vecodex-writer-image:latest"));
    assert_eq!(
        c.resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"].0,
        "1"
    );
    let args = c.args.clone().unwrap().join(" ");
    assert!(
        args.starts_with("--mode writer --listening-port 44400 --hostname $(POD_IP)"),
        "{args}"
    );
    let owner = &writer.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("VecodexSet", Some(true))
    );
    assert!(
        writer
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|m| m.manager.as_deref() == Some("vecodex-operator")
                && m.operation.as_deref() == Some("Apply")),
        "children are server-side applied by the vecodex-operator field manager"
    );
    let searcher = deployments
        .iter()
        .find(|d| d.name_any() == "search-cluster-searcher")
        .unwrap();
    assert_eq!(searcher.spec.as_ref().unwrap().replicas, Some(3));

    let coordinator_svc = services
        .iter()
        .find(|s| s.name_any() == "search-cluster-coordinator")
        .expect("the Service the Ingress points at exists");
    let ports: Vec<_> = coordinator_svc
        .spec
        .as_ref()
        .unwrap()
        .ports
        .iter()
        .flatten()
        .map(|p| p.name.clone().unwrap())
        .collect();
    assert_eq!(ports, ["grpc", "metrics"]);
    let ingress = &ingresses[0];
    assert_eq!(ingress.name_any(), "search-cluster");
    let rule = &ingress.spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
    let host = common::seed_host(&ns, "search-cluster");
    assert_eq!(rule.host.as_deref(), Some(host.as_str()));

    // No kubelet has run the pods yet: not ready, and the status says so.
    let set = wait_status(&client, &ns, "search-cluster", "status of the seed", |s| {
        condition(s, "Ready").is_some()
    })
    .await;
    let ready = condition(&set, "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "ComponentsNotReady");
    assert_eq!(set["status"]["searcher"]["replicas"], 3);
    assert_eq!(set["status"]["ingressHost"], host.as_str());
    for t in ["Progressing", "Degraded"] {
        assert!(condition(&set, t).is_some(), "{t} condition");
    }

    let evs = wait_for("an Applied event", WAIT, || async {
        let evs = events(&client, &ns, "search-cluster").await;
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("Applied"))
            .then_some(evs)
    })
    .await;
    assert!(
        evs.iter().all(|e| e.type_.as_deref() == Some("Normal")),
        "no warnings for a valid set"
    );
}

#[tokio::test]
async fn status_follows_the_deployments() {
    let (client, ns) = setup("status").await;
    create(&client, &ns, seed_example(&ns, "st")).await;
    wait_children(&client, &ns, "st", 3, 1, 0).await;
    let set = wait_for(
        "the set to become Ready once its pods run",
        Duration::from_secs(60),
        || async {
            kubelet_marks_pods_ready(&client, &ns, "st").await;
            let set = get_set(&client, &ns, "st").await;
            (condition(&set, "Ready").map(|c| c["status"] == "True") == Some(true)).then_some(set)
        },
    )
    .await;
    assert_eq!(set["status"]["searcher"]["ready"], "3/3");
    assert_eq!(set["status"]["coordinator"]["availableReplicas"], 1);
    assert_eq!(condition(&set, "Progressing").unwrap()["status"], "False");

    // Scale the searchers up: the new pods are not ready, so the set is not either.
    merge_spec(&client, &ns, "st", json!({"searcher": {"replicas": 4}})).await;
    let set = wait_status(&client, &ns, "st", "not ready after scale-up", |s| {
        condition(s, "Ready").map(|c| c["status"] == "False") == Some(true)
            && s["status"]["searcher"]["replicas"] == 4
    })
    .await;
    assert!(
        condition(&set, "Ready").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("searcher")
    );
    wait_for(
        "ready again after the kubelet ran the new pod",
        Duration::from_secs(60),
        || async {
            kubelet_marks_pods_ready(&client, &ns, "st").await;
            let set = get_set(&client, &ns, "st").await;
            (set["status"]["searcher"]["ready"] == "4/4"
                && condition(&set, "Ready").map(|c| c["status"] == "True") == Some(true))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn spec_changes_reach_the_children_and_removed_parts_are_pruned() {
    let (client, ns) = setup("changes").await;
    create(&client, &ns, seed_example(&ns, "ch")).await;
    wait_children(&client, &ns, "ch", 3, 1, 0).await;

    merge_spec(
        &client,
        &ns,
        "ch",
        json!({
            "coordinator": {"image": "registry.example.com/vecodex/coordinator:v2"},
            "searcher": {"replicas": 2, "config": {"indexes": [{"name": "docs", "shard": 1}]}},
            "writer": {"resources": {"limits": {"memory": "256Mi"}}},
        }),
    )
    .await;
    let (_, _, _, config_maps) = wait_children(&client, &ns, "ch", 3, 1, 1).await;
    let cm = &config_maps[0];
    assert_eq!(cm.name_any(), "ch-searcher-config");
    let content: Value = serde_json::from_str(&cm.data.as_ref().unwrap()["config.json"]).unwrap();
    assert_eq!(content, json!({"indexes": [{"name": "docs", "shard": 1}]}));

    let checksum = wait_for("changes in the Deployments", WAIT, || async {
        let coordinator = deployment(&client, &ns, "ch-coordinator").await?;
        let writer = deployment(&client, &ns, "ch-writer").await?;
        let searcher = deployment(&client, &ns, "ch-searcher").await?;
        let ok = container(&coordinator).image.as_deref()
            == Some("registry.example.com/vecodex/coordinator:v2")
            && container(&writer)
                .resources
                .as_ref()?
                .limits
                .as_ref()?
                .get("memory")?
                .0
                == "256Mi"
            && searcher.spec.as_ref()?.replicas == Some(2)
            && container(&searcher)
                .args
                .as_ref()?
                .contains(&"--config-path".to_owned());
        let annotations = searcher
            .spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .clone()?;
        ok.then(|| annotations.get("vecodex.link/config-checksum").cloned())
            .flatten()
    })
    .await;

    // A config change rolls the pods through the checksum annotation.
    merge_spec(
        &client,
        &ns,
        "ch",
        json!({"searcher": {"config": {"indexes": [{"name": "docs", "shard": 2}]}}}),
    )
    .await;
    wait_for("a new config checksum", WAIT, || async {
        let searcher = deployment(&client, &ns, "ch-searcher").await?;
        let sum = searcher
            .spec?
            .template
            .metadata?
            .annotations?
            .get("vecodex.link/config-checksum")
            .cloned()?;
        (sum != checksum).then_some(())
    })
    .await;

    // Removing config deletes the ConfigMap and the flag; removing ingress deletes the Ingress.
    merge_spec(
        &client,
        &ns,
        "ch",
        json!({"searcher": {"config": null}, "ingress": null}),
    )
    .await;
    wait_children(&client, &ns, "ch", 3, 0, 0).await;
    let searcher = deployment(&client, &ns, "ch-searcher").await.unwrap();
    assert!(
        !container(&searcher)
            .args
            .as_ref()
            .unwrap()
            .contains(&"--config-path".to_owned())
    );
    let set = wait_status(
        &client,
        &ns,
        "ch",
        "status after removing the ingress",
        |s| s["status"]["ingressHost"].is_null(),
    )
    .await;
    assert!(set["status"]["ingressHost"].is_null());
}

#[tokio::test]
async fn edited_and_deleted_children_are_repaired() {
    let (client, ns) = setup("drift").await;
    create(&client, &ns, seed_example(&ns, "dr")).await;
    wait_children(&client, &ns, "dr", 3, 1, 0).await;
    // Once the generation is applied, a change to a child is a repair ("Restored").
    wait_status(&client, &ns, "dr", "the generation applied", |s| {
        s["status"]["observedGeneration"] == 1
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);

    // Someone edits a field the operator manages, as `kubectl edit` would.
    deployments
        .patch("dr-writer", &PatchParams { field_manager: Some("kubectl-edit".into()), ..Default::default() },
            &Patch::Strategic(json!({"metadata": {"labels": {"team": "search"}}, "spec": {"replicas": 7, "template": {"spec": {"containers": [{"name": "writer", "image": "evil:1"}]}}}})))
        .await
        .unwrap();
    wait_for("the writer Deployment to be put back", WAIT, || async {
        let d = deployment(&client, &ns, "dr-writer").await?;
        (container(&d).image.as_deref() == Some("vecodex-writer-image:latest")
            && d.spec.as_ref()?.replicas == Some(1))
        .then_some(())
    })
    .await;
    // ... and says so in an Event, while the label it does not manage stays.
    let d = deployment(&client, &ns, "dr-writer").await.unwrap();
    assert_eq!(
        d.labels().get("team").map(String::as_str),
        Some("search"),
        "a field the operator does not manage stays"
    );
    wait_for("an Event about the repair", WAIT, || async {
        events(&client, &ns, "dr")
            .await
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Restored")
                    && e.note
                        .as_deref()
                        .unwrap_or("")
                        .contains("updated Deployment dr-writer")
            })
            .then_some(())
    })
    .await;

    // Someone deletes a Service and the Ingress.
    let old_uid = services.get("dr-searcher").await.unwrap().uid();
    services
        .delete("dr-searcher", &DeleteParams::default())
        .await
        .unwrap();
    Api::<Ingress>::namespaced(client.clone(), &ns)
        .delete("dr", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "the Service and the Ingress to be recreated",
        WAIT,
        || async {
            let svc = services.get_opt("dr-searcher").await.ok()??;
            let ing = Api::<Ingress>::namespaced(client.clone(), &ns)
                .get_opt("dr")
                .await
                .ok()??;
            (svc.uid() != old_uid && ing.metadata.deletion_timestamp.is_none()).then_some(())
        },
    )
    .await;

    // Someone removes the label the operator's watch selects on: it comes back.
    services
        .patch(
            "dr-writer",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}})),
        )
        .await
        .unwrap();
    wait_for("the managed-by label to be restored", WAIT, || async {
        let svc = services.get("dr-writer").await.ok()?;
        (svc.labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("vecodex-operator"))
        .then_some(())
    })
    .await;
}
