//! The status a set should report, computed from its spec, what the reconcile did and the live
//! Deployments (pure: the reconcile patches it only when it differs from the current status).

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};

use crate::crd::{Component, ComponentStatus, Condition, VecodexSet, VecodexSetStatus};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Whether every pod of the set passes the restricted Pod Security Standard.
pub const RESTRICTED: &str = "Restricted";

/// Reasons of a refused spec (see [`Outcome::Refused`]).
pub const INVALID_SPEC: &str = "InvalidSpec";
pub const POLICY_VIOLATION: &str = "PolicyViolation";
pub const HOST_CONFLICT: &str = "HostConflict";
/// Reasons of the Ready condition of a set whose spec was accepted.
pub const ALL_COMPONENTS_READY: &str = "AllComponentsReady";
pub const COMPONENTS_NOT_READY: &str = "ComponentsNotReady";
pub const APPLY_FAILED: &str = "ApplyFailed";

/// What this reconcile achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every desired child exists as desired (possibly after writes).
    Applied(Applied),
    /// The spec was refused (`reason`: [`INVALID_SPEC`] or [`POLICY_VIOLATION`]); nothing was
    /// changed.
    Refused {
        reason: &'static str,
        message: String,
    },
    /// A write failed; the reconcile will be retried.
    Failed(String),
}

/// What an applied reconcile reports besides the Deployments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Another set holds the Ingress host: every child but the Ingress was applied.
    pub host_conflict: Option<String>,
    /// The restricted Pod Security Standard rules the pods break (empty: none).
    pub not_restricted: Vec<String>,
}

impl Outcome {
    /// Applied, with nothing to report besides the Deployments.
    pub fn applied() -> Self {
        Outcome::Applied(Applied::default())
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Outcome::Refused {
            reason: INVALID_SPEC,
            message: message.into(),
        }
    }
}

/// The live state of one component's Deployment as status needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentState {
    pub exists: bool,
    /// The Deployment's own `spec.replicas`: what the component wants when the set leaves its
    /// replicas to another owner (see `summarize`).
    pub spec_replicas: Option<i32>,
    /// The deployment controller has seen the newest Deployment spec.
    pub observed: bool,
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    pub available: i32,
    /// Why the Deployment reports failure (`ProgressDeadlineExceeded`, `ReplicaFailure`).
    pub failure: Option<String>,
}

impl DeploymentState {
    pub fn from_deployment(d: Option<&Deployment>) -> Self {
        match d {
            Some(d) => Self::new(
                d.metadata.generation,
                d.spec.as_ref().and_then(|s| s.replicas),
                d.status.clone(),
            ),
            None => Self::default(),
        }
    }

    /// The state of an existing Deployment from its generation, `spec.replicas` and status.
    pub fn new(
        generation: Option<i64>,
        spec_replicas: Option<i32>,
        status: Option<DeploymentStatus>,
    ) -> Self {
        let status = status.unwrap_or_default();
        let generation = generation.unwrap_or(0);
        let failure = status.conditions.iter().flatten().find_map(|c| {
            let failed = (c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
                || (c.type_ == "ReplicaFailure" && c.status == "True");
            failed.then(|| {
                format!(
                    "{}: {}",
                    c.reason.clone().unwrap_or_else(|| c.type_.clone()),
                    c.message.clone().unwrap_or_default()
                )
            })
        });
        DeploymentState {
            exists: true,
            spec_replicas,
            observed: status.observed_generation.unwrap_or(0) >= generation,
            replicas: status.replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            failure,
        }
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: String::new(),
        observed_generation: generation,
    }
}

/// Computes the status. `now` (RFC 3339) is used only for conditions whose status flips.
pub fn summarize(
    set: &VecodexSet,
    deployments: &[(Component, DeploymentState)],
    outcome: &Outcome,
    now: &str,
) -> VecodexSetStatus {
    let previous = set.status.clone().unwrap_or_default();
    let generation = set.metadata.generation;
    let mut status = VecodexSetStatus {
        observed_generation: previous.observed_generation,
        ingress_host: previous.ingress_host.clone(),
        ..VecodexSetStatus::default()
    };

    let mut not_ready = Vec::new();
    let mut rolling = Vec::new();
    let mut failures = Vec::new();
    for (component, state) in deployments {
        // Unset in the spec: whatever owns the Deployment's replicas (an autoscaler) decides,
        // and a Deployment created without them has 1.
        let desired = set
            .spec
            .component(*component)
            .replicas
            .or(state.spec_replicas)
            .unwrap_or(1);
        *status.component_mut(*component) = Some(ComponentStatus {
            replicas: desired,
            ready_replicas: state.ready,
            updated_replicas: state.updated,
            available_replicas: state.available,
            ready: format!("{}/{}", state.ready, desired),
        });
        let rolled_out =
            state.exists && state.observed && state.updated >= desired && state.replicas == desired;
        if !rolled_out {
            rolling.push(format!("{component} {}/{desired} updated", state.updated));
        }
        if !(rolled_out && state.ready >= desired && state.available >= desired) {
            not_ready.push(format!("{component} {}/{desired} ready", state.ready));
        }
        if let Some(f) = &state.failure {
            failures.push(format!("{component}: {f}"));
        }
    }

    // The pods are as the last applied generation made them unless this one was applied.
    let kept_restricted = || previous.condition(RESTRICTED).cloned().into_iter();
    let conditions: Vec<Condition> = match outcome {
        Outcome::Refused { reason, message } => {
            // The spec was looked at (observed) and refused.
            status.observed_generation = generation;
            vec![
                condition(READY, false, reason, message.clone(), generation),
                condition(
                    PROGRESSING,
                    false,
                    reason,
                    "fix the spec to continue".to_owned(),
                    generation,
                ),
                condition(DEGRADED, true, reason, message.clone(), generation),
            ]
            .into_iter()
            .chain(kept_restricted())
            .collect()
        }
        Outcome::Failed(message) => vec![
            condition(READY, false, APPLY_FAILED, message.clone(), generation),
            condition(
                PROGRESSING,
                true,
                "Retrying",
                "applying children failed; retrying".to_owned(),
                generation,
            ),
            condition(DEGRADED, true, APPLY_FAILED, message.clone(), generation),
        ]
        .into_iter()
        .chain(kept_restricted())
        .collect(),
        Outcome::Applied(applied) => {
            status.observed_generation = generation;
            status.ingress_host = match &applied.host_conflict {
                None => set.spec.ingress.as_ref().map(|i| i.host.clone()),
                Some(_) => None,
            };
            let ready = if let Some(conflict) = &applied.host_conflict {
                condition(READY, false, HOST_CONFLICT, conflict.clone(), generation)
            } else if not_ready.is_empty() {
                condition(
                    READY,
                    true,
                    ALL_COMPONENTS_READY,
                    "all components are ready".to_owned(),
                    generation,
                )
            } else {
                condition(
                    READY,
                    false,
                    COMPONENTS_NOT_READY,
                    not_ready.join(", "),
                    generation,
                )
            };
            let progressing = if rolling.is_empty() {
                condition(
                    PROGRESSING,
                    false,
                    "RolloutComplete",
                    "every Deployment runs the desired spec".to_owned(),
                    generation,
                )
            } else {
                condition(
                    PROGRESSING,
                    true,
                    "RollingOut",
                    rolling.join(", "),
                    generation,
                )
            };
            let degraded = if let Some(conflict) = &applied.host_conflict {
                condition(DEGRADED, true, HOST_CONFLICT, conflict.clone(), generation)
            } else if failures.is_empty() {
                condition(
                    DEGRADED,
                    false,
                    "AsExpected",
                    "no component reports a failure".to_owned(),
                    generation,
                )
            } else {
                condition(
                    DEGRADED,
                    true,
                    "DeploymentFailing",
                    failures.join("; "),
                    generation,
                )
            };
            let restricted = if applied.not_restricted.is_empty() {
                condition(
                    RESTRICTED,
                    true,
                    "PodsRestricted",
                    "every pod passes the restricted Pod Security Standard".to_owned(),
                    generation,
                )
            } else {
                condition(
                    RESTRICTED,
                    false,
                    "PodsNotRestricted",
                    applied.not_restricted.join("; "),
                    generation,
                )
            };
            vec![ready, progressing, degraded, restricted]
        }
    };

    status.conditions = conditions
        .into_iter()
        .map(|mut c| {
            c.last_transition_time = match previous.condition(&c.type_) {
                Some(old) if old.status == c.status => old.last_transition_time.clone(),
                _ => now.to_owned(),
            };
            c
        })
        .collect();
    status
}

#[cfg(test)]
mod tests;
