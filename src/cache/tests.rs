//! The cache's reading of objects: what is kept, what is dropped, what is verified.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Resource;
use kube::core::{ObjectList, WatchEvent};

use serde::de::IgnoredAny;

use super::{Parts, Raw, Stored};

#[test]
fn a_verified_desired_digest_belongs_to_one_cached_version() {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("c".into());
    let stored = Stored::new(cm.clone());
    assert!(!stored.verified(42), "a new version has nothing verified");
    assert!(!stored.verified(0), "0 means none");
    stored.mark_verified(42);
    assert!(stored.verified(42));
    assert!(
        !stored.verified(43),
        "another desired object is compared again"
    );
    assert!(stored.clone().verified(42), "a clone is the same version");
    // The next watch event of the object is a new `Stored`: compared again, unless it
    // inherits from the version before with the same managed fields.
    let next = Stored::new(cm.clone());
    assert!(!next.verified(42));
    next.inherit_verified(&stored);
    assert!(next.verified(42));
    let mut changed = cm;
    changed.data = Some([("k".to_owned(), "v".to_owned())].into());
    let changed = Stored::new(changed);
    changed.inherit_verified(&stored);
    assert!(!changed.verified(42), "what the operator manages changed");
}

/// A Deployment as kube-apiserver prints it in a watch event: managedFields, the
/// last-applied annotation, fields the typed object does not print (`creationTimestamp:
/// null` in the template).
const WATCHED: &str = r#"{"type":"MODIFIED","object":{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"s-searcher","namespace":"t","uid":"d1","resourceVersion":"42","generation":3,"labels":{"app":"s"},"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"secret\":1}","note":"kept"},"ownerReferences":[{"apiVersion":"apps.vecodex.link/v1alpha1","kind":"VecodexSet","name":"s","uid":"u1","controller":true}],"managedFields":[{"manager":"vecodex-operator","operation":"Apply","apiVersion":"apps/v1","fieldsType":"FieldsV1","fieldsV1":{"f:spec":{"f:replicas":{}}}}]},"spec":{"replicas":2,"selector":{"matchLabels":{"app":"s"}},"template":{"metadata":{"creationTimestamp":null,"labels":{"app":"s"}},"spec":{"containers":[{"name":"searcher","image":"vecodex/searcher:1"}]}}},"status":{"observedGeneration":2,"replicas":2,"readyReplicas":1}}}"#;

#[test]
fn a_watched_object_is_kept_as_printed_without_managed_fields() {
    let event: WatchEvent<Raw<Deployment>> = serde_json::from_str(WATCHED).unwrap();
    let WatchEvent::Modified(raw) = event else {
        panic!("not a MODIFIED event")
    };
    assert_eq!(raw.meta().resource_version.as_deref(), Some("42"));
    assert_eq!(raw.meta().managed_fields, None);
    let stored = Stored::from_raw(raw);
    let json = String::from_utf8(stored.json()).unwrap();
    assert!(!json.contains("managedFields"), "{json}");
    assert!(!json.contains("last-applied"), "{json}");
    assert!(json.contains(r#""note":"kept""#), "{json}");
    assert_eq!(stored.key().unwrap(), "t/s-searcher");
    assert_eq!(stored.controller_key().unwrap(), "t/s");
    assert!(stored.controlled_by(Some("u1")));
    assert_eq!(
        (stored.generation, stored.observed_generation),
        (Some(3), Some(2))
    );
    #[derive(serde::Deserialize)]
    struct Replicas {
        replicas: Option<i32>,
    }
    let parts: Parts<Replicas, DeploymentStatus> = stored.parts();
    assert_eq!(parts.spec.unwrap().replicas, Some(2));
    let status = parts.status.unwrap();
    assert_eq!(status.ready_replicas, Some(1));
    let typed = stored.object().unwrap();
    assert_eq!(typed.spec.unwrap().replicas, Some(2));
    assert_eq!(stored.value()["spec"]["replicas"], 2);
}

#[test]
fn who_applies_the_replicas_is_read_from_managed_fields() {
    let applies = |entries: &str| {
        let json = WATCHED.replace(
            r#"[{"manager":"vecodex-operator","operation":"Apply","apiVersion":"apps/v1","fieldsType":"FieldsV1","fieldsV1":{"f:spec":{"f:replicas":{}}}}]"#,
            entries,
        );
        assert_ne!(json, WATCHED);
        let WatchEvent::Modified(raw) =
            serde_json::from_str::<WatchEvent<Raw<Deployment>>>(&json).unwrap()
        else {
            panic!("not a MODIFIED event")
        };
        Stored::from_raw(raw).applies_replicas()
    };
    let entry = |manager: &str, operation: &str, spec: &str| {
        format!(
            r#"{{"manager":"{manager}","operation":"{operation}","fieldsType":"FieldsV1","fieldsV1":{{"f:metadata":{{"f:labels":{{}}}},"f:spec":{spec}}}}}"#
        )
    };
    let replicas = r#"{"f:replicas":{},"f:template":{"f:spec":{}}}"#;
    let no_replicas = r#"{"f:template":{"f:spec":{}}}"#;
    let ours = entry("vecodex-operator", "Apply", replicas);
    assert!(applies(&format!("[{ours}]")));
    let hpa = entry("kube-controller-manager", "Update", replicas);
    assert!(applies(&format!("[{hpa},{ours}]")));
    assert!(!applies(&format!("[{hpa}]")));
    let released = entry("vecodex-operator", "Apply", no_replicas);
    assert!(!applies(&format!("[{released}]")));
    assert!(!applies(&format!(
        "[{}]",
        entry("vecodex-operator", "Update", replicas)
    )));
    assert!(!applies("[]"));
    // A Service never has them, whatever its managedFields say.
    let service = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"s","managedFields":[{"manager":"vecodex-operator","operation":"Apply","fieldsV1":{"f:spec":{"f:replicas":{}}}}]}}"#;
    let raw: Raw<k8s_openapi::api::core::v1::Service> = Raw::from_json(service).unwrap();
    assert!(!Stored::from_raw(raw).applies_replicas());
}

#[test]
fn a_listed_object_gets_its_kind_back() {
    // List items come without apiVersion and kind; a desired object has both, and must
    // still be found a subset of the live one.
    let list = r#"{"kind":"DeploymentList","apiVersion":"apps/v1","metadata":{"resourceVersion":"7"},"items":[{"metadata":{"name":"d","namespace":"t","resourceVersion":"5"},"spec":{"replicas":1}}]}"#;
    let list: ObjectList<Raw<Deployment>> = serde_json::from_str(list).unwrap();
    let stored = Stored::from_raw(list.items.into_iter().next().unwrap());
    let live = stored.value();
    assert_eq!(live["apiVersion"], "apps/v1");
    assert_eq!(live["kind"], "Deployment");
    assert_eq!(live["spec"]["replicas"], 1);
    assert_eq!(stored.observed_generation, None);
    let parts: Parts<IgnoredAny, DeploymentStatus> = stored.parts();
    assert!(parts.status.is_none());
}

#[test]
fn the_digest_ignores_status_versions_and_managed_fields() {
    let base: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(WATCHED).unwrap()["object"].clone();
    let digest =
        |v: &serde_json::Value| Raw::<Deployment>::from_json(&v.to_string()).unwrap().digest;
    let mut other = base.clone();
    other["status"]["readyReplicas"] = 2.into();
    other["metadata"]["resourceVersion"] = "43".into();
    other["metadata"]["managedFields"] = serde_json::json!([]);
    assert_eq!(digest(&other), digest(&base));
    other["spec"]["replicas"] = 3.into();
    assert_ne!(digest(&other), digest(&base));
    let mut relabelled = base.clone();
    relabelled["metadata"]["labels"]["app"] = "x".into();
    assert_ne!(digest(&relabelled), digest(&base));
}

#[test]
fn a_stored_object_comes_back_whole() {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("c".into());
    cm.metadata.namespace = Some("n".into());
    cm.metadata.uid = Some("u".into());
    cm.metadata.labels = Some([("a".to_owned(), "b".to_owned())].into());
    cm.data = Some([("k".to_owned(), "v".repeat(1000))].into());
    let stored = Stored::new(cm.clone());
    assert_eq!(stored.object(), Some(cm.clone()));
    assert_eq!(stored.value(), serde_json::to_value(&cm).unwrap());
    assert_eq!(stored.name(), "c");
    assert_eq!(stored.key().unwrap(), "n/c");
    assert_eq!(stored.controller_key(), None);
    assert!(
        stored.packed.len() < 200,
        "packed: {} bytes",
        stored.packed.len()
    );
    let mut changed = cm.clone();
    changed.data = Some([("k".to_owned(), "w".into())].into());
    assert_ne!(Stored::new(changed).digest, stored.digest);
    let mut status_only = cm;
    status_only.metadata.resource_version = Some("9".into());
    assert_eq!(Stored::new(status_only).digest, stored.digest);
}

#[test]
fn observed_generation_is_read_from_status_and_status_is_not_managed() {
    let mut deployment = Deployment::default();
    deployment.metadata.name = Some("d".into());
    deployment.metadata.generation = Some(3);
    let unobserved = Stored::new(deployment.clone());
    assert_eq!(unobserved.generation, Some(3));
    assert_eq!(unobserved.observed_generation, None);
    deployment.status = Some(DeploymentStatus {
        observed_generation: Some(2),
        ready_replicas: Some(1),
        ..Default::default()
    });
    let observed = Stored::new(deployment.clone());
    assert_eq!(observed.observed_generation, Some(2));
    assert_eq!(observed.digest, unobserved.digest);
    deployment.spec = Some(DeploymentSpec {
        replicas: Some(2),
        ..Default::default()
    });
    assert_ne!(Stored::new(deployment).digest, observed.digest);
}
