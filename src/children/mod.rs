//! Pure builders: what should exist for a `VecodexSet`.
//!
//! Nothing here talks to the API server; [`crate::reconcile`] compares these objects with the
//! cached live ones and server-side applies only what differs.

mod configmap;
mod deployment;
mod ingress;
pub mod pod_security;
mod service;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{Component, VecodexSet};

pub use configmap::{CONFIG_FILE, CONFIG_MOUNT_PATH, config_map, render_config};
pub use deployment::{DEFAULT_COMMAND, deployment};
pub use ingress::{GRPC_BACKEND_ANNOTATION, ingress};
pub use service::service;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "vecodex-operator";
/// Value of `app.kubernetes.io/managed-by`; the child watches select on it.
pub const MANAGED_BY: &str = "vecodex-operator";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// Pod-template annotation that changes with the rendered config, so a config change rolls pods.
pub const CONFIG_CHECKSUM_ANNOTATION: &str = "vecodex.link/config-checksum";
/// The shard of a child's namespace (`--shards` of the operator that applied it): each
/// replica watches only the children of the shards it holds. On the child only, never on a
/// pod template, so a change of the shard count relabels children without rolling pods.
pub const LABEL_SHARD: &str = "vecodex.link/shard";
/// Label selector matching every child the operator creates.
pub fn managed_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY}")
}

/// Label selector matching the children of one shard.
pub fn shard_selector(shard: u32) -> String {
    format!("{},{LABEL_SHARD}={shard}", managed_selector())
}

/// Labels a user may not set through `podLabels`: they form the immutable selectors.
pub const RESERVED_LABELS: [&str; 3] = [LABEL_NAME, LABEL_INSTANCE, LABEL_COMPONENT];

const MAX_LABEL: usize = 63;

/// Short stable hash used to keep derived names and label values within 63 characters.
fn short_hash(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// `<set>-<suffix>`, shortened with a hash of the set name when longer than a DNS label
/// (Service names must be DNS-1035 labels, at most 63 characters).
pub fn child_name(set: &str, suffix: &str) -> String {
    let full = format!("{set}-{suffix}");
    if full.len() <= MAX_LABEL {
        return full;
    }
    let hash = short_hash(set);
    // prefix + "-" + hash(8) + "-" + suffix
    let keep = MAX_LABEL.saturating_sub(suffix.len() + hash.len() + 2);
    let prefix = set[..keep.min(set.len())].trim_end_matches(['-', '.']);
    format!("{prefix}-{hash}-{suffix}")
}

/// A label value for the set name (label values are at most 63 characters).
pub fn instance_label(set: &str) -> String {
    if set.len() <= MAX_LABEL {
        return set.to_owned();
    }
    let hash = short_hash(set);
    let keep = MAX_LABEL - hash.len() - 1;
    let prefix = set[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{hash}")
}

/// The labels a component's selector uses: none of them can change over the set's life.
pub fn selector_labels(set: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), "vecodex".to_owned()),
        (LABEL_INSTANCE.to_owned(), instance_label(set)),
        (LABEL_COMPONENT.to_owned(), component.as_str().to_owned()),
    ])
}

/// The standard labels of a child; `component` is `None` for the Ingress.
pub fn labels(set: &str, component: Option<Component>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_NAME.to_owned(), "vecodex".to_owned()),
        (LABEL_INSTANCE.to_owned(), instance_label(set)),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_PART_OF.to_owned(), "vecodex".to_owned()),
    ]);
    if let Some(c) = component {
        labels.insert(LABEL_COMPONENT.to_owned(), c.as_str().to_owned());
    }
    labels
}

/// Why desired objects could not be built: the set lacks what the API server always sets.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("VecodexSet has no {0}")]
    MissingMetadata(&'static str),
}

/// Metadata of a child: name, namespace, labels and the controller owner reference.
fn child_meta(
    set: &VecodexSet,
    name: String,
    component: Option<Component>,
) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(
            set.namespace()
                .ok_or(BuildError::MissingMetadata("namespace"))?,
        ),
        labels: Some(labels(&set.name_any(), component)),
        owner_references: Some(vec![owner_ref(set)?]),
        ..ObjectMeta::default()
    })
}

fn owner_ref(set: &VecodexSet) -> Result<OwnerReference, BuildError> {
    set.controller_owner_ref(&())
        .ok_or(BuildError::MissingMetadata("uid"))
}

/// Everything that should exist for one set.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub config_maps: Vec<ConfigMap>,
    pub services: Vec<Service>,
    pub deployments: Vec<Deployment>,
    pub ingress: Option<Ingress>,
}

impl Desired {
    /// Labels every child with its shard (see [`LABEL_SHARD`]).
    pub fn label_shard(&mut self, shard: u32) {
        let metas = self
            .config_maps
            .iter_mut()
            .map(|c| &mut c.metadata)
            .chain(self.services.iter_mut().map(|s| &mut s.metadata))
            .chain(self.deployments.iter_mut().map(|d| &mut d.metadata))
            .chain(self.ingress.iter_mut().map(|i| &mut i.metadata));
        for meta in metas {
            meta.labels
                .get_or_insert_with(Default::default)
                .insert(LABEL_SHARD.to_owned(), shard.to_string());
        }
    }
}

/// Names of the children a set may have; those not desired now are pruned.
pub struct ChildNames {
    pub config_maps: Vec<String>,
    pub ingress: String,
}

pub fn possible_children(set_name: &str) -> ChildNames {
    ChildNames {
        config_maps: Component::ALL
            .iter()
            .map(|c| configmap::config_map_name(set_name, *c))
            .collect(),
        ingress: set_name.to_owned(),
    }
}

/// Builds every desired child of a (validated) set.
pub fn build(set: &VecodexSet) -> Result<Desired, BuildError> {
    let mut desired = Desired {
        config_maps: Vec::new(),
        services: Vec::new(),
        deployments: Vec::new(),
        ingress: None,
    };
    for component in Component::ALL {
        let rendered = render_config(set.spec.component(component));
        let checksum = rendered.as_deref().map(checksum);
        if let Some(rendered) = rendered {
            desired
                .config_maps
                .push(config_map(set, component, rendered)?);
        }
        desired.services.push(service(set, component)?);
        desired
            .deployments
            .push(deployment(set, component, checksum.as_deref())?);
    }
    desired.ingress = ingress(set)?;
    Ok(desired)
}

/// sha256 of a rendered config file, hex.
pub fn checksum(content: &str) -> String {
    Sha256::digest(content.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
