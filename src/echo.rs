//! The versions this process's own writes produced, so that the watch event echoing each one
//! can be told apart from someone else's change.
//!
//! Every apply of a child and every status write comes back through a watch. Without this,
//! a Deployment the operator just changed looks like drift (its managed part changed) and
//! costs a second reconcile at normal priority, next to the spec changes people wait for; a
//! status write costs a low-priority one. The reconcile that wrote already knew everything
//! the echo carries (the object as the API server returned it, at exactly that version), so
//! the echo needs no reconcile. An echo that arrives before its write is recorded (the watch
//! can beat the response) is simply treated as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries older than this are dropped: their echo came before they were recorded, or a
/// re-list skipped it.
const TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Echoes {
    /// `kind/namespace/name` -> (resourceVersion our write produced, when).
    written: Mutex<HashMap<String, (String, Instant)>>,
}

impl Echoes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that our write of `kind` `ns/name` produced `version`.
    pub fn record(&self, kind: &str, ns: &str, name: &str, version: Option<&str>) {
        let Some(version) = version else { return };
        let mut written = self.lock();
        if written.len() % 256 == 255 {
            written.retain(|_, (_, at)| at.elapsed() < TTL);
        }
        written.insert(
            format!("{kind}/{ns}/{name}"),
            (version.to_owned(), Instant::now()),
        );
    }

    /// Whether a watch event of `kind` `ns/name` at `version` is the echo of our own write;
    /// an echo is consumed.
    pub fn is_echo(&self, kind: &str, ns: Option<&str>, name: &str, version: Option<&str>) -> bool {
        let (Some(ns), Some(version)) = (ns, version) else {
            return false;
        };
        let key = format!("{kind}/{ns}/{name}");
        let mut written = self.lock();
        match written.get(&key) {
            Some((v, _)) if v == version => {
                written.remove(&key);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Echoes;

    #[test]
    fn only_the_version_we_wrote_is_an_echo_and_only_once() {
        let echoes = Echoes::default();
        echoes.record("Deployment", "t", "a", Some("7"));
        assert!(!echoes.is_echo("Deployment", Some("t"), "a", Some("6")));
        assert!(!echoes.is_echo("Service", Some("t"), "a", Some("7")));
        assert!(!echoes.is_echo("Deployment", Some("u"), "a", Some("7")));
        assert!(echoes.is_echo("Deployment", Some("t"), "a", Some("7")));
        assert!(!echoes.is_echo("Deployment", Some("t"), "a", Some("7")));
        echoes.record("Deployment", "t", "a", None);
        assert!(!echoes.is_echo("Deployment", Some("t"), "a", None));
    }
}
