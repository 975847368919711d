//! A replica's sharding settings: the scheme, where its Leases live, its identity, and the
//! Lease timings, each documented with its default (client-go's leader-election values).

use std::time::Duration;

use super::hash::Scheme;
use super::names::{member_prefix, shard_lease_name};

#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// The hash and shard count.
    pub scheme: Scheme,
    /// Namespace of the Leases.
    pub namespace: String,
    /// Prefix of the Lease names and value of their `app.kubernetes.io/name` label: replicas
    /// with the same group share the shards.
    pub group: String,
    /// This replica's identity (pod name plus a random suffix).
    pub identity: String,
    /// How long a Lease lasts without renewal: another replica takes it only after that
    /// long without a renewal it can see. Default 15 s (client-go's).
    pub lease_duration: Duration,
    /// A replica that could not renew a shard for this long stops reconciling it, before
    /// the Lease can expire. Default 10 s (client-go's).
    pub renew_deadline: Duration,
    /// How often Leases are read, renewed and acquired. Default 2 s (client-go's).
    pub retry_period: Duration,
    /// Whether the replica caches the children of the shards a failure would bring it
    /// (warm standby), so that a takeover lists nothing. Off, it holds only its own shards'
    /// children and a takeover lists the shard first. Default on.
    pub warm_standby: bool,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            scheme: Scheme::default(),
            namespace: "default".to_owned(),
            group: "vecodex-operator".to_owned(),
            identity: default_identity(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            warm_standby: true,
        }
    }
}

impl ShardConfig {
    pub fn shard_lease(&self, shard: u32) -> String {
        shard_lease_name(&self.group, shard, self.scheme.shards)
    }

    pub fn member_lease(&self, identity: &str) -> String {
        format!("{}{identity}", member_prefix(&self.group))
    }

    /// How old a held Lease's last renewal may get before the next one: half the renew
    /// deadline, so a failed renewal still has the other half to be retried once per retry
    /// period before fencing. (client-go renews every retry period: with many shards, that
    /// is etcd writes the churn feels.)
    pub fn renew_interval(&self) -> Duration {
        (self.renew_deadline / 2).max(self.retry_period)
    }

    /// Whether a Lease last renewed `age` ago is renewed at this tick. Ticks come a retry
    /// period apart, so a renewal is sent every `renew_interval / retry_period` ticks; the
    /// threshold sits half a tick early, so that a tick a few milliseconds early does not
    /// put the renewal off by a whole period (by default: every 4 s, ticks every 2 s).
    pub fn renewal_due(&self, age: Duration) -> bool {
        let retry = self.retry_period.as_secs_f64();
        if retry <= 0.0 {
            return true;
        }
        let ticks = (self.renew_interval().as_secs_f64() / retry)
            .floor()
            .max(1.0);
        age.as_secs_f64() >= (ticks - 0.5) * retry
    }
}

/// `POD_NAME` (else the host name) plus a random suffix, so a restarted pod never mistakes
/// its predecessor's Lease for its own. Lower-cased and limited to name characters.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_else(|| "vecodex-operator".to_owned());
    let mut bytes = [0u8; 3];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map(|_| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .unwrap_or_else(|_| {
            let nanos = jiff::Timestamp::now().subsec_nanosecond().unsigned_abs();
            format!("{:06x}", (nanos ^ std::process::id()) & 0xff_ffff)
        });
    let clean: String = base
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(200)
        .collect();
    format!("{}-{random}", clean.trim_matches('-'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ShardConfig;

    fn config(lease: u64, deadline: u64, retry: u64) -> ShardConfig {
        ShardConfig {
            scheme: super::super::hash::Scheme::default(),
            namespace: "default".into(),
            group: "g".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(deadline),
            retry_period: Duration::from_secs(retry),
            ..ShardConfig::default()
        }
    }

    /// The ages at which ticks a retry period apart renew a Lease renewed at age 0, give or
    /// take a few milliseconds of timer slack either way.
    fn renewal_ages(config: &ShardConfig, slack_ms: i64) -> Vec<u64> {
        let retry = config.retry_period.as_millis() as i64;
        let mut renewed = 0i64;
        let mut ages = Vec::new();
        for tick in 1..=12i64 {
            let now = tick * retry + slack_ms;
            let age = Duration::from_millis((now - renewed).max(0) as u64);
            if config.renewal_due(age) {
                ages.push(age.as_secs_f64().round() as u64);
                renewed = now;
            }
        }
        ages
    }

    #[test]
    fn leases_are_renewed_every_half_renew_deadline_rounded_down_to_ticks() {
        // Defaults (client-go's timings): every second tick, 4 s, so that a failed renewal
        // is retried at 6 s and 8 s before the 10 s deadline.
        let defaults = config(15, 10, 2);
        assert_eq!(defaults.renew_interval(), Duration::from_secs(5));
        for slack in [-5, 0, 5] {
            assert_eq!(
                renewal_ages(&defaults, slack),
                vec![4; 6],
                "slack {slack} ms"
            );
        }
        // The tests' timings: every second tick of 1 s.
        assert_eq!(renewal_ages(&config(6, 4, 1), -5), vec![2; 6]);
        // A renew deadline under two retry periods: every tick, as client-go.
        assert_eq!(renewal_ages(&config(6, 3, 2), 5), vec![2; 12]);
        assert!(config(15, 10, 0).renewal_due(Duration::ZERO));
    }

    #[test]
    fn a_renewal_late_by_a_slow_tick_is_sent_at_once() {
        let defaults = config(15, 10, 2);
        assert!(!defaults.renewal_due(Duration::from_millis(2_900)));
        assert!(defaults.renewal_due(Duration::from_millis(3_000)));
        assert!(defaults.renewal_due(Duration::from_secs(9)));
    }
}
