//! The `VecodexSet` custom resource: spec and status types, and the CRD generated from them.
//!
//! The schema must install on a v1.20 API server, so it uses only structural OpenAPI v3
//! (minimum/maximum/enum/maxLength); semantic checks the schema cannot express live in
//! [`crate::validate`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "apps.vecodex.link";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "VecodexSet";

pub const DEFAULT_GRPC_PORT: i32 = 44400;
pub const DEFAULT_METRICS_PORT: i32 = 8080;
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://etcd:2379";
pub const DEFAULT_S3_ENDPOINT: &str = "http://minio:9000";
/// The user and groups of the pods unless `securityContext` sets them: not root, and the
/// same numeric user as distroless's `nonroot`.
pub const DEFAULT_RUN_AS_USER: i64 = 65532;
pub const DEFAULT_RUN_AS_GROUP: i64 = 65532;
pub const DEFAULT_FS_GROUP: i64 = 65532;

/// A Vecodex vector-search cluster: one coordinator, one writer and a group of searchers.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "apps.vecodex.link",
    version = "v1alpha1",
    kind = "VecodexSet",
    namespaced,
    shortname = "vxs",
    category = "vecodex",
    status = "VecodexSetStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Coordinator","type":"string","jsonPath":".status.coordinator.ready","description":"ready/desired coordinator replicas"}"#,
    printcolumn = r#"{"name":"Writer","type":"string","jsonPath":".status.writer.ready","description":"ready/desired writer replicas"}"#,
    printcolumn = r#"{"name":"Searcher","type":"string","jsonPath":".status.searcher.ready","description":"ready/desired searcher replicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VecodexSetSpec {
    /// The coordinator: routes searches to the searchers; the Ingress points at it.
    pub coordinator: ComponentSpec,
    /// The writer: accepts writes and builds index segments.
    pub writer: ComponentSpec,
    /// The searchers: serve one index shard each.
    pub searcher: ComponentSpec,
    /// Expose the coordinator's gRPC port through an Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// etcd used by Vecodex for service discovery (passed as `--etcd-address`).
    #[serde(default = "default_etcd_endpoint")]
    #[schemars(length(min = 1, max = 1024))]
    pub etcd_endpoint: String,
    /// S3-compatible storage for index segments (passed as `--s3-host`).
    #[serde(default = "default_s3_endpoint")]
    #[schemars(length(min = 1, max = 1024))]
    pub s3_endpoint: String,
    /// Pull secrets for the component images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
}

fn default_etcd_endpoint() -> String {
    DEFAULT_ETCD_ENDPOINT.to_owned()
}
fn default_s3_endpoint() -> String {
    DEFAULT_S3_ENDPOINT.to_owned()
}
fn default_grpc_port() -> i32 {
    DEFAULT_GRPC_PORT
}
fn default_metrics_port() -> i32 {
    DEFAULT_METRICS_PORT
}

/// One Vecodex process group (coordinator, writer or searcher).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Container image reference.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Number of pods. Leave it unset to let another owner, such as a HorizontalPodAutoscaler,
    /// set the Deployment's replicas: the operator then never writes them (a new Deployment
    /// starts with Kubernetes' default of 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Compute resources, extended resources such as `nvidia.com/gpu` included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Overrides the container command (default: the `vecodex-app` binary of the Vecodex images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Overrides every argument the operator would generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Extra environment variables (`POD_IP` is always set by the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_annotations: Option<BTreeMap<String, String>>,
    /// Extra pod labels; they can not replace the operator's selector labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// gRPC listening port.
    #[serde(default = "default_grpc_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Prometheus metrics port.
    #[serde(default = "default_metrics_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub metrics_port: i32,
    /// The user and groups the pods run as. Pods always run as a non-root user (65532 unless
    /// set here), drop every capability and use the runtime's seccomp profile; user 0 is
    /// refused unless the operator runs with `--allow-run-as-root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<ComponentSecurity>,
    /// Free-form Vecodex configuration (JSON object), rendered into a ConfigMap and passed with
    /// `--config-path`. Keys `mode`, `port`, `hostname`, `etcd_address` and `s3-host` are always
    /// overridden by flags the operator sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub config: Option<serde_json::Value>,
}

/// What a set may choose of its pods' security context: numeric user and groups only. No
/// field of the CRD can add capabilities, privilege, host access, volumes or a
/// ServiceAccount.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSecurity {
    /// `runAsUser` of the pods (default 65532).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub run_as_user: Option<i64>,
    /// `runAsGroup` of the pods (default 65532).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub run_as_group: Option<i64>,
    /// `fsGroup` of the pods: the group that owns mounted volumes (default 65532).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub fs_group: Option<i64>,
}

fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    // No `type`: the schema accepts any JSON so that a non-object is reported as an
    // InvalidSpec condition naming the field instead of an opaque rejection.
    schemars::json_schema!({
        "description": "Free-form Vecodex configuration; must be a JSON object.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name routed to the coordinator.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// `spec.ingressClassName` of the Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub class_name: Option<String>,
    /// Extra annotations; they override the default gRPC backend annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Secret holding the TLS certificate for `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub tls_secret_name: Option<String>,
}

/// What the operator last observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VecodexSetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<ComponentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<ComponentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub searcher: Option<ComponentStatus>,
    /// Host served by the Ingress, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_host: Option<String>,
}

/// Replica counts of one component, read from its Deployment.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Desired replicas (from the spec).
    pub replicas: i32,
    pub ready_replicas: i32,
    pub updated_replicas: i32,
    pub available_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    pub ready: String,
}

/// A condition in the standard Kubernetes shape (`metav1.Condition`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl VecodexSetSpec {
    pub fn component(&self, c: Component) -> &ComponentSpec {
        match c {
            Component::Coordinator => &self.coordinator,
            Component::Writer => &self.writer,
            Component::Searcher => &self.searcher,
        }
    }
}

impl VecodexSetStatus {
    pub fn component_mut(&mut self, c: Component) -> &mut Option<ComponentStatus> {
        match c {
            Component::Coordinator => &mut self.coordinator,
            Component::Writer => &mut self.writer,
            Component::Searcher => &mut self.searcher,
        }
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The three Vecodex process modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Coordinator,
    Writer,
    Searcher,
}

impl Component {
    pub const ALL: [Component; 3] = [Self::Coordinator, Self::Writer, Self::Searcher];

    /// The name used in child names, labels and the `--mode` flag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Coordinator => "coordinator",
            Self::Writer => "writer",
            Self::Searcher => "searcher",
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Fields whose schema comes from Kubernetes' own types; their nested descriptions are
/// dropped so the CRD stays well under the 256 KiB `kubectl apply` annotation limit.
const UPSTREAM_TYPED_FIELDS: [&str; 5] = [
    "affinity",
    "tolerations",
    "env",
    "resources",
    "imagePullSecrets",
];

/// Removes `key` from every object of `schema`, however deep.
fn remove_key_everywhere(schema: &mut serde_json::Value, key: &str) {
    match schema {
        serde_json::Value::Object(map) => {
            map.remove(key);
            map.values_mut().for_each(|v| remove_key_everywhere(v, key));
        }
        serde_json::Value::Array(items) => {
            items.iter_mut().for_each(|v| remove_key_everywhere(v, key))
        }
        _ => {}
    }
}

/// Removes `null` from enums: schemars lists it for optional enums (a null in the spec is
/// pruned as an absent field), and the v1.20 API server fails to convert a CRD whose
/// enum holds a null.
fn drop_null_enum_values(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            map.values_mut().for_each(drop_null_enum_values);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_null_enum_values),
        _ => {}
    }
}

/// Keeps the top description of `UPSTREAM_TYPED_FIELDS` and removes every one below them.
fn trim_upstream_descriptions(schema: &mut serde_json::Value) {
    let serde_json::Value::Object(map) = schema else {
        if let serde_json::Value::Array(items) = schema {
            items.iter_mut().for_each(trim_upstream_descriptions);
        }
        return;
    };
    if let Some(serde_json::Value::Object(props)) = map.get_mut("properties") {
        for (name, prop) in props.iter_mut() {
            if UPSTREAM_TYPED_FIELDS.contains(&name.as_str()) {
                if let serde_json::Value::Object(p) = prop {
                    for (k, v) in p.iter_mut() {
                        if k != "description" {
                            remove_key_everywhere(v, "description");
                        }
                    }
                }
            } else {
                trim_upstream_descriptions(prop);
            }
        }
    }
    for (k, v) in map.iter_mut() {
        if k != "properties" {
            trim_upstream_descriptions(v);
        }
    }
}

/// The CustomResourceDefinition of `VecodexSet`.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = VecodexSet::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            && let Ok(mut value) = serde_json::to_value(&*schema)
        {
            trim_upstream_descriptions(&mut value);
            drop_null_enum_values(&mut value);
            // No `nullable` in the spec. A null in a non-nullable field is pruned by the API
            // server, so `ingress: null` still means no Ingress; but the OpenAPI v2 document
            // the API server publishes for kubectl drops a nullable field's whole schema, so
            // `kubectl apply` would miss an unknown field under `ingress` or `resources` (a
            // v1.20 API server prunes unknown fields silently: kubectl's validation is what
            // rejects them). The status keeps `nullable`: only the operator writes it.
            if let Some(spec) = value.pointer_mut("/properties/spec") {
                remove_key_everywhere(spec, "nullable");
            }
            if let Ok(trimmed) = serde_json::from_value(value) {
                *schema = trimmed;
            }
        }
    }
    crd
}

/// The CRD as YAML, as `vecodex-operator crd` prints it and `deploy/crd.yaml` stores it.
pub fn crd_yaml() -> String {
    let body = serde_saphyr::to_string(&crd()).expect("the CRD always serializes");
    format!(
        "# Generated by `vecodex-operator crd`; do not edit by hand.\n---\n{}",
        body.trim_start_matches("---\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> serde_json::Value {
        let crd = crd();
        let version = &crd.spec.versions[0];
        serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap()
    }

    fn count_key(value: &serde_json::Value, key: &str) -> usize {
        match value {
            serde_json::Value::Object(map) => {
                usize::from(map.contains_key(key))
                    + map.values().map(|v| count_key(v, key)).sum::<usize>()
            }
            serde_json::Value::Array(items) => items.iter().map(|v| count_key(v, key)).sum(),
            _ => 0,
        }
    }

    #[test]
    fn no_spec_field_is_nullable_so_kubectl_validates_all_of_it() {
        let schema = schema();
        assert_eq!(count_key(&schema["properties"]["spec"], "nullable"), 0);
        // The status is untouched: its optional fields stay nullable.
        assert!(count_key(&schema["properties"]["status"], "nullable") > 0);
        // Optional fields of the spec are still optional.
        let required = &schema["properties"]["spec"]["required"];
        assert!(!required.as_array().unwrap().contains(&"ingress".into()));
    }
}
