//! The Lease protocol, race-free: every acquisition, renewal and release is a conditional
//! update on the `resourceVersion` the replica last saw, so when several replicas see the same
//! expired Lease at once exactly one update succeeds and the others get 409 Conflict.
//!
//! Expiry is judged as client-go's leaderelection does: by when *this* replica observed the
//! Lease's record last change (on its own monotonic clock), plus the Lease's duration, never by
//! comparing its clock with another machine's `renewTime`.
//!
//! (kube-leader-election 0.44 acquires and renews with merge patches that carry no
//! resourceVersion, so two replicas can both "win" an expired Lease; it is not used.)

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{ListParams, ObjectList, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::time::Instant;

use super::names::{GROUP_LABEL, group_selector};

pub const LEASE_KIND_LABEL: &str = "vecodex.link/lease";
/// The shard scheme (`Scheme::id`) of the replica that last wrote a Lease.
pub const SCHEME_ANNOTATION: &str = "vecodex.link/shard-scheme";

/// What this replica last saw of a Lease, and when it saw it change.
#[derive(Debug, Clone)]
pub struct Observed {
    pub lease: Lease,
    pub observed_at: Instant,
}

impl Observed {
    pub fn holder(&self) -> Option<&str> {
        self.lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .filter(|h| !h.is_empty())
    }

    fn duration(&self) -> Duration {
        let secs = self
            .lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .unwrap_or(0);
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    }

    /// Free to take: released, or not renewed for its duration as observed here.
    pub fn is_free(&self, now: Instant) -> bool {
        self.holder().is_none() || now >= self.observed_at + self.duration()
    }

    fn version(&self) -> Option<&str> {
        self.lease.metadata.resource_version.as_deref()
    }

    /// The shard scheme of its last writer; `None` for a Lease written without one.
    pub fn scheme(&self) -> Option<&str> {
        self.lease
            .metadata
            .annotations
            .as_ref()?
            .get(SCHEME_ANNOTATION)
            .map(String::as_str)
    }

    /// When the API server created it (its first write).
    pub fn created(&self) -> Option<jiff::Timestamp> {
        self.lease.metadata.creation_timestamp.as_ref().map(|t| t.0)
    }

    /// The resourceVersion as the number etcd makes it. The API server calls versions
    /// opaque; where one is not a number, no two reads are ordered by it.
    fn version_number(lease: &Lease) -> Option<u64> {
        lease.metadata.resource_version.as_deref()?.parse().ok()
    }

    /// The parts of the record whose change means the holder is alive.
    fn record(lease: &Lease) -> (Option<String>, Option<String>, Option<i32>) {
        let spec = lease.spec.clone().unwrap_or_default();
        (
            spec.holder_identity,
            spec.renew_time.map(|t| t.0.to_string()),
            spec.lease_transitions,
        )
    }
}

/// Leases of one operator group in one namespace.
pub struct LeaseClient {
    api: Api<Lease>,
    identity: String,
    /// Recorded on every Lease written (see [`SCHEME_ANNOTATION`]).
    scheme: String,
    duration: Duration,
    labels: BTreeMap<String, String>,
    observed: HashMap<String, Observed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// We hold it now (acquired or renewed).
    Held,
    /// Someone else holds it, or another replica won the race.
    NotHeld,
}

fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl LeaseClient {
    pub fn new(
        client: Client,
        namespace: &str,
        identity: &str,
        scheme: &str,
        duration: Duration,
        group: &str,
    ) -> Self {
        LeaseClient {
            api: Api::namespaced(client, namespace),
            identity: identity.to_owned(),
            scheme: scheme.to_owned(),
            duration,
            labels: BTreeMap::from([(GROUP_LABEL.to_owned(), group.to_owned())]),
            observed: HashMap::new(),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn observed(&self, name: &str) -> Option<&Observed> {
        self.observed.get(name)
    }

    pub fn all_observed(&self) -> impl Iterator<Item = (&String, &Observed)> {
        self.observed.iter()
    }

    /// The earliest moment a Lease held by someone else expires, as observed here.
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.observed
            .values()
            .filter(|o| o.holder().is_some_and(|h| h != self.identity) && !o.is_free(now))
            .map(|o| o.observed_at + o.duration())
            .min()
    }

    fn note(&mut self, lease: Lease, now: Instant) {
        let Some(name) = lease.metadata.name.clone() else {
            return;
        };
        let changed = self
            .observed
            .get(&name)
            .is_none_or(|o| Observed::record(&o.lease) != Observed::record(&lease));
        match self.observed.get_mut(&name) {
            Some(o) if !changed => o.lease = lease,
            _ => {
                self.observed.insert(
                    name,
                    Observed {
                        lease,
                        observed_at: now,
                    },
                );
            }
        }
    }

    /// A Lease from the watch, received at `at`. The watch sees a renewal as it happens, where
    /// the list of the next tick sees it up to a retry period later, and expiry counts from
    /// when a renewal was seen, so a dead replica's shards are taken as soon as they expire,
    /// not up to a retry period later. Never earlier: `at` comes after the write.
    /// Only known Leases count (the lists decide which exist, so an event that arrives after
    /// a deletion cannot bring a Lease back), and only versions at least as new as known.
    /// The lists stay authoritative: one that crossed a newer watch event notes its older
    /// version as seen now, which only puts an expiry later, until the next read; comparing
    /// versions there too would leave a replica blind to every Lease if etcd were restored
    /// from a backup with older versions.
    pub fn observe_event(&mut self, lease: Lease, at: Instant) {
        let Some(name) = lease.metadata.name.as_deref() else {
            return;
        };
        let Some(known) = self.observed.get_mut(name) else {
            return;
        };
        let (Some(old), Some(new)) = (
            Observed::version_number(&known.lease),
            Observed::version_number(&lease),
        ) else {
            return;
        };
        if new > old {
            self.note(lease, at);
        } else if new == old && at < known.observed_at {
            // The list saw this version first, but the watch brought it earlier.
            known.observed_at = at;
        }
    }

    /// Every version of this group's Leases the API server sends (a watch that re-lists
    /// after errors, see [`observe_event`](Self::observe_event)).
    pub fn watch(&self) -> impl Stream<Item = Lease> + Send + 'static {
        let config = watcher::Config::default().labels(&selector(&self.labels));
        watcher::watcher(self.api.clone(), config)
            .backoff(crate::backoff::WatchBackoff::default())
            .applied_objects()
            .filter_map(|lease| std::future::ready(lease.ok()))
    }

    /// Lists this group's Leases (a consistent read) and updates the observations.
    pub async fn refresh(&mut self) -> Result<(), kube::Error> {
        let leases = list(&self.api, &self.labels).await?;
        self.observe_list(leases, Instant::now());
        Ok(())
    }

    fn observe_list(&mut self, leases: ObjectList<Lease>, now: Instant) {
        let names: std::collections::HashSet<String> = leases
            .items
            .iter()
            .filter_map(|l| l.metadata.name.clone())
            .collect();
        self.observed.retain(|name, _| names.contains(name));
        for lease in leases.items {
            self.note(lease, now);
        }
    }

    fn new_lease(&self, name: &str, kind: &str) -> Lease {
        let mut labels = self.labels.clone();
        labels.insert(LEASE_KIND_LABEL.to_owned(), kind.to_owned());
        let now = now_micro();
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([(
                    SCHEME_ANNOTATION.to_owned(),
                    self.scheme.clone(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration.as_secs() as i32),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        }
    }

    /// What acquiring `name` takes: create it, replace the version we saw (conditional), or
    /// nothing because someone else holds it.
    fn plan(&self, name: &str, kind: &str, now: Instant) -> Plan {
        let Some(observed) = self.observed.get(name).cloned() else {
            return Plan::Create(self.new_lease(name, kind));
        };
        let ours = observed.holder() == Some(self.identity.as_str());
        if !ours && !observed.is_free(now) {
            return Plan::NotHeld;
        }
        let mut lease = observed.lease.clone();
        lease
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(SCHEME_ANNOTATION.to_owned(), self.scheme.clone());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let stamp = now_micro();
        if !ours {
            spec.acquire_time = Some(stamp.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(stamp);
        spec.lease_duration_seconds = Some(self.duration.as_secs() as i32);
        // `replace` sends metadata.resourceVersion: the write fails with 409 if anyone
        // changed the Lease since we read it.
        debug_assert!(observed.version().is_some());
        Plan::Replace(lease)
    }

    fn finish(
        &mut self,
        sent: Result<Option<Lease>, kube::Error>,
        now: Instant,
    ) -> Result<Attempt, kube::Error> {
        match sent {
            Ok(Some(written)) => {
                self.note(written, now);
                Ok(Attempt::Held)
            }
            Ok(None) => Ok(Attempt::NotHeld),
            Err(e) => Err(e),
        }
    }

    /// Lists the group's Leases and sends every operation of `ops` at once, each request
    /// bounded by `timeout`, so that a slow API server costs one round trip per tick
    /// whatever the number of shards. Acquisitions and renewals work from the versions the
    /// last list or our last writes returned (a stale one only makes the conditional write
    /// fail). Returns whether the list succeeded, and per operation `None` if it timed out,
    /// else `Held` (acquired or renewed) or `NotHeld` (someone else holds it, or released).
    pub async fn exchange(
        &mut self,
        ops: &[(String, Op)],
        timeout: Duration,
    ) -> (bool, Vec<Option<Result<Attempt, kube::Error>>>) {
        let now = Instant::now();
        let api = &self.api;
        let listed = tokio::time::timeout(timeout, list(api, &self.labels));
        let requests = ops.iter().map(|(name, op)| {
            let plan = match op {
                Op::Acquire(kind) => self.plan(name, kind, now),
                Op::Release => self.plan_release(name),
            };
            async move {
                tokio::time::timeout(timeout, send(api, name, plan))
                    .await
                    .ok()
            }
        });
        let (listed, sent) = tokio::join!(listed, futures::future::join_all(requests));
        // The list first: our writes' answers are at least as new as what it saw of them.
        let refreshed = match listed {
            Ok(Ok(leases)) => {
                self.observe_list(leases, Instant::now());
                true
            }
            _ => false,
        };
        let results = ops
            .iter()
            .zip(sent)
            .map(|((_, op), s)| {
                let attempt = s.map(|s| self.finish(s, now))?;
                Some(match op {
                    Op::Acquire(_) => attempt,
                    Op::Release => attempt.map(|_| Attempt::NotHeld),
                })
            })
            .collect();
        (refreshed, results)
    }

    fn plan_release(&self, name: &str) -> Plan {
        let Some(observed) = self.observed.get(name).cloned() else {
            return Plan::NotHeld;
        };
        if observed.holder() != Some(self.identity.as_str()) {
            return Plan::NotHeld;
        }
        let mut lease = observed.lease;
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.renew_time = Some(now_micro());
        spec.lease_duration_seconds = Some(1);
        Plan::Replace(lease)
    }

    /// Gives `name` up so another replica can take it at once (holder cleared, conditional).
    pub async fn release(&mut self, name: &str) -> Result<(), kube::Error> {
        let plan = self.plan_release(name);
        match send(&self.api, name, plan).await {
            Ok(Some(written)) => {
                self.note(written, Instant::now());
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes a Lease (a member's heartbeat, when that member is long gone or shutting down).
    pub async fn delete(&mut self, name: &str) -> Result<(), kube::Error> {
        self.observed.remove(name);
        match self.api.delete(name, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// One Lease operation of [`LeaseClient::exchange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Acquire or renew; the kind (`shard`, `member`) labels a new Lease.
    Acquire(&'static str),
    /// Give it up (holder cleared) if we hold it.
    Release,
}

enum Plan {
    Create(Lease),
    Replace(Lease),
    NotHeld,
}

async fn list(
    api: &Api<Lease>,
    labels: &BTreeMap<String, String>,
) -> Result<ObjectList<Lease>, kube::Error> {
    api.list(&ListParams::default().labels(&selector(labels)))
        .await
}

/// The label selector of the group whose `labels` these are.
fn selector(labels: &BTreeMap<String, String>) -> String {
    group_selector(labels.get(GROUP_LABEL).map_or("", String::as_str))
}

/// Sends a [`Plan`]: the written Lease, or `None` when someone else holds it or won the race.
async fn send(api: &Api<Lease>, name: &str, plan: Plan) -> Result<Option<Lease>, kube::Error> {
    let sent = match plan {
        Plan::NotHeld => return Ok(None),
        Plan::Create(lease) => api.create(&PostParams::default(), &lease).await,
        Plan::Replace(lease) => api.replace(name, &PostParams::default(), &lease).await,
    };
    match sent {
        Ok(written) => Ok(Some(written)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::coordination::v1::Lease;
    use kube::{Client, Config};
    use serde_json::json;
    use tokio::time::Instant;

    use super::LeaseClient;

    fn lease(name: &str, holder: &str, version: &str, renewed: &str) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": name, "resourceVersion": version},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "renewTime": format!("2026-11-28T10:00:{renewed}.000000Z"),
            },
        }))
        .unwrap()
    }

    fn leases() -> LeaseClient {
        let config = Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        LeaseClient::new(
            client,
            "default",
            "me",
            "mixed/32",
            Duration::from_secs(15),
            "g",
        )
    }

    #[tokio::test]
    async fn the_watch_dates_a_renewal_from_its_arrival_never_earlier() {
        let mut leases = leases();
        let t0 = Instant::now();
        leases.note(lease("g-shard-00", "other", "10", "00"), t0);
        assert_eq!(leases.next_expiry(t0), Some(t0 + Duration::from_secs(15)));

        // A renewal arrives by the watch at t0 + 1 s.
        let t1 = t0 + Duration::from_secs(1);
        leases.observe_event(lease("g-shard-00", "other", "11", "01"), t1);
        assert_eq!(leases.next_expiry(t1), Some(t1 + Duration::from_secs(15)));

        // The list of the next tick (t0 + 2 s) shows the same version: it changes nothing.
        let t2 = t0 + Duration::from_secs(2);
        leases.note(lease("g-shard-00", "other", "11", "01"), t2);
        assert_eq!(leases.next_expiry(t2), Some(t1 + Duration::from_secs(15)));

        // A late event of an older version is ignored, and so is its arrival time.
        leases.observe_event(lease("g-shard-00", "other", "10", "00"), t2);
        let seen = leases.observed("g-shard-00").unwrap();
        assert_eq!(seen.version(), Some("11"));
        assert_eq!(seen.observed_at, t1);

        // A list is authoritative even when it crossed a newer event: its older version
        // counts as seen now, which only puts the expiry later.
        let t3 = t0 + Duration::from_secs(3);
        leases.note(lease("g-shard-00", "other", "10", "00"), t3);
        assert_eq!(leases.next_expiry(t3), Some(t3 + Duration::from_secs(15)));
    }

    #[tokio::test]
    async fn the_watch_refines_what_a_list_saw_first() {
        let mut leases = leases();
        let t0 = Instant::now();
        leases.note(lease("g-shard-00", "other", "10", "00"), t0);
        // The list at t0 + 2 s saw the renewal before its watch event (sent at t0 + 1 s) was
        // handled: the event's earlier arrival counts.
        let t2 = t0 + Duration::from_secs(2);
        leases.note(lease("g-shard-00", "other", "11", "01"), t2);
        let t1 = t0 + Duration::from_secs(1);
        leases.observe_event(lease("g-shard-00", "other", "11", "01"), t1);
        assert_eq!(leases.observed("g-shard-00").unwrap().observed_at, t1);
    }

    #[tokio::test]
    async fn the_watch_never_brings_a_lease_the_lists_do_not_show() {
        let mut leases = leases();
        let t0 = Instant::now();
        leases.observe_event(lease("g-member-gone", "gone", "12", "00"), t0);
        assert!(leases.observed("g-member-gone").is_none());
        // Nor one whose version is not a number: no order between two reads is known.
        leases.note(lease("g-shard-01", "other", "abc", "00"), t0);
        let t1 = t0 + Duration::from_secs(1);
        leases.observe_event(lease("g-shard-01", "other", "abd", "01"), t1);
        assert_eq!(leases.observed("g-shard-01").unwrap().observed_at, t0);
    }
}
