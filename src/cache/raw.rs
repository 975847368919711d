//! `Raw`: an object as a watch or list delivered it, read from its JSON text once: what the
//! cache needs is picked out (metadata, digest, host claims, the operator's replicas
//! ownership), the rest kept as text.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hosts::HostClaim;

use super::CachedKind;

/// An object as a watch or list delivered it: its metadata parsed, the rest kept as the API
/// server printed it, without `managedFields` and the last-applied annotation. The watches
/// read this instead of the typed object: decoding a whole Deployment (its managedFields
/// into trees of `serde_json::Value`, only to drop them) and printing it again for the cache
/// would be most of what a replica spends on each child event, and every child event
/// reaches two replicas, every set event all of them.
#[derive(Clone, Debug)]
pub struct Raw<K> {
    pub(super) metadata: ObjectMeta,
    /// The whole object as JSON, metadata trimmed.
    pub(super) json: Vec<u8>,
    /// See [`managed_digest`].
    pub(super) digest: u64,
    /// `status.observedGeneration`, where the object has one (sets, Deployments).
    pub(super) observed_generation: Option<i64>,
    /// See [`Stored::applies_replicas`].
    pub(super) applies_replicas: bool,
    /// See [`Stored::host_claims`].
    pub(super) host_claims: Box<[HostClaim]>,
    kind: PhantomData<fn() -> K>,
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A key of a JSON object, borrowed from the text unless it has escapes.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(transparent)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl std::borrow::Borrow<str> for Key<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The fields of a JSON object, their values unparsed: `BTreeMap` so the digest sees them in
/// one order whatever order they were printed in.
type Fields<'a> = BTreeMap<Key<'a>, &'a RawValue>;

impl<K: CachedKind> Raw<K> {
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        let mut fields: Fields<'_> = serde_json::from_str(text)?;
        let mut meta_fields: Fields<'_> = match fields.get("metadata") {
            Some(meta) => serde_json::from_str(meta.get())?,
            None => Fields::new(),
        };
        let applies_replicas = meta_fields
            .remove("managedFields")
            .is_some_and(K::applies_replicas);
        let mut meta_json = serde_json::to_string(&meta_fields)?;
        let mut metadata: ObjectMeta = serde_json::from_str(&meta_json)?;
        if let Some(annotations) = metadata.annotations.as_mut()
            && annotations.remove(LAST_APPLIED).is_some()
        {
            meta_json = serde_json::to_string(&metadata)?;
        }
        let meta_value = RawValue::from_string(meta_json)?;
        fields.insert(Key("metadata".into()), &meta_value);
        // The items of a list come without their kind: put it back, so the object compares
        // with a desired one (which has them) whichever way it arrived.
        let (api_version, kind) = (
            serde_json::value::to_raw_value(&K::api_version(&()))?,
            serde_json::value::to_raw_value(&K::kind(&()))?,
        );
        fields
            .entry(Key("apiVersion".into()))
            .or_insert(&api_version);
        fields.entry(Key("kind".into())).or_insert(&kind);
        let host_claims = K::host_claims(
            &metadata,
            fields.get("spec").copied(),
            fields.get("status").copied(),
        )
        .into();
        Ok(Raw {
            digest: managed_digest(&metadata, &fields),
            observed_generation: observed_generation(&fields),
            applies_replicas,
            host_claims,
            json: serde_json::to_vec(&fields)?,
            metadata,
            kind: PhantomData,
        })
    }
}

impl<K> Raw<K> {
    /// The object's `spec` and `status` alone, parsed as `Sp` and `St`.
    pub fn parts<Sp: DeserializeOwned, St: DeserializeOwned>(&self) -> Parts<Sp, St> {
        parts_of(&self.json)
    }
}

/// The `spec` and `status` of an object, parsed as `Sp` and `St` in one pass over its JSON;
/// the rest is skipped, not built (parse a part as a struct of the few fields needed: whole
/// Deployments parsed per status write showed in the profile).
#[derive(Deserialize)]
pub struct Parts<Sp, St> {
    pub spec: Option<Sp>,
    pub status: Option<St>,
}

pub(super) fn parts_of<Sp: DeserializeOwned, St: DeserializeOwned>(json: &[u8]) -> Parts<Sp, St> {
    serde_json::from_slice(json).unwrap_or(Parts {
        spec: None,
        status: None,
    })
}

/// Takes the object's JSON as it is (a watch event's or a list item's), which only
/// `serde_json` can hand over; kube reads both with it.
impl<'de, K: CachedKind> Deserialize<'de> for Raw<K> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Box::<RawValue>::deserialize(deserializer)?;
        Raw::from_json(text.get()).map_err(serde::de::Error::custom)
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Raw<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// `status.observedGeneration`, where the object has one.
fn observed_generation(fields: &Fields<'_>) -> Option<i64> {
    #[derive(Deserialize)]
    struct Status {
        #[serde(rename = "observedGeneration")]
        observed_generation: Option<i64>,
    }
    let status = fields.get("status")?;
    serde_json::from_str::<Status>(status.get())
        .ok()?
        .observed_generation
}

/// A digest of what someone could change on a child that the operator cares about: its body
/// (spec, or a ConfigMap's data), labels, annotations, owners and deletion; not its status,
/// resourceVersion or managedFields. The body is hashed as the API server printed it, which
/// prints equal objects alike. It covers every field the operator sets on a child (the
/// metadata it sets are name, namespace, labels, annotations and the owner reference), so
/// a desired object that is a subset of one version is a subset of the next if their digests
/// are equal (see [`Stored::inherit_verified`]).
fn managed_digest(meta: &ObjectMeta, fields: &Fields<'_>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for (k, v) in fields {
        if !matches!(&*k.0, "metadata" | "status" | "apiVersion" | "kind") {
            (&*k.0, v.get()).hash(&mut hasher);
        }
    }
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    for o in meta.owner_references.iter().flatten() {
        (&o.api_version, &o.kind, &o.name, &o.uid).hash(&mut hasher);
        (o.controller, o.block_owner_deletion).hash(&mut hasher);
    }
    hasher.finish()
}
