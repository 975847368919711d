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

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{ListParams, ObjectList, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;

pub const LEASE_KIND_LABEL: &str = "vecodex.link/lease";

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
        duration: Duration,
        group: &str,
    ) -> Self {
        LeaseClient {
            api: Api::namespaced(client, namespace),
            identity: identity.to_owned(),
            duration,
            labels: BTreeMap::from([("app.kubernetes.io/name".to_owned(), group.to_owned())]),
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

    /// Acquires, renews or takes over `name` if it is ours or free; a conditional write, so
    /// exactly one of several contenders can succeed.
    pub async fn try_acquire(&mut self, name: &str, kind: &str) -> Result<Attempt, kube::Error> {
        let now = Instant::now();
        let plan = self.plan(name, kind, now);
        let sent = send(&self.api, name, plan).await;
        self.finish(sent, now)
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
        let Some(observed) = self.observed.get(name).cloned() else {
            return Ok(());
        };
        if observed.holder() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let mut lease = observed.lease;
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.renew_time = Some(now_micro());
        spec.lease_duration_seconds = Some(1);
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(written) => {
                self.note(written, Instant::now());
                Ok(())
            }
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
    let selector = format!(
        "app.kubernetes.io/name={}",
        labels["app.kubernetes.io/name"]
    );
    api.list(&ListParams::default().labels(&selector)).await
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
