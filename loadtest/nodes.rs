//! A node simulator in the spirit of KWOK, for the full profile: a few fake Nodes kept alive
//! through their heartbeat Leases, every pod bound to one of them and, after a delay, marked
//! Running and Ready; a deleted pod is confirmed gone, as its kubelet would. Nothing patches
//! a Deployment's status: kube-controller-manager's ReplicaSet and deployment controllers
//! compute it from these pods, as on a real cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::work_loop::WorkLoop;

/// The fake Nodes' names: `{NODE_PREFIX}{i}`.
const NODE_PREFIX: &str = "vecodex-sim-node-";

/// Concurrent writes of the simulator (binds, status patches, deletions): a kubelet per
/// node reports on its own; this is a small fleet.
const WORKERS: usize = 8;

/// How often each Node's Lease is renewed (a kubelet's default is 10 s; the node lifecycle
/// controller marks a Node NotReady after 40 s without one).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// What the simulator was asked to do with one pod.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Work {
    Bind(String, String),
    /// With the pod's containers (name, image), to report each running.
    MarkReady(String, String, Vec<(String, String)>),
    ConfirmDeleted(String, String),
}

/// Starts `nodes` fake Nodes and the pod loop; pods become Ready `ready_after` after they
/// were bound. Aborting the handle stops it all.
pub fn start(client: Client, nodes: usize, ready_after: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let names: Vec<String> = (0..nodes.max(1))
            .map(|i| format!("{NODE_PREFIX}{i}"))
            .collect();
        for name in &names {
            if let Err(e) = create_node(&client, name).await {
                eprintln!("loadtest: node simulator: node {name}: {e}");
            }
        }
        let heartbeat = tokio::spawn(heartbeats(client.clone(), names.clone()));
        pods(client, names, ready_after).await;
        heartbeat.abort();
    })
}

async fn create_node(client: &Client, name: &str) -> kube::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let resources = json!({"cpu": "1000", "memory": "4Ti", "pods": "100000",
                           "nvidia.com/gpu": "1000"});
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"type": "vecodex-sim"}},
        "status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "simulated by vecodex-loadtest",
                            "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": "v1.20.2-sim", "architecture": "amd64",
                         "operatingSystem": "linux", "machineID": "", "systemUUID": "",
                         "bootID": "", "kernelVersion": "", "osImage": "",
                         "containerRuntimeVersion": "", "kubeProxyVersion": ""},
        },
    }))
    .map_err(kube::Error::SerdeError)?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Renews each Node's Lease in `kube-node-lease` every [`HEARTBEAT`].
async fn heartbeats(client: Client, names: Vec<String>) {
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    loop {
        for name in &names {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                         "renewTime": jiff::Timestamp::now()
                             .strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
            });
            let _ = api
                .patch(
                    name,
                    &PatchParams::apply("vecodex-loadtest-nodes").force(),
                    &Patch::Apply(&lease),
                )
                .await;
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// What a pod, as a watch shows it, needs from its kubelet.
fn work(pod: &Pod) -> Option<Work> {
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    if pod.metadata.deletion_timestamp.is_some() {
        return Some(Work::ConfirmDeleted(ns, name));
    }
    let spec = pod.spec.as_ref()?;
    let Some(node) = &spec.node_name else {
        return Some(Work::Bind(ns, name));
    };
    if !node.starts_with(NODE_PREFIX) {
        return None;
    }
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let containers = spec
        .containers
        .iter()
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect();
    (!ready).then_some(Work::MarkReady(ns, name, containers))
}

async fn pods(client: Client, nodes: Vec<String>, ready_after: Duration) {
    let next_node = Arc::new(AtomicUsize::new(0));
    let worker = {
        let client = client.clone();
        WorkLoop::start(WORKERS, move |w: Work| {
            let (client, nodes, next_node) = (client.clone(), nodes.clone(), next_node.clone());
            async move { do_work(&client, &w, &nodes, &next_node).await }
        })
    };
    let tx = worker.sender();
    let api: Api<Pod> = Api::all(client);
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
    while let Some(event) = events.next().await {
        if let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = event
            && let Some(w) = work(&p)
            && worker.claim(&w)
        {
            if matches!(w, Work::MarkReady(..)) {
                // Its containers start: Ready after the delay, without holding a worker.
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(ready_after).await;
                    let _ = tx.send(w);
                });
            } else {
                let _ = tx.send(w);
            }
        }
    }
}

async fn do_work(client: &Client, work: &Work, nodes: &[String], next_node: &AtomicUsize) {
    match work {
        Work::Bind(ns, name) => {
            let node = &nodes[next_node.fetch_add(1, Ordering::Relaxed) % nodes.len()];
            let binding = Binding {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                },
                target: ObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Node".to_owned()),
                    name: Some(node.clone()),
                    ..Default::default()
                },
            };
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let _ = api
                .create_subresource::<Binding, serde_json::Value>(
                    "binding",
                    name,
                    &PostParams::default(),
                    &binding,
                )
                .await;
        }
        Work::MarkReady(ns, name, containers) => {
            let now = jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let condition =
                |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
            let containers: Vec<serde_json::Value> = containers
                .iter()
                .map(|(name, image)| {
                    json!({"name": name, "image": image, "imageID": "", "ready": true,
                           "started": true, "restartCount": 0,
                           "state": {"running": {"startedAt": now}}})
                })
                .collect();
            let patch = json!({"status": {
                "phase": "Running", "startTime": now, "podIP": "10.0.0.1",
                "conditions": [condition("PodScheduled"), condition("Initialized"),
                               condition("ContainersReady"), condition("Ready")],
                "containerStatuses": containers,
            }});
            let _ = api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
        Work::ConfirmDeleted(ns, name) => {
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let _ = api
                .delete(
                    name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await;
        }
    }
}
