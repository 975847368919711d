//! This process's recent writes, keyed `kind/namespace/name`: what keeps a reconcile from
//! sending a write its cache does not show yet, and what tells the echo of our own write
//! apart from someone else's change.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Writes this process made whose watch events may not have reached the caches yet, keyed
/// `kind/namespace/name`.
///
/// A reconcile that runs right after another one can read a cache that does not show the
/// first one's write; without this it would send the same write again. An entry only counts
/// while the cache still shows exactly the version the write was decided on.
///
/// The version each write produced also tells its watch event (its echo) apart from someone
/// else's change: the reconcile that wrote already knew everything the echo carries, so the
/// echo queues nothing: a Deployment the operator has just changed is not drift, and a status
/// write needs no refresh. An echo that arrives before the response (the watch can win) is
/// queued like any other event.
#[derive(Default)]
pub struct RecentWrites {
    entries: Mutex<HashMap<String, RecentWrite>>,
}

struct RecentWrite {
    /// The cached version the write was decided on (`None` for a create).
    seen_version: Option<String>,
    digest: u64,
    /// The version the write produced.
    written_version: Option<String>,
    at: Instant,
}

const RECENT_TTL: Duration = Duration::from_secs(60);

impl RecentWrites {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RecentWrite>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `digest` was already written over the cached version `seen`.
    pub fn covers(&self, key: &str, seen: Option<&str>, digest: u64) -> bool {
        let Some(seen) = seen else { return false };
        self.lock().get(key).is_some_and(|w| {
            w.seen_version.as_deref() == Some(seen)
                && w.digest == digest
                && w.at.elapsed() < RECENT_TTL
        })
    }

    /// The key of an object's writes.
    pub fn key(kind: &str, ns: &str, name: &str) -> String {
        format!("{kind}/{ns}/{name}")
    }

    /// Whether a watch event of `key` at `version` is the echo of our own write.
    pub fn is_echo(&self, key: &str, version: Option<&str>) -> bool {
        self.echo_digest(key, version).is_some()
    }

    /// Whether this process wrote `key` less than `within` ago.
    pub fn written_within(&self, key: &str, within: Duration) -> bool {
        self.lock()
            .get(key)
            .is_some_and(|w| w.at.elapsed() < within)
    }

    /// The digest of what our write of `key` that produced `version` wrote, if one did.
    pub fn echo_digest(&self, key: &str, version: Option<&str>) -> Option<u64> {
        version?;
        self.lock()
            .get(key)
            .filter(|w| w.written_version.as_deref() == version)
            .map(|w| w.digest)
    }

    pub fn record(
        &self,
        key: String,
        seen_version: Option<String>,
        digest: u64,
        written_version: Option<String>,
    ) {
        let mut entries = self.lock();
        if entries.len() % 256 == 255 {
            entries.retain(|_, w| w.at.elapsed() < RECENT_TTL);
        }
        entries.insert(
            key,
            RecentWrite {
                seen_version,
                digest,
                written_version,
                at: Instant::now(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::RecentWrites;

    #[test]
    fn a_write_is_recent_for_as_long_as_asked() {
        let recent = RecentWrites::default();
        recent.record("Deployment/t/a".into(), None, 1, Some("7".into()));
        assert!(recent.written_within("Deployment/t/a", Duration::from_secs(10)));
        assert!(!recent.written_within("Deployment/t/a", Duration::ZERO));
        assert!(!recent.written_within("Deployment/t/b", Duration::from_secs(10)));
    }

    #[test]
    fn only_the_version_a_write_produced_is_its_echo() {
        let recent = RecentWrites::default();
        recent.record("Deployment/t/a".into(), None, 1, Some("7".into()));
        assert!(recent.is_echo("Deployment/t/a", Some("7")));
        assert!(
            !recent.is_echo("Deployment/t/a", Some("8")),
            "someone else's change"
        );
        assert!(!recent.is_echo("Service/t/a", Some("7")));
        assert!(!recent.is_echo("Deployment/t/a", None));
        assert!(
            !recent.covers("Deployment/t/a", None, 1),
            "a create covers no cached version"
        );
        recent.record(
            "Deployment/t/a".into(),
            Some("7".into()),
            2,
            Some("9".into()),
        );
        assert!(recent.covers("Deployment/t/a", Some("7"), 2));
        assert!(!recent.covers("Deployment/t/a", Some("9"), 2));
    }
}
