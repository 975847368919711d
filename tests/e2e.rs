//! End-to-end behaviour on a real control plane: children, changes, drift, status, invalid
//! specs, garbage collection and shutdown.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{client, namespace, operator, seed_example, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use vecodex_operator::crd::VecodexSet;

const WAIT: Duration = Duration::from_secs(30);

fn sets(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<VecodexSet>(&()))
}

async fn create(client: &Client, ns: &str, value: Value) {
    let obj: DynamicObject = serde_json::from_value(value).unwrap();
    sets(client, ns)
        .create(&PostParams::default(), &obj)
        .await
        .expect("create VecodexSet");
}

async fn merge_spec(client: &Client, ns: &str, name: &str, spec: Value) {
    sets(client, ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("patch VecodexSet");
}

async fn get_set(client: &Client, ns: &str, name: &str) -> Value {
    serde_json::to_value(sets(client, ns).get(name).await.expect("get set")).unwrap()
}

fn condition<'a>(set: &'a Value, type_: &str) -> Option<&'a Value> {
    set["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Waits until the status describes the current generation and `check` holds.
async fn wait_status(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(what, WAIT, || async {
        let set = get_set(client, ns, name).await;
        (set["status"]["observedGeneration"] == set["metadata"]["generation"] && check(&set))
            .then_some(set)
    })
    .await
}

fn selector(set: &str) -> ListParams {
    ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={set},app.kubernetes.io/managed-by=vecodex-operator"
    ))
}

async fn children(
    client: &Client,
    ns: &str,
    set: &str,
) -> (Vec<Deployment>, Vec<Service>, Vec<Ingress>, Vec<ConfigMap>) {
    let lp = selector(set);
    (
        Api::<Deployment>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .unwrap()
            .items,
        Api::<Service>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .unwrap()
            .items,
        Api::<Ingress>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .unwrap()
            .items,
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .list(&lp)
            .await
            .unwrap()
            .items,
    )
}

async fn wait_children(
    client: &Client,
    ns: &str,
    set: &str,
    deployments: usize,
    ingresses: usize,
    config_maps: usize,
) -> (Vec<Deployment>, Vec<Service>, Vec<Ingress>, Vec<ConfigMap>) {
    wait_for(&format!("children of {ns}/{set}"), WAIT, || async {
        let c = children(client, ns, set).await;
        (c.0.len() == deployments
            && c.1.len() == deployments
            && c.2.len() == ingresses
            && c.3.len() == config_maps)
            .then_some(c)
    })
    .await
}

async fn deployment(client: &Client, ns: &str, name: &str) -> Option<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

fn container(d: &Deployment) -> &k8s_openapi::api::core::v1::Container {
    &d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

async fn events(client: &Client, ns: &str, set: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(set))
        .filter(|e| e.reporting_controller.as_deref() == Some("vecodex-operator"))
        .collect()
}

/// Acts as the kubelet: marks every pod of the set Running and Ready, so the ReplicaSet and
/// deployment controllers report the Deployments available.
async fn kubelet_marks_pods_ready(client: &Client, ns: &str, set: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={set}"));
    for pod in pods.list(&lp).await.unwrap().items {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let status = json!({"status": {
            "phase": "Running",
            "podIP": "10.244.0.10",
            "startTime": now,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}
            ]
        }});
        // The pod may be replaced meanwhile; the next round picks up its successor.
        let _ = pods
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await;
    }
}

async fn setup(prefix: &str) -> (Client, String) {
    operator();
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    (client, ns)
}

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

/// Each case: a patch that the schema accepts but the operator must refuse, and the field
/// the condition must name.
fn invalid_cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "image",
            json!({"writer": {"image": "Bad Image!!"}}),
            "spec.writer.image",
        ),
        (
            "host",
            json!({"ingress": {"host": "not_a_host"}}),
            "spec.ingress.host",
        ),
        (
            "requests",
            json!({"searcher": {"resources": {"requests": {"cpu": "2"}}}}),
            "spec.searcher.resources.requests.cpu",
        ),
        (
            "replicas",
            json!({"searcher": {"replicas": common::MAX_REPLICAS + 1}}),
            "spec.searcher.replicas",
        ),
        (
            "config",
            json!({"coordinator": {"config": "not an object"}}),
            "spec.coordinator.config",
        ),
    ]
}

#[tokio::test]
async fn invalid_specs_get_a_condition_and_an_event_and_change_no_child() {
    let (client, ns) = setup("invalid").await;
    create(&client, &ns, seed_example(&ns, "iv")).await;
    wait_children(&client, &ns, "iv", 3, 1, 0).await;
    wait_status(&client, &ns, "iv", "first status", |s| {
        condition(s, "Ready").is_some()
    })
    .await;
    // What the operator manages: labels and spec (resourceVersions move with the deployment
    // controller's status writes).
    let versions = |c: &(Vec<Deployment>, Vec<Service>, Vec<Ingress>, Vec<ConfigMap>)| -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for d in &c.0 {
            m.insert(format!("d/{}", d.name_any()), format!("{:?}{:?}", d.metadata.labels, d.spec));
        }
        for s in &c.1 {
            m.insert(format!("s/{}", s.name_any()), format!("{:?}{:?}", s.metadata.labels, s.spec));
        }
        for i in &c.2 {
            m.insert(format!("i/{}", i.name_any()), format!("{:?}{:?}", i.metadata.labels, i.spec));
        }
        m
    };

    for (case, patch, field) in invalid_cases() {
        let before = versions(&children(&client, &ns, "iv").await);
        merge_spec(&client, &ns, "iv", patch).await;
        let set = wait_status(
            &client,
            &ns,
            "iv",
            &format!("InvalidSpec for {case}"),
            |s| condition(s, "Ready").is_some_and(|c| c["reason"] == "InvalidSpec"),
        )
        .await;
        let message = condition(&set, "Ready").unwrap()["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(field), "{case}: {message:?} names {field}");
        wait_for(&format!("a Warning event for {case}"), WAIT, || async {
            events(&client, &ns, "iv")
                .await
                .into_iter()
                .any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("InvalidSpec")
                        && e.note.as_deref().unwrap_or("").contains(field)
                })
                .then_some(())
        })
        .await;
        assert_eq!(
            versions(&children(&client, &ns, "iv").await),
            before,
            "{case}: no child changed"
        );

        // Fixing the spec recovers.
        create_or_replace_spec(&client, &ns, "iv").await;
        wait_status(&client, &ns, "iv", &format!("recovery from {case}"), |s| {
            condition(s, "Ready").is_some_and(|c| c["reason"] != "InvalidSpec")
        })
        .await;
    }
}

/// Puts the seed spec back (a JSON merge patch cannot remove what a case added inside maps).
async fn create_or_replace_spec(client: &Client, ns: &str, name: &str) {
    let seed = seed_example(ns, name);
    let api = sets(client, ns);
    // The operator writes status meanwhile: retry on conflicts, as any client must.
    wait_for("the spec to be replaced", WAIT, || async {
        let mut current = api.get(name).await.ok()?;
        current.data["spec"] = seed["spec"].clone();
        api.replace(name, &PostParams::default(), &current)
            .await
            .ok()
    })
    .await;
}

#[tokio::test]
async fn a_set_invalid_from_the_start_creates_nothing() {
    let (client, ns) = setup("bornbad").await;
    let mut v = seed_example(&ns, "bb");
    v["spec"]["coordinator"]["image"] = json!("no spaces allowed");
    create(&client, &ns, v).await;
    let set = wait_status(&client, &ns, "bb", "InvalidSpec", |s| {
        condition(s, "Ready").is_some_and(|c| c["reason"] == "InvalidSpec")
    })
    .await;
    assert!(
        condition(&set, "Ready").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("spec.coordinator.image")
    );
    let c = children(&client, &ns, "bb").await;
    assert_eq!((c.0.len(), c.1.len(), c.2.len(), c.3.len()), (0, 0, 0, 0));
    merge_spec(
        &client,
        &ns,
        "bb",
        json!({"coordinator": {"image": "vecodex/coordinator:1"}}),
    )
    .await;
    wait_children(&client, &ns, "bb", 3, 1, 0).await;
}

#[tokio::test]
async fn the_schema_rejects_what_it_can_express() {
    let (client, ns) = setup("schema").await;
    for (what, mutate) in [
        ("negative replicas", json!({"searcher": {"replicas": -1}})),
        ("port out of range", json!({"writer": {"port": 70000}})),
        (
            "bad pull policy",
            json!({"writer": {"imagePullPolicy": "Sometimes"}}),
        ),
    ] {
        let mut v = seed_example(&ns, "schema");
        for (component, fields) in mutate.as_object().unwrap() {
            for (k, val) in fields.as_object().unwrap() {
                v["spec"][component][k] = val.clone();
            }
        }
        let obj: DynamicObject = serde_json::from_value(v).unwrap();
        let err = sets(&client, &ns)
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(what);
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 422),
            "{what}: {err}"
        );
    }
    let mut v = seed_example(&ns, "schema");
    v["spec"]["writer"].as_object_mut().unwrap().remove("image");
    let obj: DynamicObject = serde_json::from_value(v).unwrap();
    assert!(
        sets(&client, &ns)
            .create(&PostParams::default(), &obj)
            .await
            .is_err(),
        "image is required"
    );
}

#[tokio::test]
async fn seed_file_applies_unchanged_with_kubectl() {
    let (client, _) = setup("kubectl").await;
    common::kubectl_apply("deploy/samples/vecodexset-example.yaml");
    wait_children(&client, "default", "search-cluster", 3, 1, 0).await;
}

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
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
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
