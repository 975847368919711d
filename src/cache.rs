//! The operator's view of one kind: a reflector store per watched namespace (one store for
//! all namespaces when none are listed). A reflector's store can follow only one watch, since
//! each watch's re-list replaces the whole store.

use std::sync::Arc;

use kube::runtime::reflector::{Lookup, ObjectRef, Store};

#[derive(Clone)]
pub struct Cache<K: 'static + Lookup<DynamicType = ()> + Clone> {
    /// (namespace, store); `None` watches every namespace.
    stores: Vec<(Option<String>, Store<K>)>,
}

impl<K> Cache<K>
where
    K: 'static + Lookup<DynamicType = ()> + Clone,
{
    pub fn new(stores: Vec<(Option<String>, Store<K>)>) -> Self {
        Cache { stores }
    }

    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        let ns = key.namespace.as_deref();
        self.stores
            .iter()
            .find(|(watched, _)| watched.is_none() || watched.as_deref() == ns)
            .and_then(|(_, store)| store.get(key))
    }

    pub fn state(&self) -> Vec<Arc<K>> {
        self.stores.iter().flat_map(|(_, s)| s.state()).collect()
    }

    pub fn len(&self) -> usize {
        self.stores.iter().map(|(_, s)| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn wait_until_ready(
        &self,
    ) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        for (_, store) in &self.stores {
            store.wait_until_ready().await?;
        }
        Ok(())
    }
}
