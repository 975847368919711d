//! vecodex-operator: runs Vecodex vector-search clusters described by `VecodexSet` objects.

pub mod api;
pub mod backoff;
pub mod cache;
pub mod census;
pub mod children;
pub mod controller;
pub mod crd;
pub mod diff;
pub mod events;
pub mod hosts;
pub mod http;
pub mod key;
pub mod kinds;
pub mod kube_metrics;
pub mod metrics;
pub mod policy;
pub mod quantity;
pub mod queue;
pub mod recent_writes;
pub mod reconcile;
pub mod shard;
pub mod status;
pub mod stores;
pub mod telemetry;
pub mod validate;
