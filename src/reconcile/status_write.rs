//! Writing a set's status: only when it changes, and not while a Deployment this replica
//! just changed waits for its controller's report.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::debug;

use crate::cache::{Parts, Raw};
use crate::children::child_name;
use crate::crd::{Component, VecodexSet};
use crate::recent_writes::RecentWrites;
use crate::status::{DeploymentState, Outcome, summarize};

use super::apply::digest;
use super::{Context, Error};

/// How long after applying Deployments a set's status is written (see `reconcile`).
pub const STATUS_SETTLE: Duration = Duration::from_secs(2);

/// How long after this replica changed a Deployment the set's status waits for the
/// Deployment's controller to report on it (see [`StatusWrite::AwaitingController`]). Past
/// it the status is written as it is: a cluster whose deployment controller is down or far
/// behind still sees its sets' observedGeneration move.
pub const CONTROLLER_WAIT: Duration = Duration::from_secs(10);

/// What [`write_status`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StatusWrite {
    Written,
    /// The status already says it.
    Unchanged,
    /// The status would change, but not its reported observedGeneration (a restore of the
    /// generation already reported), and a Deployment this replica changed less than
    /// [`CONTROLLER_WAIT`] ago has not been seen by its controller yet: its report (a status
    /// update of the Deployment, which queues the set) changes the status again within
    /// moments. The status is written once then, instead of now and again then. A status
    /// that reports a generation (a new set's first, a spec change's) never waits: a user
    /// waits on it, and under load the deployment controller reports seconds late.
    AwaitingController,
}

/// `spec.replicas` of a Deployment, without parsing the rest of its spec.
#[derive(serde::Deserialize)]
struct ReplicasOnly {
    replicas: Option<i32>,
}

/// Patches the status if it differs from the current one, unless (for an applied set whose
/// reported observedGeneration stays) a Deployment's controller is about to report on our
/// change of it (see [`StatusWrite::AwaitingController`]). A new observedGeneration is
/// written at once: a user waits on it for a new set or a spec change.
pub(super) async fn write_status(
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
    if Reported::of(set).keeps_generation() && awaiting_controller(outcome, named, recently_written)
    {
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

/// What a set's status reports of the set's generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reported {
    /// No generation yet: a new set.
    Nothing,
    /// The set's generation: applying it can only put back what someone else changed.
    Current,
    /// An earlier generation: applying the set moves what a user (`kubectl wait`, a GitOps
    /// tool) waits on for the change.
    Earlier,
}

impl Reported {
    /// Whether a status written now leaves the reported observedGeneration as it is: only
    /// such a write waits for a Deployment's controller.
    pub(super) fn keeps_generation(self) -> bool {
        self == Reported::Current
    }

    pub(super) fn of(set: &VecodexSet) -> Reported {
        match set.status.as_ref().and_then(|s| s.observed_generation) {
            None => Reported::Nothing,
            Some(g) if Some(g) == set.metadata.generation => Reported::Current,
            Some(_) => Reported::Earlier,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::{Reported, awaiting_controller};
    use crate::crd::{VecodexSet, VecodexSetStatus};
    use crate::status::{DeploymentState, Outcome};

    #[test]
    fn a_status_that_reports_a_generation_never_waits_for_the_controller() {
        let yaml = include_str!("../../deploy/samples/vecodexset-example.yaml");
        let mut set: VecodexSet = serde_saphyr::from_str(yaml).expect("the example parses");
        set.metadata.generation = Some(4);
        assert_eq!(
            Reported::of(&set),
            Reported::Nothing,
            "a new set gets one status, after it settles"
        );
        let reported = |g| VecodexSetStatus {
            observed_generation: g,
            ..VecodexSetStatus::default()
        };
        set.status = Some(reported(None));
        assert_eq!(
            Reported::of(&set),
            Reported::Nothing,
            "nothing reported yet"
        );
        set.status = Some(reported(Some(4)));
        assert_eq!(
            Reported::of(&set),
            Reported::Current,
            "a restore keeps the generation"
        );
        set.status = Some(reported(Some(3)));
        assert_eq!(Reported::of(&set), Reported::Earlier, "a spec change");
        // Only a restore's status waits for the Deployments' controller.
        assert!(Reported::Current.keeps_generation());
        assert!(!Reported::Nothing.keeps_generation() && !Reported::Earlier.keeps_generation());
    }

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
