//! What the end-to-end tests share: set and child accessors, waits, and the simulated kubelet.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use vecodex_operator::crd::VecodexSet;

use crate::common::{client, namespace, operator, wait_for};

pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn sets(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<VecodexSet>(&()))
}

pub(crate) async fn create(client: &Client, ns: &str, value: Value) {
    let obj: DynamicObject = serde_json::from_value(value).unwrap();
    sets(client, ns)
        .create(&PostParams::default(), &obj)
        .await
        .expect("create VecodexSet");
}

pub(crate) async fn merge_spec(client: &Client, ns: &str, name: &str, spec: Value) {
    sets(client, ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("patch VecodexSet");
}

pub(crate) async fn get_set(client: &Client, ns: &str, name: &str) -> Value {
    serde_json::to_value(sets(client, ns).get(name).await.expect("get set")).unwrap()
}

pub(crate) fn condition<'a>(set: &'a Value, type_: &str) -> Option<&'a Value> {
    set["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Waits until the status describes the current generation and `check` holds.
pub(crate) async fn wait_status(
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

pub(crate) fn selector(set: &str) -> ListParams {
    ListParams::default().labels(&format!(
        "app.kubernetes.io/instance={set},app.kubernetes.io/managed-by=vecodex-operator"
    ))
}

pub(crate) async fn children(
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

pub(crate) async fn wait_children(
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

pub(crate) async fn deployment(client: &Client, ns: &str, name: &str) -> Option<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

pub(crate) fn container(d: &Deployment) -> &k8s_openapi::api::core::v1::Container {
    &d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

pub(crate) async fn events(client: &Client, ns: &str, set: &str) -> Vec<Event> {
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
pub(crate) async fn kubelet_marks_pods_ready(client: &Client, ns: &str, set: &str) {
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

pub(crate) async fn setup(prefix: &str) -> (Client, String) {
    operator();
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    (client, ns)
}
