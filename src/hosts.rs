//! Who holds each Ingress host, across every namespace: a host belongs to one set. Among the
//! sets that ask for a host, the one already serving it (its status says so) keeps it; else
//! the one created first, then by namespace and name. The others get no Ingress and report
//! `HostConflict`.
//!
//! The index follows the set watch every replica runs over all sets, one event at a time, so
//! asking who holds a host costs a map lookup, never a scan of the sets. When a host changes
//! hands (its holder is deleted, changes its host or drops its Ingress), the index names the
//! sets asking for that host, so they are queued at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::key::SetKey;

/// What a set asks of a host, from its cached version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostClaim {
    /// `spec.ingress.host`, lower-cased.
    pub host: Box<str>,
    /// `status.ingressHost` names the same host: the set serves it now.
    pub serving: bool,
    /// `metadata.creationTimestamp`, in Unix seconds.
    pub created: i64,
}

/// A claim's place in the line for its host: serving first, then oldest, then by key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    not_serving: bool,
    created: i64,
    key: SetKey,
}

#[derive(Default)]
struct Inner {
    /// Each set's claims (a set serving one host and asking for another has two).
    by_key: HashMap<SetKey, Vec<(Box<str>, Rank)>>,
    by_host: HashMap<Box<str>, BTreeSet<Rank>>,
}

impl Inner {
    fn holder(&self, host: &str) -> Option<&SetKey> {
        self.by_host
            .get(host)
            .and_then(|line| line.first())
            .map(|r| &r.key)
    }

    fn claimants(&self, host: &str) -> impl Iterator<Item = &SetKey> {
        self.by_host.get(host).into_iter().flatten().map(|r| &r.key)
    }
}

#[derive(Default)]
pub struct HostIndex {
    inner: Mutex<Inner>,
}

impl HostIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The set holding `host`, if any set asks for it.
    pub fn holder(&self, host: &str) -> Option<SetKey> {
        self.lock().holder(&host.to_ascii_lowercase()).cloned()
    }

    /// Records what set `key` claims now (none: no host, or the set is gone). Returns the
    /// other sets asking for a host whose holder this changed: they are to be reconciled
    /// (the new holder applies its Ingress, the others name the new holder).
    pub fn update(&self, key: &SetKey, claims: Vec<HostClaim>) -> Vec<SetKey> {
        let mut inner = self.lock();
        let before = inner.by_key.get(key).cloned().unwrap_or_default();
        let mut new: Vec<(Box<str>, Rank)> = claims
            .into_iter()
            .map(|c| {
                (
                    c.host,
                    Rank {
                        not_serving: !c.serving,
                        created: c.created,
                        key: key.clone(),
                    },
                )
            })
            .collect();
        new.sort();
        new.dedup_by(|a, b| a.0 == b.0);
        if before == new {
            return Vec::new();
        }
        let mut hosts: Vec<Box<str>> = before.iter().chain(&new).map(|(h, _)| h.clone()).collect();
        hosts.sort();
        hosts.dedup();
        let holders_before: Vec<Option<SetKey>> =
            hosts.iter().map(|h| inner.holder(h).cloned()).collect();
        for (host, rank) in &before {
            if let Some(line) = inner.by_host.get_mut(host) {
                line.remove(rank);
                if line.is_empty() {
                    inner.by_host.remove(host);
                }
            }
        }
        for (host, rank) in &new {
            inner
                .by_host
                .entry(host.clone())
                .or_default()
                .insert(rank.clone());
        }
        if new.is_empty() {
            inner.by_key.remove(key);
        } else {
            inner.by_key.insert(key.clone(), new);
        }
        let mut wake: Vec<SetKey> = Vec::new();
        for (host, before) in hosts.iter().zip(holders_before) {
            if inner.holder(host).cloned() != before {
                wake.extend(inner.claimants(host).filter(|k| *k != key).cloned());
            }
        }
        wake.sort();
        wake.dedup();
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(key: &str) -> SetKey {
        key.parse().expect("a namespace/name key")
    }

    fn claim(host: &str, serving: bool, created: i64) -> Vec<HostClaim> {
        vec![HostClaim {
            host: host.into(),
            serving,
            created,
        }]
    }

    #[test]
    fn the_first_claimant_holds_a_host_and_the_next_gets_it_when_it_lets_go() {
        let index = HostIndex::default();
        assert_eq!(
            index.update(&k("a/x"), claim("h.example.com", false, 10)),
            Vec::<SetKey>::new()
        );
        assert_eq!(index.holder("H.example.com"), Some(k("a/x")));
        // A later set asking for the same host waits; nobody else changes standing.
        assert!(
            index
                .update(&k("b/y"), claim("h.example.com", false, 20))
                .is_empty()
        );
        assert_eq!(index.holder("h.example.com"), Some(k("a/x")));
        // Same second: namespace and name decide.
        assert!(
            index
                .update(&k("c/z"), claim("h.example.com", false, 20))
                .is_empty()
        );
        // The holder changes its host: the next in line (b/y, then c/z) is woken.
        assert_eq!(
            index.update(&k("a/x"), claim("other.example.com", false, 10)),
            vec![k("b/y"), k("c/z")]
        );
        assert_eq!(index.holder("h.example.com"), Some(k("b/y")));
        // b/y is deleted: c/z is woken and holds it.
        assert_eq!(index.update(&k("b/y"), vec![]), vec![k("c/z")]);
        assert_eq!(index.holder("h.example.com"), Some(k("c/z")));
        assert_eq!(index.update(&k("c/z"), vec![]), Vec::<SetKey>::new());
        assert_eq!(index.holder("h.example.com"), None);
    }

    #[test]
    fn a_serving_set_keeps_its_host_against_an_older_one() {
        let index = HostIndex::default();
        index.update(&k("b/new"), claim("h", true, 50));
        // An older set that changes its host to one already served does not take it.
        assert!(index.update(&k("a/old"), claim("h", false, 1)).is_empty());
        assert_eq!(index.holder("h"), Some(k("b/new")));
        // Two that both say they serve it (from before hosts were owned): the older wins.
        assert_eq!(
            index.update(&k("a/old"), claim("h", true, 1)),
            vec![k("b/new")]
        );
        assert_eq!(index.holder("h"), Some(k("a/old")));
        // An unchanged claim changes nothing.
        assert!(index.update(&k("a/old"), claim("h", true, 1)).is_empty());
    }

    /// A set moving to another host keeps the one it serves until its Ingress moved.
    #[test]
    fn a_served_host_is_kept_while_the_set_moves_to_another() {
        let index = HostIndex::default();
        index.update(&k("a/x"), claim("old", true, 1));
        index.update(&k("b/y"), claim("old", false, 5));
        let moving = vec![
            HostClaim {
                host: "new".into(),
                serving: false,
                created: 1,
            },
            HostClaim {
                host: "old".into(),
                serving: true,
                created: 1,
            },
        ];
        assert!(
            index.update(&k("a/x"), moving).is_empty(),
            "old is still served by a/x"
        );
        assert_eq!(index.holder("old"), Some(k("a/x")));
        assert_eq!(index.holder("new"), Some(k("a/x")));
        // The status now names the new host: the old one goes to the next in line.
        assert_eq!(
            index.update(&k("a/x"), claim("new", true, 1)),
            vec![k("b/y")]
        );
        assert_eq!(index.holder("old"), Some(k("b/y")));
    }
}
