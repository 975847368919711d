//! One reconcile of one set: read it from the cache, validate, build the desired children,
//! apply only what differs from the cached live objects, prune what is no longer desired, and
//! patch the status only when it changes.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::api::{Writer, is_rejection};
use crate::cache::Cache;
use crate::children::{self, Desired, child_name};
use crate::crd::{Component, VecodexSet};
use crate::diff::is_subset;
use crate::events::{EventType, Recorder};
use crate::status::{DeploymentState, Outcome, summarize};
use crate::validate::{Limits, validate};

/// The caches the reconcile reads instead of the API server.
#[derive(Clone)]
pub struct Stores {
    pub sets: Cache<VecodexSet>,
    pub deployments: Cache<Deployment>,
    pub services: Cache<Service>,
    pub config_maps: Cache<ConfigMap>,
    pub ingresses: Cache<Ingress>,
}

pub struct Context {
    pub writer: Writer,
    pub stores: Stores,
    pub recorder: Recorder,
    pub limits: Limits,
    pub recent: RecentWrites,
}

/// Writes this process made whose watch events may not have reached the caches yet.
///
/// A reconcile that runs right after another one can read a cache that does not show the
/// first one's write; without this it would send the same write again. An entry only counts
/// while the cache still shows exactly the version the write was decided on.
#[derive(Default)]
pub struct RecentWrites {
    entries: Mutex<HashMap<String, RecentWrite>>,
}

struct RecentWrite {
    seen_version: String,
    digest: u64,
    at: Instant,
}

const RECENT_TTL: Duration = Duration::from_secs(60);

impl RecentWrites {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RecentWrite>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `digest` was already written over the cached version `seen`.
    fn covers(&self, key: &str, seen: Option<&str>, digest: u64) -> bool {
        let Some(seen) = seen else { return false };
        self.lock().get(key).is_some_and(|w| {
            w.seen_version == seen && w.digest == digest && w.at.elapsed() < RECENT_TTL
        })
    }

    fn record(&self, key: String, seen: Option<String>, digest: u64) {
        let Some(seen_version) = seen else { return };
        let mut entries = self.lock();
        if entries.len() % 256 == 255 {
            entries.retain(|_, w| w.at.elapsed() < RECENT_TTL);
        }
        entries.insert(
            key,
            RecentWrite {
                seen_version,
                digest,
                at: Instant::now(),
            },
        );
    }
}

fn digest(value: &serde_json::Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid key {0:?}: expected namespace/name")]
    BadKey(String),
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

/// What a reconcile did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The set no longer exists (or is being deleted): garbage collection removes children.
    Gone,
    /// The spec is invalid; nothing was changed.
    Invalid,
    /// Children are as desired; `writes` counts the child writes this reconcile needed.
    Applied { writes: usize, status_patched: bool },
}

/// One change to a child, for the Normal Event.
#[derive(Debug, Clone)]
struct Change {
    verb: &'static str,
    kind: String,
    name: String,
}

pub async fn reconcile(ctx: &Context, key: &str) -> Result<Report, Error> {
    let (ns, name) = key
        .split_once('/')
        .ok_or_else(|| Error::BadKey(key.to_owned()))?;
    let Some(set) = ctx.stores.sets.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(Report::Gone);
    };
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Report::Gone);
    }
    let span = tracing::Span::current();
    span.record("vecodex.set.uid", set.metadata.uid.as_deref().unwrap_or(""));
    span.record(
        "vecodex.set.generation",
        set.metadata.generation.unwrap_or(0),
    );

    let errors = validate(&set, &ctx.limits);
    if !errors.is_empty() {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        info!(%message, "spec is invalid; no child is changed");
        let outcome = Outcome::Invalid(message.clone());
        if write_status(ctx, &set, &outcome).await? {
            // Only on a new verdict, so an unchanged invalid set costs no write.
            event(ctx, &set, EventType::Warning, "InvalidSpec", message).await;
        }
        return Ok(Report::Invalid);
    }

    let desired = children::build(&set)?;
    let mut changes = Vec::new();
    if let Err(err) = apply_children(ctx, &set, desired, &mut changes).await {
        let message = err.to_string();
        let rejected = matches!(&err, Error::Write { source, .. } if is_rejection(source));
        // A rejected child means the spec is wrong in a way validation missed: report it as
        // invalid instead of retrying the same request for ever.
        let outcome = if rejected {
            Outcome::Invalid(message.clone())
        } else {
            Outcome::Failed(message.clone())
        };
        if !changes.is_empty() {
            event(ctx, &set, EventType::Normal, "Applied", describe(&changes)).await;
        }
        event(ctx, &set, EventType::Warning, "ApplyFailed", message).await;
        if let Err(status_err) = write_status(ctx, &set, &outcome).await {
            warn!(error = %status_err, "could not record the failure in status");
        }
        return if rejected {
            Ok(Report::Invalid)
        } else {
            Err(err)
        };
    }
    if !changes.is_empty() {
        event(ctx, &set, EventType::Normal, "Applied", describe(&changes)).await;
    }
    let status_patched = write_status(ctx, &set, &Outcome::Applied).await?;
    Ok(Report::Applied {
        writes: changes.len(),
        status_patched,
    })
}

fn describe(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| format!("{} {} {}", c.verb, c.kind, c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies what differs and prunes what is no longer desired. Order: config first (pods mount
/// it), then Services, Deployments, and the Ingress last (it points at a Service).
async fn apply_children(
    ctx: &Context,
    set: &VecodexSet,
    desired: Desired,
    changes: &mut Vec<Change>,
) -> Result<(), Error> {
    let ns = set.namespace().unwrap_or_default();
    let possible = children::possible_children(&set.name_any());
    for cm in &desired.config_maps {
        ensure(ctx, &ctx.stores.config_maps, cm, changes).await?;
    }
    for name in &possible.config_maps {
        if !desired
            .config_maps
            .iter()
            .any(|cm| cm.metadata.name.as_ref() == Some(name))
        {
            prune(ctx, &ctx.stores.config_maps, set, &ns, name, changes).await?;
        }
    }
    for svc in &desired.services {
        ensure(ctx, &ctx.stores.services, svc, changes).await?;
    }
    for deploy in &desired.deployments {
        ensure(ctx, &ctx.stores.deployments, deploy, changes).await?;
    }
    match &desired.ingress {
        Some(ing) => ensure(ctx, &ctx.stores.ingresses, ing, changes).await?,
        None => {
            prune(
                ctx,
                &ctx.stores.ingresses,
                set,
                &ns,
                &possible.ingress,
                changes,
            )
            .await?
        }
    }
    Ok(())
}

/// Applies `desired` unless the cached live object already has every field we set.
async fn ensure<K>(
    ctx: &Context,
    store: &Cache<K>,
    desired: &K,
    changes: &mut Vec<Change>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    let ns = desired.meta().namespace.clone().unwrap_or_default();
    let kind = K::kind(&()).into_owned();
    let live = store.get(&ObjectRef::new(&name).within(&ns));
    let desired_value = serde_json::to_value(desired).unwrap_or_default();
    let seen = live
        .as_ref()
        .and_then(|l| l.meta().resource_version.clone());
    if let Some(live) = &live
        && serde_json::to_value(live.as_ref()).is_ok_and(|l| is_subset(&desired_value, &l))
    {
        return Ok(());
    }
    // Only now, on the way to a write, is the digest worth computing.
    let recent_key = format!("{kind}/{ns}/{name}");
    let digest = digest(&desired_value);
    if ctx.recent.covers(&recent_key, seen.as_deref(), digest) {
        return Ok(());
    }
    if live.is_none() {
        // Not in our cache (which holds only labelled children): make sure we do not take
        // over an object someone else created under the same name.
        let existing = ctx
            .writer
            .get_opt::<K>(&ns, &name)
            .await
            .map_err(|source| Error::Write {
                verb: "read",
                kind: kind.clone(),
                name: name.clone(),
                source,
            })?;
        if let Some(existing) = existing
            && !existing.owner_references().iter().any(|o| {
                o.controller == Some(true)
                    && desired.owner_references().iter().any(|d| d.uid == o.uid)
            })
        {
            return Err(Error::NotOwned { kind, name });
        }
    }
    ctx.writer
        .apply(desired, live.is_none())
        .await
        .map_err(|source| Error::Write {
            verb: "apply",
            kind: kind.clone(),
            name: name.clone(),
            source,
        })?;
    ctx.recent.record(recent_key, seen, digest);
    debug!(kind, name, created = live.is_none(), "applied");
    changes.push(Change {
        verb: if live.is_some() { "updated" } else { "created" },
        kind,
        name,
    });
    Ok(())
}

/// Deletes a child that is no longer desired, if it exists and this set controls it.
async fn prune<K>(
    ctx: &Context,
    store: &Cache<K>,
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
    let owned = live
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == set.metadata.uid.as_ref());
    if !owned {
        return Ok(());
    }
    let kind = K::kind(&()).into_owned();
    ctx.writer
        .delete::<K>(ns, name, live.uid())
        .await
        .map_err(|source| Error::Write {
            verb: "delete",
            kind: kind.clone(),
            name: name.to_owned(),
            source,
        })?;
    changes.push(Change {
        verb: "deleted",
        kind,
        name: name.to_owned(),
    });
    Ok(())
}

/// Patches the status if it differs from the current one; returns whether it wrote.
async fn write_status(
    ctx: &Context,
    set: &Arc<VecodexSet>,
    outcome: &Outcome,
) -> Result<bool, Error> {
    let set_name = set.name_any();
    let ns = set.namespace().unwrap_or_default();
    let deployments: Vec<(Component, DeploymentState)> = Component::ALL
        .iter()
        .map(|c| {
            let live = ctx
                .stores
                .deployments
                .get(&ObjectRef::new(&child_name(&set_name, c.as_str())).within(&ns));
            (*c, DeploymentState::from_deployment(live.as_deref()))
        })
        .collect();
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let status = summarize(set, &deployments, outcome, &now);
    if set.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    // The condition types, statuses and reasons only: no object contents in logs.
    let conditions: Vec<String> = status
        .conditions
        .iter()
        .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
        .collect();
    debug!(generation = ?status.observed_generation, ?conditions, "status changed");
    let recent_key = format!("status/{ns}/{set_name}");
    let digest = digest(&serde_json::to_value(&status).unwrap_or_default());
    let seen = set.metadata.resource_version.clone();
    if ctx.recent.covers(&recent_key, seen.as_deref(), digest) {
        return Ok(false);
    }
    ctx.writer
        .apply_status::<VecodexSet, _>(&ns, &set_name, &status)
        .await
        .map_err(|source| Error::Write {
            verb: "apply status of",
            kind: "VecodexSet".to_owned(),
            name: set_name,
            source,
        })?;
    ctx.recent.record(recent_key, seen, digest);
    Ok(true)
}

/// Publishes an Event about the set; failing to do so never fails the reconcile.
async fn event(ctx: &Context, set: &VecodexSet, type_: EventType, reason: &str, note: String) {
    // A Warning names the reconcile's trace, so `kubectl describe vxs` leads to it.
    let trace_id =
        (type_ == EventType::Warning).then(|| crate::telemetry::ids(&tracing::Span::current()).0);
    if let Err(e) = ctx
        .recorder
        .publish(
            &ctx.writer,
            &set.object_ref(&()),
            type_,
            reason,
            note,
            trace_id.as_deref(),
        )
        .await
    {
        warn!(error = %e, reason, "could not publish event");
    }
}
