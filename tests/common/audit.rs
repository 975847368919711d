//! The API server's audit log as an independent witness of what the replicas did: every write
//! with who sent it (user and User-Agent), the verb, the object, the answer, and when the API
//! server received and answered it. `deploy/local/cluster.sh` writes it (`<dir>/audit.log`,
//! JSON lines) when started with `VECODEX_K8S_AUDIT=1`, which the test harness sets: Lease
//! writes at level Request (so their holder is known), every other write at level Metadata,
//! reads not at all.
//!
//! A replica names itself in its User-Agent: `vecodex-operator/<version> (<identity>)`, and
//! `… (<identity>) leases` for its Lease traffic (see `src/main.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;

/// One write, as the API server recorded it once it answered.
#[derive(Debug, Clone)]
pub struct Record {
    pub user: String,
    pub user_agent: String,
    pub verb: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub code: u16,
    /// When the API server received the request.
    pub received: Timestamp,
    /// When it finished answering.
    pub completed: Timestamp,
    /// A Lease write's `spec.holderIdentity` (`None`: cleared, or not a Lease).
    pub lease_holder: Option<String>,
}

impl Record {
    /// The identity of the replica that sent it, from its User-Agent.
    pub fn replica(&self) -> Option<&str> {
        let rest = self.user_agent.strip_prefix("vecodex-operator/")?;
        let (_, rest) = rest.split_once(" (")?;
        Some(rest.split_once(')')?.0)
    }

    /// Whether it came from a replica's Lease client.
    pub fn is_lease_traffic(&self) -> bool {
        self.replica().is_some() && self.user_agent.ends_with(") leases")
    }

    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// `namespace/name` of the object (a set's key for a set's status).
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.namespace.as_deref().unwrap_or_default(),
            self.name.as_deref().unwrap_or_default()
        )
    }

    /// A write of a set's child or of a set's status.
    pub fn is_reconcile_write(&self) -> bool {
        matches!(
            self.resource.as_str(),
            "deployments" | "services" | "configmaps" | "ingresses"
        ) || (self.resource == "vecodexsets" && self.subresource.as_deref() == Some("status"))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    stage: String,
    verb: String,
    user: User,
    #[serde(default)]
    user_agent: String,
    object_ref: Option<ObjectRef>,
    response_status: Option<Status>,
    request_received_timestamp: String,
    stage_timestamp: String,
    request_object: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    username: String,
}

#[derive(Deserialize)]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    code: Option<u16>,
}

/// Every write the audit log at `path` records (completed requests only). A line that does
/// not parse fails: the witness must be complete. The API server may be writing a line while
/// it is read: only lines it finished (ending in a newline) count.
pub fn read(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "the audit log {}: {e} (the control plane must run with VECODEX_K8S_AUDIT=1)",
            path.display()
        )
    });
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Event>(l)
                .unwrap_or_else(|e| panic!("an audit event that does not parse ({e}): {l}"))
        })
        .filter(|e| e.stage == "ResponseComplete")
        .map(|e| {
            let object = e.object_ref.unwrap_or(ObjectRef {
                resource: String::new(),
                subresource: None,
                namespace: None,
                name: None,
            });
            let lease_holder = (object.resource == "leases")
                .then(|| {
                    e.request_object.as_ref()?["spec"]["holderIdentity"]
                        .as_str()
                        .filter(|h| !h.is_empty())
                        .map(str::to_owned)
                })
                .flatten();
            Record {
                user: e.user.username,
                user_agent: e.user_agent,
                verb: e.verb,
                resource: object.resource,
                subresource: object.subresource,
                namespace: object.namespace,
                name: object.name,
                code: e.response_status.and_then(|s| s.code).unwrap_or(0),
                received: timestamp(&e.request_received_timestamp),
                completed: timestamp(&e.stage_timestamp),
                lease_holder,
            }
        })
        .collect()
}

fn timestamp(text: &str) -> Timestamp {
    text.parse()
        .unwrap_or_else(|e| panic!("an audit timestamp {text:?}: {e}"))
}

/// The audit log of this test binary's control plane, from the moment this test binary
/// started (a control plane reused through `VECODEX_TEST_KUBECONFIG` holds earlier runs).
pub fn records() -> Vec<Record> {
    let since = *STARTED.get_or_init(Timestamp::now);
    read(&super::cluster().dir.join("audit.log"))
        .into_iter()
        .filter(|r| r.received >= since)
        .collect()
}

/// When this test binary first asked for its control plane (see [`mark_start`]).
static STARTED: std::sync::OnceLock<Timestamp> = std::sync::OnceLock::new();

/// Notes the start of this test binary's use of its control plane.
pub fn mark_start() {
    STARTED.get_or_init(Timestamp::now);
}

/// Who held each Lease when, from the successful Lease writes of the audit log.
pub struct LeaseHistory {
    /// Per Lease name: (completed, holder) of each successful create or update (the replicas
    /// never patch a Lease), in order.
    writes: BTreeMap<String, Vec<(Timestamp, Option<String>)>>,
    duration: SignedDuration,
}

impl LeaseHistory {
    /// The history of the Leases whose names start with `prefix`, each lasting `duration`
    /// without a renewal.
    pub fn new(records: &[Record], prefix: &str, duration: Duration) -> LeaseHistory {
        let mut writes: BTreeMap<String, Vec<(Timestamp, Option<String>)>> = BTreeMap::new();
        for r in records {
            if r.resource == "leases"
                && r.succeeded()
                && matches!(r.verb.as_str(), "create" | "update")
                && r.name.as_deref().is_some_and(|n| n.starts_with(prefix))
            {
                writes
                    .entry(r.name.clone().unwrap_or_default())
                    .or_default()
                    .push((r.completed, r.lease_holder.clone()));
            }
        }
        for w in writes.values_mut() {
            w.sort_by_key(|(t, _)| *t);
        }
        LeaseHistory {
            writes,
            duration: SignedDuration::try_from(duration).unwrap(),
        }
    }

    /// The holder of `lease` at `t`: the holder its last successful write before `t` set,
    /// unless that write cleared it or is older than the Lease's duration.
    pub fn holder_at(&self, lease: &str, t: Timestamp) -> Option<&str> {
        let (at, holder) = self.writes.get(lease)?.iter().rfind(|(at, _)| *at <= t)?;
        (t.duration_since(*at) <= self.duration)
            .then_some(holder.as_deref())
            .flatten()
    }
}

/// The child and status writes that replicas sent (by their User-Agent) and that reached the
/// API server while the sender did not hold the Lease of the namespace's shard, as the Lease
/// writes in the same log say; with how many writes were checked. `lease_of(replica,
/// namespace)` names that Lease (the shard depends on the replica's scheme); `None` skips
/// replicas the test does not know.
pub fn writes_by_non_holders<'a>(
    records: &'a [Record],
    history: &LeaseHistory,
    lease_of: impl Fn(&str, &str) -> Option<String>,
) -> (usize, Vec<&'a Record>) {
    let mut checked = 0;
    let mut strays = Vec::new();
    for r in records.iter().filter(|r| r.is_reconcile_write()) {
        let (Some(replica), Some(ns)) = (r.replica(), r.namespace.as_deref()) else {
            continue;
        };
        let Some(lease) = lease_of(replica, ns) else {
            continue;
        };
        checked += 1;
        if history.holder_at(&lease, r.received) != Some(replica) {
            strays.push(r);
        }
    }
    (checked, strays)
}

/// Panics unless every child or status write of a replica reached the API server while that
/// replica held its namespace's shard (see [`writes_by_non_holders`]). Returns how many
/// writes were checked.
pub fn assert_writes_by_holders(
    records: &[Record],
    history: &LeaseHistory,
    lease_of: impl Fn(&str, &str) -> Option<String>,
) -> usize {
    let (checked, strays) = writes_by_non_holders(records, history, &lease_of);
    if let Some(r) = strays.first() {
        let replica = r.replica().unwrap_or_default();
        let lease =
            lease_of(replica, r.namespace.as_deref().unwrap_or_default()).unwrap_or_default();
        panic!(
            "{} of {checked} writes came from a replica that did not hold the shard; the first: {replica} wrote {} {} ({} {}) at {} while {lease} was held by {:?}",
            strays.len(),
            r.resource,
            r.key(),
            r.verb,
            r.code,
            r.received,
            history.holder_at(&lease, r.received)
        );
    }
    assert!(checked > 0, "the audit log holds writes of the replicas");
    checked
}

/// [`assert_writes_by_holders`] over the log since the mark, against the history of the
/// shard Leases of `group` (each `lease_duration` long).
pub fn assert_group_writes_by_holders(
    group: &str,
    lease_duration: Duration,
    lease_of: impl Fn(&str, &str) -> Option<String>,
) -> usize {
    let records = records();
    let history = LeaseHistory::new(&records, &format!("{group}-shard-"), lease_duration);
    assert_writes_by_holders(&records, &history, lease_of)
}
