//! Many sets over many namespaces for the fault tests: creation, churn, and a checker that
//! compares every set's children and status with what its spec demands.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use vecodex_operator::crd::VecodexSet;

pub fn sets(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<VecodexSet>(&()))
}

/// `count` sets spread round-robin over the namespaces `<prefix>-0` … `<prefix>-<n-1>`.
pub struct Fleet {
    pub namespaces: Vec<String>,
    pub count: usize,
    /// The searcher replicas each set must end with (the last update that got through).
    pub desired: Arc<Mutex<HashMap<usize, i64>>>,
    /// Sets deleted on purpose (or with their namespace): churn leaves them alone and the
    /// checker expects them and their children to be gone.
    pub removed: Arc<Mutex<HashSet<usize>>>,
    /// Updates sent so far, over every churn of the fleet: a churn goes on with the
    /// sequence instead of starting it again, so each update changes its set's spec (one
    /// that repeated an earlier churn's would write nothing and reconcile nothing).
    pub sent: Arc<AtomicUsize>,
}

impl Fleet {
    pub fn new(prefix: &str, count: usize, namespaces: usize) -> Fleet {
        let namespaces = (0..namespaces).map(|i| format!("{prefix}-{i}")).collect();
        Fleet {
            namespaces,
            count,
            desired: Arc::default(),
            removed: Arc::default(),
            sent: Arc::default(),
        }
    }

    /// Sets per shard under the default hash with `shards` shards.
    pub fn loads(&self, shards: u32) -> Vec<u64> {
        let mut loads = vec![0u64; shards as usize];
        for i in 0..self.count {
            loads[super::shard_of(&self.place(i).0, shards) as usize] += 1;
        }
        loads
    }

    pub fn place(&self, i: usize) -> (String, String) {
        (
            self.namespaces[i % self.namespaces.len()].clone(),
            format!("s{i}"),
        )
    }

    /// Creates the namespaces and the sets (the seed example, 3 searchers each).
    pub async fn create(&self, client: &Client) {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for ns in &self.namespaces {
            let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
            match namespaces.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("namespace {ns}: {e}"),
            }
        }
        for i in 0..self.count {
            let (ns, name) = self.place(i);
            sets(client, &ns)
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(super::seed_example(&ns, &name)).unwrap(),
                )
                .await
                .unwrap();
        }
    }

    /// About `per_second` spec updates per second across the sets until `stop`; an update
    /// the API server did not confirm within 2 s is not recorded (it may or may not have
    /// happened: the set is then excluded from the final check until it is updated again).
    pub fn churn(
        &self,
        client: Client,
        per_second: u32,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<usize> {
        self.churn_sparing(client, per_second, stop, HashSet::new())
    }

    /// [`Fleet::churn`], leaving the sets `spared` alone.
    pub fn churn_sparing(
        &self,
        client: Client,
        per_second: u32,
        stop: CancellationToken,
        spared: HashSet<usize>,
    ) -> tokio::task::JoinHandle<usize> {
        let desired = self.desired.clone();
        let removed = self.removed.clone();
        let sent = self.sent.clone();
        let places: Vec<(String, String)> = (0..self.count).map(|i| self.place(i)).collect();
        let pause = Duration::from_millis(1000 / u64::from(per_second.max(1)));
        tokio::spawn(async move {
            let mut applied = 0;
            while !stop.is_cancelled() {
                let n = sent.fetch_add(1, Ordering::Relaxed) + 1;
                let i = (n * 7919) % places.len();
                if removed.lock().unwrap().contains(&i) || spared.contains(&i) {
                    continue;
                }
                // Updates go round the sets (7919 is a prime larger than any fleet), each round
                // with the next value, so every update changes its set's spec.
                let replicas = ((n - 1) / places.len() % 4 + 1) as i64;
                let (ns, name) = &places[i];
                let api = sets(&client, ns);
                let patch = Patch::Merge(json!({"spec": {"searcher": {"replicas": replicas}}}));
                let params = PatchParams::default();
                let call = api.patch(name, &params, &patch);
                match tokio::time::timeout(Duration::from_secs(2), call).await {
                    Ok(Ok(_)) => {
                        desired.lock().unwrap().insert(i, replicas);
                        applied += 1;
                    }
                    // Unknown outcome: forget what we expected; the checker reads the spec.
                    _ => {
                        desired.lock().unwrap().insert(i, -1);
                    }
                }
                tokio::time::sleep(pause).await;
            }
            applied
        })
    }

    /// Every set has observed its generation, its searcher Deployment and status have the
    /// replicas of its spec (and of the last confirmed update), and it has exactly its 3
    /// Deployments, 3 Services and 1 Ingress, each controlled by it. `Err` says what is not
    /// there yet.
    pub async fn check(&self, client: &Client) -> Result<(), String> {
        let all: Api<DynamicObject> =
            Api::all_with(client.clone(), &ApiResource::erase::<VecodexSet>(&()));
        let list = all
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("list sets: {e}"))?;
        let mut uids: HashMap<(String, String), String> = HashMap::new();
        // The searchers' replicas of each set's spec (None: left to another owner) and its
        // status.
        let mut spec_replicas: HashMap<(String, String), (Option<i64>, Option<i64>)> =
            HashMap::new();
        let behind: Vec<(String, String)> = list
            .items
            .iter()
            .filter(|s| s.data["status"]["observedGeneration"] != json!(s.metadata.generation))
            .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
            .collect();
        if let Some(first) = behind.first() {
            return Err(format!(
                "{first:?}: generation not observed ({} sets behind)",
                behind.len()
            ));
        }
        for s in &list.items {
            let v = serde_json::to_value(s).unwrap();
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            let want = v["spec"]["searcher"]["replicas"].as_i64();
            let reported = v["status"]["searcher"]["replicas"].as_i64();
            if want.is_some() && reported != want {
                return Err(format!("{key:?}: status.searcher.replicas != {want:?}"));
            }
            uids.insert(key.clone(), s.uid().unwrap_or_default());
            spec_replicas.insert(key, (want, reported));
        }
        let desired = self.desired.lock().unwrap().clone();
        let removed = self.removed.lock().unwrap().clone();
        for i in 0..self.count {
            let key = self.place(i);
            let spec = spec_replicas.get(&key).map(|(spec, _)| spec.unwrap_or(1));
            if removed.contains(&i) {
                match spec {
                    Some(_) => return Err(format!("{key:?}: deleted, but still there")),
                    None => continue,
                }
            }
            let Some(spec) = spec else {
                return Err(format!("{key:?}: missing"));
            };
            let want = desired.get(&i).copied().unwrap_or(3);
            if want >= 0 && spec != want {
                return Err(format!(
                    "{key:?}: the update to {want} was lost (spec {spec})"
                ));
            }
        }
        let mut children: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for d in managed_children::<Deployment>(client).await? {
            let owner = controller_of(&d, &uids)?;
            if d.name_any().ends_with("-searcher") {
                let have = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) as i64;
                match spec_replicas[&owner] {
                    (Some(want), _) if have != want => {
                        return Err(format!("{}: replicas {have}, spec {want}", d.name_any()));
                    }
                    (None, reported) if reported != Some(have) => {
                        return Err(format!(
                            "{}: replicas {have} (left unset by the spec), status {reported:?}",
                            d.name_any()
                        ));
                    }
                    _ => {}
                }
            }
            children.entry(owner).or_default().push("Deployment".into());
        }
        for s in managed_children::<Service>(client).await? {
            let owner = controller_of(&s, &uids)?;
            children.entry(owner).or_default().push("Service".into());
        }
        for i in managed_children::<Ingress>(client).await? {
            let owner = controller_of(&i, &uids)?;
            children.entry(owner).or_default().push("Ingress".into());
        }
        for key in uids.keys() {
            let mut kinds = children.get(key).cloned().unwrap_or_default();
            kinds.sort();
            let expected = [
                "Deployment",
                "Deployment",
                "Deployment",
                "Ingress",
                "Service",
                "Service",
                "Service",
            ];
            if kinds != expected {
                return Err(format!("{key:?}: children {kinds:?}"));
            }
        }
        Ok(())
    }
}

/// The set controlling a child; an error if there is none (a child without an owner
/// reference) or it is not a current set.
fn controller_of<K: Resource<DynamicType = ()>>(
    child: &K,
    uids: &HashMap<(String, String), String>,
) -> Result<(String, String), String> {
    let ns = child.meta().namespace.clone().unwrap_or_default();
    let name = child.meta().name.clone().unwrap_or_default();
    let owner = child
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "VecodexSet")
        .ok_or_else(|| {
            format!(
                "{} {ns}/{name} has no controller owner reference",
                K::kind(&())
            )
        })?;
    let key = (ns.clone(), owner.name.clone());
    match uids.get(&key) {
        Some(uid) if *uid == owner.uid => Ok(key),
        _ => Err(format!(
            "{} {ns}/{name}: owner {} is not a current set",
            K::kind(&()),
            owner.name
        )),
    }
}

/// Every object of kind `K` carrying the operator's managed label, in all namespaces.
async fn managed_children<K>(client: &Client) -> Result<Vec<K>, String>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let lp = ListParams::default().labels(&vecodex_operator::children::managed_selector());
    Api::<K>::all(client.clone())
        .list(&lp)
        .await
        .map(|l| l.items)
        .map_err(|e| format!("list {}: {e}", K::kind(&())))
}

/// A holder change seen on a shard Lease: (lease, holder, acquireTime, renewTime) in order.
pub type LeaseLog = Arc<Mutex<Vec<(String, Option<String>, Option<String>, Option<String>)>>>;

/// Records every version of the Leases of `group` in `namespace`.
pub fn record_leases(client: Client, namespace: &str, group: &str) -> LeaseLog {
    use futures::StreamExt;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::watcher;
    let log: LeaseLog = Arc::default();
    let out = log.clone();
    let api: Api<Lease> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(&format!("app.kubernetes.io/name={group}"));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher::watcher(api, config));
        while let Some(event) = stream.next().await {
            if let Ok(watcher::Event::Apply(l) | watcher::Event::InitApply(l)) = event {
                let spec = l.spec.clone().unwrap_or_default();
                out.lock().unwrap().push((
                    l.name_any(),
                    spec.holder_identity.filter(|h| !h.is_empty()),
                    spec.acquire_time.map(|t| t.0.to_string()),
                    spec.renew_time.map(|t| t.0.to_string()),
                ));
            }
        }
    });
    log
}

/// The last lines each replica logged about the set a failed check names (`("ns", "name")`
/// at its start), so that a CI failure shows what the operator did with it.
fn replica_lines_about(problem: &str) -> String {
    let Some((ns, name)) = problem
        .strip_prefix("(\"")
        .and_then(|rest| rest.split_once("\", \""))
        .and_then(|(ns, rest)| Some((ns, rest.split_once('"')?.0)))
    else {
        return String::new();
    };
    let needle = format!("key={ns}/{name} ");
    let mut out = String::new();
    let Ok(dir) = std::fs::read_dir(&super::cluster().dir) else {
        return out;
    };
    let mut logs: Vec<_> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(&needle)).collect();
        if lines.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\n{} about {ns}/{name} (last 8 of {}):",
            log.display(),
            lines.len()
        ));
        for line in &lines[lines.len().saturating_sub(8)..] {
            let cut: String = line.chars().take(700).collect();
            out.push_str(&format!("\n  {cut}"));
        }
    }
    out
}

/// Panics unless every shard Lease changed hands only after a release or after the old
/// holder's last renewal was `lease_duration` old. Returns the number of direct takeovers.
pub fn assert_takeovers_after_expiry(log: &LeaseLog, lease_duration: Duration) -> usize {
    let log = log.lock().unwrap().clone();
    let mut last: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
    let mut changes = 0;
    for (lease, holder, acquired, renewed) in log {
        if !lease.contains("-shard-") {
            continue;
        }
        if let Some((Some(prev), prev_renew)) = last.get(&lease)
            && let Some(new) = &holder
            && new != prev
        {
            changes += 1;
            let (Some(prev_renew), Some(acquired)) = (prev_renew.as_deref(), acquired.as_deref())
            else {
                panic!("{lease}: holder change without times");
            };
            let prev_t: jiff::Timestamp = prev_renew.parse().unwrap();
            let acq_t: jiff::Timestamp = acquired.parse().unwrap();
            let gap = acq_t.duration_since(prev_t);
            assert!(
                gap >= jiff::SignedDuration::try_from(lease_duration).unwrap(),
                "{lease}: {new} took over from {prev} {gap:?} after its last renewal, while it was still valid"
            );
        }
        last.insert(lease, (holder, renewed));
    }
    changes
}

impl Fleet {
    /// Whether every child of every current set is what the operator's builders make of the
    /// set's spec now (every field they set, as the API server returned it; the shard label
    /// for `shards` shards under the default hash). `Err` names the first that is not.
    /// Returns how many children were compared.
    pub async fn children_match_specs(
        &self,
        client: &Client,
        shards: u32,
    ) -> Result<usize, String> {
        use vecodex_operator::diff::is_subset;
        let all: Api<VecodexSet> = Api::all(client.clone());
        let sets = all
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("list sets: {e}"))?
            .items;
        let mut compared = 0;
        for set in sets {
            let ns = set.namespace().unwrap_or_default();
            let mut desired = vecodex_operator::children::build(&set)
                .map_err(|e| format!("{ns}/{}: {e}", set.name_any()))?;
            desired.label_shard(super::shard_of(&ns, shards));
            let mut pairs: Vec<(String, serde_json::Value, Option<serde_json::Value>)> = Vec::new();
            macro_rules! live {
                ($kind:ty, $items:expr) => {
                    for want in $items {
                        let name = want.name_any();
                        let have = Api::<$kind>::namespaced(client.clone(), &ns)
                            .get_opt(&name)
                            .await
                            .map_err(|e| format!("get {ns}/{name}: {e}"))?;
                        pairs.push((
                            format!("{} {ns}/{name}", <$kind>::kind(&())),
                            serde_json::to_value(want).unwrap(),
                            have.map(|h| serde_json::to_value(h).unwrap()),
                        ));
                    }
                };
            }
            live!(Deployment, &desired.deployments);
            live!(Service, &desired.services);
            live!(ConfigMap, &desired.config_maps);
            live!(Ingress, desired.ingress.iter());
            for (what, want, have) in pairs {
                let have = have.ok_or_else(|| format!("{what} is missing"))?;
                if !is_subset(&want, &have) {
                    return Err(format!("{what} differs from its set's spec"));
                }
                compared += 1;
            }
        }
        Ok(compared)
    }

    /// Waits until [`Fleet::check`] passes; panics with what was still wrong after
    /// `timeout`. Returns how long it took.
    pub async fn converge(&self, client: &Client, what: &str, timeout: Duration) -> Duration {
        let start = std::time::Instant::now();
        let mut said = Duration::ZERO;
        loop {
            let last = match self.check(client).await {
                Ok(()) => return start.elapsed(),
                Err(e) => e,
            };
            if start.elapsed() > timeout {
                panic!(
                    "{what}: not converged after {timeout:?}: {last}{}",
                    replica_lines_about(&last)
                );
            }
            // What a slow convergence waits for, in the test's output.
            if start.elapsed() >= said + Duration::from_secs(15) {
                said = start.elapsed();
                eprintln!("{what}: after {said:?} still waiting: {last}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
