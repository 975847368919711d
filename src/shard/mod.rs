//! Namespace sharding across operator replicas, each shard guarded by a Lease that exactly
//! one replica holds at a time (`--shards 1` is classic leader election with hot standbys).

pub mod assign;
pub mod config;
#[cfg(test)]
mod families;
pub mod gate;
pub mod hash;
pub mod lease;
pub mod manager;
pub mod metrics;
pub mod names;
pub mod table;
mod view;

pub use config::{ShardConfig, default_identity};
pub use gate::{ShardEvent, ShardGate, WorkGuard};
pub use hash::{DEFAULT_SHARDS, Scheme, ShardHash};
pub use manager::{ShardLoads, ShardManager};
pub use metrics::ShardMetrics;
pub use names::shard_lease_name;
pub use table::shards_table;
