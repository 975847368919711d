//! Invalid specs: a condition and an Event, no child changed; what the schema rejects; the seed
//! file applied unchanged.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{DynamicObject, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::common::{self, seed_example, wait_for};
use crate::helpers::*;

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
