//! Applying a set's children: decide per child from the cache what to write, dry-run a
//! multi-child change, write each round at once, prune what is no longer desired, and undo a
//! create when a later child is rejected.

use std::fmt::Debug;
use std::hash::Hasher;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::api::Child;
use crate::cache::{Cache, CachedKind, Raw, Stored};
use crate::children::{self, Desired};
use crate::crd::VecodexSet;
use crate::diff::is_subset;
use crate::recent_writes::RecentWrites;

use super::{Context, Error};

/// A digest of `value` as serde_json prints it, streamed into the hasher through a buffer:
/// no `Value` and no string is built for it, and the hasher gets a few large writes instead
/// of one per token.
pub(super) fn digest<T: Serialize + ?Sized>(value: &T) -> u64 {
    struct HashWriter(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut writer = std::io::BufWriter::with_capacity(
        4096,
        HashWriter(std::collections::hash_map::DefaultHasher::new()),
    );
    let _ = serde_json::to_writer(&mut writer, value);
    match writer.into_inner() {
        Ok(hashed) => hashed.0.finish(),
        // Not reached: writing to the hasher cannot fail.
        Err(_) => 0,
    }
}

/// One change to a child, for the Normal Event.
#[derive(Debug, Clone)]
pub(super) struct Change {
    pub(super) verb: &'static str,
    pub(super) kind: String,
    pub(super) name: String,
    /// The object's uid, for undoing a create (see [`roll_back`]).
    uid: Option<String>,
}

pub(super) fn describe(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| format!("{} {} {}", c.verb, c.kind, c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies what differs and prunes what is no longer desired, in two rounds: what others
/// depend on first (ConfigMaps, which pods mount, and Services, which the Ingress points at),
/// then the Deployments and the Ingress. Within a round the requests go out together: a
/// reconcile's latency is then two round trips instead of seven, which is what lets a
/// bounded number of workers keep the API server busy.
///
/// No set is left half-applied by a child the API server rejects: every write is decided
/// from the caches first, and when it changes existing children and more than one child,
/// all of it is sent as a server-side dry run before anything is written (a single write
/// cannot half-apply; a reconcile that only creates is undone instead, see
/// [`roll_back`]). The steady state writes nothing and so sends no dry run; a typical spec
/// change writes one Deployment and sends none either.
pub(super) async fn apply_children(
    ctx: &Context,
    set: &VecodexSet,
    desired: Desired,
    changes: &mut Vec<Change>,
    applied_deployments: &mut Vec<Raw<Deployment>>,
) -> Result<(), Error> {
    let ns = set.namespace().unwrap_or_default();
    let possible = children::possible_children(&set.name_any());
    let config_maps = decide(ctx, &ctx.stores.config_maps, &desired.config_maps);
    let services = decide(ctx, &ctx.stores.services, &desired.services);
    let deployments = decide(ctx, &ctx.stores.deployments, &desired.deployments);
    let ingress = decide(ctx, &ctx.stores.ingresses, desired.ingress.as_slice());
    let counts = [
        counts(&config_maps),
        counts(&services),
        counts(&deployments),
        counts(&ingress),
    ];
    // A prune changes an existing child too (a Deployment may still mount the ConfigMap).
    let prunes = possible
        .config_maps
        .iter()
        .filter(|name| {
            !desired
                .config_maps
                .iter()
                .any(|cm| cm.metadata.name.as_ref() == Some(*name))
        })
        .filter(|name| cached(&ctx.stores.config_maps, &ns, name))
        .count()
        + usize::from(
            desired.ingress.is_none() && cached(&ctx.stores.ingresses, &ns, &possible.ingress),
        );
    let writes: usize = counts.iter().map(|(w, _)| w).sum::<usize>() + prunes;
    let updates: usize = counts.iter().map(|(_, u)| u).sum::<usize>() + prunes;
    if writes >= 2 && updates >= 1 {
        let checked = futures::join!(
            dry_run(ctx, &config_maps),
            dry_run(ctx, &services),
            dry_run(ctx, &deployments),
            dry_run(ctx, &ingress),
        );
        checked.0.and(checked.1).and(checked.2).and(checked.3)?;
    }
    let (config_maps, services) =
        futures::join!(write_all(ctx, config_maps), write_all(ctx, services),);
    collect(changes, [config_maps.outcome(), services.outcome()])?;
    for name in &possible.config_maps {
        if !desired
            .config_maps
            .iter()
            .any(|cm| cm.metadata.name.as_ref() == Some(name))
        {
            prune(ctx, &ctx.stores.config_maps, set, &ns, name, changes).await?;
        }
    }
    let (mut deployments, ingress) =
        futures::join!(write_all(ctx, deployments), write_all(ctx, ingress));
    applied_deployments.append(&mut deployments.applied);
    collect(changes, [deployments.outcome(), ingress.outcome()])?;
    if desired.ingress.is_none() {
        prune(
            ctx,
            &ctx.stores.ingresses,
            set,
            &ns,
            &possible.ingress,
            changes,
        )
        .await?;
    }
    Ok(())
}

/// Whether the cache holds `ns/name`.
fn cached<K>(store: &Cache<Stored<K>>, ns: &str, name: &str) -> bool
where
    K: Resource<DynamicType = ()> + Clone,
{
    store.get(&ObjectRef::new(name).within(ns)).is_some()
}

/// Deletes the children this reconcile created before a child was rejected, each only if it
/// is still the object created (same uid): a new set refused half-way by the API server
/// leaves nothing behind. Returns the changes that remain.
pub(super) async fn roll_back(ctx: &Context, ns: &str, changes: Vec<Change>) -> Vec<Change> {
    let mut kept = Vec::new();
    for c in changes {
        if c.verb != "created" {
            kept.push(c);
            continue;
        }
        let uid = c.uid.clone();
        let deleted = match c.kind.as_str() {
            "ConfigMap" => ctx.writer.delete::<ConfigMap>(ns, &c.name, uid).await,
            "Service" => ctx.writer.delete::<Service>(ns, &c.name, uid).await,
            "Deployment" => ctx.writer.delete::<Deployment>(ns, &c.name, uid).await,
            "Ingress" => ctx.writer.delete::<Ingress>(ns, &c.name, uid).await,
            _ => Ok(()),
        };
        if let Err(e) = deleted {
            warn!(kind = %c.kind, name = %c.name, error = %e, "could not undo a create");
            kept.push(c);
        }
    }
    kept
}

/// What a group of concurrent `ensure`s did: every change that was made, the objects as the
/// API server returned them, and the first error if any failed.
struct Ensured<K> {
    changes: Vec<Change>,
    applied: Vec<Raw<K>>,
    error: Option<Error>,
}

impl<K> Ensured<K> {
    fn outcome(self) -> (Vec<Change>, Option<Error>) {
        (self.changes, self.error)
    }
}

/// Records every change of `groups` (also those made next to a failure, so the Event tells
/// the whole story) and returns the first error.
// The same `Error` every reconcile function returns; boxing it here alone would buy nothing.
#[allow(clippy::result_large_err)]
fn collect<const N: usize>(
    changes: &mut Vec<Change>,
    groups: [(Vec<Change>, Option<Error>); N],
) -> Result<(), Error> {
    let mut first = None;
    for (made, err) in groups {
        changes.extend(made);
        if first.is_none() {
            first = err;
        }
    }
    first.map_or(Ok(()), Err)
}

/// A child this reconcile writes, decided from the cache before any request.
struct Write<'a, K: Resource<DynamicType = ()>> {
    desired: &'a K,
    /// The cached live object (`None`: not cached, so probably new).
    live: Option<Arc<Stored<K>>>,
    digest: u64,
    /// The cached version the write is decided on.
    seen: Option<String>,
    /// Replicas to hand over before applying (see [`decide`]).
    hand_over: Option<i64>,
    recent_key: String,
}

/// (writes, updates of existing children) among `writes`.
fn counts<K: Resource<DynamicType = ()>>(writes: &[Write<'_, K>]) -> (usize, usize) {
    (
        writes.len(),
        writes.iter().filter(|w| w.live.is_some()).count(),
    )
}

/// The writes `desired` needs: none for a child whose cached live object already has every
/// field we set, or whose write this process already made over the cached version.
fn decide<'a, K>(ctx: &Context, store: &Cache<Stored<K>>, desired: &'a [K]) -> Vec<Write<'a, K>>
where
    K: CachedKind
        + Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone,
{
    desired
        .iter()
        .filter_map(|desired| {
            let name = desired.meta().name.clone().unwrap_or_default();
            let ns = desired.meta().namespace.clone().unwrap_or_default();
            let live = store.get(&ObjectRef::new(&name).within(&ns));
            let digest = digest(desired);
            let seen = live
                .as_ref()
                .and_then(|l| l.resource_version().map(str::to_owned));
            // The replicas to hand over before applying, when the set stopped setting
            // replicas the operator applied: they must be released (an autoscaler may take
            // them), which takes an apply even though the live object has everything desired.
            // A verified version never needs one, so the fast path stays right.
            let mut hand_over = None;
            if let Some(live) = &live {
                if live.verified(digest) {
                    return None;
                }
                let desired_value = serde_json::to_value(desired).unwrap_or_default();
                let live_value = live.value();
                let releasing =
                    live.applies_replicas() && desired_value.pointer("/spec/replicas").is_none();
                if !releasing && is_subset(&desired_value, &live_value) {
                    live.mark_verified(digest);
                    return None;
                }
                if releasing {
                    hand_over = live_value
                        .pointer("/spec/replicas")
                        .and_then(|r| r.as_i64());
                }
            }
            let recent_key = RecentWrites::key(&K::kind(&()), &ns, &name);
            if ctx.recent.covers(&recent_key, seen.as_deref(), digest) {
                return None;
            }
            Some(Write {
                desired,
                live,
                digest,
                seen,
                hand_over,
                recent_key,
            })
        })
        .collect()
}

/// Sends `writes` as a server-side dry run, together; a rejection is the reconcile's error
/// before anything was written.
async fn dry_run<K>(ctx: &Context, writes: &[Write<'_, K>]) -> Result<(), Error>
where
    K: Child,
{
    let checks = writes.iter().map(|w| async move {
        ctx.writer.dry_run_apply(w.desired).await.map_err(|e| {
            let name = w.desired.meta().name.clone().unwrap_or_default();
            Error::write("apply (dry run)", &K::kind(&()), &name, e)
        })
    });
    futures::future::try_join_all(checks).await.map(|_| ())
}

/// Makes `writes` together; every change made and the objects as the API server returned
/// them, and the first error if any failed.
async fn write_all<K>(ctx: &Context, writes: Vec<Write<'_, K>>) -> Ensured<K>
where
    K: Child,
{
    let results = futures::future::join_all(writes.into_iter().map(|w| write(ctx, w))).await;
    let mut ensured = Ensured {
        changes: Vec::new(),
        applied: Vec::new(),
        error: None,
    };
    for result in results {
        match result {
            Ok((change, applied)) => {
                ensured.changes.push(change);
                ensured.applied.push(applied);
            }
            Err(e) => {
                ensured.error.get_or_insert(e);
            }
        }
    }
    ensured
}

/// Applies one child; returns the change it made and the object the API server answered
/// with.
async fn write<K>(ctx: &Context, w: Write<'_, K>) -> Result<(Change, Raw<K>), Error>
where
    K: Child,
{
    let desired = w.desired;
    let name = desired.meta().name.clone().unwrap_or_default();
    let ns = desired.meta().namespace.clone().unwrap_or_default();
    let kind = K::kind(&()).into_owned();
    if let Some(replicas) = w.hand_over {
        ctx.writer
            .hand_over_replicas::<K>(&ns, &name, replicas)
            .await
            .map_err(|e| Error::write("hand over replicas of", &kind, &name, e))?;
    }
    // Whether the object is new: a child missing from the cache (which holds only children
    // labelled for a shard held here) may exist, ours, under an older shard label.
    let mut creates = false;
    if w.live.is_none() {
        // Make sure we do not take over an object someone else created under the same name.
        let existing = ctx
            .writer
            .get_metadata_opt::<K>(&ns, &name)
            .await
            .map_err(|e| Error::write("read", &kind, &name, e))?;
        match existing {
            Some(existing)
                if !existing.owner_references.iter().flatten().any(|o| {
                    o.controller == Some(true)
                        && desired.owner_references().iter().any(|d| d.uid == o.uid)
                }) =>
            {
                return Err(Error::NotOwned { kind, name });
            }
            Some(_) => {}
            None => creates = true,
        }
    }
    let applied = ctx
        .writer
        .apply(desired, creates)
        .await
        .map_err(|e| Error::write("apply", &kind, &name, e))?;
    ctx.recent.record(
        w.recent_key,
        w.seen,
        w.digest,
        applied.meta().resource_version.clone(),
    );
    debug!(kind, name, created = creates, "applied");
    let change = Change {
        verb: if creates { "created" } else { "updated" },
        kind,
        name,
        uid: applied.meta().uid.clone(),
    };
    Ok((change, applied))
}

/// Deletes a child that is no longer desired, if it exists and this set controls it.
async fn prune<K>(
    ctx: &Context,
    store: &Cache<Stored<K>>,
    set: &VecodexSet,
    ns: &str,
    name: &str,
    changes: &mut Vec<Change>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let Some(live) = store.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(());
    };
    if !live.controlled_by(set.metadata.uid.as_deref()) {
        return Ok(());
    }
    let kind = K::kind(&()).into_owned();
    ctx.writer
        .delete::<K>(ns, name, live.uid().map(str::to_owned))
        .await
        .map_err(|e| Error::write("delete", &kind, name, e))?;
    changes.push(Change {
        verb: "deleted",
        kind,
        name: name.to_owned(),
        uid: None,
    });
    Ok(())
}
