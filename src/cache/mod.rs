//! The operator's view of one kind: reflector stores, each following one watch. Sets have
//! one store per watched namespace (one for all namespaces when none are listed), for the
//! operator's whole life. Children have stores per held shard (and watched namespace), added
//! when the shard is gained and dropped when it is lost: a replica caches only the children
//! of its own shards. A reflector's store can follow only one watch, since each watch's
//! re-list replaces the whole store. What a store keeps of an object is a [`Stored`], made
//! from the [`Raw`] text a watch delivers.

mod kind;
mod raw;
mod stored;
#[cfg(test)]
mod tests;

use std::sync::{Arc, RwLock};

use kube::runtime::reflector::{Lookup, ObjectRef, Store};

pub use kind::CachedKind;
pub use raw::{Parts, Raw};
pub use stored::Stored;

use crate::shard::Scheme;

/// One store and what it covers.
struct Entry<K: 'static + Lookup<DynamicType = ()> + Clone> {
    /// `None`: every namespace.
    namespace: Option<String>,
    /// `None`: every shard.
    shard: Option<u32>,
    /// Which start of the shard's watches added it (a quick lose-and-regain must not let
    /// the old watch's removal drop the new store).
    generation: u64,
    store: Store<K>,
}

#[derive(Clone)]
pub struct Cache<K: 'static + Lookup<DynamicType = ()> + Clone> {
    entries: Arc<RwLock<Vec<Entry<K>>>>,
    /// To find a namespace's shard.
    scheme: Scheme,
}

impl<K> Cache<K>
where
    K: 'static + Lookup<DynamicType = ()> + Clone,
{
    /// A cache of stores covering every shard: (namespace, store).
    pub fn new(stores: Vec<(Option<String>, Store<K>)>) -> Self {
        let entries = stores
            .into_iter()
            .map(|(namespace, store)| Entry {
                namespace,
                shard: None,
                generation: 0,
                store,
            })
            .collect();
        Cache {
            entries: Arc::new(RwLock::new(entries)),
            scheme: Scheme::new(Default::default(), 1),
        }
    }

    /// An empty cache whose stores will each cover one shard of `scheme`.
    pub fn sharded(scheme: Scheme) -> Self {
        Cache {
            entries: Arc::default(),
            scheme,
        }
    }

    /// Adds the store of a shard's watch (of `namespace`, or of all namespaces).
    pub fn insert(&self, shard: u32, generation: u64, namespace: Option<String>, store: Store<K>) {
        self.write().push(Entry {
            namespace,
            shard: Some(shard),
            generation,
            store,
        });
    }

    /// Drops the stores a start of a shard's watches added.
    pub fn remove(&self, shard: u32, generation: u64) {
        self.write()
            .retain(|e| !(e.shard == Some(shard) && e.generation == generation));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Entry<K>>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Entry<K>>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        let ns = key.namespace.as_deref();
        let shard = ns.map(|ns| self.scheme.shard_of(ns));
        self.read()
            .iter()
            .find(|e| {
                (e.namespace.is_none() || e.namespace.as_deref() == ns)
                    && (e.shard.is_none() || e.shard == shard)
            })
            .and_then(|e| e.store.get(key))
    }

    pub fn state(&self) -> Vec<Arc<K>> {
        self.read().iter().flat_map(|e| e.store.state()).collect()
    }

    pub fn len(&self) -> usize {
        self.read().iter().map(|e| e.store.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until every store present now has listed.
    pub async fn wait_until_ready(
        &self,
    ) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        let stores: Vec<Store<K>> = self.read().iter().map(|e| e.store.clone()).collect();
        for store in stores {
            store.wait_until_ready().await?;
        }
        Ok(())
    }
}
