//! A kubelet simulator, like kwok: with kube-controller-manager's deployment controller off,
//! it marks every Deployment available by patching its status, so the operator's status path
//! (Ready, replicas per component) is exercised as on a real cluster. It handles every
//! Deployment, the plain client's too, so both sides of the limit comparison pay for it.

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::work_loop::WorkLoop;

/// Concurrent status patches: a kubelet per node reports on its own; this is a small fleet.
const WORKERS: usize = 4;

/// A Deployment's status to write: namespace, name, generation, replicas.
type Wanted = (String, String, i64, i32);

/// What a Deployment's status must say once its pods would be running.
fn wanted(d: &Deployment) -> Option<Wanted> {
    let generation = d.metadata.generation.unwrap_or(0);
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.clone().unwrap_or_default();
    let done = status.observed_generation == Some(generation)
        && status.available_replicas.unwrap_or(0) == replicas
        && status.replicas.unwrap_or(0) == replicas;
    (!done && d.metadata.deletion_timestamp.is_none()).then(|| {
        (
            d.namespace().unwrap_or_default(),
            d.name_any(),
            generation,
            replicas,
        )
    })
}

pub fn start(client: Client) -> JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Deployment> = Api::all(client.clone());
        // The patch carries what the latest event said when it was queued.
        let patcher = WorkLoop::start(WORKERS, move |(ns, name, generation, replicas): Wanted| {
            let client = client.clone();
            async move {
                let now = jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string();
                let condition = |type_: &str, reason: &str| {
                    json!({"type": type_, "status": "True", "reason": reason,
                           "message": "simulated by vecodex-loadtest",
                           "lastUpdateTime": now, "lastTransitionTime": now})
                };
                let patch = json!({"status": {
                    "observedGeneration": generation,
                    "replicas": replicas, "updatedReplicas": replicas,
                    "readyReplicas": replicas, "availableReplicas": replicas,
                    "conditions": [condition("Available", "MinimumReplicasAvailable"),
                                   condition("Progressing", "NewReplicaSetAvailable")],
                }});
                let api: Api<Deployment> = Api::namespaced(client, &ns);
                let _ = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
        });
        let tx = patcher.sender();
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = event
                && let Some(w) = wanted(&d)
                && patcher.claim(&w)
            {
                let _ = tx.send(w);
            }
        }
    })
}
