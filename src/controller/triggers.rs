//! What a watch event asks of the queue: the classifiers of set and child events (which key,
//! at which priority, for which trigger, and whether it may end a backoff). The echo of our
//! own write queues nothing.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use kube::Resource;
use kube::runtime::watcher::Event;

use crate::cache::Stored;
use crate::crd::VecodexSet;
use crate::hosts::HostIndex;
use crate::key::SetKey;
use crate::queue::{Priority, Trigger};
use crate::recent_writes::RecentWrites;

/// What a watch event asks of the queue: which key, at which priority, and whether it may
/// end a backoff early (only a spec change may).
pub struct Enqueue {
    pub key: SetKey,
    pub priority: Priority,
    pub trigger: Trigger,
    pub cut_backoff: bool,
}

/// Set events: a new set or a new generation is a real change (normal priority, ends a
/// backoff); the initial list and metadata or status updates are low priority. A re-list
/// (the watch could not resume, as after an API server restart) is compared with what was
/// known before it: the sets created or changed while the watch was down are real changes
/// too, and must not wait behind the rest of the list or out a backoff. The echo of our own
/// status write queues nothing (see `RecentWrites`).
pub(super) fn classify_sets(
    recent: Arc<RecentWrites>,
    hosts: Arc<HostIndex>,
) -> impl FnMut(Event<Stored<VecodexSet>>) -> Vec<Enqueue> + Send {
    // Generation per key, as of the last event; during a re-list, the next map is built
    // beside it so that sets deleted meanwhile drop out when the list is done.
    let mut generations: HashMap<SetKey, i64> = HashMap::new();
    let mut relisting: HashMap<SetKey, i64> = HashMap::new();
    let mut listed = false;
    let change = |previous: Option<i64>, generation: i64| match previous {
        None => (Priority::Normal, Trigger::Create),
        Some(g) if g != generation => (Priority::Normal, Trigger::SpecChange),
        Some(_) => (Priority::Low, Trigger::Update),
    };
    // A host changed hands: the sets asking for it (see `hosts`).
    let host_moved = |keys: Vec<SetKey>| {
        keys.into_iter().map(|key| Enqueue {
            key,
            priority: Priority::Normal,
            trigger: Trigger::HostReleased,
            cut_backoff: true,
        })
    };
    move |event| {
        let mut out = Vec::new();
        let (key, priority, trigger) = match event {
            Event::Init => {
                relisting.clear();
                return out;
            }
            Event::InitApply(set) => {
                let Some(key) = set.key() else { return out };
                out.extend(host_moved(hosts.update(&key, set.host_claims())));
                let generation = set.generation.unwrap_or(0);
                relisting.insert(key.clone(), generation);
                match change(generations.get(&key).copied(), generation) {
                    (Priority::Normal, trigger) if listed => (key, Priority::Normal, trigger),
                    _ => (key, Priority::Low, Trigger::InitialList),
                }
            }
            Event::InitDone => {
                // Sets gone while the watch was down give up their hosts.
                for gone in generations.keys().filter(|k| !relisting.contains_key(*k)) {
                    out.extend(host_moved(hosts.update(gone, Vec::new())));
                }
                generations = std::mem::take(&mut relisting);
                listed = true;
                return out;
            }
            Event::Apply(set) => {
                let Some(key) = set.key() else { return out };
                out.extend(host_moved(hosts.update(&key, set.host_claims())));
                let generation = set.generation.unwrap_or(0);
                let previous = generations.insert(key.clone(), generation);
                if previous == Some(generation) && is_echo(&recent, &set) {
                    return out;
                }
                let (priority, trigger) = change(previous, generation);
                (key, priority, trigger)
            }
            Event::Delete(set) => {
                if let Some(key) = set.key() {
                    out.extend(host_moved(hosts.update(&key, Vec::new())));
                    generations.remove(&key);
                }
                return out;
            }
        };
        out.push(Enqueue {
            key,
            priority,
            trigger,
            cut_backoff: priority == Priority::Normal,
        });
        out
    }
}

/// Child events: drift (a change of what the operator manages, or a deletion) is a real
/// change. A change of status only (a Deployment's replicas becoming ready), a child seen for
/// the first time (most often the echo of our own create) and the initial list just need the
/// set's status refreshed: they wait at low priority, behind real changes, and a set whose
/// three Deployments become ready one after another is then refreshed once, not three times.
/// The first list of a shard's watch queues nothing: the shard's sets are all queued once its
/// caches have listed; a later re-list (after a watch error) queues the owners it shows.
/// The echo of our own apply queues nothing (see `RecentWrites`).
pub(super) fn classify_children<K: Resource<DynamicType = ()>>(
    recent: Arc<RecentWrites>,
) -> impl FnMut(Event<Stored<K>>) -> Option<Enqueue> + Send {
    // uid -> digest of the managed part, hashed to keep the map small at 100,000 children.
    let mut managed: HashMap<u64, u64> = HashMap::new();
    let mut listed = false;
    move |event| {
        let (child, priority, trigger) = match &event {
            Event::InitApply(c) if !listed => {
                managed.insert(uid_key(c), c.digest);
                return None;
            }
            Event::InitDone => {
                listed = true;
                return None;
            }
            Event::Apply(c) => {
                let before = managed.insert(uid_key(c), c.digest);
                if is_echo(&recent, c) {
                    return None;
                }
                if before.is_some_and(|b| b != c.digest) {
                    (c, Priority::Normal, Trigger::ChildDrift)
                } else {
                    (c, Priority::Low, Trigger::ChildStatus)
                }
            }
            Event::Delete(c) => {
                managed.remove(&uid_key(c));
                (c, Priority::Normal, Trigger::ChildDrift)
            }
            Event::InitApply(c) => {
                managed.insert(uid_key(c), c.digest);
                (c, Priority::Low, Trigger::InitialList)
            }
            Event::Init => return None,
        };
        Some(Enqueue {
            key: child.controller_key()?,
            priority,
            trigger,
            cut_backoff: false,
        })
    }
}

fn is_echo<K: Resource<DynamicType = ()>>(recent: &RecentWrites, obj: &Stored<K>) -> bool {
    let key = RecentWrites::key(
        &K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name(),
    );
    recent.is_echo(&key, obj.resource_version())
}

fn uid_key<K>(obj: &Stored<K>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    obj.uid().hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use kube::runtime::watcher::Event;

    use super::{classify_children, classify_sets};
    use crate::cache::Stored;
    use crate::crd::VecodexSet;
    use crate::queue::{Priority, Trigger};
    use crate::recent_writes::RecentWrites;

    fn set(generation: i64) -> VecodexSet {
        let mut set: VecodexSet = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps.vecodex.link/v1alpha1",
            "kind": "VecodexSet",
            "metadata": {"name": "s", "namespace": "t", "generation": generation},
            "spec": {"coordinator": {"image": "a"}, "writer": {"image": "a"}, "searcher": {"image": "a"}}
        }))
        .unwrap();
        set.metadata.generation = Some(generation);
        set
    }

    #[test]
    fn only_new_sets_and_spec_changes_are_urgent() {
        let recent = Arc::new(RecentWrites::default());
        let mut classify = classify_sets(recent.clone(), Default::default());
        assert!(classify(Event::Init).is_empty());
        let listed = classify(Event::InitApply(Stored::new(set(1))))
            .pop()
            .unwrap();
        assert_eq!(
            (listed.key.as_str(), listed.priority, listed.cut_backoff),
            ("t/s", Priority::Low, false)
        );
        assert!(classify(Event::InitDone).is_empty());
        let echo = classify(Event::Apply(Stored::new(set(1)))).pop().unwrap();
        assert_eq!(
            (echo.priority, echo.cut_backoff),
            (Priority::Low, false),
            "status or metadata update"
        );
        let mut written = set(1);
        written.metadata.resource_version = Some("5".into());
        recent.record(
            RecentWrites::key("VecodexSet", "t", "s"),
            None,
            0,
            Some("5".into()),
        );
        assert!(
            classify(Event::Apply(Stored::new(written))).is_empty(),
            "the echo of our own status write"
        );
        let edit = classify(Event::Apply(Stored::new(set(2)))).pop().unwrap();
        assert_eq!(
            (edit.priority, edit.cut_backoff),
            (Priority::Normal, true),
            "spec change"
        );
        assert!(classify(Event::Delete(Stored::new(set(2)))).is_empty());
        let created = classify(Event::Apply(Stored::new(set(1)))).pop().unwrap();
        assert_eq!(
            (created.priority, created.cut_backoff),
            (Priority::Normal, true),
            "a new set"
        );
    }

    pub(crate) fn named(name: &str, generation: i64) -> Stored<VecodexSet> {
        let mut set = set(generation);
        set.metadata.name = Some(name.into());
        Stored::new(set)
    }

    #[test]
    fn a_relist_finds_what_changed_while_the_watch_was_down() {
        let mut classify = classify_sets(Default::default(), Default::default());
        classify(Event::Init);
        for name in ["same", "edited", "deleted"] {
            classify(Event::InitApply(named(name, 1)));
        }
        classify(Event::InitDone);

        // The watch could not resume: kube-runtime lists again. "deleted" is not in the
        // re-list: when it comes back after it, it is a new set.
        assert!(classify(Event::Init).is_empty());
        // What each event queues; only what changed cuts a failing set's backoff short.
        let check = |queued: Option<super::Enqueue>, priority, trigger| {
            let e = queued.expect("queued");
            let urgent = priority == Priority::Normal;
            assert_eq!(
                (e.priority, e.trigger, e.cut_backoff),
                (priority, trigger, urgent)
            );
        };
        let same = classify(Event::InitApply(named("same", 1))).pop();
        check(same, Priority::Low, Trigger::InitialList);
        let edited = classify(Event::InitApply(named("edited", 2))).pop();
        check(edited, Priority::Normal, Trigger::SpecChange);
        let created = classify(Event::InitApply(named("created", 1))).pop();
        check(created, Priority::Normal, Trigger::Create);
        classify(Event::InitDone);
        let back = classify(Event::Apply(named("deleted", 1))).pop();
        check(back, Priority::Normal, Trigger::Create);
        let again = classify(Event::Apply(named("edited", 2))).pop();
        check(again, Priority::Low, Trigger::Update);
    }

    #[test]
    fn children_map_to_their_controlling_set() {
        let mut cm = k8s_openapi::api::core::v1::ConfigMap::default();
        cm.metadata.name = Some("s-config".into());
        cm.metadata.namespace = Some("t".into());
        cm.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps.vecodex.link/v1alpha1".into(),
                kind: "VecodexSet".into(),
                name: "s".into(),
                uid: "u".into(),
                controller: Some(true),
                block_owner_deletion: None,
            },
        ]);
        let recent = Arc::new(RecentWrites::default());
        let mut classify = classify_children(recent.clone());
        assert!(
            classify(Event::InitApply(Stored::new(cm.clone()))).is_none(),
            "the first list queues nothing: the shard's sets are queued once it is done"
        );
        assert!(classify(Event::InitDone).is_none());
        let relisted = classify(Event::InitApply(Stored::new(cm.clone()))).unwrap();
        assert_eq!(
            (relisted.key.as_str(), relisted.priority, relisted.trigger),
            ("t/s", Priority::Low, Trigger::InitialList),
            "a re-list after a watch error queues the owner"
        );
        cm.metadata.resource_version = Some("2".into());
        assert_eq!(
            classify(Event::Apply(Stored::new(cm.clone())))
                .unwrap()
                .priority,
            Priority::Low,
            "nothing the operator manages changed"
        );
        cm.data = Some([("k".to_owned(), "v".to_owned())].into());
        let drift = classify(Event::Apply(Stored::new(cm.clone()))).unwrap();
        assert_eq!(
            (drift.priority, drift.trigger),
            (Priority::Normal, Trigger::ChildDrift),
            "a managed field changed"
        );
        cm.data = Some([("k".to_owned(), "ours".to_owned())].into());
        cm.metadata.resource_version = Some("3".into());
        recent.record(
            RecentWrites::key("ConfigMap", "t", "s-config"),
            None,
            0,
            Some("3".into()),
        );
        assert!(
            classify(Event::Apply(Stored::new(cm.clone()))).is_none(),
            "the echo of our own apply: the reconcile that made it knew all it carries"
        );
        cm.metadata.resource_version = Some("4".into());
        cm.data = Some([("k".to_owned(), "theirs".to_owned())].into());
        assert_eq!(
            classify(Event::Apply(Stored::new(cm.clone()))).map(|e| e.trigger),
            Some(Trigger::ChildDrift),
            "a change after our own is someone else's"
        );
        let deleted = classify(Event::Delete(Stored::new(cm.clone()))).unwrap();
        assert_eq!(deleted.priority, Priority::Normal);
        cm.metadata.owner_references = None;
        assert!(
            classify(Event::Apply(Stored::new(cm))).is_none(),
            "not ours"
        );
    }
}
