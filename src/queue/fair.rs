//! Fairness among tenants: the keys of one priority, served round-robin by namespace. A
//! namespace with a thousand keys queued gets one turn, then every other namespace with keys
//! gets one, so one tenant's flood cannot starve another's change.

use std::collections::{HashMap, VecDeque};

use crate::key::SetKey;

/// Keys of one priority, served round-robin by namespace.
#[derive(Default)]
pub(super) struct Lane {
    /// Namespaces that have keys here, in serving order.
    order: VecDeque<String>,
    keys: HashMap<String, VecDeque<SetKey>>,
}

impl Lane {
    pub(super) fn push(&mut self, key: &SetKey) {
        let ns = key.namespace();
        match self.keys.get_mut(ns) {
            Some(keys) => keys.push_back(key.clone()),
            None => {
                self.keys
                    .insert(ns.to_owned(), VecDeque::from([key.clone()]));
                self.order.push_back(ns.to_owned());
            }
        }
    }

    pub(super) fn pop(&mut self) -> Option<SetKey> {
        let ns = self.order.pop_front()?;
        let keys = self.keys.get_mut(&ns)?;
        let key = keys.pop_front();
        if keys.is_empty() {
            self.keys.remove(&ns);
        } else {
            self.order.push_back(ns);
        }
        key
    }

    pub(super) fn remove(&mut self, key: &SetKey) {
        let ns = key.namespace();
        if let Some(keys) = self.keys.get_mut(ns) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.keys.remove(ns);
                self.order.retain(|n| n != ns);
            }
        }
    }
}
