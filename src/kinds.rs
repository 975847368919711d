//! What the cache reads from each kind the operator watches (see [`CachedKind`]): a set's
//! Ingress hosts, a Deployment's `spec.replicas` ownership, every child's controlling set.

use std::borrow::Cow;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::cache::CachedKind;
use crate::children::FIELD_MANAGER;
use crate::crd::{self, VecodexSet};
use crate::hosts::HostClaim;
use crate::status;

impl CachedKind for VecodexSet {
    fn host_claims(
        metadata: &ObjectMeta,
        spec: Option<&RawValue>,
        status: Option<&RawValue>,
    ) -> Vec<HostClaim> {
        set_host_claims(metadata, spec, status)
    }
}

impl CachedKind for Deployment {
    fn applies_replicas(managed_fields: &RawValue) -> bool {
        applies_replicas_by_operator(managed_fields)
    }
    fn is_controlled_by(owner: &OwnerReference) -> bool {
        is_set(owner)
    }
}

/// The other children: controlled by a set, and nothing else read.
macro_rules! child_kinds {
    ($($kind:ty),*) => {$(
        impl CachedKind for $kind {
            fn is_controlled_by(owner: &OwnerReference) -> bool {
                is_set(owner)
            }
        }
    )*};
}

child_kinds!(Service, Ingress, ConfigMap);

/// The operator patches Events (a repeat's series) and reads the answer as `Raw`.
impl CachedKind for Event {}

/// Whether an owner reference names a VecodexSet (of any version of the group).
fn is_set(owner: &OwnerReference) -> bool {
    owner.kind == crd::KIND
        && owner
            .api_version
            .strip_prefix(crd::GROUP)
            .is_some_and(|v| v.starts_with('/'))
}

/// Whether managedFields give `spec.replicas` to the operator's server-side apply. Only the
/// keys on that path are read; everything else is skipped unparsed.
fn applies_replicas_by_operator(managed_fields: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct Entry<'a> {
        #[serde(borrow)]
        manager: Option<Cow<'a, str>>,
        #[serde(borrow)]
        operation: Option<Cow<'a, str>>,
        #[serde(rename = "fieldsV1")]
        fields: Option<Fields1>,
    }
    #[derive(Deserialize)]
    struct Fields1 {
        #[serde(rename = "f:spec")]
        spec: Option<SpecFields>,
    }
    #[derive(Deserialize)]
    struct SpecFields {
        #[serde(rename = "f:replicas")]
        replicas: Option<IgnoredAny>,
    }
    serde_json::from_str::<Vec<Entry<'_>>>(managed_fields.get())
        .unwrap_or_default()
        .iter()
        .any(|e| {
            e.manager.as_deref() == Some(FIELD_MANAGER)
                && e.operation.as_deref() == Some("Apply")
                && e.fields
                    .as_ref()
                    .and_then(|f| f.spec.as_ref())
                    .is_some_and(|s| s.replicas.is_some())
        })
}

/// The hosts a set holds on to, each with whether it serves it now and its creation time:
/// its `spec.ingress.host`, unless the operator refused the spec at this generation (an
/// invalid or policy-breaking spec claims nothing), and the host its status says it serves
/// (its Ingress goes on serving that until a reconcile moves or drops it). Only those keys
/// are read.
fn set_host_claims(
    metadata: &ObjectMeta,
    spec: Option<&RawValue>,
    status: Option<&RawValue>,
) -> Vec<HostClaim> {
    #[derive(Deserialize)]
    struct Spec {
        ingress: Option<Ingress>,
    }
    #[derive(Deserialize)]
    struct Ingress {
        host: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Status {
        ingress_host: Option<String>,
        observed_generation: Option<i64>,
        #[serde(default)]
        conditions: Vec<Condition>,
    }
    #[derive(Deserialize)]
    struct Condition {
        #[serde(rename = "type")]
        type_: String,
        #[serde(default)]
        reason: String,
    }
    let status: Option<Status> = status.and_then(|s| serde_json::from_str(s.get()).ok());
    let refused = status.as_ref().is_some_and(|s| {
        s.observed_generation == metadata.generation
            && s.conditions.iter().any(|c| {
                c.type_ == status::READY
                    && (c.reason == status::INVALID_SPEC || c.reason == status::POLICY_VIOLATION)
            })
    });
    let served = status
        .and_then(|s| s.ingress_host)
        .map(|h| h.to_ascii_lowercase());
    let created = metadata
        .creation_timestamp
        .as_ref()
        .map_or(i64::MAX, |t| t.0.as_second());
    let asked = (!refused)
        .then(|| {
            let spec: Spec = serde_json::from_str(spec?.get()).ok()?;
            Some(spec.ingress?.host?.to_ascii_lowercase())
        })
        .flatten();
    let mut claims: Vec<HostClaim> = asked
        .iter()
        .map(|host| HostClaim {
            host: host.as_str().into(),
            serving: served.as_deref() == Some(host.as_str()),
            created,
        })
        .collect();
    if let Some(host) = served.filter(|h| asked.as_deref() != Some(h.as_str())) {
        claims.push(HostClaim {
            host: host.into(),
            serving: true,
            created,
        });
    }
    claims
}
