//! Follows convergence through watches (never by listing: at 10,000 sets a list every half
//! second would load the API server it measures). A set is converged when its status has
//! observed its generation and its 7 children exist, controlled by it; an expected change
//! (a churned spec) is applied when the component's Deployment carries it, observed when the
//! set's `status.observedGeneration` reaches the update's generation, and ready when the set
//! reports `Ready=True` for that generation.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::task::JoinHandle;
use vecodex_operator::children;
use vecodex_operator::crd::VecodexSet;

/// Children per set of the seed example: 3 Deployments, 3 Services, 1 Ingress.
pub const CHILDREN: usize = 7;

#[derive(Default)]
struct State {
    sets: HashMap<String, SetSeen>,
    /// child uid -> owner uid
    owner_of: HashMap<String, String>,
    /// owner uid -> children
    children: HashMap<String, usize>,
    /// ns/deployment -> (wanted replicas, since, sent at (wall clock), scenario)
    pending: HashMap<String, (i32, Instant, jiff::Timestamp, String)>,
    /// scenario -> every applied update
    latencies: BTreeMap<String, Vec<Applied>>,
    /// ns/name -> the set's latest update not yet reported ready
    set_updates: HashMap<String, SetUpdate>,
    /// The token of the next [`SetUpdate`].
    next_token: u64,
    /// scenario -> seconds from each update's PATCH to its generation observed in status
    observed: BTreeMap<String, Vec<f64>>,
    /// scenario -> seconds from each update's PATCH to `Ready=True` for its generation
    ready: BTreeMap<String, Vec<f64>>,
}

/// A set as its watch last showed it.
#[derive(Default)]
struct SetSeen {
    uid: String,
    generation: i64,
    /// `status.observedGeneration`.
    observed: Option<i64>,
    /// The generation of a `Ready=True` condition, if Ready is True.
    ready: Option<i64>,
}

/// A spec update followed on the set itself: when its PATCH was sent, the generation the
/// PATCH answered with, and whether the status has observed it yet.
struct SetUpdate {
    /// Which update of the set this is (see [`Tracker::expect_set`]).
    token: u64,
    scenario: String,
    since: Instant,
    generation: Option<i64>,
    observed: bool,
}

impl State {
    /// Records what `key`'s pending update has reached as the set is seen now, and drops
    /// the update once it is ready.
    fn progress(&mut self, key: &str) {
        let (Some(update), Some(seen)) = (self.set_updates.get_mut(key), self.sets.get(key)) else {
            return;
        };
        let Some(generation) = update.generation else {
            return;
        };
        let took = update.since.elapsed().as_secs_f64();
        let scenario = update.scenario.clone();
        if !update.observed && seen.observed >= Some(generation) {
            update.observed = true;
            self.observed
                .entry(scenario.clone())
                .or_default()
                .push(took);
        }
        if seen.ready >= Some(generation) {
            self.set_updates.remove(key);
            self.ready.entry(scenario).or_default().push(took);
        }
    }
}

/// An expected change that landed: which Deployment, when it was sent (wall clock, to find
/// it in the replicas' and the API server's logs) and how long it took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Applied {
    pub deployment: String,
    /// RFC 3339, UTC.
    pub sent: String,
    pub seconds: f64,
}

#[derive(Clone, Default)]
pub struct Tracker {
    state: Arc<Mutex<State>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn start(client: &Client) -> Tracker {
        let tracker = Tracker::default();
        let managed = watcher::Config::default().labels(&children::managed_selector());
        let mut tasks = Vec::new();
        {
            let t = tracker.clone();
            let api: Api<VecodexSet> = Api::all(client.clone());
            tasks.push(tokio::spawn(async move {
                let mut s = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
                while let Some(e) = s.next().await {
                    match e {
                        Ok(Event::Apply(set) | Event::InitApply(set)) => t.set_seen(&set),
                        Ok(Event::Delete(set)) => {
                            t.lock().sets.remove(&key(set.meta()));
                        }
                        _ => {}
                    }
                }
            }));
        }
        {
            let t = tracker.clone();
            let api: Api<Deployment> = Api::all(client.clone());
            let config = managed.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = std::pin::pin!(watcher::watcher(api, config));
                while let Some(e) = s.next().await {
                    match e {
                        Ok(Event::Apply(d) | Event::InitApply(d)) => {
                            t.child_seen(&d.metadata);
                            t.deployment_seen(&d);
                        }
                        Ok(Event::Delete(d)) => t.child_gone(&d.metadata),
                        _ => {}
                    }
                }
            }));
        }
        tasks.push(tracker.follow_metadata::<Service>(client, managed.clone()));
        tasks.push(tracker.follow_metadata::<Ingress>(client, managed));
        *tracker.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        tracker
    }

    fn follow_metadata<K>(&self, client: &Client, config: watcher::Config) -> JoinHandle<()>
    where
        K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
        K: serde::de::DeserializeOwned,
    {
        let t = self.clone();
        // An Api of PartialObjectMeta makes metadata-only requests.
        let api: Api<PartialObjectMeta<K>> = Api::all(client.clone());
        tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher::watcher(api, config));
            while let Some(e) = s.next().await {
                match e {
                    Ok(Event::Apply(m) | Event::InitApply(m)) => t.child_seen(&m.metadata),
                    Ok(Event::Delete(m)) => t.child_gone(&m.metadata),
                    _ => {}
                }
            }
        })
    }

    pub fn stop(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    fn set_seen(&self, set: &VecodexSet) {
        let status = set.status.as_ref();
        let observed = status.and_then(|s| s.observed_generation);
        let ready = status
            .and_then(|s| s.condition(vecodex_operator::status::READY))
            .filter(|c| c.status == "True")
            .and_then(|c| c.observed_generation.or(observed));
        let k = key(set.meta());
        let mut state = self.lock();
        state.sets.insert(
            k.clone(),
            SetSeen {
                uid: set.uid().unwrap_or_default(),
                generation: set.metadata.generation.unwrap_or(0),
                observed,
                ready,
            },
        );
        state.progress(&k);
    }

    fn child_seen(&self, meta: &ObjectMeta) {
        let Some(owner) = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
        else {
            return;
        };
        let uid = meta.uid.clone().unwrap_or_default();
        let mut state = self.lock();
        if state.owner_of.insert(uid, owner.uid.clone()).is_none() {
            *state.children.entry(owner.uid.clone()).or_default() += 1;
        }
    }

    fn child_gone(&self, meta: &ObjectMeta) {
        let uid = meta.uid.clone().unwrap_or_default();
        let mut state = self.lock();
        if let Some(owner) = state.owner_of.remove(&uid)
            && let Some(n) = state.children.get_mut(&owner)
        {
            *n = n.saturating_sub(1);
        }
    }

    fn deployment_seen(&self, d: &Deployment) {
        let k = key(d.meta());
        let replicas = d.spec.as_ref().and_then(|s| s.replicas);
        let mut state = self.lock();
        if state.pending.get(&k).is_some_and(|p| replicas == Some(p.0))
            && let Some((_, since, sent, scenario)) = state.pending.remove(&k)
        {
            state.latencies.entry(scenario).or_default().push(Applied {
                deployment: k,
                sent: sent.to_string(),
                seconds: since.elapsed().as_secs_f64(),
            });
        }
    }

    /// Expects `deployment` (ns/name) to get `replicas`; recorded before the request is sent,
    /// because the operator can be faster than our own response.
    pub fn expect(&self, deployment: &str, replicas: i32, scenario: &str) {
        self.lock().pending.insert(
            deployment.to_owned(),
            (
                replicas,
                Instant::now(),
                jiff::Timestamp::now(),
                scenario.to_owned(),
            ),
        );
    }

    /// Follows an update of set `set` (ns/name) sent now, until its generation is known
    /// ([`Tracker::update_answered`]) and ready. An update the next one of the same set
    /// overtakes before it was ready is not counted.
    pub fn expect_set(&self, set: &str, scenario: &str) -> u64 {
        let mut state = self.lock();
        state.next_token += 1;
        let token = state.next_token;
        state.set_updates.insert(
            set.to_owned(),
            SetUpdate {
                token,
                scenario: scenario.to_owned(),
                since: Instant::now(),
                generation: None,
                observed: false,
            },
        );
        token
    }

    /// The PATCH of `set`'s update `token` answered with `generation` (`None`: it failed,
    /// and there is nothing to follow). The answer to an update since overtaken is ignored.
    pub fn update_answered(&self, set: &str, token: u64, generation: Option<i64>) {
        let mut state = self.lock();
        if state.set_updates.get(set).is_none_or(|u| u.token != token) {
            return;
        }
        match generation {
            Some(g) => {
                if let Some(update) = state.set_updates.get_mut(set) {
                    update.generation = Some(g);
                }
                state.progress(set);
            }
            None => {
                state.set_updates.remove(set);
            }
        }
    }

    /// A scenario's set-level latencies (s), each sorted: to the generation observed in
    /// status, and to `Ready=True` for it.
    pub fn set_latencies(&self, scenario: &str) -> (Vec<f64>, Vec<f64>) {
        let state = self.lock();
        let sorted = |m: &BTreeMap<String, Vec<f64>>| {
            let mut l = m.get(scenario).cloned().unwrap_or_default();
            l.sort_by(f64::total_cmp);
            l
        };
        (sorted(&state.observed), sorted(&state.ready))
    }

    /// Updates of a scenario whose set has not reported them ready yet.
    pub fn sets_pending(&self, scenario: &str) -> usize {
        self.lock()
            .set_updates
            .values()
            .filter(|u| u.scenario == scenario)
            .count()
    }

    /// The request failed: nothing to wait for.
    pub fn forget(&self, deployment: &str) {
        self.lock().pending.remove(deployment);
    }

    pub fn pending(&self, scenario: &str) -> Vec<String> {
        self.lock()
            .pending
            .iter()
            .filter(|(_, p)| p.3 == scenario)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The scenario's latencies (s), sorted.
    pub fn latencies(&self, scenario: &str) -> Vec<f64> {
        let mut l: Vec<f64> = self
            .lock()
            .latencies
            .get(scenario)
            .map(|a| a.iter().map(|a| a.seconds).collect())
            .unwrap_or_default();
        l.sort_by(f64::total_cmp);
        l
    }

    /// The scenario's `n` slowest updates, slowest first: what its tail is made of.
    pub fn slowest(&self, scenario: &str, n: usize) -> Vec<Applied> {
        let mut l = self.applied(scenario);
        l.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        l.truncate(n);
        l
    }

    /// Every update of the scenario that landed, in the order they landed.
    pub fn applied(&self, scenario: &str) -> Vec<Applied> {
        self.lock()
            .latencies
            .get(scenario)
            .cloned()
            .unwrap_or_default()
    }

    /// (converged sets, known sets), counting only sets in namespaces `in_ns` accepts.
    pub fn converged(&self, in_ns: impl Fn(&str) -> bool) -> (usize, usize) {
        let state = self.lock();
        let mut done = 0;
        let mut total = 0;
        for (k, seen) in &state.sets {
            if !in_ns(k.split('/').next().unwrap_or("")) {
                continue;
            }
            total += 1;
            if seen.observed == Some(seen.generation)
                && state.children.get(&seen.uid).copied().unwrap_or(0) == CHILDREN
            {
                done += 1;
            }
        }
        (done, total)
    }

    pub fn is_converged(&self, ns: &str, name: &str) -> bool {
        let state = self.lock();
        state.sets.get(&format!("{ns}/{name}")).is_some_and(|s| {
            s.observed == Some(s.generation)
                && state.children.get(&s.uid).copied().unwrap_or(0) == CHILDREN
        })
    }

    /// Waits until `sets` sets (of the namespaces `in_ns` accepts) report `Ready=True` for
    /// their generation: with real controllers, until their rollouts are done.
    pub async fn wait_ready(
        &self,
        sets: usize,
        in_ns: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let ready = self
                .lock()
                .sets
                .iter()
                .filter(|(k, seen)| {
                    in_ns(k.split('/').next().unwrap_or("")) && seen.ready == Some(seen.generation)
                })
                .count();
            if ready >= sets {
                return Ok(());
            }
            if started.elapsed() > timeout {
                anyhow::bail!("not ready after {timeout:?}: {ready}/{sets} sets");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until `sets` sets (of the namespaces `in_ns` accepts) are converged and nothing
    /// is pending; samples the curve every 250 ms.
    pub async fn wait_converged(
        &self,
        sets: usize,
        in_ns: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<(f64, usize)>> {
        let started = Instant::now();
        let mut curve = Vec::new();
        loop {
            let (done, total) = self.converged(&in_ns);
            curve.push((started.elapsed().as_secs_f64(), done));
            if done >= sets && total >= sets && self.lock().pending.is_empty() {
                return Ok(curve);
            }
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "not converged after {timeout:?}: {done}/{total} sets, {} updates pending",
                    self.lock().pending.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// The p-th percentile (0..1) of sorted values; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}
