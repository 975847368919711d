//! The caches a reconcile reads instead of the API server: every set, and the children of
//! the shards whose child watches run here, with which of those shards have listed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;

use crate::cache::{Cache, Stored};
use crate::crd::VecodexSet;
use crate::shard::Scheme;

/// The caches the reconcile reads instead of the API server. The child caches hold only
/// the shards this replica serves (see `cache`).
#[derive(Clone)]
pub struct Stores {
    pub sets: Cache<Stored<VecodexSet>>,
    pub deployments: Cache<Stored<Deployment>>,
    pub services: Cache<Stored<Service>>,
    pub config_maps: Cache<Stored<ConfigMap>>,
    pub ingresses: Cache<Stored<Ingress>>,
    pub scheme: Scheme,
    /// Shards whose child watches run here: (which start of them, whether they have listed).
    shard_caches: Arc<Mutex<HashMap<u32, (u64, bool)>>>,
}

impl Stores {
    pub fn new(sets: Cache<Stored<VecodexSet>>, scheme: Scheme) -> Self {
        Stores {
            sets,
            deployments: Cache::sharded(scheme),
            services: Cache::sharded(scheme),
            config_maps: Cache::sharded(scheme),
            ingresses: Cache::sharded(scheme),
            scheme,
            shard_caches: Arc::default(),
        }
    }

    fn shard_caches(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (u64, bool)>> {
        self.shard_caches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the child caches of `shard` have listed.
    pub fn children_synced(&self, shard: u32) -> bool {
        self.shard_caches()
            .get(&shard)
            .is_some_and(|(_, listed)| *listed)
    }

    /// The child watches of `shard` start, as its `generation`-th start.
    pub fn start_shard(&self, shard: u32, generation: u64) {
        self.shard_caches().insert(shard, (generation, false));
    }

    /// The child watches of `shard` started as `generation` have listed; false if they have
    /// been stopped since.
    pub fn mark_synced(&self, shard: u32, generation: u64) -> bool {
        match self.shard_caches().get_mut(&shard) {
            Some((g, listed)) if *g == generation => {
                *listed = true;
                true
            }
            _ => false,
        }
    }

    /// Drops the child caches of `shard` that the start `generation` of its watches added.
    pub fn drop_shard(&self, shard: u32, generation: u64) {
        {
            let mut caches = self.shard_caches();
            if caches.get(&shard).is_some_and(|(g, _)| *g == generation) {
                caches.remove(&shard);
            }
        }
        self.deployments.remove(shard, generation);
        self.services.remove(shard, generation);
        self.config_maps.remove(shard, generation);
        self.ingresses.remove(shard, generation);
    }
}
