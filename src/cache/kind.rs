//! `CachedKind`: what the cache reads from an object of a kind beyond its metadata. The cache
//! knows no kind: each kind the operator watches says what it carries (`crate::kinds`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde_json::value::RawValue;

use crate::hosts::HostClaim;

/// A kind the cache can keep. Every method reads only what it needs and has a default that
/// reads nothing; the cache calls each once per delivered object.
pub trait CachedKind: Resource<DynamicType = ()> {
    /// Whether an object's `managedFields` give its `spec.replicas` to the operator's
    /// server-side apply.
    fn applies_replicas(_managed_fields: &RawValue) -> bool {
        false
    }

    /// The Ingress hosts an object holds on to, from its `spec` and `status` as printed.
    fn host_claims(
        _metadata: &ObjectMeta,
        _spec: Option<&RawValue>,
        _status: Option<&RawValue>,
    ) -> Vec<HostClaim> {
        Vec::new()
    }

    /// Whether a controller owner reference names the kind whose objects control this one.
    fn is_controlled_by(_owner: &OwnerReference) -> bool {
        false
    }
}
