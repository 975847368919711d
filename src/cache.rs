//! The operator's view of one kind: reflector stores, each following one watch. Sets have
//! one store per watched namespace (one for all namespaces when none are listed), for the
//! operator's whole life. Children have stores per held shard (and watched namespace), added
//! when the shard is gained and dropped when it is lost: a replica caches only the children
//! of its own shards. A reflector's store can follow only one watch, since each watch's
//! re-list replaces the whole store.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::reflector::{Lookup, ObjectRef, Store};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hosts::HostClaim;
use crate::key::SetKey;
use crate::shard::Scheme;

/// One store and what it covers.
struct Entry<K: 'static + Lookup<DynamicType = ()> + Clone> {
    /// `None`: every namespace.
    namespace: Option<String>,
    /// `None`: every shard.
    shard: Option<u32>,
    /// Which start of the shard's watches added it (a quick lose-and-regain must not let
    /// the old watch's removal drop the new store).
    generation: u64,
    store: Store<K>,
}

#[derive(Clone)]
pub struct Cache<K: 'static + Lookup<DynamicType = ()> + Clone> {
    entries: Arc<RwLock<Vec<Entry<K>>>>,
    /// To find a namespace's shard.
    scheme: Scheme,
}

impl<K> Cache<K>
where
    K: 'static + Lookup<DynamicType = ()> + Clone,
{
    /// A cache of stores covering every shard: (namespace, store).
    pub fn new(stores: Vec<(Option<String>, Store<K>)>) -> Self {
        let entries = stores
            .into_iter()
            .map(|(namespace, store)| Entry {
                namespace,
                shard: None,
                generation: 0,
                store,
            })
            .collect();
        Cache {
            entries: Arc::new(RwLock::new(entries)),
            scheme: Scheme::new(Default::default(), 1),
        }
    }

    /// An empty cache whose stores will each cover one shard of `scheme`.
    pub fn sharded(scheme: Scheme) -> Self {
        Cache {
            entries: Arc::default(),
            scheme,
        }
    }

    /// Adds the store of a shard's watch (of `namespace`, or of all namespaces).
    pub fn insert(&self, shard: u32, generation: u64, namespace: Option<String>, store: Store<K>) {
        self.write().push(Entry {
            namespace,
            shard: Some(shard),
            generation,
            store,
        });
    }

    /// Drops the stores a start of a shard's watches added.
    pub fn remove(&self, shard: u32, generation: u64) {
        self.write()
            .retain(|e| !(e.shard == Some(shard) && e.generation == generation));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Entry<K>>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Entry<K>>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        let ns = key.namespace.as_deref();
        let shard = ns.map(|ns| self.scheme.shard_of(ns));
        self.read()
            .iter()
            .find(|e| {
                (e.namespace.is_none() || e.namespace.as_deref() == ns)
                    && (e.shard.is_none() || e.shard == shard)
            })
            .and_then(|e| e.store.get(key))
    }

    pub fn state(&self) -> Vec<Arc<K>> {
        self.read().iter().flat_map(|e| e.store.state()).collect()
    }

    pub fn len(&self) -> usize {
        self.read().iter().map(|e| e.store.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until every store present now has listed.
    pub async fn wait_until_ready(
        &self,
    ) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        let stores: Vec<Store<K>> = self.read().iter().map(|e| e.store.clone()).collect();
        for store in stores {
            store.wait_until_ready().await?;
        }
        Ok(())
    }
}

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
    /// The VecodexSet controlling the object: (its name, its uid).
    controller: Option<(Box<str>, Box<str>)>,
    /// See [`Stored::applies_replicas`].
    applies_replicas: bool,
    /// A set's Ingress hosts, for the host index (see [`Stored::host_claims`]).
    host_claims: Box<[HostClaim]>,
    packed: Arc<[u8]>,
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
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
{
    /// Stores a typed object through the same text path as a watched one (see [`Raw`]).
    pub fn new(obj: K) -> Self {
        let json = serde_json::to_string(&obj).expect("a typed object prints");
        Stored::from_raw(Raw::from_json(&json).expect("serde_json reads back what it printed"))
    }
}

impl<K> Stored<K>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    /// Stores an object as a watch delivered it.
    pub fn from_raw(raw: Raw<K>) -> Self {
        let meta = &raw.metadata;
        let boxed = |s: &Option<String>| s.as_deref().map(Box::from);
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| {
                o.controller == Some(true)
                    && o.kind == crate::crd::KIND
                    && o.api_version
                        .strip_prefix(crate::crd::GROUP)
                        .is_some_and(|v| v.starts_with('/'))
            })
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

    fn json(&self) -> Vec<u8> {
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

/// An object as a watch or list delivered it: its metadata parsed, the rest kept as the API
/// server printed it, without `managedFields` and the last-applied annotation. The watches
/// read this instead of the typed object: decoding a whole Deployment (its managedFields
/// into trees of `serde_json::Value`, only to drop them) and printing it again for the cache
/// would be most of what a replica spends on each child event, and every child event
/// reaches two replicas, every set event all of them.
#[derive(Clone, Debug)]
pub struct Raw<K> {
    metadata: ObjectMeta,
    /// The whole object as JSON, metadata trimmed.
    json: Vec<u8>,
    /// See [`managed_digest`].
    digest: u64,
    /// `status.observedGeneration`, where the object has one (sets, Deployments).
    observed_generation: Option<i64>,
    /// See [`Stored::applies_replicas`].
    applies_replicas: bool,
    /// See [`Stored::host_claims`].
    host_claims: Box<[HostClaim]>,
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

impl<K: Resource<DynamicType = ()>> Raw<K> {
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        let mut fields: Fields<'_> = serde_json::from_str(text)?;
        let mut meta_fields: Fields<'_> = match fields.get("metadata") {
            Some(meta) => serde_json::from_str(meta.get())?,
            None => Fields::new(),
        };
        let applies_replicas = meta_fields
            .remove("managedFields")
            .is_some_and(|m| K::kind(&()) == "Deployment" && applies_replicas(m));
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
        let host_claims = if K::kind(&()) == crate::crd::KIND {
            host_claims(&metadata, &fields).into()
        } else {
            Box::default()
        };
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

fn parts_of<Sp: DeserializeOwned, St: DeserializeOwned>(json: &[u8]) -> Parts<Sp, St> {
    serde_json::from_slice(json).unwrap_or(Parts {
        spec: None,
        status: None,
    })
}

/// Takes the object's JSON as it is (a watch event's or a list item's), which only
/// `serde_json` can hand over; kube reads both with it.
impl<'de, K: Resource<DynamicType = ()>> Deserialize<'de> for Raw<K> {
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

/// Whether managedFields give `spec.replicas` to the operator's server-side apply. Only the
/// keys on that path are read; everything else is skipped unparsed.
fn applies_replicas(managed_fields: &RawValue) -> bool {
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
            e.manager.as_deref() == Some(crate::children::FIELD_MANAGER)
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
fn host_claims(metadata: &ObjectMeta, fields: &Fields<'_>) -> Vec<HostClaim> {
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
    let status: Option<Status> = fields
        .get("status")
        .and_then(|s| serde_json::from_str(s.get()).ok());
    let refused = status.as_ref().is_some_and(|s| {
        s.observed_generation == metadata.generation
            && s.conditions.iter().any(|c| {
                c.type_ == crate::status::READY
                    && (c.reason == crate::status::INVALID_SPEC
                        || c.reason == crate::status::POLICY_VIOLATION)
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
            let spec: Spec = serde_json::from_str(fields.get("spec")?.get()).ok()?;
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

#[cfg(test)]
mod tests {
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
}
