//! One reconcile of one set: read it from the cache, validate, build the desired children,
//! apply only what differs from the cached live objects, prune what is no longer desired, and
//! patch the status only when it changes.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::api::{Child, Writer, is_namespace_terminating, is_rejection};
use crate::cache::{Cache, Parts, Raw, Stored};
use crate::children::{self, Desired, child_name};
use crate::crd::{Component, VecodexSet};
use crate::diff::is_subset;
use crate::events::{EventSender, EventType};
use crate::hosts::HostIndex;
use crate::key::SetKey;
use crate::policy::{self, Policy};
use crate::recent_writes::RecentWrites;
use crate::status::{self, Applied, DeploymentState, Outcome, summarize};
use crate::stores::Stores;
use crate::validate::{Limits, validate};

pub struct Context {
    pub writer: Writer,
    pub stores: Stores,
    pub events: EventSender,
    pub limits: Limits,
    /// The admin's policy (see `policy`).
    pub policy: Policy,
    /// Who holds each Ingress host, kept by the set watch (see `hosts`).
    pub hosts: Arc<HostIndex>,
    /// Shared with the watch classifiers, which drop the echoes of these writes.
    pub recent: Arc<RecentWrites>,
    /// Sets whose generation the API server refused (a child rejected): key → generation.
    /// Nothing of that generation is sent again by this process (see `reconcile`).
    pub rejected: Mutex<HashMap<SetKey, i64>>,
}

/// A digest of `value` as serde_json prints it, streamed into the hasher through a buffer:
/// no `Value` and no string is built for it, and the hasher gets a few large writes instead
/// of one per token.
fn digest<T: Serialize + ?Sized>(value: &T) -> u64 {
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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build children: {0}")]
    Build(#[from] children::BuildError),
    #[error(
        "{kind} {name} already exists and is not controlled by this VecodexSet; remove or rename it"
    )]
    NotOwned { kind: String, name: String },
    #[error("{verb} {kind} {name}: {source}")]
    Write {
        verb: &'static str,
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reconcile did not finish within {0:?} (--reconcile-timeout); retrying")]
    Timeout(Duration),
}

impl Error {
    /// A request to `verb` the `kind` `name` failed. Called only on failure: the strings are
    /// not copied on the reconcile's success path.
    fn write(verb: &'static str, kind: &str, name: &str, source: kube::Error) -> Error {
        Error::Write {
            verb,
            kind: kind.to_owned(),
            name: name.to_owned(),
            source,
        }
    }
}

/// What a reconcile did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The set no longer exists (or is being deleted): garbage collection removes children.
    Gone,
    /// The spec is invalid; nothing was changed.
    Invalid,
    /// The child caches of the set's shard have not listed yet; the set is queued again when
    /// they have.
    NotSynced,
    /// Children are as desired; `writes` counts the child writes this reconcile needed.
    /// `status_after`: the status is written by another reconcile that long from now.
    Applied {
        writes: usize,
        status_patched: bool,
        status_after: Option<Duration>,
    },
}

/// One change to a child, for the Normal Event.
#[derive(Debug, Clone)]
struct Change {
    verb: &'static str,
    kind: String,
    name: String,
    /// The object's uid, for undoing a create (see [`roll_back`]).
    uid: Option<String>,
}

pub async fn reconcile(ctx: &Context, key: &SetKey) -> Result<Report, Error> {
    let (ns, name) = (key.namespace(), key.name());
    let Some(set) = ctx
        .stores
        .sets
        .get(&ObjectRef::new(name).within(ns))
        .and_then(|s| s.object())
        .map(Arc::new)
    else {
        forget_rejection(ctx, key);
        return Ok(Report::Gone);
    };
    if set.metadata.deletion_timestamp.is_some() {
        forget_rejection(ctx, key);
        return Ok(Report::Gone);
    }
    // Until the shard's child caches have listed, every child would look missing. The shard's
    // sets are all queued once they have.
    let shard = ctx.stores.scheme.shard_of(ns);
    if !ctx.stores.children_synced(shard) {
        return Ok(Report::NotSynced);
    }
    let span = tracing::Span::current();
    span.record("vecodex.set.uid", set.metadata.uid.as_deref().unwrap_or(""));
    span.record(
        "vecodex.set.generation",
        set.metadata.generation.unwrap_or(0),
    );

    // What the schema cannot check, then what the admin's policy refuses: either way nothing
    // is changed.
    for (reason, errors) in [
        (status::INVALID_SPEC, validate(&set, &ctx.limits)),
        (status::POLICY_VIOLATION, policy::check(&set, &ctx.policy)),
    ] {
        if errors.is_empty() {
            continue;
        }
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        info!(reason, %message, "spec refused; no child is changed");
        let outcome = Outcome::Refused {
            reason,
            message: message.clone(),
        };
        if write_status(ctx, &set, &outcome, &[]).await? == StatusWrite::Written {
            // Only on a new verdict, so an unchanged refused set costs no write.
            event(ctx, &set, EventType::Warning, reason, message);
        }
        return Ok(Report::Invalid);
    }

    // The API server refused a child of this generation: nothing is sent again until the
    // spec changes (the same writes could only be refused again, and undoing the creates
    // each time would loop). Kept in memory: a restarted operator tries once more.
    let generation = set.metadata.generation.unwrap_or(0);
    let refused = ctx
        .rejected
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .is_some_and(|g| *g == generation);
    if refused {
        return Ok(Report::Invalid);
    }

    let mut desired = children::build(&set)?;
    desired.label_shard(shard);
    // Another set holds the host: everything but the Ingress (one this set had is pruned).
    let host_conflict = set.spec.ingress.as_ref().and_then(|ingress| {
        let holder = ctx.hosts.holder(&ingress.host).filter(|h| h != key)?;
        let holder_ns = holder.namespace();
        Some(format!(
            "host {} is held by a VecodexSet in namespace {holder_ns}; this set gets no Ingress until it lets go",
            ingress.host
        ))
    });
    if host_conflict.is_some() {
        desired.ingress = None;
    }
    let result = Applied {
        host_conflict,
        not_restricted: desired
            .deployments
            .iter()
            .flat_map(|d| {
                let name = d.metadata.name.clone().unwrap_or_default();
                let template = d
                    .spec
                    .as_ref()
                    .map(|s| s.template.clone())
                    .unwrap_or_default();
                children::pod_security::restricted_violations(&template)
                    .into_iter()
                    .map(move |v| format!("{name}: {v}"))
            })
            .collect(),
    };
    // With this generation already applied, a change can only put back what someone else
    // changed or deleted: the Event then says "Restored" instead of "Applied".
    let changed =
        if set.status.as_ref().and_then(|s| s.observed_generation) == set.metadata.generation {
            "Restored"
        } else {
            "Applied"
        };
    let mut changes = Vec::new();
    // Deployments this reconcile applied, as the API server returned them: newer than the
    // cache, so the status written next does not need a second reconcile to catch up.
    let mut applied = Vec::new();
    if let Err(err) = apply_children(ctx, &set, desired, &mut changes, &mut applied).await {
        // The namespace is going, and the set with it: nothing to retry or report.
        if matches!(&err, Error::Write { source, .. } if is_namespace_terminating(source)) {
            return Ok(Report::Gone);
        }
        let rejected = matches!(&err, Error::Write { source, .. } if is_rejection(source));
        // A rejected child means the spec is wrong in a way validation missed: report it as
        // invalid instead of retrying the same request for ever, and undo what this
        // reconcile created so that no half of the set stays.
        let (outcome, message) = if rejected {
            ctx.rejected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), generation);
            changes = roll_back(ctx, ns, changes).await;
            // What was undone is not there to report on.
            applied.retain(|d| {
                changes
                    .iter()
                    .any(|c| c.kind == "Deployment" && Some(&c.name) == d.meta().name.as_ref())
            });
            let message = format!("{REJECTED}{err}");
            (Outcome::invalid(message.clone()), message)
        } else {
            (Outcome::Failed(err.to_string()), err.to_string())
        };
        if !changes.is_empty() {
            event(ctx, &set, EventType::Normal, changed, describe(&changes));
        }
        event(ctx, &set, EventType::Warning, "ApplyFailed", message);
        if let Err(status_err) = write_status(ctx, &set, &outcome, &applied).await {
            warn!(error = %status_err, "could not record the failure in status");
        }
        return if rejected {
            Ok(Report::Invalid)
        } else {
            Err(err)
        };
    }
    if !changes.is_empty() {
        event(ctx, &set, EventType::Normal, changed, describe(&changes));
    }
    forget_rejection(ctx, key);
    // A Deployment created or changed just now has not been seen by its controller yet: its
    // status changes within moments (observedGeneration, updated replicas). The set's status
    // is written once, by a refresh STATUS_SETTLE from now, instead of now and again then:
    // one status write per spec change instead of two, which at thousands of sets is a
    // sixth of all writes. Until then observedGeneration says the set is not yet done.
    if changes
        .iter()
        .any(|c| c.verb != "deleted" && c.kind == "Deployment")
    {
        return Ok(Report::Applied {
            writes: changes.len(),
            status_patched: false,
            status_after: Some(STATUS_SETTLE),
        });
    }
    let outcome = Outcome::Applied(result);
    let (status_patched, status_after) = match write_status(ctx, &set, &outcome, &applied).await? {
        StatusWrite::Written => {
            // Said once, when the set starts waiting for the host.
            let was_waiting = set
                .status
                .as_ref()
                .and_then(|s| s.condition(status::READY))
                .is_some_and(|c| c.reason == status::HOST_CONFLICT);
            if let Outcome::Applied(Applied {
                host_conflict: Some(conflict),
                ..
            }) = &outcome
                && !was_waiting
            {
                event(
                    ctx,
                    &set,
                    EventType::Warning,
                    status::HOST_CONFLICT,
                    conflict.clone(),
                );
            }
            (true, None)
        }
        StatusWrite::Unchanged => (false, None),
        StatusWrite::AwaitingController => (false, Some(STATUS_SETTLE)),
    };
    Ok(Report::Applied {
        writes: changes.len(),
        status_patched,
        status_after,
    })
}

/// Drops the memory of a refused generation once a later one applied.
fn forget_rejection(ctx: &Context, key: &SetKey) {
    let mut rejected = ctx.rejected.lock().unwrap_or_else(|e| e.into_inner());
    if !rejected.is_empty() {
        rejected.remove(key);
    }
}

/// How the message of a generation the API server refused begins (see `reconcile`).
pub const REJECTED: &str = "the API server rejected a child: ";

/// How long after applying Deployments a set's status is written (see `reconcile`).
pub const STATUS_SETTLE: Duration = Duration::from_secs(2);

/// How long after this replica changed a Deployment the set's status waits for the
/// Deployment's controller to report on it (see [`StatusWrite::AwaitingController`]). Past
/// it the status is written as it is: a cluster whose deployment controller is down or far
/// behind still sees its sets' observedGeneration move.
pub const CONTROLLER_WAIT: Duration = Duration::from_secs(10);

/// What [`write_status`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusWrite {
    Written,
    /// The status already says it.
    Unchanged,
    /// The status would change, but a Deployment this replica changed less than
    /// [`CONTROLLER_WAIT`] ago has not been seen by its controller yet: its report (a status
    /// update of the Deployment, which queues the set) changes the status again within
    /// moments. The status is written once then, instead of now and again then. Under load
    /// the deployment controller (or the load test's kubelet) reports later than
    /// [`STATUS_SETTLE`], and the interim write cost every third spec change a second
    /// status write, on a control plane already at its limit.
    AwaitingController,
}

fn describe(changes: &[Change]) -> String {
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
async fn apply_children(
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
async fn roll_back(ctx: &Context, ns: &str, changes: Vec<Change>) -> Vec<Change> {
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
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
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

/// `spec.replicas` of a Deployment, without parsing the rest of its spec.
#[derive(serde::Deserialize)]
struct ReplicasOnly {
    replicas: Option<i32>,
}

/// Patches the status if it differs from the current one, unless (for an applied set) a
/// Deployment's controller is about to report on our change of it (see
/// [`StatusWrite::AwaitingController`]).
async fn write_status(
    ctx: &Context,
    set: &Arc<VecodexSet>,
    outcome: &Outcome,
    applied: &[Raw<Deployment>],
) -> Result<StatusWrite, Error> {
    let set_name = set.name_any();
    let ns = set.namespace().unwrap_or_default();
    // A Deployment's spec.replicas and status alone, fresh or cached (see `Parts`).
    let state = |generation, parts: Parts<ReplicasOnly, DeploymentStatus>| {
        DeploymentState::new(
            generation,
            parts.spec.and_then(|s| s.replicas),
            parts.status,
        )
    };
    let deployments: Vec<(Component, String, DeploymentState)> = Component::ALL
        .iter()
        .map(|c| {
            let name = child_name(&set_name, c.as_str());
            let state = match applied
                .iter()
                .find(|d| d.meta().name.as_ref() == Some(&name))
            {
                Some(fresh) => state(fresh.meta().generation, fresh.parts()),
                None => ctx
                    .stores
                    .deployments
                    .get(&ObjectRef::new(&name).within(&ns))
                    .map(|d| state(d.generation, d.parts()))
                    .unwrap_or_default(),
            };
            (*c, name, state)
        })
        .collect();
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let states: Vec<(Component, DeploymentState)> = deployments
        .iter()
        .map(|(c, _, state)| (*c, state.clone()))
        .collect();
    let status = summarize(set, &states, outcome, &now);
    if set.status.as_ref() == Some(&status) {
        return Ok(StatusWrite::Unchanged);
    }
    let recently_written = |name: &str| {
        ctx.recent.written_within(
            &RecentWrites::key(&Deployment::kind(&()), &ns, name),
            CONTROLLER_WAIT,
        )
    };
    let named = deployments
        .iter()
        .map(|(_, name, state)| (name.as_str(), state));
    if awaiting_controller(outcome, named, recently_written) {
        debug!("a Deployment's controller has yet to report on our change; status follows it");
        return Ok(StatusWrite::AwaitingController);
    }
    // The condition types, statuses and reasons only: no object contents in logs.
    let conditions: Vec<String> = status
        .conditions
        .iter()
        .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
        .collect();
    debug!(generation = ?status.observed_generation, ?conditions, "status changed");
    // The set's own key: the operator writes only its status, and its watch sees the echo.
    let recent_key = RecentWrites::key(crate::crd::KIND, &ns, &set_name);
    let digest = digest(&status);
    let seen = set.metadata.resource_version.clone();
    if ctx.recent.covers(&recent_key, seen.as_deref(), digest) {
        return Ok(StatusWrite::Unchanged);
    }
    let written = ctx
        .writer
        .apply_status::<VecodexSet, _>(&ns, &set_name, &status)
        .await
        .map_err(|e| Error::write("apply status of", "VecodexSet", &set_name, e))?;
    ctx.recent.record(
        recent_key,
        seen,
        digest,
        written.meta().resource_version.clone(),
    );
    Ok(StatusWrite::Written)
}

/// Whether an applied set's status should wait for a Deployment's controller: some
/// Deployment (by name) exists, its controller has not yet seen its newest spec, and this
/// replica wrote it moments ago (`recently_written`), so the controller's report is on its
/// way. Someone else's change, or one older than [`CONTROLLER_WAIT`], does not hold the
/// status back.
fn awaiting_controller<'a>(
    outcome: &Outcome,
    deployments: impl IntoIterator<Item = (&'a str, &'a DeploymentState)>,
    recently_written: impl Fn(&str) -> bool,
) -> bool {
    matches!(outcome, Outcome::Applied(_))
        && deployments
            .into_iter()
            .any(|(name, state)| state.exists && !state.observed && recently_written(name))
}

/// Publishes an Event about the set; failing to do so never fails the reconcile.
fn event(ctx: &Context, set: &VecodexSet, type_: EventType, reason: &str, note: String) {
    // A Warning names the reconcile's trace, so `kubectl describe vxs` leads to it.
    let trace_id =
        (type_ == EventType::Warning).then(|| crate::telemetry::ids(&tracing::Span::current()).0);
    ctx.events
        .send(set.object_ref(&()), type_, reason, note, trace_id);
}

#[cfg(test)]
mod tests {
    use super::awaiting_controller;
    use crate::status::{DeploymentState, Outcome};

    #[test]
    fn the_status_waits_only_for_a_controller_reporting_on_our_recent_change() {
        let observed = DeploymentState {
            exists: true,
            observed: true,
            ..DeploymentState::default()
        };
        let behind = DeploymentState {
            observed: false,
            ..observed.clone()
        };
        let missing = DeploymentState::default();
        let ours = |name: &str| name == "s-searcher";
        let applied = Outcome::applied();
        assert!(awaiting_controller(
            &applied,
            [("s-writer", &observed), ("s-searcher", &behind)],
            ours
        ));
        assert!(
            !awaiting_controller(&applied, [("s-writer", &behind)], ours),
            "a Deployment we did not just change: its controller may never report"
        );
        assert!(
            !awaiting_controller(&applied, [("s-searcher", &observed)], ours),
            "the controller has reported"
        );
        assert!(
            !awaiting_controller(&applied, [("s-searcher", &missing)], ours),
            "a missing Deployment has no controller to wait for"
        );
        for reported_at_once in [Outcome::Failed("x".into()), Outcome::invalid("x")] {
            assert!(
                !awaiting_controller(&reported_at_once, [("s-searcher", &behind)], ours),
                "{reported_at_once:?} is reported at once"
            );
        }
    }
}
