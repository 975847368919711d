//! One reconcile of one set: read it from the cache, validate, build the desired children,
//! apply only what differs from the cached live objects (`apply`), prune what is no longer
//! desired, and write the status only when it changes (`status_write`).

mod apply;
mod status_write;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, warn};

use crate::api::{Writer, is_namespace_terminating, is_rejection};
use crate::children::{self};
use crate::crd::VecodexSet;
use crate::events::{EventSender, EventType};
use crate::hosts::HostIndex;
use crate::key::SetKey;
use crate::policy::{self, Policy};
use crate::recent_writes::RecentWrites;
use crate::status::{self, Applied, Outcome};
use crate::stores::Stores;
use crate::validate::{Limits, validate};

use self::apply::{apply_children, describe, roll_back};
pub use self::status_write::{CONTROLLER_WAIT, STATUS_SETTLE};
use self::status_write::{Reported, StatusWrite, write_status};

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
    /// `status_after`: the status is written by another reconcile later.
    Applied {
        writes: usize,
        status_patched: bool,
        status_after: Option<Refresh>,
    },
}

/// A status refresh a reconcile leaves to a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh {
    /// How long from now.
    pub after: Duration,
    /// The set has no status yet: the refresh finishes it.
    pub first: bool,
}

impl Refresh {
    /// A refresh [`STATUS_SETTLE`] from now.
    fn settle(set: &VecodexSet) -> Self {
        Refresh {
            after: STATUS_SETTLE,
            first: Reported::of(set) == Reported::Nothing,
        }
    }
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
    let reported = Reported::of(&set);
    let changed = match reported {
        Reported::Current => "Restored",
        Reported::Nothing | Reported::Earlier => "Applied",
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
    // status changes within moments (observedGeneration, updated replicas). A set that has
    // no status yet, or whose status already reports this generation (a restore), gets it
    // once, by a refresh STATUS_SETTLE from now, instead of now and again then: one status
    // write per new set, which at thousands of sets is a sixth of all writes. The refresh
    // writes a new set's first status whether or not the controller reported. A set whose
    // status reports an earlier generation gets the new observedGeneration now (see
    // `write_status`), and Ready with the controller's report.
    if reported != Reported::Earlier
        && changes
            .iter()
            .any(|c| c.verb != "deleted" && c.kind == "Deployment")
    {
        return Ok(Report::Applied {
            writes: changes.len(),
            status_patched: false,
            status_after: Some(Refresh::settle(&set)),
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
        StatusWrite::AwaitingController => (false, Some(Refresh::settle(&set))),
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

/// Publishes an Event about the set; failing to do so never fails the reconcile.
fn event(ctx: &Context, set: &VecodexSet, type_: EventType, reason: &str, note: String) {
    // A Warning names the reconcile's trace, so `kubectl describe vxs` leads to it.
    let trace_id =
        (type_ == EventType::Warning).then(|| crate::telemetry::ids(&tracing::Span::current()).0);
    ctx.events
        .send(set.object_ref(&()), type_, reason, note, trace_id);
}
