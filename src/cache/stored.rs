//! `Stored`: what a cache keeps of an object, its identity and controller as a few short
//! fields and the object itself compressed, unpacked only when a reconcile reads it.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kube::Resource;
use kube::runtime::reflector::Lookup;
use serde::de::DeserializeOwned;

use crate::hosts::HostClaim;
use crate::key::SetKey;

use super::CachedKind;
use super::raw::{Parts, Raw, parts_of};

/// What the operator keeps of an object: its identity and controller as a few short fields,
/// and the object itself as LZ4-compressed JSON, unpacked only when a reconcile compares or
/// reads it. A typed Deployment takes about 11 KiB of heap, its JSON about 2.5 KiB,
/// compressed about 1 KiB; a typed `ObjectMeta` alone takes about 700 bytes with its owner
/// reference, the fields below about 200. At 10,000 sets (80,000 objects, all cached by
/// every replica) that is the difference between fitting a replica in 200 MiB and not.
/// Unpacking costs microseconds.
#[derive(Clone, Debug)]
pub struct Stored<K> {
    name: Box<str>,
    namespace: Option<Box<str>>,
    uid: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    pub generation: Option<i64>,
    /// `status.observedGeneration`, where the object has one (sets, Deployments).
    pub observed_generation: Option<i64>,
    /// The object controlling this one, of the kind [`CachedKind::is_controlled_by`] names:
    /// (its name, its uid).
    controller: Option<(Box<str>, Box<str>)>,
    /// See [`Stored::applies_replicas`].
    applies_replicas: bool,
    /// A set's Ingress hosts, for the host index (see [`Stored::host_claims`]).
    host_claims: Box<[HostClaim]>,
    pub(super) packed: Arc<[u8]>,
    /// A digest of what the operator manages on the object (see `managed_digest`).
    pub digest: u64,
    /// The digest of a desired object already found to be a subset of this version (see
    /// [`Stored::verified`]); 0 for none.
    verified: Verified,
    kind: PhantomData<fn() -> K>,
}

/// Remembered per cached version: a new watch event brings a new `Stored` with none.
#[derive(Debug, Default)]
struct Verified(AtomicU64);

impl Clone for Verified {
    fn clone(&self) -> Self {
        Verified(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
impl<K> Stored<K>
where
    K: CachedKind + serde::Serialize + DeserializeOwned,
{
    /// Stores a typed object through the same text path as a watched one (see [`Raw`]).
    pub fn new(obj: K) -> Self {
        let json = serde_json::to_string(&obj).expect("a typed object prints");
        Stored::from_raw(Raw::from_json(&json).expect("serde_json reads back what it printed"))
    }
}

impl<K> Stored<K>
where
    K: CachedKind + DeserializeOwned,
{
    /// Stores an object as a watch delivered it.
    pub fn from_raw(raw: Raw<K>) -> Self {
        let meta = &raw.metadata;
        let boxed = |s: &Option<String>| s.as_deref().map(Box::from);
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true) && K::is_controlled_by(o))
            .map(|o| (Box::from(o.name.as_str()), Box::from(o.uid.as_str())));
        Stored {
            digest: raw.digest,
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: boxed(&meta.namespace),
            uid: boxed(&meta.uid),
            resource_version: boxed(&meta.resource_version),
            generation: meta.generation,
            observed_generation: raw.observed_generation,
            controller,
            applies_replicas: raw.applies_replicas,
            host_claims: raw.host_claims.clone(),
            packed: lz4_flex::compress_prepend_size(&raw.json).into(),
            verified: Verified::default(),
            kind: PhantomData,
        }
    }

    pub(super) fn json(&self) -> Vec<u8> {
        lz4_flex::decompress_size_prepended(&self.packed).unwrap_or_default()
    }

    /// The object as the watch delivered it (without managedFields).
    pub fn object(&self) -> Option<K> {
        serde_json::from_slice(&self.json()).ok()
    }

    /// The object as JSON, for comparing with what is desired.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.json()).unwrap_or_default()
    }

    /// The object's `spec` and `status` alone, parsed as `Sp` and `St`.
    pub fn parts<Sp: DeserializeOwned, St: DeserializeOwned>(&self) -> Parts<Sp, St> {
        parts_of(&self.json())
    }
}

impl<K> Stored<K> {
    /// Whether the desired object with digest `desired` was already found to be a subset of
    /// this version. A reconcile compares every child with its cached version, and most of
    /// the time neither changed since the last one, and unpacking and parsing the live object
    /// again would be the largest item of a replica's CPU under churn.
    pub fn verified(&self, desired: u64) -> bool {
        desired != 0 && self.verified.0.load(Ordering::Relaxed) == desired
    }

    /// Remembers that the desired object with digest `desired` is a subset of this version.
    pub fn mark_verified(&self, desired: u64) {
        self.verified.0.store(desired, Ordering::Relaxed);
    }

    /// Keeps what was verified on `older`, the version this one replaces, if what the
    /// operator manages is the same on both (see [`managed_digest`]): a change of status
    /// alone (every Deployment gets two after each change of its spec) then needs no new
    /// comparison.
    pub fn inherit_verified(&self, older: &Stored<K>) {
        if older.digest == self.digest {
            let desired = older.verified.0.load(Ordering::Relaxed);
            if desired != 0 {
                self.mark_verified(desired);
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// `namespace/name`, the work-queue key of a set.
    pub fn key(&self) -> Option<SetKey> {
        Some(SetKey::new(self.namespace()?, &self.name))
    }

    /// The key of the VecodexSet controlling the object, if one does.
    pub fn controller_key(&self) -> Option<SetKey> {
        let (name, _) = self.controller.as_ref()?;
        Some(SetKey::new(self.namespace()?, name))
    }

    /// Whether the operator's server-side apply owns `spec.replicas` (read from the
    /// managedFields the cache does not keep): letting go of them when a set leaves its
    /// replicas unset takes a hand-over, not just an apply without them.
    pub fn applies_replicas(&self) -> bool {
        self.applies_replicas
    }

    /// The Ingress hosts a set asks for or still serves (see [`host_claims`]).
    pub fn host_claims(&self) -> Vec<HostClaim> {
        self.host_claims.to_vec()
    }

    /// Whether the VecodexSet with this uid controls the object.
    pub fn controlled_by(&self, set_uid: Option<&str>) -> bool {
        matches!((&self.controller, set_uid), (Some((_, uid)), Some(set)) if **uid == *set)
    }
}

/// What the reflector's store needs to index a [`Stored`] object.
impl<K: Resource<DynamicType = ()>> Lookup for Stored<K> {
    type DynamicType = ();

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
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        self.uid.as_deref().map(Cow::Borrowed)
    }
}
