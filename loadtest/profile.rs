//! The two control-plane profiles a run measures in, so that they can be compared:
//!
//! - `lean`: kube-controller-manager without the deployment, ReplicaSet and endpoint
//!   controllers, the API server at GOGC 400 (12 GiB GOMEMLIMIT), and the kubelet
//!   simulator (`kubelet.rs`) writing each Deployment's status at once;
//! - `full`: every controller, the API server at Go's default GC (GOGC 100, no memory
//!   limit), and the node simulator (`nodes.rs`): pods bound to fake Nodes and marked Ready
//!   after `--pod-ready-seconds`, and every Deployment's status computed by the real
//!   ReplicaSet and deployment controllers from them.

use std::time::Duration;

use kube::Client;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::{kubelet, nodes};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Lean,
    Full,
}

impl Profile {
    /// kube-controller-manager's `--controllers`. The lean profile turns off what the
    /// kubelet simulator stands in for, and the endpoint controllers: with no pods they have
    /// nothing to publish, but they create an Endpoints and an EndpointSlice per Service at
    /// the controller-manager's 20 requests/s, a backlog that ran under every later scenario.
    pub fn controllers(self) -> &'static str {
        match self {
            Profile::Lean => {
                "*,-deployment,-replicaset,-endpoint,-endpointslice,-endpointslicemirroring"
            }
            Profile::Full => "*",
        }
    }

    /// The API server's GOGC and GOMEMLIMIT unless given on the command line.
    pub fn apiserver_gc(self) -> (u32, &'static str) {
        match self {
            Profile::Lean => (400, "12GiB"),
            Profile::Full => (100, ""),
        }
    }

    /// Starts what stands in for the kubelets; aborting the handle stops it.
    pub fn simulator(self, client: Client, nodes: usize, pod_ready: Duration) -> JoinHandle<()> {
        match self {
            Profile::Lean => kubelet::start(client),
            Profile::Full => nodes::start(client, nodes, pod_ready),
        }
    }
}
