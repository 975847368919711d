use super::*;
use crate::crd::VecodexSet;

fn seed(generation: i64) -> VecodexSet {
    let yaml = include_str!("../../deploy/samples/vecodexset-example.yaml");
    let mut set: VecodexSet = serde_saphyr::from_str(yaml).expect("seed example parses");
    set.metadata.generation = Some(generation);
    set
}

fn healthy(replicas: i32) -> DeploymentState {
    DeploymentState {
        exists: true,
        spec_replicas: Some(replicas),
        observed: true,
        replicas,
        ready: replicas,
        updated: replicas,
        available: replicas,
        failure: None,
    }
}

fn all(states: [DeploymentState; 3]) -> Vec<(Component, DeploymentState)> {
    Component::ALL.into_iter().zip(states).collect()
}

fn cond<'a>(s: &'a VecodexSetStatus, t: &str) -> &'a crate::crd::Condition {
    s.condition(t).unwrap_or_else(|| panic!("no {t} condition"))
}

#[test]
fn ready_when_every_component_is_available() {
    let set = seed(3);
    let s = summarize(
        &set,
        &all([healthy(1), healthy(1), healthy(3)]),
        &Outcome::applied(),
        "t1",
    );
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(cond(&s, READY).status, "True");
    assert_eq!(cond(&s, PROGRESSING).status, "False");
    assert_eq!(cond(&s, DEGRADED).status, "False");
    assert_eq!(s.searcher.as_ref().unwrap().ready, "3/3");
    assert_eq!(s.ingress_host.as_deref(), Some("search.vecodex.link"));
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(3))
    );
}

#[test]
fn not_ready_while_pods_are_missing() {
    let set = seed(1);
    let mut searcher = healthy(3);
    searcher.ready = 1;
    searcher.available = 1;
    let s = summarize(
        &set,
        &all([healthy(1), healthy(1), searcher]),
        &Outcome::applied(),
        "t1",
    );
    let ready = cond(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ComponentsNotReady")
    );
    assert!(ready.message.contains("searcher 1/3"), "{}", ready.message);
    assert_eq!(s.searcher.as_ref().unwrap().ready, "1/3");
}

#[test]
fn progressing_until_the_deployment_controller_caught_up() {
    let set = seed(1);
    let mut writer = healthy(1);
    writer.observed = false;
    let s = summarize(
        &set,
        &all([healthy(1), writer, healthy(3)]),
        &Outcome::applied(),
        "t1",
    );
    assert_eq!(cond(&s, PROGRESSING).status, "True");
    assert_eq!(cond(&s, READY).status, "False");
}

#[test]
fn invalid_spec_is_reported_and_observed() {
    let set = seed(4);
    let s = summarize(
        &set,
        &all(Default::default()),
        &Outcome::invalid("spec.writer.image: bad"),
        "t1",
    );
    let ready = cond(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(ready.message.contains("spec.writer.image"));
    assert_eq!(cond(&s, DEGRADED).status, "True");
    assert_eq!(s.observed_generation, Some(4));
}

#[test]
fn failed_apply_keeps_the_old_observed_generation() {
    let mut set = seed(5);
    set.status = Some(VecodexSetStatus {
        observed_generation: Some(4),
        ..Default::default()
    });
    let s = summarize(
        &set,
        &all(Default::default()),
        &Outcome::Failed("boom".into()),
        "t1",
    );
    assert_eq!(s.observed_generation, Some(4));
    assert_eq!(cond(&s, READY).reason, "ApplyFailed");
}

#[test]
fn transition_time_moves_only_when_status_flips() {
    let mut set = seed(1);
    let first = summarize(&set, &all(Default::default()), &Outcome::applied(), "t1");
    set.status = Some(first.clone());
    let same = summarize(&set, &all(Default::default()), &Outcome::applied(), "t2");
    assert_eq!(
        same, first,
        "nothing changed, so the status is identical (no write)"
    );
    let flipped = summarize(
        &set,
        &all([healthy(1), healthy(1), healthy(3)]),
        &Outcome::applied(),
        "t3",
    );
    assert_eq!(cond(&flipped, READY).last_transition_time, "t3");
    assert_eq!(
        cond(&flipped, DEGRADED).last_transition_time,
        "t1",
        "Degraded stayed False"
    );
}

#[test]
fn deployment_failures_make_the_set_degraded() {
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
    let d = Deployment {
        status: Some(DeploymentStatus {
            conditions: Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                message: Some("took too long".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let state = DeploymentState::from_deployment(Some(&d));
    let s = summarize(
        &seed(1),
        &all([state, healthy(1), healthy(3)]),
        &Outcome::applied(),
        "t1",
    );
    let degraded = cond(&s, DEGRADED);
    assert_eq!(degraded.status, "True");
    assert!(degraded.message.contains("ProgressDeadlineExceeded"));
}

#[test]
fn replicas_left_unset_are_what_the_deployment_wants() {
    let mut set = seed(2);
    set.spec.searcher.replicas = None;
    // An autoscaler set the searcher Deployment to 5, and it has 5 ready.
    let s = summarize(
        &set,
        &all([healthy(1), healthy(1), healthy(5)]),
        &Outcome::applied(),
        "t1",
    );
    let searcher = s.searcher.as_ref().unwrap();
    assert_eq!((searcher.replicas, searcher.ready.as_str()), (5, "5/5"));
    assert_eq!(cond(&s, READY).status, "True");
    // Before the Deployment exists: the 1 it will be created with.
    let s = summarize(
        &set,
        &all([healthy(1), healthy(1), DeploymentState::default()]),
        &Outcome::applied(),
        "t1",
    );
    assert_eq!(s.searcher.as_ref().unwrap().replicas, 1);
    // Set in the spec, the spec wins over what the Deployment has.
    set.spec.searcher.replicas = Some(3);
    let s = summarize(
        &set,
        &all([healthy(1), healthy(1), healthy(5)]),
        &Outcome::applied(),
        "t1",
    );
    assert_eq!(s.searcher.as_ref().unwrap().replicas, 3);
    assert_eq!(cond(&s, READY).status, "False");
}
