//! The backoff of a failed watch, shared by the caches' watches and the shard manager's
//! Lease watch.

use std::time::Duration;

/// How long a failed watch waits before it retries: 0.5 s doubling up to 5 s, and back to
/// 0.5 s once a retry works. (kube-runtime's default grows to 30 s: after an API server
/// restart, caches and reconciles would wait that long.)
pub struct WatchBackoff {
    next: Duration,
}

const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(500);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff {
            next: WATCH_BACKOFF_MIN,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(WATCH_BACKOFF_MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_BACKOFF_MIN;
    }
}
